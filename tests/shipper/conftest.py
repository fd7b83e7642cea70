"""Fixtures of the tests of ``CollectorSink`` against a real ingest server and Store on a
real unix socket, run in-process (tests/e2e runs the collector as a subprocess): the
collector, started and stopped by the test, and sinks of it, closed after the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from audit_middleware import configure
from audit_middleware.shipper import CollectorSink
from audit_middleware.testing import reset_configuration
from tests.shipper.sink_helpers import Collector, SinkFactory


@pytest.fixture
def collector(root: Path) -> Iterator[Collector]:
    c = Collector(root)
    yield c
    c.stop()


@pytest.fixture
def make_sink(root: Path, collector: Collector) -> Iterator[SinkFactory]:
    sinks: list[CollectorSink] = []

    def make(**options: Any) -> CollectorSink:
        options.setdefault("spool_dir", root / "spool")
        options.setdefault("backoff_max", 0.2)
        sink = CollectorSink(options.pop("url", collector.url), **options)
        sinks.append(sink)
        configure(sink=sink)
        return sink

    yield make
    reset_configuration()
    for sink in sinks:
        sink.close(timeout=5)
