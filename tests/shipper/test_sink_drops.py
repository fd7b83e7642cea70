"""What CollectorSink loses, counted: events dropped when the spool is full or there is
none, and ``wait_for_delivery`` False after any drop."""

from __future__ import annotations

import errno
import logging
import os

import pytest

from audit_middleware import emit
from audit_middleware.shipper import spool_append
from tests.shipper.sink_helpers import Collector, SinkFactory, emit_many


def test_when_the_spool_is_full_events_are_dropped_counted_and_logged(
        make_sink: SinkFactory, caplog: pytest.LogCaptureFixture) -> None:
    sink = make_sink(spool_max_bytes=1000)
    with caplog.at_level(logging.ERROR, "audit_middleware"):
        emit_many(50)
        assert sink.flush(timeout=10)
    stats = sink.stats()
    assert (stats["spooled"], stats["dropped"]) == (0, 50)
    assert "50 events dropped" in caplog.text and "spool" in caplog.text
    said = [r.getMessage() for r in caplog.records if "events dropped" in r.getMessage()]
    assert "is full (spool_max_bytes: 1000 bytes" in said[0], said
    assert "not writable" not in said[0], said  # the cause, not a guess between two


def test_events_dropped_for_a_spool_the_disk_refuses_are_said_with_the_disks_error(
        make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The drop said "the spool ... is full (N bytes) or not writable" whatever the
    cause, though the spool knew it: an operator of a full disk (or of a file system
    without ``flock``) was sent to ``spool_max_bytes``. The drop says the disk's error."""
    def refused(fd: int, data: bytes, offset: int, written: list[int] | None = None) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spool_append, "_write_all", refused)
    sink = make_sink()
    with caplog.at_level(logging.ERROR, "audit_middleware"):
        emit_many(5)
        assert sink.flush(timeout=10)
    assert sink.stats()["dropped"] == 5
    said = [r.getMessage() for r in caplog.records if "events dropped" in r.getMessage()]
    assert len(said) == 1, said
    assert "could not write it" in said[0] and os.strerror(errno.ENOSPC) in said[0], said
    assert "is full" not in said[0] and "not writable" not in said[0], said


def test_wait_for_delivery_is_false_when_events_were_dropped(make_sink: SinkFactory) -> None:
    """Drops since the previous call count, also those before this call began (the
    worker drains every max_delay: they are usually over by then)."""
    sink = make_sink(spool_max_bytes=100)  # no collector, no room: everything is dropped
    emit_many(20)
    assert sink.flush(timeout=10)
    assert sink.stats()["dropped"] == 20
    assert sink.wait_for_delivery(timeout=10) is False
    assert sink.wait_for_delivery(timeout=10) is True  # nothing submitted, nothing lost since


def test_a_timed_out_wait_for_delivery_does_not_use_up_the_drops(
        collector: Collector, make_sink: SinkFactory) -> None:
    """``while not wait_for_delivery(t)`` ended on True after an outage that dropped
    events: the timed-out call had moved the mark (a diff review)."""
    sink = make_sink(spool_max_bytes=1000)  # room for a batch or two, not for all
    for i in range(20):
        emit("team_created", f"t{i}")
        sink.flush(timeout=5)  # a batch each: some spooled, the rest dropped
    assert sink.stats()["dropped"] > 0 and sink.stats()["spooled"] > 0
    assert sink.wait_for_delivery(timeout=0.3) is False  # the spool waits: timed out
    collector.start()
    assert sink.wait_for_delivery(timeout=20) is False  # delivered, but drops since
    assert sink.wait_for_delivery(timeout=20) is True


def test_without_a_spool_undeliverable_events_are_counted_as_dropped_at_close(
        make_sink: SinkFactory) -> None:
    sink = make_sink(spool_dir=None)
    emit_many(20)
    sink.close(timeout=0.5)
    assert sink.stats()["dropped"] == 20


def test_without_a_spool_events_wait_in_memory_for_the_collector(
        collector: Collector, make_sink: SinkFactory) -> None:
    sink = make_sink(spool_dir=None)
    ids = emit_many(20)
    sink.flush(timeout=0.3)  # cannot finish: the collector is not there
    collector.start()
    assert sink.wait_for_delivery(timeout=20)
    assert collector.ids() == ids
