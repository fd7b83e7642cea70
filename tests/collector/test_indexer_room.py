"""The indexer's chunks waiting for room on a full disk (``ChunkIndexer._no_room``):
how they are tried again, and what ``failed``, ``backlog`` and the log say; the free
space it asks for that (``os.statvfs``) hanging; a chunk submitted twice."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from collector.index import Index
from collector.storage import indexer
from tests.collector.storage_helpers import wait_until


def full_disk_error() -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("database or disk is full")
    exc.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
    return exc


@contextmanager
def indexer_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     build: Callable[[Any, int, Any], bool],
                     retry: float = 0.1) -> Iterator[indexer.ChunkIndexer]:
    """A ChunkIndexer on a fresh index whose builds are ``build``, its first retry
    after ``retry`` seconds; closed on the way out."""
    Index(tmp_path / "index.sqlite").close()
    monkeypatch.setattr(indexer, "build_chunk_indexes", build)
    monkeypatch.setattr(indexer, "BUILD_RETRY", retry)
    background = indexer.ChunkIndexer(tmp_path / "index.sqlite", indexer.WriteLock())
    try:
        yield background
    finally:
        background.close()


@pytest.mark.parametrize("due", ["backoff over", "room freed"])
def test_a_chunk_waiting_for_room_whose_retry_fails_otherwise_is_not_retried_in_a_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        due: str) -> None:
    """A chunk the full disk refused, whose retry then fails for another reason (a bug,
    an I/O error), kept its retry due (its backoff over, or the room freed since the
    refusal still freed): the indexer built it again at once, in a loop (3,408 builds in
    a second), a traceback each time, and no segment drop got a turn."""
    calls: list[float] = []
    free = [0]
    if due == "room freed":  # no room at the refusal, 10 MiB after; the backoff long
        monkeypatch.setattr(indexer, "free_bytes", lambda _: free[0])

    def build(*_: Any) -> bool:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise full_disk_error()
        raise sqlite3.DatabaseError("something else went wrong")

    retry = 0.1 if due == "backoff over" else 1000
    with indexer_building(tmp_path, monkeypatch, build, retry) as background, \
            caplog.at_level(logging.ERROR, logger="collector.index"):
        background.submit(1)
        wait_until(lambda: background.failed is not None)
        free[0] = 10 * indexer.ROOM_BACK
        deadline = time.monotonic() + 10
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(calls) >= 2, "never tried again"
        time.sleep(1.0)
    assert len(calls) <= 6, f"{len(calls)} builds in about a second"
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) <= 4, len(tracebacks)


def test_a_chunk_retention_deleted_while_it_waited_for_room_is_not_said_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Chunks waiting for room whose segment retention deleted meanwhile (the disk
    still full) were taken for builds that succeeded: the backoff of those still waiting
    started again from ``BUILD_RETRY`` (a full disk tried every second again), and once
    the last was gone the log said "the disk has room again: indexed the chunks it had
    refused", with nothing indexed and the disk as full as before."""
    calls: list[int] = []

    def build(_con: Any, chunk: int, _lock: Any) -> bool:
        calls.append(chunk)
        if calls.count(chunk) <= chunk:  # chunk 1 refused once, chunk 2 twice
            raise full_disk_error()
        return False  # then gone: retention dropped their segment

    with indexer_building(tmp_path, monkeypatch, build) as background, \
            caplog.at_level(logging.DEBUG, logger="collector.index"):
        background.submit(1)
        background.submit(2)
        wait_until(lambda: calls.count(2) == 3)
        wait_until(lambda: background.backlog == 0)
    assert calls == [1, 2, 1, 2, 2]
    again = [r.args for r in caplog.records if "refused again" in r.msg]
    # 0.1 s after the 1st refusal, 0.2 after the 2nd: the 3rd waits 0.4, not 0.1.
    assert [a[-1] for a in again] == [0.2, 0.4], again
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "room again" in m], said
    assert background.failed is None


def test_failed_still_says_a_chunk_left_unindexed_once_the_room_is_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build that failed for another reason leaves its chunk CLOSED until the next
    start, said in ``failed`` (the store's ``last_error``). A refusal of a later chunk
    overwrote it, and once that chunk was built ``failed`` was cleared: the stats said
    nothing of the chunk still unindexed."""
    calls: list[int] = []

    def build(_con: Any, chunk: int, _lock: Any) -> bool:
        calls.append(chunk)
        if chunk == 1:
            raise sqlite3.DatabaseError("chunk 1 broke")
        if calls.count(2) == 1:
            raise full_disk_error()
        return True

    with indexer_building(tmp_path, monkeypatch, build) as background:
        background.submit(1)
        background.submit(2)
        wait_until(lambda: calls.count(2) == 2 and background.backlog == 0)
        assert background.failed == "DatabaseError: chunk 1 broke"


def test_failed_is_cleared_once_a_chunk_that_failed_while_waiting_for_room_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk waiting for room whose retry failed for another reason, then was built:
    no chunk is left unindexed, ``failed`` says nothing any more."""
    calls: list[int] = []

    def build(_con: Any, chunk: int, _lock: Any) -> bool:
        calls.append(chunk)
        if len(calls) == 1:
            raise full_disk_error()
        if len(calls) == 2:
            raise sqlite3.DatabaseError("a passing error")
        return True

    with indexer_building(tmp_path, monkeypatch, build) as background:
        background.submit(1)
        wait_until(lambda: len(calls) == 3 and background.backlog == 0)
        time.sleep(0.05)
        assert background.failed is None


class StalledStatvfs:
    """``os.statvfs`` (the OS: what ``free_bytes`` asks) as the indexer's thread sees it:
    a full disk, and once ``arm``-ed, its next call hangs (a stalled NFS mount) until
    ``release``. Other threads get the real one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = threading.Event()
        self.entered = threading.Event()
        self._go = threading.Event()
        real = os.statvfs

        def statvfs(path: Any) -> Any:
            if threading.current_thread().name != "audit-store-indexer":
                return real(path)
            if self.armed.is_set():
                self.armed.clear()
                self.entered.set()
                self._go.wait(30)  # bounded: a test that fails does not hang the run
            return SimpleNamespace(f_bavail=0, f_frsize=4096)

        monkeypatch.setattr(os, "statvfs", statvfs)

    def arm(self) -> None:
        self._go.clear()
        self.entered.clear()
        self.armed.set()

    def release(self) -> None:
        self._go.set()


def test_backlog_counts_a_refused_chunk_once_while_its_refusal_is_under_way(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``backlog`` (the stats' ``unindexed_chunks``) added the chunk being built and the
    chunks waiting for room, less one if the chunk being built had been waiting for room
    before: a fresh chunk the full disk refused was in both from its refusal to the end
    of its build's step (its backoff's ``statvfs``, its log line), and counted twice.
    Held here at that ``statvfs``."""
    stalls = StalledStatvfs(monkeypatch)

    def build(*_: Any) -> bool:
        stalls.arm()  # the refusal's next statvfs: its backoff's free bytes
        raise full_disk_error()

    with indexer_building(tmp_path, monkeypatch, build, retry=1000) as background:
        background.submit(1)
        assert stalls.entered.wait(10), "the refusal never asked the free space"
        try:
            during = background.backlog
        finally:
            stalls.release()
    assert during == 1


def test_a_hung_statvfs_blocks_neither_the_commit_thread_nor_the_stats(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a chunk waiting for room, the indexer asked the free space (``statvfs``)
    while it held its condition's lock: on a hung file system (NFS) the store's commit
    thread (``wait``, ``submit``) and every stats read (``backlog``) waited for it.
    Each ``statvfs`` the indexer makes in turn hangs here (at a refusal, at its
    checkpoint, for the chunk waiting for room: before, never more than two in a row
    outside that lock) while those are called. No new chunk before the last turn: one
    queued spared the lock's ``statvfs`` its turn."""
    stalls = StalledStatvfs(monkeypatch)
    refused = threading.Event()

    def build(_con: Any, chunk: int, _lock: Any) -> bool:
        if chunk == 1:
            refused.set()
            raise full_disk_error()
        return True

    blocked: list[str] = []
    with indexer_building(tmp_path, monkeypatch, build, retry=1000) as background:
        background.submit(1)
        assert refused.wait(10)
        for turn in range(4):
            stalls.arm()
            assert stalls.entered.wait(10), "the indexer no longer asks the free space"
            calls: dict[str, Callable[[], Any]] = {
                "wait": lambda: background.wait(most=100),
                "backlog": lambda: background.backlog}
            if turn == 3:
                calls["submit"] = lambda: background.submit(2)
            try:
                probes = [threading.Thread(target=call, name=f"{name} {turn}", daemon=True)
                          for name, call in calls.items()]
                for probe in probes:
                    probe.start()
                for probe in probes:
                    probe.join(5)
                blocked += [probe.name for probe in probes if probe.is_alive()]
            finally:
                stalls.release()
    assert blocked == []


def test_a_chunk_submitted_again_on_its_way_is_built_and_counted_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk submitted while it was queued, being built or waiting for room was
    queued again: counted twice in ``backlog`` (and in ``wait``, which the commit thread
    waits in) and built twice, all its postings deleted and written again."""
    calls: list[int] = []
    building, go = threading.Event(), threading.Event()

    def build(_con: Any, chunk: int, _lock: Any) -> bool:
        calls.append(chunk)
        if chunk == 3 and calls.count(3) == 1:
            raise full_disk_error()
        if chunk == 1:
            building.set()
            go.wait(10)
        return True

    with indexer_building(tmp_path, monkeypatch, build, retry=1000) as background:
        background.submit(3)
        wait_until(lambda: background.failed is not None)  # 3 waits for room
        background.submit(1)
        assert building.wait(10)
        background.submit(1)  # being built
        background.submit(2)
        background.submit(2)  # queued
        background.submit(3)  # waiting for room
        try:
            during = background.backlog
        finally:
            go.set()
        wait_until(lambda: background.backlog == 0)  # 1 built: 2, then 3 at once
    assert (during, calls) == (3, [3, 1, 2, 3])
