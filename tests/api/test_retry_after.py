"""Every 503 the API answers carries ``Retry-After`` (RFC 9110) and says what to do: the
client is told when to ask again instead of guessing. Each 503 below was sent without
one: ``/metrics`` on a hung disk, the readers file read too late, the store's refusals
(another acknowledgement under way), the index being rebuilt, a damaged readers file,
``/healthz`` while stopping."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from collector import metrics, store_acknowledging
from collector.api import app as api_app
from collector.disk_calls import RETRY_AFTER
from collector.query import IndexUnavailableError
from collector.readers import Readers
from collector.storage.records import encode_events
from collector.store import Store
from tests.api.served import client_of, served_app
from tests.collector.storage_helpers import Hold, events, open_store

LOOKUP = "/api/v1/audit-logs/019ac3f2-5e1a-7c3d-9a41-0f6d2b7e8c11"


class Served:
    """An app as served, over a store that lost events (so there is one to acknowledge),
    and a root reader's token."""

    def __init__(self, data: Path, store: Store, **environ: str) -> None:
        self.data, self.store = data, store
        self.token = Readers(data).add("alice", root=True)
        store.submit_encoded(encode_events(events(2)), "app-1", [1, 4], 4).result()
        self.app: Starlette = served_app(data, store, **environ)

    def get(self, path: str) -> httpx.Response:
        return asyncio.run(self._ask("GET", path))

    def post(self, path: str, json: Any) -> httpx.Response:
        return asyncio.run(self._ask("POST", path, json))

    async def _ask(self, method: str, path: str, json: Any = None) -> httpx.Response:
        async with client_of(self.app, self.token) as client:
            return await asyncio.wait_for(client.request(method, path, json=json), 20)


#: Makes the app as served, once a case has set up what it takes at its making.
Make = Callable[[], Served]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path / "data") as opened:
        yield opened


def metrics_on_a_hung_disk(make: Make, monkeypatch: pytest.MonkeyPatch) -> httpx.Response:
    monkeypatch.setattr(metrics, "SHARED_WAIT", 0.2)
    hung = Hold(monkeypatch, Store, "stats")
    try:
        return make().get("/metrics")
    finally:
        hung.release()


def readers_late(make: Make, monkeypatch: pytest.MonkeyPatch, path: str) -> httpx.Response:
    served = make()
    monkeypatch.setattr(metrics, "SHARED_WAIT", 0.2)
    hung = Hold(monkeypatch, Readers, "_refresh")
    try:
        return served.get(path)
    finally:
        hung.release()


def another_acknowledgement_under_way(make: Make,
                                      monkeypatch: pytest.MonkeyPatch) -> httpx.Response:
    served = make()
    monkeypatch.setattr(store_acknowledging, "ACK_WAIT", 0.2)
    lock = served.store._acks_lock  # held by an acknowledgement under way
    assert lock.acquire(timeout=20)
    try:
        return served.post("/api/v1/sources/acknowledge-losses",
                           json={"source": "app-1", "reason": "known"})
    finally:
        lock.release()


def index_being_rebuilt(make: Make, monkeypatch: pytest.MonkeyPatch) -> httpx.Response:
    served = make()
    async def rebuilding(*args: object) -> None:
        raise IndexUnavailableError("index.sqlite is being rebuilt")

    monkeypatch.setattr(served.app.state.api.pool, "run", rebuilding)
    return served.get(LOOKUP)


def readers_file_damaged(make: Make, monkeypatch: pytest.MonkeyPatch) -> httpx.Response:
    served = make()
    (served.data / "readers.json").write_text("{not json")
    return served.get(LOOKUP)


def stopping(make: Make, monkeypatch: pytest.MonkeyPatch) -> httpx.Response:
    served = make()
    served.app.state.health.stopping = True
    return served.get("/healthz")


Case = tuple[Callable[[Make, pytest.MonkeyPatch], httpx.Response], int]
CASES: dict[str, Case] = {
    "metrics_on_a_hung_disk": (metrics_on_a_hung_disk, RETRY_AFTER),
    "readers_late": (lambda s, m: readers_late(s, m, LOOKUP), RETRY_AFTER),
    "another_acknowledgement_under_way": (another_acknowledgement_under_way, RETRY_AFTER),
    "index_being_rebuilt": (index_being_rebuilt, api_app.INDEX_RETRY_AFTER),
    "readers_file_damaged": (readers_file_damaged, RETRY_AFTER),
    "stopping": (stopping, RETRY_AFTER),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_503_says_when_to_try_again(case: str, tmp_path: Path, store: Store,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ask, seconds = CASES[case]
    reply = ask(functools.partial(Served, tmp_path / "data", store), monkeypatch)
    assert reply.status_code == 503, reply.text
    assert reply.headers.get("Retry-After") == str(seconds)
    if case != "stopping":  # /healthz says one of its fixed reasons (collector.health)
        assert any(word in reply.text for word in ("try again", "retry"))


def test_metrics_with_a_readers_token_on_a_hung_disk_say_when_to_try_again(
        tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    reply = readers_late(functools.partial(Served, tmp_path / "data", store,
                                           AUDIT_METRICS_AUTH="reader"), monkeypatch,
                         "/metrics")
    assert reply.status_code == 503, reply.text
    assert reply.headers.get("Retry-After") == str(RETRY_AFTER)
    assert "try again" in reply.text

