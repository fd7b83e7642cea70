"""The lost-events endpoints on a hung data disk: the listing reads the store's stats (a
listing of ``quarantine/``, a statvfs), an acknowledgement writes beside
``loss-acks.json``. In the event loop's default pool (``asyncio.to_thread``) each request
held one of its few threads for as long as the disk hung, and once all were held every
later ``to_thread`` waited for the disk too (a stop's, which never touches it)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from collector import metrics
from collector.api import routes
from collector.api.context import DISK_THREADS
from collector.api.openapi import SPEC
from collector.own_records import AUDIT_LOSS_ACKNOWLEDGED
from collector.query import Filters, iter_records
from collector.readers import Readers
from collector.storage import loss_acks
from collector.storage.records import encode_events
from collector.store import Store
from tests.api.served import client_of, served_app
from tests.collector.storage_helpers import Hold, events, open_store

#: The loop's default pool in these tests: fewer threads than requests, so that requests
#: holding one each would take them all.
POOL = DISK_THREADS
REQUESTS = 2 * POOL
#: Seconds a test waits for what must come: a bound on a failure, not a timing.
BOUND = 20
LOSSES = "/api/v1/sources/losses"
ACK = "/api/v1/sources/acknowledge-losses"


@pytest.fixture
def lossy(tmp_path: Path) -> Iterator[tuple[Store, str]]:
    """A store with a source that lost events (2 of 4), and a root reader's token."""
    data = tmp_path / "data"
    token = Readers(data).add("alice", root=True)
    with open_store(data) as store:
        store.submit_encoded(encode_events(events(2)), "app-1", [1, 4], 4).result()
        yield store, token


def acknowledge(client: httpx.AsyncClient) -> asyncio.Future[httpx.Response]:
    return asyncio.ensure_future(client.post(ACK, json={"source": "app-1",
                                                        "reason": "known"}))


def disk_calls_ended() -> None:
    """Joins the API's disk threads, those they start to end what they did included."""
    while running := [t for t in threading.enumerate() if t.name == "audit-api-disk"]:
        for thread in running:
            thread.join(BOUND)
            assert not thread.is_alive(), "a disk call did not end once the disk answered"


def test_listings_on_a_hung_disk_answer_503_and_leave_the_loops_pool_free(
        lossy: tuple[Store, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "SHARED_WAIT", 0.2)
    store, token = lossy
    hung = Hold(monkeypatch, Store, "stats")  # before the app takes store.stats
    app = served_app(store.settings.data_dir, store)

    async def run() -> tuple[list[httpx.Response], httpx.Response, int, httpx.Response]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(POOL))
        async with client_of(app, token) as client:
            try:
                replies = await asyncio.wait_for(asyncio.gather(
                    *(client.get(LOSSES) for _ in range(REQUESTS))), BOUND)
                scrape = await asyncio.wait_for(client.get("/metrics"), BOUND)
                # What a stop needs (asyncio.to_thread(integrations.stop)): a pool thread.
                pooled = await asyncio.wait_for(asyncio.to_thread(lambda: 1), BOUND)
            finally:
                hung.release()  # before the loop's pool is shut down: it joins its threads
            # A bound on a failure again: on a loaded machine a reading may take longer
            # than the short wait that made the hung disk's 503 come soon.
            monkeypatch.setattr(metrics, "SHARED_WAIT", BOUND)
            return replies, scrape, pooled, await client.get(LOSSES)

    replies, scrape, pooled, after = asyncio.run(run())
    assert [r.status_code for r in replies] == [503] * REQUESTS
    assert all(r.headers["Retry-After"] == "5" for r in replies)
    assert replies[0].json() == {"error": "unavailable", "message": routes.LOSSES_LATE}
    assert "503" in SPEC["paths"][LOSSES]["get"]["responses"]  # a client knows to expect it
    assert scrape.status_code == 503
    assert pooled == 1
    assert hung.entries == 1  # one thread in stats(), shared by listings and /metrics
    assert after.status_code == 200
    assert [row["source"] for row in after.json()["sources"]] == ["app-1"]


def test_acknowledgements_on_a_hung_disk_answer_503_and_leave_the_loops_pool_free(
        lossy: tuple[Store, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The first one's staging hangs (holding the acknowledgements' lock), the next
    ones wait for that lock: each waited for a bounded time, on at most DISK_THREADS
    threads of their own; past those, refused at once. Staged once the disk answers,
    they are dropped (never recorded: never made), and the next one is made."""
    monkeypatch.setattr(routes, "STAGE_WAIT", 0.2)
    store, token = lossy
    app = served_app(store.settings.data_dir, store)
    hung = Hold(monkeypatch, loss_acks, "stage")

    async def run() -> tuple[list[httpx.Response], int, httpx.Response]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(POOL))
        async with client_of(app, token) as client:
            try:
                replies = await asyncio.wait_for(asyncio.gather(
                    *(acknowledge(client) for _ in range(REQUESTS))), BOUND)
                pooled = await asyncio.wait_for(asyncio.to_thread(lambda: 1), BOUND)
            finally:
                hung.release()
            await asyncio.to_thread(disk_calls_ended)  # each staged, then dropped
            # A bound on a failure again: the next one's staging fsyncs (a file, its
            # directory), which a loaded machine's disk may take longer than 0.2 s to do.
            monkeypatch.setattr(routes, "STAGE_WAIT", BOUND)
            return replies, pooled, await asyncio.wait_for(acknowledge(client), BOUND)

    replies, pooled, after = asyncio.run(run())
    assert [r.status_code for r in replies] == [503] * REQUESTS
    assert all(r.headers["Retry-After"] == "5" for r in replies)
    messages = sorted(r.json()["message"] for r in replies)
    assert messages.count(routes.STAGE_LATE) == DISK_THREADS  # waited for, then 503
    assert sum("still under way" in m for m in messages) == REQUESTS - DISK_THREADS
    assert pooled == 1
    assert hung.entries == 1  # the others waited for the lock it held
    assert after.status_code == 200, after.text
    assert after.json() == {"acknowledged": {"app-1": 4}}
    assert store.stats()["unacknowledged_gap_events"] == 0
    # Only the one made was recorded: those refused were dropped before their record.
    assert len(list(iter_records(store, Filters(types=(AUDIT_LOSS_ACKNOWLEDGED,))))) == 1
    assert not (store.settings.data_dir / loss_acks.STAGED_NAME).exists()
