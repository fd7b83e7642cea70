"""The query threads on a hung data disk: a lookup stuck in a read holds its thread for
as long as the disk hangs. Once every thread was held, each later query queued behind
them with no bound (the panel spun, the client waited for good); now it waits
``THREAD_WAIT`` for a thread at most, then is answered 503 with ``Retry-After``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from collector.api import queries
from collector.api.queries import DEFAULT_THREADS, busy_message
from collector.disk_calls import RETRY_AFTER
from collector.query import Reader
from collector.readers import Readers
from tests.api.served import client_of, served_app
from tests.collector.storage_helpers import Hold, open_store

#: Seconds a test waits for what must come: a bound on a failure, not a timing.
BOUND = 20
LOOKUP = "/api/v1/audit-logs/019ac3f2-5e1a-7c3d-9a41-0f6d2b7e8c11"


def test_a_query_that_finds_every_thread_held_answers_503_instead_of_queueing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queries, "THREAD_WAIT", 0.2)
    refusal = busy_message(DEFAULT_THREADS)  # says the 0.2 s
    data = tmp_path / "data"
    token = Readers(data).add("alice", root=True)
    with open_store(data) as store:
        app = served_app(data, store)
        hung = Hold(monkeypatch, Reader, "find")

        async def run() -> tuple[httpx.Response, list[httpx.Response], httpx.Response]:
            async with client_of(app, token) as client:
                try:
                    stuck = [asyncio.ensure_future(client.get(LOOKUP))
                             for _ in range(DEFAULT_THREADS)]
                    async with asyncio.timeout(BOUND):
                        while hung.entries < DEFAULT_THREADS:
                            await asyncio.sleep(0.01)
                    refused = await asyncio.wait_for(client.get(LOOKUP), BOUND)
                finally:
                    hung.release()
                # A bound on a failure again: on a loaded machine a thread may take
                # longer than the short wait to take the next query.
                monkeypatch.setattr(queries, "THREAD_WAIT", BOUND)
                answered = await asyncio.wait_for(asyncio.gather(*stuck), BOUND)
                return refused, answered, await client.get(LOOKUP)

        try:
            refused, answered, after = asyncio.run(run())
        finally:
            app.state.api.close(BOUND)
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == str(RETRY_AFTER)
    assert refused.json() == {"error": "unavailable", "message": refusal}
    assert hung.entries == DEFAULT_THREADS  # the refused one never reached a read
    assert [r.status_code for r in answered] == [404] * DEFAULT_THREADS  # no such event
    assert after.status_code == 404
