"""A reader in the store's group, with read access only (the store's files are 0640 and
its directories 0750 for that), queries the index whether the collector runs or not.

The reader runs in a forked child that drops to another user (no exec: the test's
Python may live where that user cannot go), with the data directory's group as its
only supplementary group."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.cli import main
from tests.collector.storage_helpers import events, open_store
from tests.environment import require_root

READER_UID = 65534  # nobody
AUDIT_GID = 4242  # the store's group, which only the reader is in

@pytest.fixture(autouse=True)
def _as_root() -> None:
    require_root("to switch users")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are 0700, closed to the reader.
    parent = Path(tempfile.mkdtemp(prefix="group-readers-", dir="/tmp"))
    parent.chmod(0o755)
    try:
        yield parent / "data"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def give_to_group(data_dir: Path) -> None:
    """What an operator does for a group of auditors: the store's group, set-gid
    directories so that files made later (the index's -wal and -shm) get it too."""
    for path in (data_dir, *data_dir.rglob("*")):
        os.chown(path, -1, AUDIT_GID, follow_symlinks=False)
        if path.is_dir():
            path.chmod(path.stat().st_mode | 0o2000)


def as_reader(work: Callable[[], object], steps: int = 1) -> Iterator[object]:
    """Run ``work`` ``steps`` times in a child that is the reader; yield each result
    (the parent may act between two). ``work`` gets no input; it reads the store."""
    results_r, results_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the reader
        code = 1
        try:
            os.close(results_r)
            os.close(go_w)
            # Modules imported lazily (argparse's, importlib.metadata's) load now: the
            # reader may not enter the directory this Python is installed in.
            cli("query", "--data-dir", "/nonexistent")
            cli("stats", "--data-dir", "/nonexistent")
            os.setgroups([AUDIT_GID])
            os.setgid(READER_UID)
            os.setuid(READER_UID)
            for step in range(steps):
                if step:
                    os.read(go_r, 1)  # the parent's turn first
                try:
                    result: object = work()
                except Exception as exc:  # noqa: BLE001 - reported to the parent
                    result = f"{type(exc).__name__}: {exc}"
                os.write(results_w, orjson.dumps(result) + b"\n")
            code = 0
        finally:
            os._exit(code)
    os.close(results_w)
    os.close(go_r)
    with os.fdopen(results_r, "rb") as results:
        try:
            for step in range(steps):
                if step:
                    os.write(go_w, b"x")
                line = results.readline()
                assert line, "the reader process ended without a result"
                yield orjson.loads(line)
        finally:
            os.close(go_w)
            os.waitpid(pid, 0)


def cli(*argv: str) -> dict[str, object]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}


def query_ids(data_dir: Path) -> Callable[[], object]:
    def work() -> object:
        done = cli("query", "--data-dir", str(data_dir), "--format", "jsonl", "--all")
        if done["code"] != 0:
            return done
        return sorted(orjson.loads(line)["id"] for line in str(done["out"]).splitlines())
    return work


def test_a_group_reader_queries_a_stopped_store(data_dir: Path) -> None:
    """Stopped, the store has no -shm file, which SQLite needs to read a WAL index and
    the reader may not create: "attempt to write a readonly database", and the advice
    to run reindex."""
    written = events(5)
    with open_store(data_dir) as store:
        store.write(written)
    give_to_group(data_dir)
    assert not (data_dir / "index.sqlite-wal").exists()
    [ids] = as_reader(query_ids(data_dir))
    assert ids == sorted(e["id"] for e in written)
    [stats] = as_reader(lambda: cli("stats", "--data-dir", str(data_dir)))
    assert isinstance(stats, dict) and stats["code"] == 0, stats
    assert "unreadable index" not in str(stats["out"]), stats


def test_a_group_reader_allowed_to_write_the_index_but_not_its_directory_queries_it(
        data_dir: Path) -> None:
    """Writing the index is not enough: the -shm file is made in its directory. Such a
    reader was sent down the writer's path and refused."""
    written = events(2)
    with open_store(data_dir) as store:
        store.write(written)
    give_to_group(data_dir)
    index = data_dir / "index.sqlite"
    index.chmod(0o660)
    [ids] = as_reader(query_ids(data_dir))
    assert ids == sorted(e["id"] for e in written)


def test_a_group_reader_queries_a_running_store(data_dir: Path) -> None:
    written = events(3)
    with open_store(data_dir) as store:
        store.write(written)
        give_to_group(data_dir)
        [ids] = as_reader(query_ids(data_dir))
    assert ids == sorted(e["id"] for e in written)


def long_lived_reader(data_dir: Path) -> tuple[Iterator[object], list[dict[str, Any]]]:
    """A stopped store of two events, given to the group, and a group reader's search
    (one process, one ``collector.query`` module: its connection kept) after its first
    read, checked; ``next()`` on it reads again. Returns it and the two events."""
    from collector import query

    first = events(2)
    with open_store(data_dir) as store:
        store.write(first)
    give_to_group(data_dir)

    def ids() -> object:
        page = query.search(data_dir, query.Filters(), limit=100)
        return sorted(r["id"] for r in page.records)

    reader = as_reader(ids, steps=2)
    assert next(reader) == sorted(e["id"] for e in first)
    return reader, first


def test_a_group_readers_long_lived_reader_sees_a_collector_start_writing(
        data_dir: Path) -> None:
    """A stopped store is read as immutable; a reader kept open (tail -f, a script using
    ``collector.query.search``) must read the events of a collector started since,
    which go to the WAL an immutable connection never reads."""
    reader, first = long_lived_reader(data_dir)
    later = events(3)
    with open_store(data_dir) as store:
        store.write(later)
        assert (data_dir / "index.sqlite-wal").exists()
        assert next(reader) == sorted(e["id"] for e in first + later)


def test_a_group_readers_long_lived_reader_sees_a_collector_that_ran_and_stopped_since(
        data_dir: Path) -> None:
    """A reader opened on a stopped store (immutable) reopened only when it saw a -wal
    file. A collector that started, wrote and stopped between two of its reads (a
    restart for maintenance, a script querying now and then) left none, having copied
    its WAL into the file: the connection, which never looks for changes, answered
    from its cached pages, without the new events, and said nothing."""
    reader, first = long_lived_reader(data_dir)
    later = events(3)
    with open_store(data_dir) as store:
        store.write(later)
    assert not (data_dir / "index.sqlite-wal").exists()
    assert next(reader) == sorted(e["id"] for e in first + later)


def test_a_group_reader_of_a_damaged_index_is_told_what_to_do_not_shown_a_traceback(
        data_dir: Path) -> None:
    """The owner is told the index is not complete and to run reindex; a reader with
    read access only, whose connection is tried by reading the file first, got
    sqlite3.DatabaseError out of `audit-collector query` (a traceback)."""
    with open_store(data_dir) as store:
        store.write(events(2))
    (data_dir / "index.sqlite").write_bytes(b"not an index" * 1000)
    give_to_group(data_dir)
    [done] = as_reader(query_ids(data_dir))
    assert isinstance(done, dict) and done["code"] == 2, done
    assert "is not a complete index" in str(done["err"]), done
    assert "audit-collector reindex" in str(done["err"]), done
