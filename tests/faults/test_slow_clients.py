"""Slow, silent and half-open clients against a real collector: they run into the
handshake, read and write deadlines, hold at most a bounded amount of its memory, and
cannot keep an honest app from delivering."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from audit_middleware.wire import BATCH_ID, HEADER, MAX_BATCH_EVENTS, FrameType, Hello
from tests.e2e.harness import flooding, host_and_port, lower_file_limit
from tests.faults.fleet import App, Collector, Stored, report, scaled, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(scaled(300, 3600))]

TOKEN = "slow-clients-token"
ATTACKERS = scaled(64, 400)


def tcp_port(collector: Collector) -> int:
    match = re.search(r"tcp:127\.0\.0\.1:(\d+)", collector.ready_line)
    assert match, collector.ready_line
    return int(match[1])


def unix(collector: Collector) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(collector.socket))
    return sock


def honest_delivery(collector: Collector, tmp: Path, name: str, events: int = 200) -> dict:
    """An app that emits ``events`` and waits until all are acknowledged."""
    app = App(name, collector.url, tmp / f"spool-{name}", tmp / "logs", burst=events,
              pause=60.0, deliver_timeout=60.0)
    wait_for(lambda: app.acknowledged_count() >= events, 60, f"{name}'s events")
    return app.finish()


def test_unauthenticated_tcp_clients_cannot_lock_out_the_apps(tmp: Path) -> None:
    """An attacker who can reach the TCP port but has no token keeps every connection
    slot busy with silent connections, reconnecting as soon as one is closed. Honest
    apps (on the unix socket) must still be served, and quickly: not after the attack."""
    collector = Collector(tmp / "data", "--tcp", "127.0.0.1:0", "--max-connections", "32",
                          "--handshake-timeout", "30s", env={"AUDIT_TOKEN": TOKEN}).start()
    port = tcp_port(collector)
    stop = threading.Event()
    held: list[socket.socket] = []

    def attack() -> None:
        while not stop.is_set():
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                pass
            stop.wait(0.005)

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    try:
        wait_for(lambda: len(held) > 64, 30, "the attacker's connections")
        started = time.monotonic()
        result = honest_delivery(collector, tmp, "honest")
        took = time.monotonic() - started
    finally:
        stop.set()
        attacker.join()
        for sock in held:
            sock.close()
    assert collector.stop() == 0
    report("silent unauthenticated TCP connections (slot exhaustion)",
           attacker_connections=len(held), acknowledged=result["acknowledged"],
           stored=len(Stored.read(collector.data_dir).in_segments),
           lost=result["emitted"] - result["acknowledged"], honest_delivery_s=round(took, 1))
    assert result["delivered"] and result["acknowledged"] == 200
    assert took < 15, "the honest app waited for the attack to end (handshake timeout 30s)"


def test_trickling_and_never_reading_clients_hold_bounded_memory(tmp: Path) -> None:
    """Clients that trickle a frame a byte at a time, and clients that send batches
    without ever reading a reply: the read deadline closes the first, the reply backlog
    bound (collector/reply_queue.py) stops reading from the second; memory stays bounded
    and an honest app keeps delivering meanwhile."""
    collector = Collector(tmp / "data", "--max-frame", "128KiB", "--read-timeout", "1s",
                          "--max-connections", str(ATTACKERS * 2 + 16)).start()
    before = collector.memory()
    tricklers, pushers = [], []
    for _ in range(ATTACKERS):
        sock = unix(collector)
        sock.sendall(Hello("trickle:1:ab").encode() + HEADER.pack(128 * 1024, FrameType.BATCH))
        tricklers.append(sock)
    # Pushers: valid framing, events the validator rejects (nothing reaches the disk),
    # so each reply lists a reason per event and is large.
    bad = b"{}\n" * 8_000
    body = orjson.dumps({"source": "push:1:ab", "seqs": list(range(1, 8_001))}) + b"\n" + bad
    frame = HEADER.pack(BATCH_ID.size + len(body), FrameType.BATCH) + BATCH_ID.pack(1) + body
    assert len(frame) < 128 * 1024
    stop = threading.Event()
    sent = [0]

    def push(sock: socket.socket) -> None:
        sock.settimeout(0.5)
        while not stop.is_set():
            try:
                sock.sendall(frame)
                sent[0] += 1
            except TimeoutError:
                continue  # the collector stopped reading us: that is the point
            except OSError:
                return

    threads = []
    for _ in range(ATTACKERS // 4):
        sock = unix(collector)
        sock.sendall(Hello("push:1:ab").encode())
        pushers.append(sock)
        threads.append(threading.Thread(target=push, args=(sock,), daemon=True))
    peak = before.rss_kib
    try:
        for t in threads:
            t.start()
        for _ in range(20):  # a trickle: one byte each, well under the read deadline
            for sock in tricklers:
                try:
                    sock.send(b"\0")
                except OSError:
                    pass
            time.sleep(0.1)
            peak = max(peak, collector.memory().rss_kib)
        result = honest_delivery(collector, tmp, "honest")
        time.sleep(1.0)  # the pushers keep trying
        peak = max(peak, collector.memory().rss_kib)
        closed = sum(1 for s in tricklers if _closed_by_peer(s))
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for sock in tricklers + pushers:
            sock.close()
    assert collector.stop() == 0
    report("trickling and never-reading clients", tricklers=len(tricklers),
           pushers=len(pushers), frames_pushed=sent[0], tricklers_closed=closed,
           collector_rss_mib=f"{before.rss_kib // 1024}->{peak // 1024} (peak)",
           acknowledged=result["acknowledged"], lost=result["emitted"] - result["acknowledged"])
    assert result["delivered"] and result["acknowledged"] == 200
    assert closed == len(tricklers), "a trickling client outlived the read deadline"
    # The collector stops reading a client whose unread replies pass the backlog bound
    # (the first of these, ~1.7 MB, does; the socket buffers hold a few more frames):
    # pushing for seconds gets nowhere.
    assert sent[0] <= 16 * len(pushers), "the collector kept reading from clients that " \
        "never read a reply"
    # A pusher holds about one reply (a reason per rejected event: it held ~11 MB when
    # its 4 batches in flight, one read ahead and their replies were kept); a trickler
    # one partial frame.
    assert peak - before.rss_kib < 64 * 1024 + len(pushers) * 4 * 1024 + len(tricklers) * 256


def test_a_frame_of_tiny_lines_is_refused_before_it_costs_memory(tmp: Path) -> None:
    """Four MiB of three-byte lines: each would be parsed and rejected with a reason,
    costing the collector about a hundred times the frame. Refused as a whole
    (bad_batch: more than MAX_BATCH_EVENTS events) before any line is looked at."""
    collector = Collector(tmp / "data").start()  # default max_frame: 4 MiB
    before = collector.memory()
    n = 370_000
    body = orjson.dumps({"source": "tiny:1:ab", "seqs": list(range(1, n + 1))}) + b"\n" \
        + b"{}\n" * n
    sock = unix(collector)
    sock.sendall(Hello("tiny:1:ab").encode()
                 + HEADER.pack(BATCH_ID.size + len(body), FrameType.BATCH)
                 + BATCH_ID.pack(1) + body)
    sock.settimeout(30)
    replies = b""
    while chunk := sock.recv(65536):
        replies += chunk
    sock.close()
    growth = collector.memory().peak_kib - before.rss_kib
    alive = collector.alive
    assert collector.stop() == 0
    report("a 4 MiB frame of tiny lines", events=n, collector_peak_growth_mib=growth // 1024,
           acknowledged=0, stored=0, lost=0)
    assert alive and b"bad_batch" in replies and b"over the limit" in replies
    assert growth < 64 * 1024, f"{growth // 1024} MiB for one frame of 4 MiB"


def test_an_http_body_of_tiny_lines_costs_bounded_memory(tmp: Path) -> None:
    collector = Collector(tmp / "data", api=True, env={"AUDIT_TOKEN": TOKEN}).start()
    before = collector.memory()
    body = b"{}\n" * (1024 * 1024 // 3)
    response = httpx.post(f"{collector.api_url()}/api/v1/events", content=body, timeout=120,
                          headers={"Authorization": f"Bearer {TOKEN}"})
    growth = collector.memory().peak_kib - before.rss_kib
    assert collector.stop() == 0
    report("a 1 MiB HTTP ingest body of tiny lines", events=len(body) // 3,
           status=response.status_code, collector_peak_growth_mib=growth // 1024,
           acknowledged=0, stored=0, lost=0)
    assert response.status_code in (400, 413, 422)
    assert growth < 64 * 1024, f"{growth // 1024} MiB for a 1 MiB request"


def test_a_shipper_with_larger_batches_splits_them_under_the_event_cap(tmp: Path) -> None:
    collector = Collector(tmp / "data").start()
    app = App("big", collector.url, tmp / "spool", tmp / "logs", burst=3 * MAX_BATCH_EVENTS,
              pause=60.0, batch_size=3 * MAX_BATCH_EVENTS, max_delay=1.0)
    wait_for(lambda: app.acknowledged_count() >= 3 * MAX_BATCH_EVENTS, 60, "the events")
    result = app.finish()
    assert collector.stop() == 0
    assert result["delivered"] and result["dropped"] == 0 and result["rejected"] == 0
    assert len(Stored.read(collector.data_dir).in_segments) == 3 * MAX_BATCH_EVENTS


@pytest.mark.parametrize("half", [
    b"GET /api/v1/audit-logs HTTP/1.1\r\nHost: localhost\r\n",  # the headers never end
    # The sign-in reads its body before any token is checked: the body never ends.
    b"POST /api/v1/session HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4000\r\n\r\n{",
], ids=["headers", "sign-in body"])
def test_slow_http_clients_cannot_exhaust_the_collectors_files(tmp: Path, half: bytes) -> None:
    """Clients of the query API that send half a request and wait. To reach the limit
    quickly the collector's file limit is lowered to 200 (prlimit); with the usual
    1024 or more it takes only more connections."""
    collector = Collector(tmp / "data", api=True).start()
    lower_file_limit(collector, 200)
    address = host_and_port(collector.api_url())
    held = []
    for _ in range(300):
        try:
            sock = socket.create_connection(address, timeout=2)
            sock.sendall(half)
            held.append(sock)
        except OSError:
            break
    app = App("honest", collector.url, tmp / "spool", tmp / "logs", burst=100, pause=60.0)
    try:
        wait_for(lambda: app.acknowledged_count() >= 100, 10,
                 "an honest app's events while slow HTTP clients hold the API")
    finally:
        for sock in held:
            sock.close()
    result = app.finish()
    assert collector.stop() == 0
    report(f"slow HTTP clients holding the API with half a request ({half.split()[0].decode()}"
           f", file limit 200)", slow_clients=len(held),
           acknowledged=result["acknowledged"], lost=result["emitted"] - result["acknowledged"])


def test_a_flood_of_http_connections_cannot_exhaust_the_collectors_files(tmp: Path) -> None:
    """New connections to the query API without a request (or a credential), 300 held
    and the oldest closed as more come, as an attacker who reconnects; the collector's
    file limit 200 (prlimit). asyncio's server accepted every one waiting, far past the
    API's limit (a quarter of the files) between two passes of the guard: the process
    ran out of files for as long as the flood went on, the apps' socket with them, and
    asyncio logged a traceback for each connection it could not accept (thousands a
    second). Now a connection is accepted at the limit only by closing the one nearest
    its deadline."""
    collector = Collector(tmp / "data", api=True).start()
    lower_file_limit(collector, 200)
    # What the collector holds before the flood: machines differ (the store's, the
    # index's, the interpreter's), and only the flood's share is under test.
    idle = len(os.listdir(f"/proc/{collector.pid}/fd"))
    app = None
    try:
        with flooding(host_and_port(collector.api_url())):
            app = App("honest", collector.url, tmp / "spool", tmp / "logs", burst=100,
                      pause=60.0)
            wait_for(lambda: app.acknowledged_count() >= 100, 10,
                     "an honest app's events while a flood of connections holds the API")
            files = len(os.listdir(f"/proc/{collector.pid}/fd"))
    finally:
        if app is not None:
            result = app.finish()  # after the flood: what it spooled, delivered
    assert collector.stop() == 0
    output = "".join(collector.output)
    report("a flood of HTTP connections to the query API (file limit 200)",
           acknowledged=result["acknowledged"], collector_files=files, idle_files=idle,
           lost=result["emitted"] - result["acknowledged"])
    assert "out of system resource" not in output and "Traceback" not in output, output
    # The API's limit (a quarter of 200), and a few for the app's connection and what
    # the store opens while it delivers.
    assert files - idle < 200 // 4 + 24, f"{files} files open, {idle} before the flood"


def test_endless_http_headers_are_refused_before_they_cost_memory(tmp: Path) -> None:
    """One client, no credential, a request whose headers never end, sent as fast as
    the collector reads. With httptools installed (uvicorn[standard]), uvicorn's "auto"
    parser kept every header line until the headers' end: the collector grew by the
    gigabytes sent within the guard's 10 s. The API parses with h11: refused (400) past
    16 KiB."""
    collector = Collector(tmp / "data", api=True).start()
    before = collector.memory()
    line = b"X-Filler: " + b"a" * 4000 + b"\r\n"
    sent = 0
    with socket.create_connection(host_and_port(collector.api_url()), timeout=5) as sock:
        sock.sendall(b"GET /api/v1/audit-logs HTTP/1.1\r\nHost: localhost\r\n")
        try:
            while sent < 64 * 1024 * 1024:
                sock.sendall(line * 64)
                sent += len(line) * 64
        except OSError:
            pass  # refused: the collector closed the connection
        closed = _closed_by_peer(sock)
    growth = collector.memory().peak_kib - before.rss_kib
    assert collector.stop() == 0
    report("endless HTTP headers", sent_mib=sent >> 20, closed=closed,
           collector_peak_growth_mib=growth // 1024)
    assert closed and sent < 64 * 1024 * 1024, "the collector read 64 MiB of headers"
    assert growth < 32 * 1024, f"{growth // 1024} MiB for one request's headers"


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the collector has closed this connection (its error frame, then EOF)."""
    sock.settimeout(5)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:
        return True


def ingest_gauges(collector: Collector) -> dict[str, float]:
    """The collector's own figures from GET /metrics (name without the
    ``audit_collector_`` prefix -> value)."""
    text = httpx.get(f"{collector.api_url()}/metrics", timeout=10).text
    found = re.findall(r"^(audit_collector_\w+) (\S+)$", text, re.MULTILINE)
    return {name.removeprefix("audit_collector_"): float(value) for name, value in found}


def test_half_sent_frames_hold_at_most_the_frame_budget(tmp: Path) -> None:
    """Clients that say hello, announce a maximum-size batch and send half of it: each
    held a whole frame of the collector (4 MiB by default, 1,024 connections ~4 GiB:
    OOM-killed). Now every frame being read takes its bytes from one budget
    (max_inflight_bytes) first: the frames that do not fit wait unread, until their read
    deadline (those holding room, lagging while others wait, are cut sooner:
    collector/frame_rate.py); an honest app still gets everything acknowledged."""
    frame, budget, slow = 128 * 1024, 512 * 1024, 12
    collector = Collector(tmp / "data", "--max-frame", str(frame), "--max-inflight-bytes",
                          str(budget), "--read-timeout", "5s", api=True).start()
    clients = []
    for n in range(slow):
        sock = unix(collector)
        sock.sendall(Hello(f"half:{n}:ab").encode() + HEADER.pack(frame, FrameType.BATCH)
                     + b"\0" * (frame // 2))
        clients.append(sock)
    try:
        # Four frames fit: the other eight wait, unread, behind them.
        wait_for(lambda: ingest_gauges(collector)["ingest_inflight_waiting"] == slow - 4,
                 10, "the frames past the budget waiting")
        during = ingest_gauges(collector)
        result = honest_delivery(collector, tmp, "honest")
        closed = sum(1 for sock in clients if _closed_by_peer(sock))
    finally:
        for sock in clients:
            sock.close()
    # Every frame's bytes given back: stored, or its connection closed.
    wait_for(lambda: ingest_gauges(collector)["ingest_inflight_bytes"] == 0, 10,
             "the budget back to empty")
    after = ingest_gauges(collector)
    assert collector.stop() == 0
    report("half-sent maximum-size frames against the frame budget", slow_clients=slow,
           budget_kib=budget // 1024,
           peak_inflight_kib=int(after["ingest_inflight_peak_bytes"]) // 1024,
           acknowledged=result["acknowledged"],
           lost=result["emitted"] - result["acknowledged"])
    assert during["ingest_inflight_bytes"] == budget
    assert after["ingest_inflight_peak_bytes"] <= budget
    assert after["ingest_inflight_waits_total"] >= slow - 4
    assert closed == slow, "a half-sent frame outlived its read deadline"
    assert result["delivered"] and result["acknowledged"] == 200
    assert len(Stored.read(collector.data_dir).in_segments) == 200


def test_a_slow_http_ingest_body_holds_the_budget_only_until_the_read_deadline(
        tmp: Path) -> None:
    """An HTTP ingest request whose body stops half way: it held up to max_frame of the
    collector with no deadline. Its declared length is taken from the frame budget while
    it is read, and given back when it is answered 503 (timeout) at read_timeout."""
    collector = Collector(tmp / "data", "--read-timeout", "1s", api=True,
                          env={"AUDIT_TOKEN": TOKEN}).start()
    declared = 100_000
    with socket.create_connection(host_and_port(collector.api_url()), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/events HTTP/1.1\r\nHost: localhost\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                     b"Content-Type: application/x-ndjson\r\n"
                     b"Content-Length: " + str(declared).encode() + b"\r\n\r\n{")
        wait_for(lambda: ingest_gauges(collector)["ingest_inflight_bytes"] == declared, 10,
                 "the body's declared bytes taken from the budget")
        answer = b""
        while b"}" not in answer.partition(b"\r\n\r\n")[2]:  # the whole JSON answer
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
    after = ingest_gauges(collector)
    assert collector.stop() == 0
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b'"error":"timeout"' in answer and b"retry-after: 1" in answer.lower(), answer
    assert after["ingest_inflight_bytes"] == 0 and after["http_timeouts_total"] == 1


def test_trickled_frames_holding_the_budget_do_not_stall_an_honest_app(tmp: Path) -> None:
    """Clients that announce maximum-size frames, trickle a byte now and then, and
    reconnect as soon as they are closed, at staggered times: every frame of the budget
    was theirs for its whole read_timeout, and an honest app's batch, queued behind
    theirs, waited most of its own read deadline (or past it: closed with timeout, sent
    again, queued again). Now a frame that holds the budget while others wait must
    arrive at a minimum rate (collector/frame_rate.py): a trickled one is cut about a
    second after others start waiting, and the honest batch gets its turn soon."""
    collector = Collector(tmp / "data", "--max-frame", str(TRICKLED_FRAME),
                          "--max-inflight-bytes", str(TRICKLED_BUDGET), "--read-timeout",
                          f"{TRICKLED_READ_TIMEOUT:g}s", "--max-connections", "64",
                          api=True).start()

    def announce(n: int) -> socket.socket:
        sock = unix(collector)
        sock.sendall(Hello(f"trickle:{n}:ab").encode())
        welcome = _read_exactly(sock, HEADER.size)  # then its payload: nothing is left
        _read_exactly(sock, HEADER.unpack(welcome)[0])  # to take for the collector's end
        sock.sendall(HEADER.pack(TRICKLED_FRAME, FrameType.BATCH))
        return sock

    took, result, reconnects = _honest_app_against_tricklers(collector, tmp, announce)
    after = ingest_gauges(collector)
    assert collector.stop() == 0
    report("trickled frames holding the frame budget", tricklers=TRICKLERS,
           reconnects=reconnects, honest_seconds=f"{took:.1f}",
           acknowledged=result["acknowledged"])
    assert result["acknowledged"] == 200
    # Before, the honest batch waited for a trickled frame's read deadline to pass
    # (from 3/4 of its own on, 4 frames' deadlines staggered over it), if not past it.
    assert took < TRICKLED_READ_TIMEOUT / 2, f"the honest batch waited {took:.1f}s"
    assert after["ingest_inflight_too_slow_total"] > 0


def test_trickled_http_ingest_bodies_holding_the_budget_do_not_stall_an_honest_app(
        tmp: Path) -> None:
    """The same trickle as POST /api/v1/events bodies (a token holder's): a body takes
    its Content-Length from the same budget, and only read_timeout bounded it, so the
    socket's honest app waited behind them as behind trickled frames. Now a body holding
    room while others wait is held to the same minimum rate: answered 503 timeout (its
    sender told to send it again) and its room given back."""
    collector = Collector(tmp / "data", "--max-frame", str(TRICKLED_FRAME),
                          "--max-inflight-bytes", str(TRICKLED_BUDGET), "--read-timeout",
                          f"{TRICKLED_READ_TIMEOUT:g}s", api=True,
                          env={"AUDIT_TOKEN": TOKEN}).start()
    api = host_and_port(collector.api_url())

    def announce(n: int) -> socket.socket:
        sock = socket.create_connection(api, timeout=10)
        sock.sendall(b"POST /api/v1/events HTTP/1.1\r\nHost: localhost\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                     b"X-Audit-Source: trickle-" + str(n).encode() + b"\r\n"
                     b"Content-Type: application/x-ndjson\r\n"
                     b"Content-Length: " + str(TRICKLED_FRAME).encode() + b"\r\n\r\n")
        return sock

    took, result, reconnects = _honest_app_against_tricklers(collector, tmp, announce)
    # Every body's room given back: cut, or its connection closed with the trickle.
    wait_for(lambda: ingest_gauges(collector)["ingest_inflight_bytes"] == 0, 10,
             "the budget back to empty")
    after = ingest_gauges(collector)
    assert collector.stop() == 0
    report("trickled HTTP ingest bodies holding the frame budget", tricklers=TRICKLERS,
           reconnects=reconnects, honest_seconds=f"{took:.1f}",
           acknowledged=result["acknowledged"])
    assert result["acknowledged"] == 200
    # Before, as with trickled frames: 20 s, a trickled body's whole read_timeout.
    assert took < TRICKLED_READ_TIMEOUT / 2, f"the honest batch waited {took:.1f}s"
    assert after["http_inflight_too_slow_total"] > 0


# The trickle tests' collector: 4 maximum-size frames fill the budget, 12 tricklers.
TRICKLED_FRAME, TRICKLED_BUDGET, TRICKLED_READ_TIMEOUT, TRICKLERS = (
    128 * 1024, 512 * 1024, 20.0, 12)


def _honest_app_against_tricklers(collector: Collector, tmp: Path,
                                  announce: Callable[[int], socket.socket]
                                  ) -> tuple[float, dict, int]:
    """An honest app's 200 events sent on the unix socket while ``TRICKLERS`` clients,
    each a connection from ``announce`` (its n-th) that has claimed a maximum-size
    payload, trickle a byte every 0.1 s and reconnect as soon as they are answered or
    closed: the seconds the app took, its result, the tricklers' connections."""
    stop = threading.Event()
    reconnects = [0]

    def trickle() -> None:
        socks: list[socket.socket | None] = [None] * TRICKLERS
        begun = time.monotonic()
        while not stop.wait(0.1):
            for i, sock in enumerate(socks):
                if sock is None:
                    # Staggered over a read deadline: their payloads' deadlines are too,
                    # as a steady attack's are (started at once, they all ended at once,
                    # and whatever was queued then got in).
                    if time.monotonic() - begun < i * TRICKLED_READ_TIMEOUT / TRICKLERS:
                        continue
                else:
                    try:
                        if sock.recv(65536, socket.MSG_DONTWAIT) is not None:
                            raise ConnectionError  # its answer, or its end: closed
                    except BlockingIOError:
                        with contextlib.suppress(OSError):
                            sock.send(b"\0")  # a byte: the payload is still on its way
                        continue
                    except OSError:
                        pass
                    sock.close()
                with contextlib.suppress(OSError):
                    socks[i] = announce(reconnects[0])
                    reconnects[0] += 1
        for sock in socks:
            if sock is not None:
                sock.close()

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        # All of them connected, some already closed once and back.
        wait_for(lambda: reconnects[0] >= 2 * TRICKLERS, 3 * TRICKLED_READ_TIMEOUT,
                 "the tricklers' second payloads")
        wait_for(lambda: ingest_gauges(collector)["ingest_inflight_waiting"] > 0, 10,
                 "the budget taken by trickled payloads")
        started = time.monotonic()
        app = App("honest", collector.url, tmp / "spool-honest", tmp / "logs", burst=200,
                  pause=60.0, deliver_timeout=60.0)
        wait_for(lambda: app.acknowledged_count() >= 200, 3 * TRICKLED_READ_TIMEOUT,
                 "the honest app's events")
        took = time.monotonic() - started
        result = app.finish()
    finally:
        stop.set()
        thread.join(5)
    return took, result, reconnects[0]


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = sock.recv(size - len(data))
        if not piece:
            raise ConnectionError("the collector closed the connection")
        data += piece
    return data
