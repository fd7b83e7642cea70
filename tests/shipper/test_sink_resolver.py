"""CollectorSink and a resolver that does not answer: given up at connect_timeout and at
the exit deadline, and a reconnect uses the last answer meanwhile."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from audit_middleware.shipper.receipts import pending
from tests.shipper.sink_helpers import Collector, SinkFactory, emit_many


class HungResolver:
    """``socket.getaddrinfo`` for ``localhost`` that answers only once released (or after
    60 s): a resolver that does not answer. Other names resolve as usual."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from audit_middleware.shipper import endpoint

        self.release = threading.Event()
        self.hanging = True  # False: it answers at once, until this is set again
        self.calls = 0
        real = socket.getaddrinfo

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host == "localhost":
                self.calls += 1
                if self.hanging:
                    self.release.wait(60)
                host = "127.0.0.1"
            return real(host, port, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        # No answer left from an earlier test, no lookup of one still under way.
        monkeypatch.setattr(endpoint, "_answers", {}, raising=False)
        monkeypatch.setattr(endpoint, "_lookups", {}, raising=False)


@pytest.fixture
def hung_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[HungResolver]:
    resolver = HungResolver(monkeypatch)
    yield resolver
    resolver.release.set()  # a worker or lookup thread still waiting goes on
    for thread in threading.enumerate():
        if thread.name.startswith("audit-resolve:"):
            thread.join(5)


def test_a_resolver_that_does_not_answer_is_given_up_at_connect_timeout(
        collector: Collector, make_sink: SinkFactory, hung_resolver: HungResolver) -> None:
    """getaddrinfo had no timeout: neither connect_timeout nor any deadline bounded it,
    and the worker waited for as long as the resolver liked, the queue filling behind it
    (a review helper). The lookup now runs in a thread of its own, waited for within
    connect_timeout: then the connection failed, the batch is spooled, and the next
    attempts wait for the same lookup rather than starting more."""
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret")
    sink = make_sink(url=f"tcp://localhost:{server.server.tcp_port()}", token="s3cret",
                     connect_timeout=0.3)
    ids = emit_many(10)
    started = time.monotonic()
    assert sink.flush(timeout=5)
    assert time.monotonic() - started < 2.0  # about connect_timeout, not the resolver's hang
    stats = sink.stats()
    assert (stats["spooled"], stats["dropped"], stats["acknowledged"]) == (10, 0, 0)
    assert stats["retried"] >= 1
    time.sleep(1.0)  # retried meanwhile (backoff_max 0.2 s)
    assert sink.stats()["retried"] >= 2
    assert hung_resolver.calls == 1  # one lookup under way, not one per retry
    hung_resolver.release.set()  # the resolver answers at last
    assert sink.wait_for_delivery(timeout=20)
    assert collector.ids() == ids


def test_a_resolver_that_does_not_answer_does_not_hold_the_exit_deadline(
        collector: Collector, make_sink: SinkFactory, hung_resolver: HungResolver) -> None:
    """close() (atexit) with the worker waiting for a resolver: the lookup's wait ends at
    the exit deadline, and the batch is spooled before close returns, not left with a
    thread that is given up on (its events neither spooled nor counted)."""
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret")
    sink = make_sink(url=f"tcp://localhost:{server.server.tcp_port()}", token="s3cret",
                     connect_timeout=30.0)
    emit_many(10)
    time.sleep(0.5)  # the worker is waiting for the resolver (within connect_timeout)
    started = time.monotonic()
    sink.close(timeout=1.0)
    assert time.monotonic() - started < 1.8  # the deadline (1 s), the spool write after it
    stats = sink.stats()
    assert (stats["spooled"], stats["dropped"], stats["acknowledged"]) == (10, 0, 0)


def test_while_the_resolver_hangs_a_reconnect_uses_the_last_answer_at_once(
        collector: Collector, make_sink: SinkFactory, hung_resolver: HungResolver) -> None:
    """Each reconnect while the resolver did not answer waited for it the whole
    connect_timeout before using the addresses it last gave: batches waited, and a
    fail_closed request was answered 503 although the collector was reachable at once
    (a review). The last answer is now used after a short wait for a new lookup, and
    at once while one is still under way."""
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret",
                             idle_timeout=0.3)
    sink = make_sink(url=f"tcp://localhost:{server.server.tcp_port()}", token="s3cret",
                     connect_timeout=30.0, fail_closed=True)
    hung_resolver.hanging = False
    ids = emit_many(3)
    assert sink.flush(timeout=10)  # resolved: the answer is kept
    hung_resolver.hanging = True
    for round_ in ("u", "v"):  # a new lookup that hangs, then the same one still under way
        time.sleep(1.0)  # the collector closes the idle connection
        receipts: list[Any] = []
        token = pending.set(receipts)
        try:
            ids += emit_many(3, round_)
        finally:
            pending.reset(token)
        assert [r.result(timeout=10) for r in receipts] == [None, None, None]
    assert sink.flush(timeout=10)
    stats = sink.stats()
    assert (stats["acknowledged"], stats["spooled"], stats["retried"]) == (9, 0, 0)
    assert hung_resolver.calls == 2  # the one that answered, the one still hanging
    assert collector.ids() == ids
