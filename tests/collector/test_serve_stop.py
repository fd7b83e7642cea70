"""``serve``'s stop: the API, ingest and the forwarder drain at once, and each one ends
before the store is closed, even when another one's stop raised. In process, with
stand-ins for the three: no real part can be made to fail its stop on cue."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest

from collector import serve
from collector.stop_signals import StopSignals


class _Api:
    """A query API whose stop takes a few turns of the loop (requests draining)."""

    url = "http://127.0.0.1:1"

    def __init__(self) -> None:
        self.drained = False
        self.started = asyncio.Event()

    async def shutdown(self) -> None:
        self.started.set()
        for _ in range(10):  # turns of the loop: its requests answered
            await asyncio.sleep(0)
        self.drained = True


class _Ingest:
    """An ingest server whose stop raises once the API's stop is under way."""

    def __init__(self, api: _Api) -> None:
        self._api = api
        self.addresses: list[str] = []

    async def shutdown(self, drain_timeout: float) -> None:
        await self._api.started.wait()
        raise RuntimeError("ingest's stop failed")


class _Integrations:
    health = type("Health", (), {"stopping": False})()
    store_stats = None

    def __init__(self, *args: Any) -> None:
        pass

    def start(self, out: Any) -> None:
        pass

    def attach(self, api: Any) -> None:
        pass

    def stop(self, timeout: float) -> None:
        pass


def test_a_part_whose_stop_raised_leaves_the_others_to_end_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop's parts were gathered raising at the first error: the others ran on,
    unwaited, and ``asyncio.run`` cancelled them (the API's requests in progress cut)
    before the store was closed."""
    api = _Api()

    async def start_api(*args: Any) -> _Api:
        return api

    async def nothing(*args: Any, **kwargs: Any) -> None:
        pass

    monkeypatch.setattr(serve, "Integrations", _Integrations)
    monkeypatch.setattr(serve, "_start_api", start_api)
    monkeypatch.setattr(serve, "_write_stats", nothing)
    monkeypatch.setattr(serve, "_final_stats", nothing)
    config = type("Config", (), {"data_dir": tmp_path, "drain_timeout": 1.0})()

    async def stop_at_once() -> None:
        stop = asyncio.Event()
        stop.set()
        await serve._serve_until_stopped(None, config, io.StringIO(),  # type: ignore[arg-type]
                                         _Ingest(api), stop, StopSignals())  # type: ignore[arg-type]

    with pytest.raises(RuntimeError, match="ingest's stop failed"):
        asyncio.run(stop_at_once())
    assert api.drained
