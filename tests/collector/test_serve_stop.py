"""``serve``'s stop: the API, ingest and the forwarder drain at once, and each one ends
before the store is closed, even when another one's stop raised. In process, with
stand-ins for the three: no real part can be made to fail its stop on cue."""

from __future__ import annotations

import asyncio
import io
import json
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
    """An ingest server whose stop raises once the API's stop is under way (``fails``)."""

    def __init__(self, api: _Api, fails: bool = True) -> None:
        self._api = api
        self._fails = fails
        self.addresses: list[str] = []

    async def shutdown(self, drain_timeout: float) -> None:
        await self._api.started.wait()
        if self._fails:
            raise RuntimeError("ingest's stop failed")

    def stats(self) -> dict[str, int]:
        return {}


class _StoreStats:
    """The store's stats as ``serve`` reads them (``SingleFlight``): none."""

    async def read(self, timeout: float, *, fresh: bool = False) -> dict[str, Any]:
        return {}


class _Integrations:
    """The forwarder and the rest (``collector.integrations``); ``attach`` raising
    ``attach_fails``, ``stop`` raising ``stop_fails`` (None: neither raises)."""

    health = type("Health", (), {"stopping": False})()
    store_stats = _StoreStats()
    attach_fails: Exception | None = None
    stop_fails: Exception | None = None
    stopped = False

    def __init__(self, *args: Any) -> None:
        pass

    def start(self, out: Any) -> None:
        pass

    def attach(self, api: Any) -> None:
        if self.attach_fails is not None:
            raise self.attach_fails

    def stop(self, timeout: float) -> None:
        type(self).stopped = True
        if self.stop_fails is not None:
            raise self.stop_fails

    def stats(self) -> dict[str, Any]:
        return {}


class _FailingApi(_Api):
    async def shutdown(self) -> None:
        raise RuntimeError("the API's stop failed")


@pytest.fixture
def integrations(monkeypatch: pytest.MonkeyPatch) -> type[_Integrations]:
    class Integrations(_Integrations):
        pass

    monkeypatch.setattr(serve, "Integrations", Integrations)
    return Integrations


def _serve_until_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         api: _Api, *, final_stats: bool = False,
                         ingest_fails: bool = True) -> None:
    """``serve._serve_until_stopped`` with ``api`` and a stop asked already;
    ``final_stats``: the stop's last write of the stats file made (into ``tmp_path``)."""
    async def start_api(*args: Any) -> _Api:
        return api

    async def nothing(*args: Any, **kwargs: Any) -> None:
        pass

    monkeypatch.setattr(serve, "_start_api", start_api)
    monkeypatch.setattr(serve, "_write_stats", nothing)
    if not final_stats:
        monkeypatch.setattr(serve, "_final_stats", nothing)
    config = type("Config", (), {"data_dir": tmp_path, "drain_timeout": 1.0})()

    async def stop_at_once() -> None:
        stop = asyncio.Event()
        stop.set()
        await serve._serve_until_stopped(None, config, io.StringIO(),  # type: ignore[arg-type]
                                         _Ingest(api, ingest_fails), stop, StopSignals())  # type: ignore[arg-type]

    asyncio.run(stop_at_once())


def test_a_part_whose_stop_raised_leaves_the_others_to_end_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        integrations: type[_Integrations]) -> None:
    """The stop's parts were gathered raising at the first error: the others ran on,
    unwaited, and ``asyncio.run`` cancelled them (the API's requests in progress cut)
    before the store was closed."""
    api = _Api()
    with pytest.raises(RuntimeError, match="ingest's stop failed"):
        _serve_until_stopped(tmp_path, monkeypatch, api)
    assert api.drained


def test_a_start_up_that_failed_is_said_and_every_part_stopped_whatever_a_stop_raises(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, integrations: type[_Integrations],
        caplog: pytest.LogCaptureFixture) -> None:
    """A start-up that failed once the API listened: the API's stop raising in the
    clean-up skipped the forwarder's (its thread left running while the store closed),
    and its error replaced the start-up's, which was never said."""
    integrations.attach_fails = RuntimeError("the start-up failed")
    with pytest.raises(RuntimeError, match="the start-up failed"):
        _serve_until_stopped(tmp_path, monkeypatch, _FailingApi())
    assert integrations.stopped
    assert "the query API's stop failed too, after RuntimeError('the start-up failed'): " \
           "the API's stop failed" in caplog.text, caplog.text


def _stats_state(tmp_path: Path) -> str:
    """What `audit-collector stats` says of the collector from its stats file."""
    from collector.read_stats import _state
    from collector.stats_file import STATS_FILE, STATS_INTERVAL

    written = json.loads((tmp_path / STATS_FILE).read_text())
    return _state(written, 1.0, STATS_INTERVAL)


def test_a_stop_that_failed_is_not_told_a_clean_stop_by_stats(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        integrations: type[_Integrations]) -> None:
    """The stop's last stats write said "stopped" on every way out: after a stop that
    raised (here ingest's), or a start-up that failed half way, `stats` told the
    operator of a clean stop."""
    with pytest.raises(RuntimeError, match="ingest's stop failed"):
        _serve_until_stopped(tmp_path, monkeypatch, _Api(), final_stats=True)
    state = _stats_state(tmp_path)
    assert "clean stop" not in state, state
    assert state.startswith("stopped after an error (1 s ago): see its log"), state


def test_a_start_up_that_failed_is_not_told_a_clean_stop_by_stats(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        integrations: type[_Integrations]) -> None:
    integrations.attach_fails = RuntimeError("the start-up failed")
    with pytest.raises(RuntimeError, match="the start-up failed"):
        _serve_until_stopped(tmp_path, monkeypatch, _Api(), final_stats=True)
    assert _stats_state(tmp_path).startswith("stopped after an error"), \
        _stats_state(tmp_path)


def test_a_clean_stop_is_told_so_by_stats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          integrations: type[_Integrations]) -> None:
    _serve_until_stopped(tmp_path, monkeypatch, _Api(), final_stats=True, ingest_fails=False)
    assert _stats_state(tmp_path) == "stopped (a clean stop, 1 s ago)"


class _Signals:
    """``StopSignals`` as ``_serve`` uses it, leaving this process's handlers alone."""

    def serving(self, loop: Any, stop: Any) -> Any:
        return lambda: None


class _IngestNotStarted:
    """An ingest server whose start fails half way, and whose stop then raises too."""

    def __init__(self, *args: Any) -> None:
        pass

    async def start(self) -> None:
        raise RuntimeError("the TCP port is taken")

    async def shutdown(self, drain_timeout: float) -> None:
        raise RuntimeError("ingest's stop failed")


def test_ingests_start_that_failed_is_the_error_raised_though_its_stop_raised(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """``_serve``'s clean-up (ingest's stop, on every way out) raising replaced the
    start-up's error: the operator read of the stop, not of the port taken."""
    monkeypatch.setattr(serve, "IngestServer", _IngestNotStarted)
    monkeypatch.setattr(serve, "ingest_settings", lambda config: None)
    config = type("Config", (), {"drain_timeout": 1.0})()
    with pytest.raises(RuntimeError, match="the TCP port is taken"):
        asyncio.run(serve._serve(None, config, io.StringIO(), _Signals()))  # type: ignore[arg-type]
    assert "ingest's stop failed too, after RuntimeError('the TCP port is taken')" \
        in caplog.text, caplog.text
