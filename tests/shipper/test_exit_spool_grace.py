"""The spool write under way when a shutdown's deadline passes (``close``: atexit;
``drain``: ASGI lifespan): a slow disk's is waited for, a hung disk's is given up on
within a bound, and what it held is then said and counted, never silently gone."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from audit_middleware.shipper import CollectorSink, sink_exit
from audit_middleware.shipper.spool import Spool
from audit_middleware.wire import decode_batch_body
from tests.e2e.harness import wait_until
from tests.shipper.sink_helpers import Collector, SinkFactory, connecting_sink, emit_many
from tests.shipper.spool_helpers import drain, spool_files
from tests.shipper.unaccepting import unaccepting_port

#: A spool fsync slower than the old fixed grace past the deadline (0.5 s) and well
#: within the time now given to a spool write under way.
SLOW_FSYNC = 1.5


def _fsync_after(wait: Callable[[], object]) -> Callable[[int], None]:
    real = os.fsync

    def fsync(fd: int) -> None:
        wait()
        real(fd)

    return fsync


def _record_fsync_after(wait: Callable[[], object]) -> Callable[[int], None]:
    """``_fsync_after`` for a spool record's fsync only (a regular file's): a new
    file's directory is synced at once, and the record written before the wait."""
    real, fsync = os.fsync, _fsync_after(wait)

    def record_fsync(fd: int) -> None:
        (fsync if stat.S_ISREG(os.fstat(fd).st_mode) else real)(fd)

    return record_fsync


def _pwrite_after(wait: Callable[[], object]) -> Callable[[int, Any, int], int]:
    real = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        wait()
        return real(fd, data, offset)

    return pwrite


@contextmanager
def _hung_spool_write(make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch,
                      hangs: str = "fsync", then: Callable[[], object] = lambda: None,
                      ) -> Iterator[tuple[CollectorSink, threading.Event]]:
    """A sink whose collector never accepts, its spool write held until ``disk`` is set
    (a hung disk), with a short ``SPOOL_GRACE``: its record's fsync (the record whole in
    the file) or its write (nothing in the file); ``then`` runs when the disk answers (raise, for
    a disk that fails). The disk is let go on the way out whatever happened, so the
    worker does not outlive the test blocked."""
    monkeypatch.setattr(sink_exit, "SPOOL_GRACE", 0.5)  # a short test
    disk = threading.Event()

    def hung() -> None:
        disk.wait()
        then()

    try:
        with unaccepting_port() as port:
            sink = connecting_sink(make_sink, port)
            if hangs == "fsync":
                monkeypatch.setattr(os, "fsync", _record_fsync_after(hung))
            else:
                monkeypatch.setattr(os, "pwrite", _pwrite_after(hung))
            yield sink, disk
    finally:
        disk.set()


@pytest.mark.parametrize("shutdown", ["close", "drain"])
def test_a_slow_spool_write_under_way_at_the_deadline_is_waited_for(
        make_sink: SinkFactory, shutdown: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool write begun at the deadline was given 0.5 s, however slow the disk: a
    loaded machine's fsync took longer, drain() said False (the process then ended:
    uvicorn re-raises SIGTERM) and close() gave the worker up (the interpreter then
    exited), the batch neither spooled nor counted."""
    with unaccepting_port() as port:
        sink = connecting_sink(make_sink, port)
        monkeypatch.setattr(os, "fsync", _fsync_after(lambda: time.sleep(SLOW_FSYNC)))
        if shutdown == "close":
            sink.close(timeout=1.0)
        else:
            assert sink.drain(timeout=1.0)
        stats = sink.stats()
    assert (stats["spooled"], stats["dropped"], stats["acknowledged"]) == (10, 0, 0)


def test_a_close_that_gives_up_on_a_hung_spool_write_counts_and_says_the_loss(
        make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A spool write that does not end (a hung disk) is waited for within a bound, not
    for ever; close() then gave the worker up with the batch in its hands neither counted
    nor named (it logged "0 events still queued"), and the interpreter's exit took it.
    They are counted dropped and said now; spooled after all (the disk answered, the
    process lived on), they move back to ``spooled``. (Its write hangs: nothing of the
    batch is in the spool file yet.)"""
    with _hung_spool_write(make_sink, monkeypatch, hangs="pwrite") as (sink, disk):
        with caplog.at_level(logging.ERROR, "audit_middleware"):
            sink.close(timeout=1.0)
        stats = sink.stats()
        assert (stats["spooled"], stats["dropped"]) == (0, 10)
        assert "10 events counted dropped: close(1s) gave up" in caplog.text
        assert "spool write under way" in caplog.text
        assert "not yet synced" not in caplog.text
        disk.set()
        wait_until(lambda: sink.stats()["spooled"] == 10, 10, "the write completing")
        assert sink.stats()["dropped"] == 0


def _replayed_by_the_next_start(root: Path, tmp_path: Path, sink: CollectorSink) -> int:
    """The events a next start adopts and replays from this sink's spool file as it is
    now (what an exit now leaves)."""
    (written,) = spool_files(root / "spool")
    (tmp_path / "next").mkdir()
    shutil.copy(written, tmp_path / "next" / written.name)
    next_start = Spool(tmp_path / "next", 1 << 20, destination=sink.endpoint.identity)
    try:
        assert next_start.adopt_orphans() == 1
        return sum(len(decode_batch_body(body).seqs) for body in drain(next_start))
    finally:
        next_start.close()


def test_a_batch_whole_in_the_spool_file_when_close_gives_up_is_counted_spooled(
        make_sink: SinkFactory, root: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Its fsync hangs, its record is whole in the file: a process that exits now
    leaves it there, and the next start replays it. It was counted dropped and said
    lost: a loss reported that did not happen."""
    with _hung_spool_write(make_sink, monkeypatch) as (sink, disk):
        with caplog.at_level(logging.ERROR, "audit_middleware"):
            sink.close(timeout=1.0)
        stats = sink.stats()
        assert (stats["spooled"], stats["dropped"]) == (10, 0)
        assert ("close(1s) gave up on the sink's worker, its spool write under way for"
                in caplog.text)
        assert ("its 10 events are written to the spool file, not yet synced, and counted "
                "spooled: replayed at the next start" in caplog.text)
        assert _replayed_by_the_next_start(root, tmp_path, sink) == 10
        disk.set()  # the sync completes: counted once, not again
        wait_until(lambda: sink._handed == 10, 10, "the worker settling the batch")
        assert (sink.stats()["spooled"], sink.stats()["dropped"]) == (10, 0)


def test_a_close_that_gives_up_counts_the_batch_in_the_file_spooled_and_the_rest_dropped(
        make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Events queued behind the hung write are not in the file: dropped, said beside
    the batch that is."""
    with _hung_spool_write(make_sink, monkeypatch) as (sink, _):
        emit_many(5)  # queued while the worker holds the 10 in its connect
        with caplog.at_level(logging.ERROR, "audit_middleware"):
            sink.close(timeout=1.0)
        assert (sink.stats()["spooled"], sink.stats()["dropped"]) == (10, 5)
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(said) == 1, said
    assert said[0].startswith("audit: 5 events counted dropped: close(1s) gave up")
    assert "The 10 events it is writing are in the spool file, not yet synced" in said[0]


def test_a_batch_counted_spooled_at_close_whose_sync_then_fails_stays_in_the_file(
        make_sink: SinkFactory, root: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The disk answers the hung fsync with an error after close() counted the batch
    spooled and said it would be replayed. The record was truncated away: a process
    exiting meanwhile (atexit, close() had returned) lost it uncounted. It stays in the
    file now, spooled as counted, replayed by the next start."""
    def fails() -> None:
        raise OSError(errno.EIO, "Input/output error")

    with _hung_spool_write(make_sink, monkeypatch, then=fails) as (sink, disk):
        sink.close(timeout=1.0)
        assert (sink.stats()["spooled"], sink.stats()["dropped"]) == (10, 0)
        with caplog.at_level(logging.ERROR, "audit_middleware"):
            disk.set()
            wait_until(lambda: sink._handed == 10, 10, "the worker settling the batch")
        assert (sink.stats()["spooled"], sink.stats()["dropped"]) == (10, 0)
        assert "the batch close() counted spooled could not be synced" in caplog.text
        assert _replayed_by_the_next_start(root, tmp_path, sink) == 10


def test_a_close_that_gives_up_says_one_thing_not_also_the_queues_zero(
        make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Beside the sink's count of what its worker held, the queue's own line said
    "0 events still queued" (the worker had taken them all): two lines, one wrong."""
    with _hung_spool_write(make_sink, monkeypatch) as (sink, _):
        with caplog.at_level(logging.ERROR, "audit_middleware"):
            sink.close(timeout=1.0)
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(said) == 1, said
    assert "close(1s) gave up on the sink's worker" in said[0]


def test_a_drain_that_gives_up_on_a_hung_spool_write_says_what_the_process_would_lose(
        make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """drain() (ASGI lifespan, after which uvicorn ends the process) said only False:
    nothing named the events still being spooled. Said now; not counted dropped, as
    the worker goes on and spools them if the process does."""
    with _hung_spool_write(make_sink, monkeypatch) as (sink, disk):
        with caplog.at_level(logging.ERROR, "audit_middleware"):
            assert not sink.drain(timeout=1.0)
        assert "drain(1s) ended with 10 events neither sent nor spooled" in caplog.text
        assert "lost if the process ends now" in caplog.text
        assert (sink.stats()["spooled"], sink.stats()["dropped"]) == (0, 0)
        disk.set()
        wait_until(lambda: sink.stats()["spooled"] == 10, 10, "the write completing")
        assert sink.stats()["dropped"] == 0


def test_events_acknowledged_after_a_close_gave_up_are_taken_out_of_dropped(
        make_sink: SinkFactory, collector: Collector, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A close that gives up on a worker still in its send (past the deadline and the
    grace: a stalled process, a send the deadline does not bound) counts what the
    worker holds dropped. Events the collector acknowledged stayed in ``dropped`` too,
    for good: only those spooled or held in memory were taken out again, so
    ``acknowledged`` and ``dropped`` both counted them while the process lived on."""
    collector.start()
    sink = make_sink(url=collector.url)
    acknowledged, release = threading.Event(), threading.Event()
    ship = sink._sender.ship

    def slow_to_return(chunks: Any) -> Any:
        unsent = ship(chunks)  # the collector acknowledges them
        acknowledged.set()
        release.wait()  # the worker, stalled, comes back after close() gave it up
        return unsent

    monkeypatch.setattr(sink._sender, "ship", slow_to_return)
    try:
        emit_many(10)
        assert acknowledged.wait(10)
        with caplog.at_level(logging.ERROR, "audit_middleware"):
            sink.close(timeout=0.1)
        assert "10 events counted dropped: close(0.1s) gave up" in caplog.text
        release.set()
        wait_until(lambda: sink.stats()["dropped"] == 0, 10,
                   "the acknowledged events taken out of dropped")
        assert sink.stats()["acknowledged"] == 10
    finally:
        release.set()
