"""The forwarder's fixtures: a store in a temporary data directory and a real OTLP/HTTP
receiver on a loopback port (tests/otel/otlp_receiver.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.store import StorageSettings, Store
from tests.otel.otlp_receiver import OTLPReceiver


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(StorageSettings(data_dir=tmp_path / "data")) as opened:
        yield opened


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as started:
        yield started
