"""Filters by status, organization name and workspace name: alone and combined, across
chunks, in every state a chunk can be in (open, closed but not indexed yet, indexed,
rebuilt by reindex), and an organization renamed between its events."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from audit_middleware.event import format_created
from collector.index import connect
from collector.query import Filters, QueryError, Reader, iter_records, reindex, search
from collector.storage.chunks import CLOSED, INDEXED, OPEN
from collector.storage.conditions import compile_conditions
from tests.collector.storage_helpers import BASE_NS, event, open_store

HOUR = 3600 * 10**9
COUNT = 120
# (org_id, org_name): org-1 is renamed from Acme to "Acme Inc" half-way; org-3 and
# org-4 share a name.
ORGS = [("org-1", "Acme"), ("org-2", "Globex"), ("org-3", "Initech"), ("org-4", "Initech")]
# (workspace_id, workspace_name): two workspaces called Main, one without a name.
WORKSPACES = [("ws-1", "Main"), ("ws-2", "Main"), ("ws-3", "Lab"), ("ws-4", "")]
STATUSES = ["", "succeeded", "", "failed: TimeoutError", "password", ""]


def corpus() -> list[dict[str, Any]]:
    rows = []
    for n in range(COUNT):
        org_id, org_name = ORGS[n % 4]
        if org_id == "org-1" and n >= COUNT // 2:
            org_name = "Acme Inc"
        ws_id, ws_name = WORKSPACES[n % 7 % 4]
        rows.append(event(type="run_completed" if n % 3 else "user_sign_in",
                          org_id=org_id, org_name=org_name, workspace_id=ws_id,
                          workspace_name=ws_name, status=STATUSES[n % 5],
                          created_ns=BASE_NS + n * HOUR))
    return rows


ROWS = corpus()
BATCH = 7  # with chunks closed at 25 rows: four chunks of 28, and 8 rows in the open one


def nothing(record: dict[str, Any]) -> bool:
    return False


# Each query, and the predicate a matching row satisfies.
QUERIES: list[tuple[Filters, Callable[[dict[str, Any]], bool]]] = [
    (Filters(status="succeeded"), lambda r: r["status"] == "succeeded"),
    (Filters(status="failed: TimeoutError"), lambda r: r["status"] == "failed: TimeoutError"),
    (Filters(status=""), lambda r: r["status"] == ""),
    (Filters(status="nothing like it"), nothing),
    (Filters(org_name="Acme"), lambda r: r["org_name"] == "Acme"),
    (Filters(org_name="Acme Inc"), lambda r: r["org_name"] == "Acme Inc"),
    (Filters(org_name="Initech"), lambda r: r["org_name"] == "Initech"),
    (Filters(org_name="Nobody"), nothing),
    (Filters(workspace_name="Main"), lambda r: r["workspace_name"] == "Main"),
    (Filters(workspace_name="Lab"), lambda r: r["workspace_name"] == "Lab"),
    (Filters(workspace_name=""), lambda r: r["workspace_name"] == ""),
    (Filters(org_name="Acme", status="succeeded"),
     lambda r: r["org_name"] == "Acme" and r["status"] == "succeeded"),
    (Filters(org_name="Initech", workspace_name="Main", status="password"),
     lambda r: (r["org_name"], r["workspace_name"], r["status"]) == ("Initech", "Main",
                                                                     "password")),
    (Filters(org_name="Initech", org="org-4"),
     lambda r: r["org_name"] == "Initech" and r["org_id"] == "org-4"),
    (Filters(org_name="Acme", org="org-2"), nothing),
    (Filters(workspace_name="Main", workspace="ws-2", types=("run_*",)),
     lambda r: r["workspace_id"] == "ws-2" and r["type"] == "run_completed"),
    # Several filters with postings: the walk follows the narrowest in each chunk.
    (Filters(types=("run_*", "user_*"), status="succeeded"),
     lambda r: r["status"] == "succeeded"),
    (Filters(types=("user_sign_in",), org="org-2"),
     lambda r: r["type"] == "user_sign_in" and r["org_id"] == "org-2"),
    (Filters(client_ip="203.0.113.0/24", status="password"),
     lambda r: r["status"] == "password"),
    (Filters(client_ip="::/0", org_name="Globex", workspace="ws-3"),
     lambda r: r["org_name"] == "Globex" and r["workspace_id"] == "ws-3"),
    (Filters(client_ip="198.51.100.0/24", status="password"), nothing),
    (Filters(status="succeeded", since=format_created(BASE_NS + 30 * HOUR),
             until=format_created(BASE_NS + 90 * HOUR)),
     lambda r: r["status"] == "succeeded"
     and format_created(BASE_NS + 30 * HOUR) <= r["created"]
     < format_created(BASE_NS + 90 * HOUR)),
]


def ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in records]


def answers(where: Any) -> list[tuple[list[str], list[str]]]:
    """Every query's ids oldest first (pages of 7) and newest first (pages of 5)."""
    return [(ids(list(iter_records(where, f, page_size=7))),
             ids(list(iter_records(where, f, page_size=5, newest_first=True))))
            for f, _ in QUERIES]


def expected() -> list[tuple[list[str], list[str]]]:
    found = [[r["id"] for r in ROWS if match(r)] for _, match in QUERIES]
    return [(f, f[::-1]) for f in found]


def chunk_states(data_dir: Path) -> list[int]:
    con = connect(data_dir / "index.sqlite", readonly=True)
    try:
        return [s for (s,) in con.execute("SELECT state FROM chunks ORDER BY chunk")]
    finally:
        con.close()


def test_every_query_but_the_empty_ones_matches_some_of_the_corpus() -> None:
    for (f, match), (found, _) in zip(QUERIES, expected(), strict=True):
        assert bool(found) == (match is not nothing), f


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("collector.storage.group_commit.CHUNK_ROWS", 25)
    monkeypatch.setattr("collector.storage.recovery.CHUNK_ROWS", 25)


@contextmanager
def stored(data_dir: Path, wait_for_indexer: bool) -> Iterator[None]:
    """The corpus in a live store, written a few events at a time."""
    with open_store(data_dir) as store:
        for i in range(0, COUNT, BATCH):
            store.write(ROWS[i:i + BATCH])
        if wait_for_indexer:
            store._indexer.wait(most=0, timeout=10)
        yield


def test_in_one_open_chunk(tmp_path: Path) -> None:
    with stored(tmp_path, wait_for_indexer=False):
        assert chunk_states(tmp_path) == [OPEN]
        assert answers(tmp_path) == expected()


def test_in_closed_chunks_not_indexed_yet(tmp_path: Path, small_chunks: None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("collector.storage.indexer.build_chunk_indexes",
                        lambda con, chunk, lock: True)  # an indexer that never gets there
    with stored(tmp_path, wait_for_indexer=True):
        assert set(chunk_states(tmp_path)) == {CLOSED, OPEN}
        assert answers(tmp_path) == expected()


def test_in_indexed_chunks_and_the_open_one(tmp_path: Path, small_chunks: None) -> None:
    with stored(tmp_path, wait_for_indexer=True):
        states = chunk_states(tmp_path)
        assert len(states) > 3 and set(states) == {INDEXED, OPEN}
        assert answers(tmp_path) == expected()


def test_indexed_chunks_on_both_sides_of_chunks_not_indexed_yet(
        tmp_path: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run of indexed chunks is read in one statement up to the next chunk not
    indexed (a backlog found at open, a segment indexed afresh): the walk goes on there,
    and then through the indexed chunks after it, in order, paged both ways."""
    from collector.storage import indexer as indexer_module

    real_build = indexer_module.build_chunk_indexes
    building = {"on": True}

    def build(con: Any, chunk: int, lock: Any) -> bool:
        return real_build(con, chunk, lock) if building["on"] else True

    monkeypatch.setattr(indexer_module, "build_chunk_indexes", build)
    thirds = [ROWS[:42], ROWS[42:84], ROWS[84:]]
    with open_store(tmp_path) as store:
        for n, part in enumerate(thirds):
            building["on"] = n != 1  # the middle third's chunks stay CLOSED
            for i in range(0, len(part), BATCH):
                store.write(part[i:i + BATCH])
            store._indexer.wait(most=0, timeout=10)
        states = chunk_states(tmp_path)
        assert states.index(CLOSED) > 0 and INDEXED in states[states.index(CLOSED):]
        assert answers(tmp_path) == expected()


def test_after_reindex(tmp_path: Path, small_chunks: None) -> None:
    with stored(tmp_path, wait_for_indexer=True):
        live = answers(tmp_path)
    reindex(tmp_path)
    assert set(chunk_states(tmp_path)) == {INDEXED}
    assert answers(tmp_path) == live == expected()


def test_a_name_shared_by_more_ids_than_the_names_table_lists_is_matched_by_its_column(
        tmp_path: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("collector.storage.conditions.MAX_IDS", 1)
    monkeypatch.setattr("collector.storage.names.MAX_IDS", 1)
    with stored(tmp_path, wait_for_indexer=True):
        assert answers(tmp_path) == expected()


def test_an_indexed_chunk_is_walked_by_its_narrowest_filter_or_scanned(
        tmp_path: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("collector.storage.conditions.PROBE", 10)
    with stored(tmp_path, wait_for_indexer=True):
        assert answers(tmp_path) == expected()
        con = connect(tmp_path / "index.sqlite", readonly=True)
        try:
            def walked(indexed: bool, **filters: Any) -> str | None:
                """The table chunk 1 (28 rows) is walked through, None if skipped."""
                c = compile_conditions(con, Filters(**filters), None)
                asked = c.statement(con, 1, indexed, 0, 2**62, "DESC")
                return asked and asked[0].split(" FROM ")[1].split()[0]

            # succeeded: 6 of the chunk's rows; user-1: all 28 (more than 10)
            assert walked(True, status="succeeded", principal="user-1") == "ix_status"
            assert walked(True, status="nothing like it", principal="user-1") is None
            assert walked(True, principal="user-1") == "ix_principal"  # nothing to choose
            assert walked(True, types=("user_sign_in",)) == "ix_type"
            # Two types, 28 rows out of seq order: the rows in seq order, not a sort.
            assert walked(True, types=("run_*", "user_*")) == "events"
            assert walked(True, org_name="Globex") == "ix_org_id"  # one id
            assert walked(True, org_name="Initech") == "events"  # two ids, 14 rows
            assert walked(True, org_name="Initech", status="password") == "ix_status"
            assert walked(True, status="") == "events"  # no postings for it
            assert walked(False, status="succeeded", principal="user-1") == "events"
        finally:
            con.close()


def test_a_renamed_organization_matches_by_the_name_each_event_carried(
        tmp_path: Path, small_chunks: None) -> None:
    before = [event(org_id="org-9", org_name="Umbrella", created_ns=BASE_NS + n * HOUR)
              for n in range(30)]
    after = [event(org_id="org-9", org_name="Umbrella Corp",
                   created_ns=BASE_NS + (30 + n) * HOUR) for n in range(5)]
    with open_store(tmp_path) as store:
        store.write(before)
        store._indexer.wait(most=0, timeout=10)  # the old name is in an indexed chunk
        store.write(after)  # the new one in the open chunk
        for where in (store, tmp_path):
            assert ids(list(iter_records(where, Filters(org_name="Umbrella")))) == ids(before)
            assert ids(list(iter_records(where, Filters(org_name="Umbrella Corp")))) == \
                ids(after)
            assert ids(list(iter_records(where, Filters(org="org-9")))) == ids(before + after)
    reindex(tmp_path)
    assert ids(list(iter_records(tmp_path, Filters(org_name="Umbrella")))) == ids(before)
    assert ids(list(iter_records(tmp_path, Filters(org_name="Umbrella Corp")))) == ids(after)


def test_a_cursor_of_one_name_does_not_continue_another(tmp_path: Path) -> None:
    with stored(tmp_path, wait_for_indexer=False):
        cursor = search(tmp_path, Filters(org_name="Initech"), limit=2).next_cursor
        with pytest.raises(QueryError, match="belongs to another query"):
            search(tmp_path, Filters(org_name="Globex"), cursor=cursor)
        with pytest.raises(QueryError, match="belongs to another query"):
            search(tmp_path, Filters(status="Initech"), cursor=cursor)


@pytest.mark.parametrize("filters, message", [
    (Filters(status=5), "status must be a string"),  # type: ignore[arg-type]
    (Filters(org_name=["Acme"]), "org_name must be a string"),  # type: ignore[arg-type]
    (Filters(workspace_name=None, org_name="x" * 262_145),
     "org_name is 262145 characters long"),
    (Filters(workspace_name="w" * 300_000), "workspace_name is 300000 characters long"),
])
def test_bad_values_raise_a_query_error_saying_what_is_accepted(
        tmp_path: Path, filters: Filters, message: str) -> None:
    with stored(tmp_path, wait_for_indexer=False), pytest.raises(QueryError, match=message):
        search(tmp_path, filters)


def test_among_drivers_as_common_as_can_be_counted_one_value_is_walked_not_the_rows(
        tmp_path: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts stop at PROBE + 1: when every driver reaches it, a filter of one value is
    walked in seq order to the page's end, whichever order the filters come in; the
    rows were scanned whenever a several-value filter came first (types come first), a
    full scan of every chunk for a query that matches little (~4x slower on the 1M
    panel store)."""
    monkeypatch.setattr("collector.storage.conditions.PROBE", 10)
    with stored(tmp_path, wait_for_indexer=True):
        con = connect(tmp_path / "index.sqlite", readonly=True)
        try:
            def walked(**filters: Any) -> str | None:
                c = compile_conditions(con, Filters(**filters), None)
                asked = c.statement(con, 1, True, 0, 2**62, "DESC")
                return asked and asked[0].split(" FROM ")[1].split()[0]

            # 28 rows each: user-1, both types, and the IPv4 and IPv6 ranges of ::/0.
            assert walked(types=("run_*", "user_*"), principal="user-1") == "ix_principal"
            assert walked(principal="user-1", client_ip="::/0") == "ix_principal"
            assert walked(types=("run_*", "user_*"), client_ip="::/0") == "events"
        finally:
            con.close()


def test_the_walk_asks_no_indexed_chunk_where_a_filter_has_no_entry(
        tmp_path: Path, small_chunks: None) -> None:
    """A filter of several values (a CIDR block) or several filters matching one event:
    the catalog walk leaves out, inside SQLite, the indexed chunks where a filter has
    no entry, so only the chunk holding it is asked a statement of its own. Every indexed chunk was asked one (~3.4 us each: ~70 ms for
    a year's ~20,000 chunks)."""
    rows = [dict(r) for r in ROWS]
    rows[3].update(client_ip="198.51.100.7", principal="usr-once")
    with open_store(tmp_path) as store:
        for i in range(0, COUNT, BATCH):
            store.write(rows[i:i + BATCH])
        store._indexer.wait(most=0, timeout=10)
        assert chunk_states(tmp_path) == [INDEXED] * 4 + [OPEN]
    for filters in (Filters(client_ip="198.51.100.0/24"),
                    Filters(principal="usr-once", org="org-4"),
                    Filters(types=("run_*", "user_*"), client_ip="198.51.100.0/24")):
        statements: list[str] = []
        reader = Reader(tmp_path)
        try:
            reader.con.set_trace_callback(statements.append)
            found = [r["id"] for r in reader.search(filters, limit=10).records]
        finally:
            reader.close()
        assert found == [rows[3]["id"]]
        # The indexed chunks asked a statement of their own (a count or a walk of their
        # postings): chunk 1 only, which holds the event.
        asked = {int(n) for s in statements for n in re.findall(r"\bchunk = (\d+)", s)}
        assert asked == {1}, statements
