"""The query threads on a hung data disk: a lookup stuck in a read holds its thread for
as long as the disk hangs. Once every thread was held, each later query queued behind
them with no bound (the panel spun, the client waited for good); now it waits
``THREAD_WAIT`` for a thread at most, then is answered 503 with ``Retry-After``: the
disk's fault, not a busy collector's, once a thread is held past ``query_timeout``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import gc
import itertools
import logging
import weakref
from pathlib import Path
from typing import Any

import httpx
import pytest

from collector.api import queries
from collector.api.queries import DEFAULT_THREADS, busy_message
from collector.disk_calls import RETRY_AFTER
from collector.query import Reader
from collector.readers import Readers
from collector.storage import time_limit
from collector.storage.time_limit import QUERY_TIMEOUT
from tests.api.served import client_of, counters, refusals, served_app
from tests.collector.storage_helpers import Hold, open_store

#: Seconds a test waits for what must come: a bound on a failure, not a timing.
BOUND = 20
LOOKUP = "/api/v1/audit-logs/019ac3f2-5e1a-7c3d-9a41-0f6d2b7e8c11"
#: Seconds a query waits for a thread here (``THREAD_WAIT``, made short).
WAIT = 0.2
#: A short ``query_timeout``: a read held past it (and ``WAIT``) is hung, not long.
LIMIT = 1.0


def refused_while_every_thread_is_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held_for: float = 0.0,
        caplog: pytest.LogCaptureFixture | None = None
        ) -> tuple[httpx.Response, dict[str, float]]:
    """A lookup made while every query thread is held in a read (``held_for`` seconds
    ago, by the pool's clock), once the reads are let go: later queries are answered.
    With the refusal counters once they are."""
    monkeypatch.setattr(queries, "THREAD_WAIT", WAIT)
    data = tmp_path / "data"
    token = Readers(data).add("alice", root=True)
    with open_store(data) as store:
        app = served_app(data, store)
        hung = Hold(monkeypatch, Reader, "find")

        async def run() -> tuple[httpx.Response, list[httpx.Response], httpx.Response,
                                 dict[str, float]]:
            async with client_of(app, token) as client:
                try:
                    stuck = [asyncio.ensure_future(client.get(LOOKUP))
                             for _ in range(DEFAULT_THREADS)]
                    async with asyncio.timeout(BOUND):
                        while hung.entries < DEFAULT_THREADS:
                            await asyncio.sleep(0.01)
                    # Each thread took its job before its read: the clock moved on since.
                    real = queries.monotonic
                    monkeypatch.setattr(queries, "monotonic", lambda: real() + held_for)
                    refused = await asyncio.wait_for(client.get(LOOKUP), BOUND)
                finally:
                    hung.release()
                # A bound on a failure again: on a loaded machine a thread may take
                # longer than the short wait to take the next query.
                monkeypatch.setattr(queries, "THREAD_WAIT", BOUND)
                answered = await asyncio.wait_for(asyncio.gather(*stuck), BOUND)
                after = await client.get(LOOKUP)
                return refused, answered, after, await refusals(client)

        try:
            if caplog is not None:
                caplog.set_level(logging.WARNING, logger="collector.api")
            refused, answered, after, counted = asyncio.run(run())
        finally:
            app.state.api.close(BOUND)
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == str(RETRY_AFTER)
    assert hung.entries == DEFAULT_THREADS  # the refused one never reached a read
    assert [r.status_code for r in answered] == [404] * DEFAULT_THREADS  # no such event
    assert after.status_code == 404
    return refused, counted


def test_a_query_that_finds_every_thread_held_answers_503_instead_of_queueing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queries, "THREAD_WAIT", WAIT)
    refusal = busy_message(DEFAULT_THREADS)  # says the 0.2 s
    refused, counted = refused_while_every_thread_is_held(tmp_path, monkeypatch)
    # Held for less than query_timeout: the threads may just be busy.
    assert refused.json() == {"error": "unavailable", "message": refusal}
    # Counted once, by its reason: an operator sees panel users refused, not a log line.
    assert counted == counters(busy=1)


def test_threads_held_in_a_read_past_query_timeout_are_told_as_a_hung_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """query_timeout stops any query whose reads return: a thread in one job past it (and
    the wait for a thread) is in a read the disk does not answer. It was told as every
    thread busy (a warning), which sent the operator to add query threads."""
    overdue = QUERY_TIMEOUT + WAIT  # + THREAD_WAIT
    refused, counted = refused_while_every_thread_is_held(tmp_path, monkeypatch,
                                                          overdue + 1, caplog)
    assert counted == counters(hung=1)  # what an alert on a hung data disk reads
    message = refused.json()["message"]
    assert refused.json()["error"] == "unavailable"
    assert message == (
        f"the disk under the store does not answer: {DEFAULT_THREADS} of the "
        f"{DEFAULT_THREADS} query threads have been in one read for more than "
        f"{overdue:g} s, past query_timeout ({QUERY_TIMEOUT:g} s), which stops every query "
        f"whose reads return; more query threads would hang too (a hung disk, a frozen "
        f"network file system: check the data disk); nothing was read or recorded: try "
        f"again once the disk answers")
    [record] = [r for r in caplog.records if "does not answer" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is None
    assert record.getMessage() == f"query API: GET {LOOKUP!r}: {message}"


def test_a_query_whose_own_read_hangs_past_query_timeout_is_answered_503(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """query_timeout stops any query whose reads return: one still in its read past it
    (and the wait for a thread) is in a read the disk does not answer. Its request waited
    for it with no bound (the panel spun until the client gave up); now it is answered the
    hung disk's 503, its thread left in the read, and what that read ends with dropped."""
    monkeypatch.setattr(queries, "THREAD_WAIT", WAIT)
    futures: list[weakref.ref[concurrent.futures.Future[Any]]] = []
    job = queries._Job

    def recorded(work: Any) -> Any:
        made = job(work)
        futures.append(weakref.ref(made.result))
        return made

    monkeypatch.setattr(queries, "_Job", recorded)
    find = Reader.find
    calls = itertools.count(1)

    def fails_first(reader: Reader, event_id: str) -> Any:
        # The hung read ends in an error once the disk answers (EIO, as a dying disk or
        # a frozen network file system's does): an outcome whose loss could be logged.
        if next(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        return find(reader, event_id)

    monkeypatch.setattr(Reader, "find", fails_first)
    caplog.set_level(logging.WARNING)
    data = tmp_path / "data"
    token = Readers(data).add("alice", root=True)
    with open_store(data) as store:
        app = served_app(data, store, query_timeout=LIMIT)
        hung = Hold(monkeypatch, Reader, "find")

        async def run() -> tuple[httpx.Response, httpx.Response, dict[str, float]]:
            async with client_of(app, token) as client:
                try:
                    refused = await asyncio.wait_for(client.get(LOOKUP), BOUND)
                finally:
                    hung.release()  # its read ends, in an error nobody is waiting for
                late = futures[0]()
                assert late is not None  # its thread still holds it
                # Waited for here, while the loop runs: its outcome has then been handed
                # to whatever still waits for it on the loop (nothing should).
                ended = asyncio.wrap_future(late)
                await asyncio.wait([ended], timeout=BOUND)
                assert isinstance(ended.exception(), OSError), ended
                del late, ended
                monkeypatch.setattr(queries, "THREAD_WAIT", BOUND)  # see above
                after = await asyncio.wait_for(client.get(LOOKUP), BOUND)
                return refused, after, await refusals(client)

        try:
            refused, after, counted = asyncio.run(run())
        finally:
            left = app.state.api.close(BOUND)
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == str(RETRY_AFTER)
    overdue = LIMIT + WAIT
    message = refused.json()["message"]
    assert refused.json()["error"] == "unavailable"
    assert message.startswith(
        f"the disk under the store does not answer: 1 of the {DEFAULT_THREADS} query "
        f"threads have been in one read for more than {overdue:g} s, past query_timeout "
        f"({LIMIT:g} s), which stops every query whose reads return; "), message
    assert message.endswith("nothing was read or recorded: try again once the disk "
                            "answers"), message
    [record] = [r for r in caplog.records if "does not answer" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is None
    assert hung.entries == 1
    assert counted == counters(hung=1)
    assert after.status_code == 404, after.text  # the pool goes on: no such event
    assert left == 0  # the held thread ended once its read did
    # Its late outcome (the read's error) was nobody's to raise, and neither job's
    # future is kept once their threads are done. After a collection: a future's
    # unretrieved exception is logged when the future is freed, and an exception's
    # traceback holds it in a cycle.
    gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert len(futures) == 2 and [ref() for ref in futures] == [None, None]


def test_a_query_stopped_by_query_timeout_is_counted_as_such(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The third refusal, the limit at work (503 query_timeout): counted by its own
    reason, so that panel users told to narrow their queries show in /metrics too."""
    find = Reader.find

    def past_the_limit(reader: Reader, event_id: str) -> Any:
        # As if this read had run longer than any limit: the limit's own check stops it.
        real = time_limit.monotonic
        monkeypatch.setattr(time_limit, "monotonic", lambda: real() + 10.0**6)
        try:
            time_limit.check()
        finally:
            monkeypatch.setattr(time_limit, "monotonic", real)
        return find(reader, event_id)

    monkeypatch.setattr(Reader, "find", past_the_limit)
    data = tmp_path / "data"
    token = Readers(data).add("alice", root=True)
    with open_store(data) as store:
        app = served_app(data, store)

        async def run() -> tuple[httpx.Response, dict[str, float]]:
            async with client_of(app, token) as client:
                refused = await asyncio.wait_for(client.get(LOOKUP), BOUND)
                return refused, await refusals(client)

        try:
            refused, counted = asyncio.run(run())
        finally:
            app.state.api.close(BOUND)
    assert refused.status_code == 503 and refused.json()["error"] == "query_timeout"
    assert counted == counters(query_timeout=1)
