"""What CollectorSink loses, counted: events dropped when the spool is full or there is
none, and ``wait_for_delivery`` False after any drop."""

from __future__ import annotations

import logging

import pytest

from audit_middleware import emit
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
