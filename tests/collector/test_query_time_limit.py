"""A query's time limit (``collector.storage.time_limit``): stopped inside SQLite and in
the Python loops over its results, raised as ``QueryTimeoutError``, and the Reader's
connection ready for the next query afterwards. The clock is the test's: no timing."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.query import Filters, Reader
from collector.storage import time_limit
from collector.storage.filters import expand_types
from collector.storage.time_limit import QueryTimeoutError
from tests.collector.storage_helpers import events, open_store

#: A statement of ~10**7 VM steps: seconds, were it not stopped.
LONG = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000000) "
        "SELECT count(*) FROM n")


class Clock:
    """``time_limit``'s clock, moved by the test: ``late()`` puts it past any limit."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr(time_limit, "monotonic", lambda: self.now)

    def late(self) -> None:
        self.now += 10**6

    def late_after(self, monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> None:
        """Past the limit once ``owner.name`` has run (inside the query, that is)."""
        real: Callable[..., Any] = getattr(owner, name)

        def then_late(*args: Any, **kwargs: Any) -> Any:
            try:
                return real(*args, **kwargs)
            finally:
                self.late()

        monkeypatch.setattr(owner, name, then_late)


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[Reader]:
    data = tmp_path / "data"
    with open_store(data) as store:
        store.write(events(50, principal="alice"))
        reader = Reader(data)
        try:
            yield reader
        finally:
            reader.close()


def test_a_statement_past_the_limit_is_interrupted_and_its_connection_runs_the_next() -> None:
    con = sqlite3.connect(":memory:", isolation_level=None)
    with pytest.raises(QueryTimeoutError, match=r"longer than 0 s \(query_timeout\)"), \
            time_limit.time_limit(0, "query_timeout"), time_limit.interruptible(con):
        con.execute(LONG).fetchone()
    # No handler left behind: the same statement runs to its end without a limit.
    assert con.execute(LONG).fetchone() == (10_000_000,)


def test_a_page_interrupted_inside_its_snapshot_leaves_the_reader_ready(
        reader: Reader, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    # In time when the page's snapshot begins, late once it has; SQLite looks at the
    # clock at every step, so the next statement is stopped, and the COMMIT that ends
    # the snapshot too: the Reader must end it itself.
    clock.late_after(monkeypatch, Reader, "_check_complete")
    monkeypatch.setattr(time_limit, "PROGRESS_STEPS", 1)
    with pytest.raises(QueryTimeoutError, match="narrow it with since/until"), \
            time_limit.time_limit(30, "query_timeout"):
        reader.search(Filters(principal="alice"))
    assert not reader.con.in_transaction
    monkeypatch.undo()
    page = reader.search(Filters(principal="alice"), limit=100)
    assert len(page.records) == 50


def test_a_page_past_its_limit_while_its_records_are_read_is_stopped(
        reader: Reader, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    # The index has answered: what is left is the Python loop over the segment files.
    clock.late_after(monkeypatch, Reader, "_segments")
    with pytest.raises(QueryTimeoutError), time_limit.time_limit(30, "query_timeout"):
        reader.search(Filters(), limit=10)
    monkeypatch.undo()
    assert len(reader.search(Filters(), limit=10).records) == 10


def test_a_lookup_past_its_limit_is_stopped_too(reader: Reader) -> None:
    with pytest.raises(QueryTimeoutError), time_limit.time_limit(0, "query_timeout"), \
            pytest.MonkeyPatch.context() as patch:
        patch.setattr(time_limit, "PROGRESS_STEPS", 1)
        reader.find("019ac3f2-5e1a-7c3d-9a41-0f6d2b7e8c11")
    assert not reader.con.in_transaction
    assert reader.find("019ac3f2-5e1a-7c3d-9a41-0f6d2b7e8c11") is None


def test_no_limit_is_no_limit(reader: Reader, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    clock.late_after(monkeypatch, Reader, "_check_complete")
    with time_limit.time_limit(None, "query_timeout"):
        assert len(reader.search(Filters(), limit=100).records) == 50


def test_type_globs_are_matched_under_the_limit() -> None:
    """A pathological selection: hundreds of globs, each matched against every stored
    type (a store may hold a million)."""
    looked: list[int] = []
    with pytest.raises(QueryTimeoutError):
        def check() -> None:
            looked.append(1)
            if len(looked) == 3:
                raise QueryTimeoutError("stopped")

        expand_types([f"run_{n}*" for n in range(100)], ["run_1", "run_2"], check)
    assert len(looked) == 3  # stopped between globs, not after all of them


def test_the_event_types_listing_is_under_the_limit_too(
        reader: Reader, monkeypatch: pytest.MonkeyPatch) -> None:
    """``GET /api/v1/event-types`` reads on a query thread as the searches do: its
    statement is stopped past the thread's limit, and the connection answers next."""
    from collector.api.routes import _stored_types

    clock = Clock(monkeypatch)
    monkeypatch.setattr(time_limit, "PROGRESS_STEPS", 1)  # a look at the clock each step
    with time_limit.time_limit(30.0, "query_timeout"):
        clock.late()
        with pytest.raises(QueryTimeoutError):
            _stored_types("", reader)
    assert _stored_types("", reader) == ["credentials_created"]


def test_query_timeout_covers_the_type_suggestions_after_an_empty_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``audit-collector query --timeout`` that matches nothing reads every stored type to
    suggest close ones (a store may hold a million): that read was outside the limit, and
    the command ran past it there. Now past it the notes are left out, the (complete,
    empty) answer stands."""
    from collector.cli import main
    from collector.query import close_readers

    data = tmp_path / "data"
    with open_store(data) as store:
        store.write(events(5, principal="alice"))  # credentials_created
    monkeypatch.setenv("AUDIT_CONFIG", "")
    clock = Clock(monkeypatch)
    clock.late_after(monkeypatch, Reader, "search")  # answered in time, late right after
    try:
        code = main(["query", "--data-dir", str(data), "--timeout", "30s",
                     "--type", "credentials_creatd"])
    finally:
        close_readers(data)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "did you mean" not in err
    assert ("note: --timeout passed before the --type values were checked against the "
            "stored event types (no suggestions); the empty answer is complete") in err


def test_the_newest_seq_is_under_the_limit_too(reader: Reader) -> None:
    """Where ``tail`` starts, and ``follow_cursor``, read under the caller's limit."""
    with time_limit.time_limit(0, "--timeout"):
        with pytest.raises(QueryTimeoutError):
            reader.newest_seq()
        with pytest.raises(QueryTimeoutError):
            reader.follow_cursor(Filters())
    assert reader.newest_seq() == 50
