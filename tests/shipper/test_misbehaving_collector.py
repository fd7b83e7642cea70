"""The shipper against a collector that misbehaves on the wire (a trickled or stalled
reply): nothing is lost and nothing waits past its bounds. The socket timeout bounds each
``recv``, not a reply: a collector sending a byte every 0.2 s held the sender for as long
as it liked, the app's queue overflowed with room in the spool, and at exit what was in
flight was neither spooled nor counted (a review helper)."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_middleware import configure, emit
from audit_middleware.shipper import CollectorSink
from audit_middleware.testing import reset_configuration
from audit_middleware.wire import (
    HEADER,
    MIN_MAX_FRAME,
    Batch,
    ErrorCode,
    ErrorReply,
    FrameType,
)
from tests.e2e.harness import short_tmp
from tests.shipper.misbehaving_collector import MisbehavingCollector, acknowledge


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


def shipping_to(trickling: tuple[MisbehavingCollector, Path], **options: Any) -> CollectorSink:
    peer, root = trickling
    sink = CollectorSink(peer.url, spool_dir=root / "spool", **options)
    configure(sink=sink)
    return sink


def test_a_trickled_reply_is_given_up_at_the_ack_timeout(
        trickling: tuple[MisbehavingCollector, Path]) -> None:
    sink = shipping_to(trickling, ack_timeout=1.0, backoff_max=0.2)
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
    # The whole reply takes 40 s; ack_timeout alone would end it after 3 s, too late:
    # the queue is full long before.
    sink = shipping_to(trickling, max_queue=200, batch_size=10, ack_timeout=3.0,
                       backoff_max=0.2)
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
    sink = shipping_to(trickling, ack_timeout=30.0, exit_timeout=1.0)
    for i in range(50):
        emit("team_created", f"t{i}")
    time.sleep(0.5)  # the batch is sent; its reply trickles
    started = time.monotonic()
    sink.close()
    assert time.monotonic() - started < 3
    stats = sink.stats()
    assert (stats["spooled"], stats["dropped"], stats["queued"]) == (50, 0, 0)


def test_a_part_of_a_spooled_record_refused_on_replay_is_dropped_once() -> None:
    """A spooled record larger than the collector's frames is split on replay. When the
    collector refused one part (bad_batch), the part was dropped and the rest handed
    back; the record was then sent again whole, the part refused and counted again,
    forever, and nothing spooled behind it was ever delivered."""

    def refuse_seq_1(conn: socket.socket, batch: Batch) -> None:
        if 1 in batch.seqs:
            conn.sendall(ErrorReply(ErrorCode.BAD_BATCH, "refused", batch.batch_id).encode())
        else:
            acknowledge(conn, batch)

    with short_tmp() as root:
        sink = CollectorSink(f"unix://{root / 'c.sock'}", spool_dir=root / "spool",
                             backoff_max=0.2)
        configure(sink=sink)
        try:
            for i in range(200):  # collector down: one spool record of ~800 KiB
                emit("team_created", f"t{i}-" + "x" * 4000)
            assert sink.flush(5)
            for i in range(5):  # newer events, spooled behind it
                emit("team_created", f"new{i}")
            assert sink.flush(5)
            peer = MisbehavingCollector(str(root / "c.sock"), reply=refuse_seq_1,
                                        max_frame=MIN_MAX_FRAME)
            try:
                deadline = time.monotonic() + 20
                while sink.stats()["acknowledged"] + sink.stats()["dropped"] < 205:
                    assert time.monotonic() < deadline, sink.stats()
                    time.sleep(0.05)
                time.sleep(0.5)  # a loop would refuse (and count) the part again
                stats = sink.stats()
                refused = next(len(b.seqs) for b in peer.batches if 1 in b.seqs)
                assert stats["dropped"] == refused
                assert stats["acknowledged"] == 205 - refused
                assert sum(1 for b in peer.batches if 1 in b.seqs) == 1
                assert {f"new{i}" for i in range(5)} <= {
                    line.split(b'"target":"')[1].split(b'"')[0].decode()
                    for b in peer.batches for line in b.lines}
            finally:
                peer.close()
        finally:
            sink.close(timeout=1)
            reset_configuration()


def test_rejections_that_name_no_distinct_events_are_not_taken_as_an_answer() -> None:
    """Only the counts were checked: a reply rejecting the same event twice (or one past
    the batch) passed, and the events it left unnamed were taken as stored, a fail_closed
    request answered as recorded (a shipper review). Such a reply fails the connection;
    the batch is spooled and sent again."""
    from audit_middleware.wire import Rejection, Result

    def reject_the_first_twice(conn: socket.socket, batch: Batch) -> None:
        twice = [Rejection(0, batch.seqs[0], None, "bad")] * 2  # the second left unnamed
        ids = [orjson.loads(line)["id"] for line in batch.lines]
        conn.sendall(Result(batch.batch_id, ids[2:], rejected=twice).encode())

    with short_tmp() as root:
        peer = MisbehavingCollector(str(root / "c.sock"), reply=reject_the_first_twice)
        try:
            sink = shipping_to((peer, root), ack_timeout=2.0, backoff_max=0.2)
            for i in range(5):
                emit("team_created", f"t{i}")
            assert sink.flush(timeout=10)
            stats = sink.stats()
            assert (stats["acknowledged"], stats["rejected"]) == (0, 0)
            assert stats["spooled"] == 5
            sink.close(timeout=1)
        finally:
            peer.close()
            reset_configuration()


def _silent(conn: socket.socket, batch: Batch) -> None:
    time.sleep(30)  # takes the batch, never answers


@pytest.mark.parametrize("where", ["reply", "welcome"])
def test_a_silent_collector_is_given_up_at_the_timeout_not_twice_it(
        where: str, caplog: pytest.LogCaptureFixture) -> None:
    """A collector that never answers (a batch, or the hello) is waited for once: the
    wait for the reply to begin returned at the timeout, and the read that followed
    waited a whole timeout again, so ack_timeout (and connect_timeout) held the batch
    for twice as long before it was spooled. Timed to the line that gives it up, not to
    the batch spooled: the spool's fsyncs on a busy CI disk took 2.4 s once."""
    with short_tmp() as root:
        peer = MisbehavingCollector(str(root / "c.sock"), reply=_silent)
        if where == "welcome":
            peer._serve = lambda conn: time.sleep(30)  # type: ignore[method-assign]
        sink = CollectorSink(peer.url, spool_dir=root / "spool", ack_timeout=1.5,
                             connect_timeout=1.5)
        try:
            configure(sink=sink)
            started = time.time()  # the clock of the log records' ``created``
            with caplog.at_level(logging.WARNING, logger="audit_middleware"):
                emit("team_created", "t1")
                assert sink.flush(timeout=10)
            assert sink.stats()["spooled"] == 1
            [given_up] = [r for r in caplog.records
                          if "no answer from the collector within 1.5s" in r.getMessage()]
            took = given_up.created - started
            assert took < 2.5, f"given up after {took:.1f}s, for a timeout of 1.5s"
        finally:
            reset_configuration()
            sink.close(timeout=1)
            peer.close()


def _client_sockets_to(path: str) -> int:
    """Descriptors of this process that are client sockets connected to ``path``."""
    n = 0
    for fd in map(int, os.listdir("/proc/self/fd")):
        try:
            copy = os.dup(fd)
        except OSError:
            continue  # closed meanwhile
        try:
            sock = socket.socket(fileno=copy)
        except OSError:
            # Not a socket: the copy closed here. Left open, each call doubled the
            # process's other descriptors (the copies of the last call's copies), and a
            # poll of ten calls in a long test run exhausted the file limit.
            os.close(copy)
            continue
        try:
            n += sock.family == socket.AF_UNIX and sock.getpeername() == path
        except OSError:
            pass
        finally:
            sock.close()
    return n


def test_a_child_forked_while_its_parent_connects_lets_go_of_that_connection() -> None:
    """The connection the worker thread is making (its hello not answered yet) is not
    the sender's until it is made: a child forked meanwhile kept its copy of the socket
    for its whole life, so the parent's close never reached the collector."""
    with short_tmp() as root:
        peer = MisbehavingCollector(str(root / "c.sock"))
        serve = peer._serve

        def slow_welcome(conn: socket.socket) -> None:
            time.sleep(1.0)
            serve(conn)

        peer._serve = slow_welcome  # type: ignore[method-assign]
        sink = CollectorSink(peer.url, spool_dir=root / "spool")
        try:
            configure(sink=sink)
            emit("team_created", "t1")
            deadline = time.monotonic() + 5
            while not _client_sockets_to(peer.path) and time.monotonic() < deadline:
                time.sleep(0.01)  # the worker is connecting, waiting for the welcome
            assert _client_sockets_to(peer.path) == 1
            pid = os.fork()
            if pid == 0:
                os._exit(_client_sockets_to(peer.path))
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert sink.flush(timeout=10)
            assert sink.stats()["acknowledged"] == 1  # the parent's connection still works
        finally:
            reset_configuration()
            sink.close(timeout=1)
            peer.close()
