"""Clients that push batches the validator rejects and never read the answers, against a
real collector: each costs it a bounded reply backlog (it stops reading them), and a
client that reads its replies is served meanwhile."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import orjson
import pytest

from audit_middleware.wire import BATCH_ID, HEADER, FrameType, Hello, Result
from tests.collector.storage_helpers import event
from tests.e2e.harness import RawClient
from tests.faults.fleet import Collector, memory_dir, report, scaled, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(scaled(180, 900))]

PUSHERS = scaled(24, 100)
#: A batch of 8,000 events the validator rejects (``{}``): 24 KB on the wire, answered
#: with a reason per event, about 1.7 MB.
BAD_EVENTS = 8_000
#: What one never-reading client may cost the collector: its socket's reply backlog
#: bound plus the one reply that crossed it. It used to hold 4 batches in flight, one
#: read ahead and the reply being sent, about 11 MB.
PER_CLIENT_KIB = 4 * 1024


def rejected_batch(batch: int) -> bytes:
    body = orjson.dumps({"source": "push:1:ab", "seqs": list(range(1, BAD_EVENTS + 1))}) \
        + b"\n" + b"{}\n" * BAD_EVENTS
    return HEADER.pack(BATCH_ID.size + len(body), FrameType.BATCH) + BATCH_ID.pack(batch) \
        + body


class Pusher:
    """One connection sending rejected batches as fast as the collector reads them,
    never reading a reply; ``stalled`` once a send has waited half a second."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.sendall(Hello("push:1:ab").encode())
        self.sent = 0
        self.stalled = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._push, daemon=True)
        self._thread.start()

    def _push(self) -> None:
        self.sock.settimeout(0.5)
        frame = rejected_batch(1)
        while not self._stop.is_set():
            try:
                self.sock.sendall(frame)  # a partial send on timeout: the frame is cut
                self.sent += 1
            except TimeoutError:
                self.stalled.set()  # the collector stopped reading us: the point
                return
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_clients_that_never_read_their_replies_hold_a_bounded_backlog_each() -> None:
    with memory_dir() as tmp:
        collector = Collector(tmp / "data", "--max-connections", str(PUSHERS + 16)).start()
        before = collector.memory()
        pushers: list[Pusher] = []
        try:
            pushers = [Pusher(collector.socket) for _ in range(PUSHERS)]
            wait_for(lambda: all(p.stalled.is_set() for p in pushers), scaled(60, 300),
                     "every pusher to be stalled by the collector")
            time.sleep(1.0)  # what the collector read last is answered and held by now
            honest = RawClient(collector.socket)
            honest.hello()
            events = [orjson.dumps(event()) + b"\n" for _ in range(20)]
            kind, payload = honest.batch(1, events)
            honest.close()
            after = collector.memory()
            frames = [p.sent for p in pushers]
        finally:
            for p in pushers:
                p.close()
        alive = collector.alive
        assert collector.stop() == 0
    growth = after.peak_kib - before.rss_kib
    report("clients that never read their replies", pushers=PUSHERS,
           frames_pushed=sum(frames), most_frames_one_client=max(frames),
           collector_rss_mib=f"{before.rss_kib // 1024}->{after.peak_kib // 1024} (peak)",
           per_client_kib=growth // PUSHERS, acknowledged=20, lost=0)
    assert alive
    assert kind is FrameType.RESULT, payload
    assert len(Result.decode(payload).written) == 20, "the reading client was not served"
    assert growth < 32 * 1024 + PUSHERS * PER_CLIENT_KIB, (
        f"{growth // 1024} MiB for {PUSHERS} clients that never read: "
        f"{growth // PUSHERS} KiB each, over {PER_CLIENT_KIB} KiB")
