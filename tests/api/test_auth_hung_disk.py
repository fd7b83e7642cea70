"""The API's credential checks on a hung data disk: each one looks at ``readers.json``
(a stat, a re-read when it changed), on the data disk. On the event loop, which ingest
and ``/healthz`` share, one request froze them all for as long as the disk hung."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from collector import metrics
from collector.api.auth import SESSION_COOKIE
from collector.readers import Readers
from tests.api.served import client_of, served_app
from tests.collector.storage_helpers import Hold, open_store

#: Seconds a test waits for what must come: a bound on a failure, not a timing.
BOUND = 20

Ask = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


def by_token(token: str) -> Ask:
    return lambda client: client.get("/api/v1/audit-logs",
                                     headers={"Authorization": f"Bearer {token}"})


def who_by_token(token: str) -> Ask:
    return lambda client: client.get("/api/v1/session",
                                     headers={"Authorization": f"Bearer {token}"})


def signing_in(token: str) -> Ask:
    return lambda client: client.post("/api/v1/session", json={"token": token})


def by_session(sid: str) -> Ask:
    return lambda client: client.get("/api/v1/audit-logs",
                                     headers={"Cookie": f"{SESSION_COOKIE}={sid}"})


@pytest.mark.parametrize("how", [by_token, who_by_token, signing_in, by_session])
def test_a_request_answers_503_and_the_loop_runs_while_readers_json_hangs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        how: Callable[[str], Ask]) -> None:
    monkeypatch.setattr(metrics, "SHARED_WAIT", 0.2)
    data = tmp_path / "data"
    token = Readers(data).add("alice", root=True)
    with open_store(data) as store:
        app = served_app(data, store)
        sid = app.state.api.sessions.start(app.state.api.readers.authenticate(token))
        ask = how(sid if how is by_session else token)
        hung = Hold(monkeypatch, Readers, "_refresh")
        # Before the fix the held stat was on the loop itself: nothing on it could end
        # the wait, so this thread does, once BOUND has passed.
        watchdog = threading.Timer(BOUND, hung.release)

        async def run() -> tuple[httpx.Response, bool, httpx.Response, httpx.Response]:
            async with client_of(app) as client:
                asked = asyncio.ensure_future(ask(client))
                assert await asyncio.to_thread(hung.entered.wait, BOUND)
                health = await client.get("/healthz")  # the readiness probe, meanwhile
                held_meanwhile = hung.armed
                reply = await asyncio.wait_for(asked, BOUND)
                hung.release()
                return health, held_meanwhile, reply, await ask(client)

        watchdog.start()
        try:
            health, held_meanwhile, reply, after = asyncio.run(run())
        finally:
            watchdog.cancel()
            hung.release()
    assert health.status_code == 200
    assert held_meanwhile  # /healthz answered while the disk still hung
    assert reply.status_code == 503
    assert reply.json() == {"error": "unavailable", "message": (
        "the readers file (readers.json, to check credentials) could not be read in time: "
        "the data disk does not answer (a hung disk, a frozen network file system); try "
        "again once it does")}
    assert hung.entries == 1
    assert after.status_code == 200


def test_a_reader_removed_while_a_reading_runs_is_refused_at_its_next_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reading of readers.json under way when the reader is removed may have looked
    before the removal: a request that came after it waits for a reading of its own."""
    monkeypatch.setattr(metrics, "SHARED_WAIT", BOUND)
    data = tmp_path / "data"
    token = Readers(data).add("alice", root=True)
    read = Readers._refresh
    looked, disk, before_answered = threading.Event(), threading.Event(), threading.Event()
    readings = itertools.count()

    def slow_after_looking(readers: Readers) -> None:
        if next(readings) > 0:
            # The second request's own reading, held until the first request has its
            # answer: it replaces the accounts a request is checked against, and on a
            # loaded machine its thread could do so before the first request's check
            # ran on the loop (a 401 for a request made before the removal: stricter,
            # not wrong, but not what this test is about).
            before_answered.wait(BOUND)
            read(readers)
            return
        read(readers)
        looked.set()
        disk.wait(BOUND)  # what is left of a slow reading, the file already looked at

    with open_store(data) as store:
        app = served_app(data, store)
        monkeypatch.setattr(Readers, "_refresh", slow_after_looking)
        flight = app.state.api._readers_read
        asking: list[bool] = []
        second_asks = asyncio.Event()
        real_landed = flight._landed

        async def landed(fresh: bool) -> None:
            asking.append(fresh)
            if len(asking) == 2:
                second_asks.set()
            # Looks at the reading under way before its first await: by the time the
            # test runs again, the second request has seen it running.
            return await real_landed(fresh)  # type: ignore[no-any-return]

        monkeypatch.setattr(flight, "_landed", landed)

        async def run() -> tuple[httpx.Response, httpx.Response]:
            async with client_of(app, token) as client:
                before = asyncio.ensure_future(client.get("/api/v1/audit-logs"))
                before.add_done_callback(lambda _: before_answered.set())
                assert await asyncio.to_thread(looked.wait, BOUND)
                Readers(data).remove("alice")  # `audit-collector users remove alice`
                after = asyncio.ensure_future(client.get("/api/v1/audit-logs"))
                await asyncio.wait_for(second_asks.wait(), BOUND)
                disk.set()
                return await before, await after

        try:
            before, after = asyncio.run(run())
        finally:
            disk.set()
    assert before.status_code == 200
    assert after.status_code == 401


def test_a_request_without_credentials_is_answered_401_without_the_readers_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/api.md: with nothing to check against the accounts, the file is not waited
    for: a request without credentials gets its 401 as before, the disk hung or not."""
    data = tmp_path / "data"
    Readers(data).add("alice", root=True)
    with open_store(data) as store:
        app = served_app(data, store)
        hung = Hold(monkeypatch, Readers, "_refresh")
        try:
            async def ask() -> httpx.Response:
                async with client_of(app) as client:
                    return await asyncio.wait_for(client.get("/api/v1/audit-logs"), BOUND)

            reply = asyncio.run(ask())
        finally:
            hung.release()
    assert reply.status_code == 401
    assert hung.entries == 0
