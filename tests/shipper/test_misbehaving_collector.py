"""The shipper against a collector that misbehaves on the wire (a trickled or stalled
reply): nothing is lost and nothing waits past its bounds. The socket timeout bounds each
``recv``, not a reply: a collector sending a byte every 0.2 s held the sender for as long
as it liked, the app's queue overflowed with room in the spool, and at exit what was in
flight was neither spooled nor counted (a review helper)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_middleware import configure, emit
from audit_middleware.shipper import CollectorSink
from audit_middleware.testing import reset_configuration
from audit_middleware.wire import HEADER, Batch, FrameType
from tests.e2e.harness import short_tmp
from tests.shipper.misbehaving_collector import MisbehavingCollector


def trickle(conn: socket.socket, batch: Batch) -> None:
    """A reply header announcing 200 bytes, then one byte every 0.2 s."""
    conn.sendall(HEADER.pack(200, FrameType.RESULT))
    for _ in range(200):
        time.sleep(0.2)
        conn.sendall(b" ")


@pytest.fixture
def trickling() -> Iterator[tuple[MisbehavingCollector, Path]]:
    with short_tmp() as root:
        peer = MisbehavingCollector(str(root / "c.sock"), reply=trickle)
        try:
            yield peer, root
        finally:
            peer.close()
            reset_configuration()


def test_a_trickled_reply_is_given_up_at_the_ack_timeout(
        trickling: tuple[MisbehavingCollector, Path]) -> None:
    peer, root = trickling
    sink = CollectorSink(peer.url, spool_dir=root / "spool", ack_timeout=1.0,
                         backoff_max=0.2)
    configure(sink=sink)
    for i in range(10):
        emit("team_created", f"t{i}")
    started = time.monotonic()
    assert sink.flush(timeout=10)
    assert time.monotonic() - started < 5
    stats = sink.stats()
    assert (stats["spooled"], stats["dropped"], stats["acknowledged"]) == (10, 0, 0)
    sink.close(timeout=1)


def test_a_trickled_reply_while_the_queue_fills_spools_instead_of_dropping(
        trickling: tuple[MisbehavingCollector, Path]) -> None:
    peer, root = trickling
    # The whole reply takes 40 s; ack_timeout alone would end it after 3 s, too late:
    # the queue is full long before.
    sink = CollectorSink(peer.url, spool_dir=root / "spool", max_queue=200, batch_size=10,
                         ack_timeout=3.0, backoff_max=0.2)
    configure(sink=sink)
    emit("team_created", "first")  # its batch gets the trickled reply
    time.sleep(0.3)
    for i in range(400):  # twice the queue, over ~2 s
        emit("team_created", f"t{i}")
        time.sleep(0.005)
    assert sink.flush(timeout=30)
    stats = sink.stats()
    assert stats["dropped"] == 0, stats
    assert stats["spooled"] + stats["acknowledged"] == 401
    sink.close(timeout=1)


def test_a_reply_trickling_at_exit_leaves_what_was_in_flight_spooled(
        trickling: tuple[MisbehavingCollector, Path]) -> None:
    peer, root = trickling
    sink = CollectorSink(peer.url, spool_dir=root / "spool", ack_timeout=30.0,
                         exit_timeout=1.0)
    configure(sink=sink)
    for i in range(50):
        emit("team_created", f"t{i}")
    time.sleep(0.5)  # the batch is sent; its reply trickles
    started = time.monotonic()
    sink.close()
    assert time.monotonic() - started < 3
    stats = sink.stats()
    assert (stats["spooled"], stats["dropped"], stats["queued"]) == (50, 0, 0)
