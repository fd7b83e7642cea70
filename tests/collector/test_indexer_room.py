"""The indexer's chunks waiting for room on a full disk (``ChunkIndexer._no_room``):
how they are tried again, and what ``failed``, ``backlog`` and the log say."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
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
