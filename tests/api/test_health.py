"""``GET /healthz``: 200 while the collector can take events, 503 with a fixed reason when
it cannot (the store's disk full, its writes failing, not open, serve stopping), decided
from a real Store's state; no token needed, and nothing of the store in the answer."""

from __future__ import annotations

import contextlib
import errno
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from collector import (
    health,
    index_connections,
    index_transactions,
    store_housekeeping,
    store_readiness,
)
from collector.health import REASONS, Health
from collector.index import Index
from collector.integrity import digests
from collector.storage import disk_space
from collector.storage.disk_space import RESERVE_ROOM
from collector.storage.errors import StorageError
from collector.storage.group_commit import GroupWriter
from collector.storage.segment_set import SegmentSet
from collector.storage.segments import ActiveSegment
from collector.store import Store
from tests.api.served import add_reader, serving
from tests.collector.storage_helpers import Hold, event, open_store, wait_until
from tests.e2e.harness import short_tmp


class FailingAppends:
    """``ActiveSegment.append`` raising ``errno`` while set (None: the real append), and
    so does the idle store's write check in ``segments/`` (a disk that fails appends
    fails a new file too): ``checks`` counts its attempts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.errno: int | None = None
        self.checks = 0
        real = ActiveSegment.append
        real_write = store_readiness.write_new_file

        def append(segment: ActiveSegment, data: bytes) -> int:
            if self.errno is not None:
                raise OSError(self.errno, "injected")
            return real(segment, data)

        def write_new_file(path: Path, data: bytes, mode: int) -> None:
            self.checks += 1
            if self.errno is not None:
                raise OSError(self.errno, "injected")
            real_write(path, data, mode)

        monkeypatch.setattr(ActiveSegment, "append", append)
        monkeypatch.setattr(store_readiness, "write_new_file", write_new_file)


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> FailingAppends:
    return FailingAppends(monkeypatch)


class FreeSpace:
    """The store's ``free_bytes`` (a statvfs) saying ``bytes`` (0 at first: a full disk),
    or ``of[directory]`` for a directory on a file system of its own; ``askers`` names
    the threads that asked it, ``asked`` counts the times."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        self.of: dict[Path, int] = {}
        self.askers: set[str] = set()
        self.asked = 0
        # Every reader of it in the store, as when one module held them all (the
        # readiness checks and retention's WAL checkpoint).
        for module in (store_housekeeping, store_readiness):
            monkeypatch.setattr(module, "free_bytes", self._free_bytes)

    def _free_bytes(self, directory: Path) -> int:
        self.askers.add(threading.current_thread().name)
        self.asked += 1
        return self.of.get(directory, self.bytes)


@pytest.fixture
def free_space(monkeypatch: pytest.MonkeyPatch) -> FreeSpace:
    return FreeSpace(monkeypatch)


class BrokenDedupe:
    """``Index.known_ids`` (a commit's dedupe query, before anything is written) raising
    while ``broken``: a commit that raises, the index's error. Asked of no id (a group
    whose every future was cancelled), it reads nothing, as the real one reads nothing
    once it knows the newest id. The idle store's write check in the index
    (``Index.check_writes``) fails meanwhile too, as it does in an index that fails."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.broken = False
        real = Index.known_ids
        real_check = Index.check_writes

        def known_ids(index: Index, keys: list[bytes | str]) -> set[bytes | str]:
            if self.broken and keys:
                raise sqlite3.OperationalError("injected")
            return real(index, keys)

        def check_writes(index: Index) -> None:
            if self.broken:
                raise sqlite3.OperationalError("injected")
            real_check(index)

        monkeypatch.setattr(Index, "known_ids", known_ids)
        monkeypatch.setattr(Index, "check_writes", check_writes)


@pytest.fixture
def broken_dedupe(monkeypatch: pytest.MonkeyPatch) -> BrokenDedupe:
    return BrokenDedupe(monkeypatch)


class BrokenIndexInserts:
    """``Index.add_rows`` (a commit's inserts, after the segment's append) raising SQLite's
    ``error`` while ``broken``: the index failing a commit that the segment took."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.broken = False
        self.error = sqlite3.OperationalError("disk I/O error (injected)")
        self.error.sqlite_errorname = "SQLITE_IOERR_WRITE"
        real = Index.add_rows

        def add_rows(index: Index, *args: Any) -> None:
            if self.broken:
                raise self.error
            real(index, *args)

        monkeypatch.setattr(Index, "add_rows", add_rows)


@pytest.fixture
def broken_inserts(monkeypatch: pytest.MonkeyPatch) -> BrokenIndexInserts:
    return BrokenIndexInserts(monkeypatch)


#: ``write_stall_timeout`` of the stall tests: short, so they wait little past it.
STALL_AFTER = 0.05


@pytest.fixture
def stalling(tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path / "data", write_stall_timeout=STALL_AFTER) as store:
        yield store


@pytest.fixture
def hung_fsync(stalling: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hold]:
    """The segment's fsync hangs until released (released at the end in any case:
    the store's close waits for its commit thread)."""
    hold = Hold(monkeypatch, ActiveSegment, "sync")
    yield hold
    hold.release()


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path / "data") as store:
        yield store


def probe(state: Health | None) -> httpx.Response:
    app = Starlette(routes=health.routes())
    if state is not None:
        app.state.health = state
    return TestClient(app).get("/healthz")


@contextlib.contextmanager
def index_locked(store: Store) -> Iterator[None]:
    """Another connection holds the store's index's write lock (``BEGIN IMMEDIATE``),
    as an operator's ``sqlite3`` shell or a backup tool can: SQLite refuses the store's
    writes meanwhile, for real."""
    other = sqlite3.connect(store.index_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


def write_fails(store: Store) -> None:
    with pytest.raises(StorageError, match="injected"):
        store.write([event()])


def test_ready_while_the_store_writes(opened: Store) -> None:
    reply = probe(Health(opened))
    assert (reply.status_code, reply.json()) == (200, {"status": "ready"})


def test_a_full_disk_is_unready_until_it_has_room_again(
        opened: Store, failing: FailingAppends, free_space: FreeSpace) -> None:
    failing.errno = errno.ENOSPC
    write_fails(opened)
    reply = probe(Health(opened))
    assert reply.status_code == 503
    assert reply.json() == {"status": "unavailable", "reason": "disk_full",
                            "message": REASONS["disk_full"]}
    # Space freed (retention, an operator), no batch written yet: a probe that took the
    # collector out of rotation must let it back, or no batch ever comes to show it (the
    # idle commit thread sees the room, at its next pass).
    free_space.bytes = RESERVE_ROOM
    failing.errno = None  # a disk with room takes the segment's append, and a new file
    wait_until(lambda: probe(Health(opened)).status_code == 200)


def test_a_store_opened_on_a_full_disk_is_unready_until_it_has_room(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_space: FreeSpace,
        caplog: pytest.LogCaptureFixture) -> None:
    """Restarted on a full disk, the store opens in the reserve's room (here its start
    checkpoint needs it) and every batch is then refused for want of space: the probe
    said ready until a first batch had failed, and a balancer sent the apps' batches on
    meanwhile. It says ``disk_full`` from the open, and ready once space is freed,
    with no batch written."""
    data = tmp_path / "data"
    with open_store(data) as store:
        store.write([event()])
        wait_until(lambda: disk_space.Reserve(data).size() == disk_space.RESERVE_BYTES)
    append = digests.append

    def full_until_released(directory: Path, segment_name: str, line: bytes) -> Path:
        if disk_space.Reserve(data).size() == disk_space.RESERVE_BYTES:
            raise OSError(errno.ENOSPC, "No space left on device")
        return append(directory, segment_name, line)

    monkeypatch.setattr(digests, "append", full_until_released)
    with open_store(data) as store:
        # Opened in the reserve's room (made whole again at once: the real disk has room).
        assert "so that the store can open" in caplog.text, caplog.text
        reply = probe(Health(store))
        assert (reply.status_code, reply.json().get("reason")) == (503, "disk_full")
        free_space.bytes = RESERVE_ROOM  # space freed (an operator, retention)
        wait_until(lambda: probe(Health(store)).status_code == 200)


def test_a_store_opened_with_no_room_for_a_batch_is_unready_until_it_has_room(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_space: FreeSpace) -> None:
    """Restarted on a full disk that its opening did not need room of (its index and
    start checkpoint fit blocks it had): ``disk_full`` from the open as well, not ready
    until a first batch had failed."""
    data = tmp_path / "data"
    with open_store(data) as store:
        store.write([event()])
    monkeypatch.setattr(store_readiness, "known_free_bytes", lambda directory: 4096)
    with open_store(data) as store:
        assert probe(Health(store)).json().get("reason") == "disk_full"
        free_space.bytes = RESERVE_ROOM
        wait_until(lambda: probe(Health(store)).status_code == 200)


def test_a_store_opened_where_free_space_cannot_be_asked_is_ready(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that does not answer statvfs is not taken for a full one at the
    open (the first batch tells)."""
    monkeypatch.setattr(store_readiness, "known_free_bytes", lambda directory: None)
    with open_store(tmp_path / "data") as store:
        assert probe(Health(store)).status_code == 200


def test_a_full_disk_that_shows_free_blocks_is_unready_until_it_takes_a_write(
        opened: Store, failing: FailingAppends, free_space: FreeSpace) -> None:
    """No inode left (or a file system's metadata full): writes fail for want of space
    while statvfs shows free blocks. Judged by them alone, the idle commit thread ended
    the failure at its next pass: the probe said ready half a second after each batch
    the store refused. It ends now once ``segments/`` takes a write too."""
    free_space.bytes = RESERVE_ROOM  # the blocks show...
    failing.errno = errno.ENOSPC  # ...but neither the append nor a new file goes through
    write_fails(opened)
    asked = free_space.asked
    # The idle commit thread looked twice (or, judging by free blocks, said ready).
    wait_until(lambda: free_space.asked >= asked + 2
               or probe(Health(opened)).status_code == 200)
    assert probe(Health(opened)).json().get("reason") == "disk_full"
    failing.errno = None  # an inode freed: the write check goes through
    wait_until(lambda: probe(Health(opened)).status_code == 200)


def test_a_full_segments_disk_of_its_own_is_judged_by_its_own_free_space(
        opened: Store, failing: FailingAppends, free_space: FreeSpace) -> None:
    """``segments/`` on a file system of its own (a mount, a symlink to one), full but
    for a few KiB: judged by the data directory's free space, the write check's one
    byte went through and the probe said ready while every batch was refused."""
    free_space.bytes = RESERVE_ROOM  # the data directory's disk (the index): room
    free_space.of[opened.segments_dir] = 4096  # segments/: less than a batch
    failing.errno = errno.ENOSPC
    write_fails(opened)
    failing.errno = None  # the write check's one byte fits
    asked = free_space.asked
    # The idle commit thread looked twice (or, judging the wrong disk, said ready).
    wait_until(lambda: free_space.asked >= asked + 4
               or probe(Health(opened)).status_code == 200)
    assert probe(Health(opened)).json().get("reason") == "disk_full"
    free_space.of[opened.segments_dir] = RESERVE_ROOM
    wait_until(lambda: probe(Health(opened)).status_code == 200)


def test_an_index_io_error_on_its_nearly_full_disk_is_a_full_disk(
        opened: Store, free_space: FreeSpace, broken_inserts: BrokenIndexInserts,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite says only "disk I/O error" when it cannot grow its files on a nearly full
    disk: a full disk when the index's disk (the data directory's) has little room. The
    writer judged it by ``segments/``'s, a file system of its own with room here:
    ``write_failing``, not ended by the free space the index's disk lacks."""
    data_dir = opened.settings.data_dir
    monkeypatch.setattr(disk_space, "free_bytes",
                        lambda directory: 0 if directory == data_dir else 10 * RESERVE_ROOM)
    broken_inserts.broken = True
    write_fails(opened)
    assert opened.refusal() == "disk_full"


def test_an_index_write_failure_that_ended_is_ready_again_without_a_batch(
        opened: Store, broken_inserts: BrokenIndexInserts,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The index failing a commit (SQLite's "disk I/O error", a read-only or full index
    file) on a disk with room: the idle commit thread checked only that ``segments/``
    takes a write, and only after the segment's own failure, so the probe said
    ``write_failing`` until a batch was written; a collector a balancer took out of
    rotation for it got none, and stayed out for good. Its write in the index
    (``Index.check_writes``) shows the failure ended."""
    # The disk has room (judged so whatever the shared test disk has left).
    monkeypatch.setattr(disk_space, "free_bytes", lambda directory: 10 * RESERVE_ROOM)
    broken_inserts.broken = True
    write_fails(opened)
    assert probe(Health(opened)).json()["reason"] == "write_failing"
    written = opened.stats()["written"]
    broken_inserts.broken = False  # the index mended: a remount, a chmod, room made
    wait_until(lambda: probe(Health(opened)).status_code == 200)
    assert opened.stats()["written"] == written  # no batch came


def test_a_bugs_sql_error_in_a_commit_ends_only_with_a_batch(
        opened: Store, broken_inserts: BrokenIndexInserts,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Python raises a bug's SQL (SQLite's ``SQLITE_ERROR``: "no such table", "too many
    SQL variables" on large batches only) as ``OperationalError``, the class of an
    environment's errors too. Judged by its class, the idle store's checks ran, their
    small writes went through, and the probe said ready half a second after each batch
    refused so."""
    monkeypatch.setattr(disk_space, "free_bytes", lambda directory: 10 * RESERVE_ROOM)
    broken_inserts.error = real_sql_error()
    broken_inserts.broken = True
    passes = idle_passes(monkeypatch)
    with pytest.raises(StorageError, match="no such table"):
        opened.write([event()])
    seen = len(passes)
    wait_until(lambda: len(passes) >= seen + 2)  # one whole idle pass since the failure
    assert probe(Health(opened)).json().get("reason") == "write_failing"
    broken_inserts.broken = False
    opened.write([event()])
    assert probe(Health(opened)).status_code == 200


def real_sql_error() -> sqlite3.OperationalError:
    """SQLite's own error for a query no schema has (``SQLITE_ERROR``), as a bug gets."""
    con = sqlite3.connect(":memory:")
    try:
        con.execute("SELECT * FROM no_such_table")
    except sqlite3.OperationalError as exc:
        assert exc.sqlite_errorname == "SQLITE_ERROR"
        return exc
    finally:
        con.close()
    raise AssertionError("a query of no table went through")


def idle_passes(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """The idle commit thread's looks at a failed write (``Store._check_failed_write``)
    from now on, one item each, counted as each begins: two mean one has ended."""
    passes: list[None] = []
    real = Store._check_failed_write

    def counted(store: Store) -> None:
        passes.append(None)
        real(store)

    monkeypatch.setattr(Store, "_check_failed_write", counted)
    return passes


def test_an_index_locked_by_another_process_is_unready_until_it_lets_go(
        tmp_path: Path, failing: FailingAppends, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real refusal of the index, which the idle store's check must not read as ended:
    another connection (an operator's ``sqlite3`` shell, a backup tool) holds its write
    lock. A batch's commit fails once the busy timeout is over; the idle check fails
    too, at once (it waits for no busy timeout), and goes through once the lock is let
    go: ready again without a batch."""
    # The batch gives up sooner: patched where it is looked up, by the writer's connection
    # and by the idle check that puts it back after its own no-wait try.
    monkeypatch.setattr(index_connections, "BUSY_TIMEOUT_MS", 100)
    monkeypatch.setattr(index_transactions, "BUSY_TIMEOUT_MS", 100)
    with open_store(tmp_path / "data") as store:
        with index_locked(store):
            with pytest.raises(StorageError, match="database is locked"):
                store.write([event()])
            checked = failing.checks  # the segments' write check, before the index's
            wait_until(lambda: failing.checks >= checked + 2)
            assert probe(Health(store)).json().get("reason") == "write_failing"
        written = store.stats()["written"]
        wait_until(lambda: probe(Health(store)).status_code == 200)
        assert store.stats()["written"] == written  # no batch came


def test_space_freed_with_the_index_still_refusing_writes_is_not_ready(
        opened: Store, failing: FailingAppends, free_space: FreeSpace) -> None:
    """A full disk ended by room and ``segments/``'s write alone: the probe said ready
    while the index still refused every batch (here its lock held by another process)."""
    failing.errno = errno.ENOSPC
    write_fails(opened)
    with index_locked(opened):
        free_space.bytes = RESERVE_ROOM
        failing.errno = None
        # Until the idle commit thread has seen the room: then the index's refusal.
        reply = wait_until(
            lambda: (r := probe(Health(opened))).json().get("reason") != "disk_full" and r)
        assert (reply.status_code, reply.json().get("reason")) == (503, "write_failing")
    wait_until(lambda: probe(Health(opened)).status_code == 200)


def test_a_full_disk_the_index_turned_write_failing_still_needs_room(
        opened: Store, failing: FailingAppends, free_space: FreeSpace,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Space freed while the index refused a write: ``write_failing``, which ended by the
    write checks alone. The disk full again by the time the index let go, the checks'
    small writes fitted and the probe said ready while every batch failed for want of
    space. That room is still needed until a batch is written."""
    failing.errno = errno.ENOSPC
    write_fails(opened)
    with index_locked(opened):
        free_space.bytes = RESERVE_ROOM
        failing.errno = None
        wait_until(lambda: probe(Health(opened)).json().get("reason") == "write_failing")
        free_space.bytes = 0  # full again (the real disk still takes the checks' writes)
    passes = idle_passes(monkeypatch)
    wait_until(lambda: len(passes) >= 2)  # one whole idle pass since the index let go
    assert probe(Health(opened)).json().get("reason") == "write_failing"
    free_space.bytes = RESERVE_ROOM
    wait_until(lambda: probe(Health(opened)).status_code == 200)


def test_the_idle_index_check_does_not_wait_for_the_indexers_lock(
        opened: Store, broken_inserts: BrokenIndexInserts,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The indexer holds the index's in-process write lock for as long as SQLite's busy
    handler waits for another process's lock (up to 10 s). The idle check waited for
    it, and a batch arriving meanwhile waited behind it: it now skips that pass, judging
    nothing (unready still), and checks again at the next."""
    monkeypatch.setattr(disk_space, "free_bytes", lambda directory: 10 * RESERVE_ROOM)
    broken_inserts.broken = True
    write_fails(opened)
    broken_inserts.broken = False
    passes = idle_passes(monkeypatch)
    with opened._index.write_lock.background():  # as the indexer holds it
        wait_until(lambda: len(passes) >= 2)  # the first pass's check waited for no lock
        assert probe(Health(opened)).json().get("reason") == "write_failing"
    wait_until(lambda: probe(Health(opened)).status_code == 200)


class Quota:
    """A user's quota on the data directory's file system (the index's), with less than
    a batch's room left while ``exceeded``: a new file there of more than a block fails
    with ``EDQUOT``; smaller writes, and those in ``segments/`` (a file system of its
    own), go through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
        self.exceeded = True
        real_write = store_readiness.write_new_file

        def write_new_file(path: Path, data: bytes, mode: int) -> None:
            if self.exceeded and path.parent == data_dir and len(data) > 4096:
                raise OSError(errno.EDQUOT, "injected")
            real_write(path, data, mode)

        monkeypatch.setattr(store_readiness, "write_new_file", write_new_file)


def test_a_quota_on_the_index_is_judged_by_a_write_that_takes_new_blocks(
        opened: Store, broken_inserts: BrokenIndexInserts,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite says a quota (``EDQUOT``) is a "disk I/O error". The index's own check
    writes a frame into the WAL's room that a checkpoint left, needing no new block:
    it went through, and the probe said ready while every batch failed. A new file of a
    batch's room in the index's directory needs new blocks, as a batch does."""
    monkeypatch.setattr(disk_space, "free_bytes", lambda directory: 10 * RESERVE_ROOM)
    quota = Quota(monkeypatch, opened.settings.data_dir)
    broken_inserts.broken = True  # the batch's index writes: over the quota
    write_fails(opened)
    passes = idle_passes(monkeypatch)
    wait_until(lambda: len(passes) >= 2)  # one whole idle pass since the failure
    assert probe(Health(opened)).json().get("reason") == "write_failing"
    quota.exceeded = broken_inserts.broken = False  # the quota raised
    wait_until(lambda: probe(Health(opened)).status_code == 200)


def test_another_write_failure_is_unready_until_a_write_goes_through(
        opened: Store, failing: FailingAppends) -> None:
    failing.errno = errno.EIO
    write_fails(opened)
    reply = probe(Health(opened))
    assert (reply.status_code, reply.json()["reason"]) == (503, "write_failing")
    failing.errno = None
    opened.write([event()])
    assert probe(Health(opened)).status_code == 200


def test_a_write_failure_that_ended_is_ready_again_without_a_batch(
        opened: Store, failing: FailingAppends) -> None:
    """A collector a load balancer took out of rotation for it gets no batch to show
    that the failure ended (a file system remounted read-write, a quota raised): it
    stayed unready for good. The idle store's write check in ``segments/`` shows it."""
    failing.errno = errno.EIO
    write_fails(opened)
    checked = failing.checks
    wait_until(lambda: failing.checks >= checked + 2)  # checks failed meanwhile
    assert probe(Health(opened)).json()["reason"] == "write_failing"
    written = opened.stats()["written"]
    failing.errno = None
    wait_until(lambda: probe(Health(opened)).status_code == 200)
    assert opened.stats()["written"] == written  # no batch came


def test_a_commit_that_raises_before_writing_is_unready_until_one_goes_through(
        opened: Store, broken_dedupe: BrokenDedupe) -> None:
    """The index failing its dedupe query: no append fails, yet no batch is stored."""
    broken_dedupe.broken = True
    write_fails(opened)
    assert probe(Health(opened)).json()["reason"] == "write_failing"
    broken_dedupe.broken = False
    opened.write([event()])
    assert probe(Health(opened)).status_code == 200


def test_a_group_that_wrote_nothing_does_not_end_a_commits_failure(
        opened: Store, broken_dedupe: BrokenDedupe, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit that raised (the index's dedupe query) was taken as ended by the next
    commit that returned, one whose every future was cancelled (its sender gone) too:
    the probe said ready over the index's error until the next batch failed again."""
    broken_dedupe.broken = True
    write_fails(opened)
    holds = [Hold(monkeypatch, SegmentSet, "apply_retention")]  # the idle housekeeping
    try:
        assert holds[0].entered.wait(10)
        cancelled = opened.submit([event()])
        assert cancelled.cancel()  # before the commit thread takes it
        holds.append(Hold(monkeypatch, SegmentSet, "apply_retention"))
        holds[0].release()
        assert holds[1].entered.wait(10)  # the group of the cancelled one committed
        assert probe(Health(opened)).json().get("reason") == "write_failing"
    finally:
        for hold in holds:  # the store's close waits for its commit thread
            hold.release()
    broken_dedupe.broken = False
    opened.write([event()])
    assert probe(Health(opened)).status_code == 200


def test_space_freed_ends_a_full_disk_but_not_the_index_error_after_it(
        opened: Store, failing: FailingAppends, free_space: FreeSpace,
        broken_dedupe: BrokenDedupe) -> None:
    """The segment's append failed for want of space, then the next commit raised (the
    index's dedupe query): freed space ends the first failure only. Judged by the one
    said first (the append's ``disk_full``), the probe said ready once space was freed,
    while every batch was still refused."""
    failing.errno = errno.ENOSPC
    write_fails(opened)
    failing.errno = None
    broken_dedupe.broken = True
    write_fails(opened)
    free_space.bytes = RESERVE_ROOM
    # Until the idle commit thread has seen the room.
    reply = wait_until(
        lambda: (r := probe(Health(opened))).json().get("reason") != "disk_full" and r)
    assert (reply.status_code, reply.json().get("reason")) == (503, "write_failing")


def test_a_quota_is_not_judged_by_the_free_space_it_does_not_show(
        opened: Store, failing: FailingAppends) -> None:
    failing.errno = errno.EDQUOT  # the disk has room (tmp_path's): the user has none
    write_fails(opened)
    assert probe(Health(opened)).json()["reason"] == "write_failing"


def test_unready_before_the_store_opens_after_it_closes_and_while_stopping(
        tmp_path: Path) -> None:
    with open_store(tmp_path / "data") as store:
        state = Health(store)
        state.stopping = True
        assert probe(state).json()["reason"] == "stopping"
    reply = probe(Health(store))
    assert (reply.status_code, reply.json()["reason"]) == (503, "not_open")
    assert probe(None).json()["reason"] == "starting"  # serve has not attached it yet


def test_head_answers_as_get_without_a_body(opened: Store, failing: FailingAppends,
                                            free_space: FreeSpace) -> None:
    """Probes use HEAD; unlike the audit-log reads', it runs no query."""
    client = TestClient(Starlette(routes=health.routes()))
    client.app.state.health = Health(opened)  # type: ignore[attr-defined]
    ready = client.head("/healthz")
    assert (ready.status_code, ready.content) == (200, b"")
    failing.errno = errno.ENOSPC  # and no free space (``free_space``)
    write_fails(opened)
    assert client.head("/healthz").status_code == 503


@pytest.mark.e2e
def test_a_running_collector_answers_probes_without_a_token_and_says_nothing_of_its_store(
        ) -> None:
    with short_tmp() as tmp:
        token = add_reader(tmp / "data", "prometheus", root=False)
        # /metrics needs a token here; a probe never does (ready or not, no count).
        with serving(tmp / "data", "--metrics-auth", "reader") as (_, url):
            assert httpx.get(f"{url}/metrics", timeout=10).status_code == 401
            reply = httpx.get(f"{url}/healthz", timeout=10)
            head = httpx.head(f"{url}/healthz", timeout=10)
            port = url.rsplit(":", 1)[1]
            by_name = httpx.get(f"http://localhost:{port}/healthz", timeout=10)
            # The loopback API's DNS-rebinding rule, as /metrics (collector.api.hosts).
            rebound = httpx.get(f"{url}/healthz", timeout=10,
                                headers={"Host": f"evil.example:{port}"})
    assert (reply.status_code, orjson.loads(reply.content)) == (200, {"status": "ready"})
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"  # the API's security headers
    for secret in (str(tmp), token, "prometheus"):
        assert secret not in reply.text and secret not in str(reply.headers)
    assert (head.status_code, head.content) == (200, b"")
    assert by_name.status_code == 200
    assert rebound.status_code == 421


def test_a_quota_error_wrapped_in_the_stores_own_is_still_a_quota(tmp_path: Path) -> None:
    """Looked for on the outermost error only, a quota error the store raised its own
    from was classed ``disk_full`` and judged by free space (which a quota does not
    show): ready, while every batch was refused (a review, 2026-11-27)."""
    from collector.storage.errors import StorageError
    from collector.storage.failures import write_failure

    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as exc:
            raise StorageError(f"cannot write: {exc}") from exc
    except StorageError as wrapped:
        assert write_failure(wrapped, tmp_path) == "write_failing"
    assert write_failure(OSError(errno.ENOSPC, "No space left"), tmp_path) == "disk_full"


def test_a_write_failure_that_ended_is_ready_again_while_housekeeping_fails(
        opened: Store, failing: FailingAppends, monkeypatch: pytest.MonkeyPatch) -> None:
    """The idle write check ran after housekeeping, in the same ``try``: retention failing
    at each pass (a sealed segment it cannot delete) skipped it for good, and a write
    failure that had ended kept the collector unready, though what fails beside the
    write path is to leave it ready."""
    from collector.storage.segment_set import SegmentSet

    def apply_retention(segments: SegmentSet) -> None:
        raise PermissionError(errno.EPERM, "injected: retention cannot delete")

    failing.errno = errno.EIO
    write_fails(opened)
    monkeypatch.setattr(SegmentSet, "apply_retention", apply_retention)
    assert probe(Health(opened)).json()["reason"] == "write_failing"
    failing.errno = None
    checked = failing.checks
    wait_until(lambda: failing.checks > checked)  # the idle check ran again
    wait_until(lambda: probe(Health(opened)).status_code == 200)


def test_a_hung_fsync_is_unready_until_the_commit_completes(
        stalling: Store, hung_fsync: Hold) -> None:
    """Every batch waited for ever behind it, and the probe said ready: a balancer kept
    sending the apps' batches to a collector that stored none."""
    written = stalling.submit([event()])
    assert hung_fsync.entered.wait(10)
    reply = wait_until(lambda: (r := probe(Health(stalling))).status_code == 503 and r)
    assert reply.json() == {"status": "unavailable", "reason": "write_stalled",
                            "message": REASONS["write_stalled"]}
    assert stalling.stats()["commit_wait_seconds"] > STALL_AFTER
    hung_fsync.release()
    assert len(written.result(10).written) == 1
    assert probe(Health(stalling)).status_code == 200
    assert stalling.stats()["commit_wait_seconds"] == 0.0


def test_a_batch_waiting_behind_a_busy_commit_thread_is_a_stall(
        stalling: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """No commit under way, the thread held elsewhere (retention, a rotation's fsync):
    the batch queued for the next group waits as long."""
    hold = Hold(monkeypatch, SegmentSet, "apply_retention")
    try:
        assert hold.entered.wait(10)  # housekeeping runs at every idle tick
        queued = stalling.submit([event()])
        wait_until(lambda: stalling.refusal() == "write_stalled")
    finally:
        hold.release()
    assert len(queued.result(10).written) == 1
    assert stalling.refusal() is None


def test_an_idle_store_stays_ready_past_the_stall_timeout(stalling: Store) -> None:
    """Nothing waits, however long since the last commit: no stall."""
    stalling.write([event()])
    time.sleep(STALL_AFTER * 2)
    assert probe(Health(stalling)).status_code == 200
    assert stalling.stats()["commit_wait_seconds"] == 0.0


def test_a_batch_written_and_answered_no_longer_waits(
        stalling: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """After its futures were answered the commit thread goes on with the same batch (it
    waits for the indexer to catch up, ``index_closed_chunks``): the batch counted as
    waiting until then, and a written, acknowledged batch said write_stalled (the
    probe right after an ack said so too, at random, on a loaded machine)."""
    hold = Hold(monkeypatch, GroupWriter, "index_closed_chunks")
    try:
        written = stalling.submit([event()])
        assert len(written.result(10).written) == 1
        assert hold.entered.wait(10)  # the commit thread still in that batch's commit
        time.sleep(STALL_AFTER * 2)  # past the timeout: it would say stalled by now
        assert stalling.stats()["commit_wait_seconds"] == 0.0
        assert probe(Health(stalling)).status_code == 200
    finally:
        hold.release()


def test_a_full_disk_is_said_at_once_while_its_statvfs_hangs(
        stalling: Store, failing: FailingAppends, free_space: FreeSpace,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe judged a full disk by statvfs itself, on threads of its own: on a hung
    disk it heard ``write_stalled`` after half a second (a constant: a disk slower than
    that to answer read as stalled), though nothing waited. The commit thread judges it
    now; held in that statvfs, it leaves ``disk_full`` said until a batch waits past
    ``write_stall_timeout``, and the probe never waits on the disk."""
    hung = Hold(monkeypatch, store_readiness, "free_bytes")  # a hung disk holds statvfs
    try:
        failing.errno = errno.ENOSPC
        write_fails(stalling)
        assert probe(Health(stalling)).json()["reason"] == "disk_full"
        assert hung.entered.wait(10), "the idle commit thread never judged the free space"
        assert probe(Health(stalling)).json()["reason"] == "disk_full"
        failing.errno = None
        queued = stalling.submit([event()])  # waits behind the hung statvfs
        wait_until(lambda: probe(Health(stalling)).json()["reason"] == "write_stalled")
        free_space.bytes = RESERVE_ROOM
    finally:
        hung.release()
    assert len(queued.result(10).written) == 1
    assert probe(Health(stalling)).status_code == 200
    assert free_space.askers == {"audit-store-commit"}


def test_the_stores_refusal_reads_no_free_space_itself(
        opened: Store, failing: FailingAppends, free_space: FreeSpace) -> None:
    """Its answer comes from memory: nothing the probe does can wait on the disk."""
    failing.errno = errno.ENOSPC
    write_fails(opened)
    assert opened.refusal() == "disk_full"
    assert threading.current_thread().name not in free_space.askers


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_store_whose_commit_thread_ended_is_unready(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Only a BaseException ends the commit thread (a ``SystemExit`` raised in it, which
    ``threading`` does not even log): nothing is written from then on, and a probe that
    said ready until a batch had waited ``write_stall_timeout`` sent a balancer's traffic
    to a collector that would only queue it."""
    def ended(self: Store, idle: bool) -> None:
        raise SystemExit

    with open_store(tmp_path / "data") as store:
        assert store.refusal() is None
        monkeypatch.setattr(Store, "_housekeeping", ended)
        wait_until(lambda: not any(t.name == "audit-store-commit"
                                   for t in threading.enumerate()))
        assert store.refusal() == "write_failing"
    assert "the commit thread ended (SystemExit())" in caplog.text


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_senders_hear_at_once_that_the_commit_thread_ended(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch it held when it ended and every batch after it waited for ever (an
    ingest connection, ``write()``), and were kept in memory one after another: refused
    now, saying what to do."""
    def ended(self: GroupWriter, batch: list[object]) -> bool:
        raise SystemExit

    with open_store(tmp_path / "data") as store:
        monkeypatch.setattr(GroupWriter, "commit", ended)
        held = store.submit([event()])
        with pytest.raises(StorageError, match="commit thread ended.*restart the collector"):
            held.result(10)
        after = store.submit([event()])
        assert after.done()
        with pytest.raises(StorageError, match="commit thread ended"):
            after.result()


class HeldLog(logging.Handler):
    """A log handler that holds the thread logging a critical record until ``let_go``:
    a log sink that blocks (a full pipe to journald, a file on a hung disk)."""

    def __init__(self) -> None:
        super().__init__(logging.CRITICAL)
        self.entered = threading.Event()
        self._released = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.entered.set()
        self._released.wait()

    def let_go(self) -> None:  # not ``release``: a Handler's own, of its lock
        self._released.set()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_unready_as_soon_as_batches_are_refused_for_an_ended_commit_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ending commit thread refuses every batch from its first step on, but the probe
    judged by the thread being gone: while it was still logging its end (a log sink that
    blocks), the probe said ready and a balancer sent traffic that was all refused."""
    def ended(self: GroupWriter, batch: list[object]) -> bool:
        raise SystemExit

    held = HeldLog()
    logging.getLogger("collector.store").addHandler(held)
    try:
        with open_store(tmp_path / "data") as store:
            monkeypatch.setattr(GroupWriter, "commit", ended)
            try:
                with pytest.raises(StorageError, match="commit thread ended"):
                    store.submit([event()]).result(10)
                assert held.entered.wait(10), "the commit thread never said it ended"
                with pytest.raises(StorageError, match="commit thread ended"):
                    store.submit([event()]).result()
                refusal = store.refusal()  # the thread still logging its end
            finally:
                held.let_go()  # the store's close waits for its commit thread
    finally:
        logging.getLogger("collector.store").removeHandler(held)
    assert refusal == "write_failing"
