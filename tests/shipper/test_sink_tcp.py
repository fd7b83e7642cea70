"""CollectorSink over TCP: the token, a connection the collector closed as idle, a wrong
token, and a connect that hangs at exit."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from audit_middleware.shipper.receipts import pending
from tests.shipper.sink_helpers import Collector, SinkFactory, connecting_sink, emit_many
from tests.shipper.unaccepting import unaccepting_port


def test_tcp_with_the_token_delivers(collector: Collector, make_sink: SinkFactory) -> None:
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret")
    sink = make_sink(url=f"tcp://127.0.0.1:{server.server.tcp_port()}", token="s3cret")
    ids = emit_many(10)
    assert sink.flush(timeout=10)
    assert collector.ids() == ids


def test_a_tcp_connection_the_collector_closed_as_idle_is_not_taken_for_an_outage(
        collector: Collector, make_sink: SinkFactory) -> None:
    """The collector closes an idle connection with a ``timeout`` error frame. Over TCP
    the next batch's send still succeeds, and that frame is read as its reply: the
    batch was spooled, counted as retried, and a fail_closed request answered 503,
    after every pause longer than idle_timeout (300 s by default)."""
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret",
                             idle_timeout=0.3)
    sink = make_sink(url=f"tcp://127.0.0.1:{server.server.tcp_port()}", token="s3cret",
                     fail_closed=True)
    ids = emit_many(3)
    assert sink.flush(timeout=10)
    time.sleep(1.0)  # the collector closes the idle connection
    receipts: list[Any] = []
    token = pending.set(receipts)
    try:
        ids += emit_many(3, "u")
    finally:
        pending.reset(token)
    assert [r.result(timeout=10) for r in receipts] == [None, None, None]
    assert sink.flush(timeout=10)
    stats = sink.stats()
    assert (stats["acknowledged"], stats["spooled"], stats["retried"]) == (6, 0, 0)
    assert collector.ids() == ids


@pytest.mark.parametrize("shutdown", ["close", "drain"])
def test_a_connect_that_hangs_does_not_hold_the_exit_deadline(
        make_sink: SinkFactory, shutdown: str) -> None:
    """close() (atexit) or drain() (ASGI lifespan) starting while the worker waited for
    a TCP connect that does not complete: the connect went on for the whole
    connect_timeout, the deadline set meanwhile unheeded, so the batch was neither
    spooled nor counted when the worker was given up on. It ends at the deadline now.
    (The spool write that follows is waited for while it is under way, so a loaded
    machine's slow fsync no longer fails this, as it did once in CI; a connect still
    going on past the deadline still does: the worker is not spooling then, and close
    counts the batch dropped: test_exit_spool_grace.py.)"""
    with unaccepting_port() as port:
        sink = connecting_sink(make_sink, port)
        if shutdown == "close":
            sink.close(timeout=1.0)
        else:
            assert sink.drain(timeout=1.0)
        stats = sink.stats()
    assert (stats["spooled"], stats["dropped"], stats["acknowledged"]) == (10, 0, 0)


def test_tcp_with_a_wrong_token_is_refused_and_spooled(
        collector: Collector, make_sink: SinkFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret")
    sink = make_sink(url=f"tcp://127.0.0.1:{server.server.tcp_port()}", token="guess")
    with caplog.at_level(logging.WARNING, "audit_middleware"):
        emit_many(10)
        assert sink.flush(timeout=10)
    assert (sink.stats()["acknowledged"], sink.stats()["spooled"]) == (0, 10)
    assert "unauthorized" in caplog.text
    assert collector.ids() == []


def test_a_wrong_token_is_not_taken_for_a_tls_mistake(
        collector: Collector, make_sink: SinkFactory, caplog: pytest.LogCaptureFixture) -> None:
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret")
    sink = make_sink(url=f"tcp://127.0.0.1:{server.server.tcp_port()}", token="wrong")
    with caplog.at_level(logging.WARNING, "audit_middleware"):
        emit_many(2)
        sink.flush(timeout=5)
    assert "unauthorized" in caplog.text and "tls" not in caplog.text.lower(), caplog.text
