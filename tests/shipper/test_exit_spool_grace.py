"""The spool write under way when a shutdown's deadline passes (``close``: atexit;
``drain``: ASGI lifespan): a slow disk's is waited for, a hung disk's is given up on
within a bound, and what it held is then said and counted, never silently gone."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from audit_middleware.shipper import CollectorSink, sink_exit
from tests.e2e.harness import wait_until
from tests.shipper.sink_helpers import Collector, SinkFactory, connecting_sink, emit_many
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


@contextmanager
def _hung_spool_write(make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch
                      ) -> Iterator[tuple[CollectorSink, threading.Event]]:
    """A sink whose collector never accepts, its spool fsync held until ``disk`` is
    set (a hung disk), with a short ``SPOOL_GRACE``. The disk is let go on the way out
    whatever happened, so the worker does not outlive the test blocked."""
    monkeypatch.setattr(sink_exit, "SPOOL_GRACE", 0.5)  # a short test
    disk = threading.Event()
    try:
        with unaccepting_port() as port:
            sink = connecting_sink(make_sink, port)
            monkeypatch.setattr(os, "fsync", _fsync_after(disk.wait))
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
    process lived on), they move back to ``spooled``."""
    with _hung_spool_write(make_sink, monkeypatch) as (sink, disk):
        with caplog.at_level(logging.ERROR, "audit_middleware"):
            sink.close(timeout=1.0)
        stats = sink.stats()
        assert (stats["spooled"], stats["dropped"]) == (0, 10)
        assert "10 events counted dropped: close(1s) gave up" in caplog.text
        assert "spool write under way" in caplog.text
        disk.set()
        wait_until(lambda: sink.stats()["spooled"] == 10, 10, "the write completing")
        assert sink.stats()["dropped"] == 0


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
