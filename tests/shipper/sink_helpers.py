"""What the tests of ``CollectorSink`` against an in-process collector share: the
collector (``Collector``), the sink factory's type, events emitted in bulk, and waiting
for a line the collector logs, and a sink whose worker is held in a TCP connect."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from audit_middleware import emit
from audit_middleware.shipper import CollectorSink
from collector.ingest import IngestSettings
from tests.e2e.harness import InProcessCollector, open_store, stored_events, wait_until


class Collector:
    """Start/stop an in-process collector on one socket path, keeping its data dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "c.sock"
        self.url = f"unix://{self.socket}"
        self.data_dir = root / "data"
        self.running: InProcessCollector | None = None
        self.store: Any = None

    def start(self, **settings: Any) -> InProcessCollector:
        self.store = open_store(self.data_dir)
        self.running = InProcessCollector(
            self.store, IngestSettings(socket_path=settings.pop("socket_path", self.socket),
                                       **settings))
        return self.running

    def stop(self) -> None:
        if self.running is not None:
            self.running.close()
            self.store.close()
            self.running = None

    def ids(self) -> list[str]:
        return [e["id"] for e in stored_events(self.data_dir)]


SinkFactory = Callable[..., CollectorSink]


def emit_many(n: int, prefix: str = "t") -> list[str]:
    return [emit("team_created", f"{prefix}{i}").id for i in range(n)]


def connecting_sink(make_sink: SinkFactory, port: int) -> CollectorSink:
    """A sink whose worker holds 10 events in a connect to ``port`` that never completes
    (``unaccepting_port``): at a shutdown's deadline the connect ends and the batch goes
    to the spool."""
    sink = make_sink(url=f"tcp://127.0.0.1:{port}", token="s3cret", connect_timeout=30.0)
    emit_many(10)
    wait_until(lambda: sink._sender._opening is not None, 10, "the worker connecting")
    return sink


def collector_says(caplog: pytest.LogCaptureFixture, *parts: str,
                   timeout: float = 10.0) -> bool:
    """Whether the collector logs a line holding ``parts``, within ``timeout``: it logs
    from its own thread, which may still be at it when the shipper's flush returns."""
    def said() -> bool:
        return any(r.name == "collector.ingest" and all(p in r.getMessage() for p in parts)
                   for r in caplog.records)

    until = time.monotonic() + timeout
    while not said():
        if time.monotonic() > until:
            return False
        time.sleep(0.01)
    return True
