"""A client deeper in flight than the collector reads ahead never deadlocks with it.

The collector reads no further frame of a connection while its replies wait unread
(``collector.reply_queue``): a client blocked sending a frame while not reading replies
would wait on the collector waiting on it, until a timeout broke the connection (a
10-second stall, then retries and the spool). The connection reads replies while its
send waits (``shipper.connection``), and the sink keeps its pipeline full between the
queue's batches (``BatchingQueue.take``). Against a real collector subprocess."""

from __future__ import annotations

import fcntl
import re
import resource
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from audit_middleware import configure, emit
from audit_middleware.shipper import CollectorSink
from audit_middleware.shipper.connection import Connection
from audit_middleware.shipper.endpoint import Endpoint, parse_url
from audit_middleware.shipper.pipeline import Chunk, Pipeline
from audit_middleware.testing import reset_configuration
from audit_middleware.wire import Hello, Result, encode_batch_body
from tests.certificates import self_signed_certificate
from tests.collector.storage_helpers import event
from tests.e2e.harness import CollectorProcess, short_tmp, stored_events

TOKEN = "pipelining-s3cret"


@pytest.fixture(scope="module")
def collector() -> Iterator[CollectorProcess]:
    with short_tmp() as root, CollectorProcess(root / "data") as process:
        yield process


def test_a_pipeline_deeper_than_the_collector_reads_ahead_flows(
        collector: CollectorProcess, tmp_path: Path) -> None:
    sink = CollectorSink(collector.url, spool_dir=tmp_path / "spool", pipeline=16,
                         batch_size=512, max_queue=40_000, ack_timeout=3.0)
    configure(sink=sink)
    try:
        n = 16 * 512 * 3
        for i in range(n):
            emit("credentials_created", f"deep-{i}")
        assert sink.flush(60.0)
        stats = sink.stats()
    finally:
        reset_configuration()
        sink.close(5.0)
    # A stall would show as a retry (the connection given up) and batches spooled.
    assert stats["retried"] == 0 and stats["spooled"] == 0, stats
    assert stats["acknowledged"] == n
    stored = {e["target"] for e in stored_events(collector.data_dir)}
    assert {f"deep-{i}" for i in range(n)} <= stored


@pytest.fixture(scope="module")
def tls_collector() -> Iterator[tuple[str, ssl.SSLContext]]:
    """A collector listening on TCP with TLS (and a token): the URL and a client context
    that trusts its certificate."""
    with short_tmp() as root:
        cert, key = self_signed_certificate(root)
        with CollectorProcess(root / "data", "--tcp", "127.0.0.1:0", "--tls-cert", str(cert),
                              "--tls-key", str(key), env={"AUDIT_TOKEN": TOKEN}) as process:
            match = re.search(r"tls:127\.0\.0\.1:(\d+)", process.ready_line)
            assert match, process.ready_line
            yield f"tcp://127.0.0.1:{match[1]}", ssl.create_default_context(cafile=cert)


@pytest.mark.parametrize("transport", ["unix", "tls"])
def test_big_rejection_replies_do_not_stop_a_well_behaved_client(
        transport: str, request: pytest.FixtureRequest) -> None:
    """Batches of events the collector rejects make replies of ~1 MB each (a reason per
    event); with four in flight, the collector stops reading while they wait, and the
    client must read them while its next send waits. Over TLS, where a send writes whole
    records and a reply may sit decrypted in the SSL object, as well as on a plain
    socket."""
    if transport == "unix":
        url, tls = request.getfixturevalue("collector").url, None
        hello, depth, batches = Hello("pipelining-test"), 4, 8
    else:
        url, tls = request.getfixturevalue("tls_collector")
        # TCP's buffers hold more than a unix socket's: deeper, so that sends still wait.
        hello, depth, batches = Hello("pipelining-test-tls", token=TOKEN), 16, 24
    conn = Connection(parse_url(url), hello, tls=tls, connect_timeout=5.0)
    conn.connect()
    results: list[Result] = []
    pipe = Pipeline(conn, depth, lambda: 10.0, lambda chunk, result: results.append(result),
                    lambda chunk, why: None)
    bad = orjson.dumps({"v": 1, "type": "credentials_created", "note": "x" * 200}) + b"\n"
    per_batch = 4000
    try:
        for b in range(batches):
            seqs = list(range(b * per_batch + 1, (b + 1) * per_batch + 1))
            pipe.send(Chunk("pipelining-test", seqs, [bad] * per_batch))
        pipe.finish()
    finally:
        conn.close()
    assert pipe.failed is None, pipe.failed
    assert conn.early_replies > 0  # the case under test: replies read while sends waited
    assert len(results) == batches
    assert all(len(r.rejected) == per_batch and r.acknowledged == 0 for r in results)


def test_take_gives_only_full_frames_and_never_passes_a_flush_marker() -> None:
    from audit_middleware.sinks.batching import BatchingQueue, _FlushMarker

    queue: BatchingQueue[int] = BatchingQueue(lambda batch: None, max_queue=100)
    for i in range(5):
        queue._queue.append(i)  # as submit() would, without starting the worker
    assert queue.take(6) == []  # not a full frame's worth: left for the drain
    assert queue.take(3) == [0, 1, 2]
    marker = _FlushMarker()
    queue._markers.add()
    queue._queue.append(marker)
    queue._queue.append(5)
    queue._queue.append(6)
    queue._queue.append(7)
    # Three items are queued besides the marker, but two of them are behind it: what was
    # submitted before a flush is delivered before that flush returns, so take stops.
    assert queue.take(3) == [3, 4]
    assert queue._queue[0] is marker
    assert queue.counts()["submitted"] == 8 and queue.drained.value == 5


def test_a_flush_is_not_starved_by_an_export_that_keeps_taking() -> None:
    """An export that takes more while events keep arriving as fast as it sends (the
    collector sink's pipeline) must still let a flush through once what preceded it is
    delivered: the marker stays at the head of the queue while that batch is delivered."""
    import threading
    import time

    from audit_middleware.sinks.batching import BatchingQueue

    frame = 50
    stop = threading.Event()
    queue: BatchingQueue[int] = BatchingQueue(lambda batch: None, max_queue=1_000_000,
                                              max_batch=4 * frame, max_delay=0.01)

    def export(batch: list[int]) -> None:
        items = batch
        while items and not stop.is_set():
            time.sleep(0.002)  # one frame on the wire
            items = queue.take(frame)

    queue._export = export

    def produce() -> None:
        n = 0
        while not stop.is_set():
            for _ in range(frame):
                queue.submit(n)
                n += 1
            time.sleep(0.002)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        time.sleep(0.2)
        assert queue.flush(10.0), "the flush waited behind events submitted after it"
    finally:
        stop.set()
        producer.join()
        queue.close(5.0)


def test_what_an_export_took_is_counted_when_it_fails() -> None:
    from audit_middleware.sinks.batching import BatchingQueue

    queue: BatchingQueue[int] = BatchingQueue(lambda batch: None, max_queue=100)

    def export(batch: list[int]) -> None:
        assert queue.take(3) == [10, 11, 12]
        raise RuntimeError("the connection broke mid-pipeline")

    queue._export = export
    for n in [1, 2, 10, 11, 12]:
        queue._queue.append(n)
    queue._deliver(queue._move(2))  # as the worker does: moved (counted), then delivered
    assert queue.failed.value == 5
    assert queue.counts()["submitted"] == 5 and queue.counts()["queued"] == 0


class _HighFileNumber:
    """An endpoint whose sockets get a file number above 1023, as a busy app server's
    do (select() refuses those; the connection must not)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def connect(self, timeout: float, tls: ssl.SSLContext | None,
                track: Callable[[int | None], None] = lambda fd: None,
                deadline: Callable[[], float | None] = lambda: None) -> socket.socket:
        sock = self.endpoint.connect(timeout, tls, deadline=deadline)
        high = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 1500)
        moved = socket.socket(sock.family, sock.type, sock.proto, fileno=high)
        track(high)
        moved.settimeout(sock.gettimeout())
        sock.close()
        return moved


def test_a_connection_whose_socket_number_is_above_1023_works(
        collector: CollectorProcess) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    try:
        conn = Connection(_HighFileNumber(parse_url(collector.url)),  # type: ignore[arg-type]
                          Hello("high-fd-test"), tls=None, connect_timeout=5.0)
        conn.connect()  # the hello's answer is waited for
        try:
            line = orjson.dumps(event(1)) + b"\n"
            batch = conn.send(encode_batch_body("high-fd-test", [1], [line]), 5.0)
            result = conn.receive(batch, 5.0)
        finally:
            conn.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(result.written) + len(result.duplicates) == 1, result
