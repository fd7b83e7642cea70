"""How ``audit-collector serve`` stops, signal by signal, as a real process: a second
SIGTERM or SIGINT (Ctrl-C twice, systemd's stop repeated) while the drain waits on a
client that does not read, a stop during start-up, a stop while apps ship, a stop
while a batch (or a hello) is half received, a hangup (a closed terminal) at start-up,
during the drain and while the store closes, a stop on a full disk. Each checks the
exit code, that every acknowledged event is stored exactly once (after the next start,
when the stop was not clean), and that the log has no traceback. The time bounds are
generous (a loaded 2-core machine): what they catch is a stop that waits for the whole
drain (30 s here) or never comes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from audit_middleware.wire import (
    ErrorCode,
    ErrorReply,
    FrameType,
    Hello,
    Result,
    encode_batch,
    encode_batch_body,
)
from tests.e2e.harness import RawClient, closed_by_peer, host_and_port, wire_line
from tests.faults.fleet import App, Collector, Stored, scaled, wait_for
from tests.faults.full_disk import (
    IN_NAMESPACE,
    collector_and_app_on_a_tmpfs,
    fill,
    finish,
    nothing_lost_nothing_twice,
    read_stored,
    rerun_in_a_user_namespace,
)
from tests.faults.test_unread_replies import Pusher, rejected_batch

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(scaled(300, 900))]

DRAINING = "shutting down, draining connections"
#: Seconds a collector may take to end once it was told to stop at once, or to stop
#: cleanly with nothing to drain: far above what it needs, far below a drain held
#: for the ingest write timeout (30 s).
PROMPTLY = 15.0
STOP_SIGNALS = [signal.SIGTERM, signal.SIGINT]


def acknowledged_batches(collector: Collector, batches: int = 5, size: int = 20
                         ) -> list[str]:
    """``batches`` batches of ``size`` events sent by hand and acknowledged; the ids
    written."""
    conn = RawClient(collector.socket)
    try:
        conn.hello()
        written: list[str] = []
        for b in range(batches):
            first = b * size
            lines = [wire_line(n) for n in range(first, first + size)]
            kind, payload = conn.batch(b + 1, lines, list(range(first + 1, first + size + 1)))
            assert kind is FrameType.RESULT, payload
            written += Result.decode(payload).written
    finally:
        conn.close()
    assert written
    return written


def a_long_start_up(tmp: Path) -> tuple[Collector, list[str]]:
    """A collector SIGKILLed with its index deleted: its next start re-indexes 100,000
    records before it serves (about 2.5 s on an idle machine), the window a signal
    sent at start-up lands in. It, and the ids it acknowledged."""
    collector = Collector(tmp / "data").start()
    acknowledged = acknowledged_batches(collector, batches=100, size=1000)
    collector.sigkill()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{collector.data_dir / 'index.sqlite'}{suffix}").unlink(missing_ok=True)
    collector.spawn()
    wait_for(lambda: "configuration" in log_of(collector), 60, "start-up to begin")
    return collector, acknowledged


@contextmanager
def a_drain_held(collector: Collector) -> Iterator[None]:
    """A client whose replies wait unread (the collector stopped reading it): a stop
    waits for it (its drain) until the write timeout."""
    pusher = Pusher(collector.socket)
    try:
        wait_for(pusher.stalled.is_set, 60, "the client to be stalled by the collector")
        yield
    finally:
        pusher.close()


def log_of(collector: Collector) -> str:
    """What it printed so far; all of it once it has exited."""
    if not collector.alive:
        assert collector.output_ended.wait(30), "its output did not end"
    return "".join(collector.output)


def all_stored_once(collector: Collector, acknowledged: list[str]) -> None:
    """After a stop that was not clean: the next start takes the store as it was left,
    and every acknowledged event is there exactly once."""
    collector.start()
    assert collector.stop(PROMPTLY * 4) == 0, log_of(collector)
    stored = Stored.read(collector.data_dir)
    assert stored.missing(acknowledged) == []
    stored.check_exactly_once()


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: s.name)
def test_a_second_stop_signal_during_the_drain_stops_at_once(
        tmp: Path, signum: signal.Signals) -> None:
    """The first signal drains (up to --drain-timeout, 300 s here); the second stops at
    once, as by SIGKILL: it exits by that signal, and loses nothing acknowledged (acks
    follow the fsync). It used to be ignored: the stop waited the drain out."""
    collector = Collector(tmp / "data", "--drain-timeout", "300").start()
    acknowledged = acknowledged_batches(collector)
    assert collector.proc is not None
    with a_drain_held(collector):
        collector.proc.send_signal(signum)
        wait_for(lambda: DRAINING in log_of(collector), 60, "the drain to start")
        collector.proc.send_signal(signum)
        try:
            code = collector.proc.wait(PROMPTLY)
        except subprocess.TimeoutExpired:
            collector.kill()
            raise AssertionError("a second signal did not stop the drain:\n"
                                 + log_of(collector)) from None
    log = log_of(collector)
    assert code == -signum, log
    assert "stopping now" in log, log
    assert "Traceback" not in log, log
    all_stored_once(collector, acknowledged)


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: s.name)
def test_a_stop_signal_during_start_up_stops_cleanly(tmp: Path, signum: signal.Signals
                                                     ) -> None:
    """A stop before ready, while the store opens and repairs what a kill left: the
    repair finishes, the store closes, exit 0. SIGTERM's default action used to end it
    mid-repair (exit -15); SIGINT raised KeyboardInterrupt there (exit 130)."""
    collector, acknowledged = a_long_start_up(tmp)
    assert collector.proc is not None
    collector.proc.send_signal(signum)
    taken = f"{signum.name}: a clean stop"
    wait_for(lambda: taken in log_of(collector) or not collector.alive, 60,
             "the signal to be taken")
    code = collector.proc.wait(60)
    log = log_of(collector)
    assert code == 0, log
    assert taken in log, f"the signal landed after start-up: try a larger store\n{log}"
    assert "Traceback" not in log, log
    assert log.rstrip().endswith("audit-collector: stopped"), log
    all_stored_once(collector, acknowledged)


def test_a_second_stop_signal_during_start_up_stops_at_once(tmp: Path) -> None:
    collector, acknowledged = a_long_start_up(tmp)
    assert collector.proc is not None
    collector.proc.send_signal(signal.SIGINT)
    # Sent together, the two would arrive as one (a pending signal is not queued twice).
    wait_for(lambda: "SIGINT: a clean stop" in log_of(collector) or not collector.alive,
             60, "the first SIGINT to be taken")
    if collector.alive:
        collector.proc.send_signal(signal.SIGINT)
    code = collector.proc.wait(60)
    log = log_of(collector)
    assert code == -signal.SIGINT, log
    assert "stopping now" in log, log
    assert "Traceback" not in log, log
    all_stored_once(collector, acknowledged)


def test_sighup_at_start_up_and_during_the_drain_does_not_end_the_collector(
        tmp: Path) -> None:
    """A hangup (the terminal closed) is no stop: the collector goes on starting, and a
    stop under way goes on draining and ends cleanly (exit 0)."""
    collector = Collector(tmp / "data", "--drain-timeout", "2")
    ready = collector.spawn()
    wait_for(lambda: "configuration" in log_of(collector), 60, "start-up to begin")
    assert collector.proc is not None
    collector.proc.send_signal(signal.SIGHUP)
    assert ready.wait(60) and collector.ready_line, log_of(collector)
    acknowledged = acknowledged_batches(collector)
    with a_drain_held(collector):
        collector.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: DRAINING in log_of(collector), 60, "the drain to start")
        collector.proc.send_signal(signal.SIGHUP)
        code = collector.proc.wait(60)
    log = log_of(collector)
    assert code == 0, log
    assert "Traceback" not in log, log
    assert log.rstrip().endswith("audit-collector: stopped"), log
    stored = Stored.read(collector.data_dir)
    assert stored.missing(acknowledged) == []
    stored.check_exactly_once()


def a_batch_frame(size: int = 200) -> tuple[bytes, list[str]]:
    """A whole BATCH frame of ``size`` events, and their ids."""
    lines = [wire_line(n) for n in range(size)]
    ids = [orjson.loads(line)["id"] for line in lines]
    body = encode_batch_body("test:1:ab", list(range(1, size + 1)), lines)
    return encode_batch(1, body), ids


def stop_after_the_idle_are_closed(collector: Collector) -> None:
    """SIGTERM, returning once the stop has chosen the connections it closes at once
    (those waiting for a frame): an idle connection opened for that is told
    ``shutting_down``, and the rest are chosen in the same step."""
    idle = RawClient(collector.socket)
    try:
        idle.hello()
        assert collector.proc is not None
        collector.proc.send_signal(signal.SIGTERM)
        told_shutting_down(idle)
    finally:
        idle.close()


def told_shutting_down(conn: RawClient) -> ErrorReply:
    error = conn.error()
    assert error.code == ErrorCode.SHUTTING_DOWN, error
    return error


def test_a_batch_half_received_at_a_stop_is_stored_and_acknowledged(tmp: Path) -> None:
    """Its first bytes in before SIGTERM, the rest after: the drain receives it, stores
    it and acknowledges it, and the collector exits 0. The connection used to count as
    idle until the frame was whole: it was closed (shutting_down) for the client to send
    the batch again."""
    collector = Collector(tmp / "data", "--drain-timeout", "60").start()
    frame, ids = a_batch_frame()
    conn = RawClient(collector.socket)
    try:
        conn.hello()
        conn.send(frame[:len(frame) // 2])
        stop_after_the_idle_are_closed(collector)
        # Refused, the connection is closed already: its error frame is what is read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.send(frame[len(frame) // 2:])
        reply = conn.frame()
        assert reply is not None and reply[0] is FrameType.RESULT, reply
        assert sorted(Result.decode(reply[1]).written) == sorted(ids)
    finally:
        conn.close()
    assert collector.proc is not None
    assert collector.proc.wait(PROMPTLY * 4) == 0, log_of(collector)
    assert "Traceback" not in log_of(collector), log_of(collector)
    stored = Stored.read(collector.data_dir)
    assert stored.missing(ids) == []
    stored.check_exactly_once()


def test_a_batch_begun_and_never_finished_holds_the_stop_only_until_the_drain_deadline(
        tmp: Path) -> None:
    """A client that sends a batch's first bytes and then nothing: the stop waits for it
    up to --drain-timeout (2 s here, far under the 30 s read timeout), tells it
    shutting_down and exits 0."""
    collector = Collector(tmp / "data", "--drain-timeout", "2").start()
    frame, _ = a_batch_frame()
    conn = RawClient(collector.socket)
    try:
        conn.hello()
        conn.send(frame[:len(frame) // 2])
        stop_after_the_idle_are_closed(collector)
        assert collector.proc is not None
        assert collector.proc.wait(PROMPTLY) == 0, log_of(collector)
        told_shutting_down(conn)
    finally:
        conn.close()
    assert "Traceback" not in log_of(collector), log_of(collector)


def test_a_client_taking_its_replies_during_the_drain_is_closed_once_answered(
        tmp: Path) -> None:
    """A batch read whole before SIGTERM, its reply (8,000 rejections, ~1.7 MB) waiting
    for the client to take it (the collector reads no further frame meanwhile,
    ``reply_queue``): once the client has taken it, its connection is closed. It used
    to go on to wait for a next frame, which the stop's closing of idle connections had
    passed by: the stop waited for it until --drain-timeout (300 s here)."""
    collector = Collector(tmp / "data", "--drain-timeout", "300").start()
    conn = RawClient(collector.socket)
    try:
        conn.hello()
        conn.send(rejected_batch(1))
        wait_for(conn.all_read, 60, "the collector to read the batch")
        stop_after_the_idle_are_closed(collector)
        reply = conn.frame()
        assert reply is not None and reply[0] is FrameType.RESULT, reply
        # Before, the collector waited for a frame: the read timed out (10 s).
        assert conn.frame() is None
    finally:
        conn.close()
    assert collector.proc is not None
    assert collector.proc.wait(PROMPTLY) == 0, log_of(collector)
    assert "Traceback" not in log_of(collector), log_of(collector)


@pytest.mark.parametrize("read_first", [True, False],
                         ids=["read_before_the_stop", "arriving_with_the_stop"])
def test_a_hello_half_received_at_a_stop_is_closed_at_once(tmp: Path, read_first: bool
                                                           ) -> None:
    """Before its hello a connection has no batch to finish: the stop tells it
    shutting_down at once, without waiting for the rest (--drain-timeout 300 here).
    Its bytes arriving as the stop came (the signal sent at once), the stop's cancel
    used to be lost on Python 3.11 (asyncio.wait_for): the hello waited out its 10 s
    timeout (4 of 5 runs here; the race is not forced)."""
    collector = Collector(tmp / "data", "--drain-timeout", "300").start()
    hello = Hello("test:1:ab").encode()
    conn = RawClient(collector.socket)
    try:
        conn.send(hello[:len(hello) // 2])
        if read_first:
            # Once a later client is welcomed, the collector has read the first one's
            # bytes.
            later = RawClient(collector.socket)
            later.hello()
            later.close()
        assert collector.proc is not None
        collector.proc.send_signal(signal.SIGTERM)
        told_shutting_down(conn)
        assert collector.proc.wait(PROMPTLY) == 0, log_of(collector)
    finally:
        conn.close()
    assert "Traceback" not in log_of(collector), log_of(collector)


def test_an_http_ingest_body_half_received_at_a_stop_is_stored_and_answered(
        tmp: Path) -> None:
    """POST /api/v1/events, its head and half its body in before SIGTERM, the rest
    after: answered 200 once stored (uvicorn drains a request whose head is in), and
    the collector exits 0."""
    token = "s3cret-token-for-the-stop"
    collector = Collector(tmp / "data", "--drain-timeout", "60", api=True,
                          env={"AUDIT_TOKEN": token}).start()
    host, port = host_and_port(collector.api_url())
    body = b"".join(wire_line(n) for n in range(200))
    ids = [orjson.loads(line)["id"] for line in body.splitlines()]
    request = (f"POST /api/v1/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Authorization: Bearer {token}\r\nContent-Type: application/x-ndjson\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    half = len(request) - len(body) // 2
    with socket.create_connection((host, port), timeout=30) as conn, \
            socket.create_connection((host, port), timeout=30) as silent:
        conn.sendall(request[:half])
        assert collector.proc is not None
        collector.proc.send_signal(signal.SIGTERM)
        # The stop closes connections with no request under way: then it has passed ours.
        wait_for(lambda: closed_by_peer(silent), 60, "the stop to close a silent connection")
        conn.sendall(request[half:])
        answer = conn.makefile("rb").readline()
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert collector.proc.wait(PROMPTLY * 4) == 0, log_of(collector)
    assert "Traceback" not in log_of(collector), log_of(collector)
    assert Stored.read(collector.data_dir).missing(ids) == []


class HungUpWhileClosing(Collector):
    module = "tests.faults.hangup_at_close"


def test_sighup_while_the_store_closes_does_not_end_the_collector(tmp: Path) -> None:
    """After the event loop, its handlers were gone: a SIGHUP as the store closed (the
    terminal closed during a stop) took its default action and ended the collector
    before its stop checkpoint."""
    collector = HungUpWhileClosing(tmp / "data").start()
    acknowledged = acknowledged_batches(collector)
    assert collector.stop(PROMPTLY * 4) == 0, log_of(collector)
    log = log_of(collector)
    assert "SIGHUP while not serving" in log, log
    assert "Traceback" not in log, log
    assert log.rstrip().endswith("audit-collector: stopped"), log
    stored = Stored.read(collector.data_dir)
    assert stored.missing(acknowledged) == []
    stored.check_exactly_once()


def test_sigterm_while_apps_ship_stores_every_acknowledged_event_once(tmp: Path) -> None:
    """Stopped (SIGTERM) and started again under load, twice: a clean exit each time,
    and after the app delivered its spool, everything it emitted stored exactly once."""
    collector = Collector(tmp / "data").start()
    app = App("app", collector.url, tmp / "spool", tmp / "logs", burst=20, pause=0.005)
    try:
        for _ in range(2):
            acked = app.acknowledged_count()
            wait_for(lambda n=acked: app.acknowledged_count() > n + 200, 60, "acks")
            assert collector.proc is not None
            collector.proc.send_signal(signal.SIGTERM)
            # Its drain lasts up to --drain-timeout (10 s by default).
            assert collector.proc.wait(60) == 0, log_of(collector)
            assert "Traceback" not in log_of(collector), log_of(collector)
            collector.start()
    finally:
        result = finish(collector, app)
    _, stored = read_stored(collector)
    nothing_lost_nothing_twice(stored, app, result)


def test_sigterm_on_a_full_disk_stops_cleanly_and_loses_nothing(tmp: Path) -> None:
    """The disk fills while an app ships (it spools): SIGTERM still ends the collector
    cleanly, and once space is freed and it is started again, everything arrives once."""
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return
    with collector_and_app_on_a_tmpfs(tmp, "--max-segment-bytes", "1MiB") as (
            collector, app, ballast):
        try:
            wait_for(lambda: app.acknowledged_count() > 200, 60, "acks")
            fill(ballast)
            spooled = len(app.spooled())
            wait_for(lambda: len(app.spooled()) > spooled, 60,
                     "the app to spool while the disk is full")
            assert collector.proc is not None
            collector.proc.send_signal(signal.SIGTERM)
            assert collector.proc.wait(60) == 0, log_of(collector)
            assert "Traceback" not in log_of(collector), log_of(collector)
        finally:
            result = finish(collector, app, free=ballast)  # started again, on free space
        log, stored = read_stored(collector)
    assert "Traceback" not in log, log[-3000:]
    nothing_lost_nothing_twice(stored, app, result)
