"""Slow, silent and half-open clients against a real collector: they run into the
handshake, read and write deadlines, hold at most a bounded amount of its memory, and
cannot keep an honest app from delivering."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import orjson
import pytest

from audit_middleware.wire import BATCH_ID, HEADER, FrameType, Hello
from tests.faults.fleet import App, Collector, Stored, report, scaled, wait_for

pytestmark = pytest.mark.e2e

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
