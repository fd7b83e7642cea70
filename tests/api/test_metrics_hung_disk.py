"""``GET /metrics`` on a hung data disk (the store's stats list ``quarantine/`` and
statvfs the disk): one thread reads the stats, however many scrapes wait for them, and
never one of the event loop's default pool, which a stop and the losses listing need."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from starlette.applications import Starlette

from collector import metrics, stats_file
from collector.readers import Readers
from collector.single_flight import SingleFlight, Unanswered
from collector.store import Store
from tests.api.served import served_app
from tests.collector.storage_helpers import Hold, open_store

#: The loop's default pool in these tests (6 threads on a 2-core machine by default):
#: fewer threads than scrapes, so that scrapes holding one each would take them all.
POOL = 4
SCRAPES = 2 * POOL
#: Seconds a test waits for what must come: a bound on a failure, not a timing.
BOUND = 20


@pytest.fixture
def hung(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hold]:
    hold = Hold(monkeypatch, Store, "stats")
    yield hold
    hold.release()  # before the loop's pool is shut down: it joins its threads


async def scrape(app: Starlette, count: int, token: str | None = None) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost",
                                 headers=headers) as client:
        return await asyncio.gather(*(client.get("/metrics") for _ in range(count)))


def test_scrapes_on_a_hung_disk_answer_503_and_leave_the_loops_pool_free(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hung: Hold) -> None:
    monkeypatch.setattr(metrics, "SHARED_WAIT", 0.2)
    with open_store(tmp_path / "data") as store:
        app = served_app(tmp_path / "data", store)

        async def run() -> tuple[list[httpx.Response], int, list[httpx.Response]]:
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(POOL))
            try:
                replies = await asyncio.wait_for(scrape(app, SCRAPES), BOUND)
                # What a stop needs (asyncio.to_thread(integrations.stop)): a pool thread.
                pooled = await asyncio.wait_for(asyncio.to_thread(lambda: 1), BOUND)
            finally:
                hung.release()
            return replies, pooled, await scrape(app, 1)

        replies, pooled, after = asyncio.run(run())
    assert [r.status_code for r in replies] == [503] * SCRAPES
    assert "disk does not answer" in replies[0].text
    assert pooled == 1
    assert hung.entries == 1  # one thread in stats(), shared by every scrape
    assert after[0].status_code == 200
    assert "audit_collector_store_written_total 0" in after[0].text


def test_callers_that_come_while_a_reading_runs_share_its_result(hung: Hold,
                                                                 tmp_path: Path) -> None:
    with open_store(tmp_path / "data") as store:
        shared = SingleFlight(store.stats, "store-stats")
        from_a_thread: list[dict[str, Any]] = []
        # The OpenTelemetry reader's thread, say, starts the reading the disk holds.
        blocking = threading.Thread(target=lambda: from_a_thread.append(
            shared.read_blocking(BOUND)))
        blocking.start()
        assert hung.entered.wait(BOUND)

        joined = []
        real_current = shared._current

        def current() -> Any:  # a reader takes the flight, and waits for it at once
            flight = real_current()
            joined.append(flight)
            return flight

        shared._current = current  # type: ignore[method-assign]

        async def every_reader_waits() -> None:
            # One turn of the loop was not enough: wait_for runs each reader in a task
            # of its own, which may start after the release (a reading of its own).
            while len(joined) < SCRAPES:
                await asyncio.sleep(0)

        async def run() -> list[dict[str, Any]]:
            readers = asyncio.gather(*(shared.read(BOUND) for _ in range(SCRAPES)))
            await asyncio.wait_for(every_reader_waits(), BOUND)
            hung.release()
            return await readers

        results = asyncio.run(run())
        blocking.join()
    assert hung.entries == 1
    assert all(result is results[0] for result in results + from_a_thread)


def test_a_caller_that_gives_up_starts_no_second_reading(hung: Hold, tmp_path: Path) -> None:
    with open_store(tmp_path / "data") as store:
        shared = SingleFlight(store.stats, "store-stats")
        for _ in range(3):
            with pytest.raises(Unanswered, match="store-stats did not answer within 0.01 s"):
                shared.read_blocking(0.01)
        hung.release()
        assert shared.read_blocking(BOUND)["events"] == 0
    assert hung.entries == 1


def test_serves_stats_task_skips_a_beat_when_the_stats_do_not_come(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Logged at the 1st, 2nd, 4th... skip, and no second reading is started meanwhile."""
    monkeypatch.setattr(stats_file, "STATS_INTERVAL", 0.01)
    monkeypatch.setattr(stats_file, "SHARED_WAIT", 0.01)
    disk = threading.Event()
    readings = []

    def hung_stats() -> dict[str, Any]:
        readings.append(1)
        disk.wait()
        return {}

    def skips() -> list[str]:
        return [r.getMessage() for r in caplog.records if "not written this time" in r.getMessage()]

    async def run() -> None:
        stub = SimpleNamespace(stats=dict)  # the ingest server, the integrations
        task = asyncio.create_task(stats_file._write_stats(  # type: ignore[arg-type]
            stub, SingleFlight(hung_stats, "store-stats"), SimpleNamespace(data_dir=tmp_path),
            stub))
        while not any("(8 times so far)" in said for said in skips()):
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="collector"):
        try:
            asyncio.run(asyncio.wait_for(run(), BOUND))
        finally:
            disk.set()
    assert [said.rsplit("(", 1)[1] for said in skips()] == [
        f"{n} times so far)" for n in (1, 2, 4, 8)]
    assert all(r.exc_info is None for r in caplog.records)
    assert readings == [1]
    assert not (tmp_path / stats_file.STATS_FILE).exists()


def test_serves_stats_task_goes_on_while_its_files_write_hangs_and_leaves_the_pool_free(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The live stats file was written in the loop's default pool and waited for: on a
    hung disk the task stopped there, holding one of the pool's few threads for good
    (a stop's ``asyncio.to_thread`` needs one). Now one write at a time, on a thread of
    its own, waited for a bounded time: the beats go on, skipped while it hangs."""
    monkeypatch.setattr(stats_file, "STATS_INTERVAL", 0.01)
    monkeypatch.setattr(stats_file, "SHARED_WAIT", 0.01)
    hung = Hold(monkeypatch, stats_file.StatsFile, "write")

    def skipped(times: int) -> bool:
        return any(f"not written this time ({times} times so far)" in r.getMessage()
                   for r in caplog.records)

    async def store_stats(timeout: float) -> dict[str, Any]:
        # At once, without a thread: on a loaded machine a reading of its own could miss
        # the short wait, and skipped beats would not be the file's.
        return {}

    async def run() -> int:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1))
        stub = SimpleNamespace(stats=dict)  # the ingest server, the integrations
        task = asyncio.create_task(stats_file._write_stats(  # type: ignore[arg-type]
            stub, SimpleNamespace(read=store_stats), SimpleNamespace(data_dir=tmp_path),
            stub))
        try:
            while not (skipped(4) and hung.entered.is_set()):
                await asyncio.sleep(0.01)
            return await asyncio.to_thread(lambda: 1)  # the pool's one thread
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            hung.release()  # before the loop's pool is shut down: it joins its threads

    with caplog.at_level(logging.WARNING, logger="collector"):
        pooled = asyncio.run(asyncio.wait_for(run(), BOUND))
    assert pooled == 1
    assert hung.entries == 1  # one write, however many beats came while it hung
    assert "the live stats file (ingest-stats.json) did not answer" in caplog.text


def test_the_stops_last_stats_write_writes_the_stops_counters_after_one_under_way(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write of the live stats file under way as the stop comes (the stats task's: its
    cancellation leaves the thread writing) holds the counters of before the stop. The
    stop's last write shared it: once it ended, the file kept those, and nothing said
    the final counters were never written."""
    hung = Hold(monkeypatch, stats_file.StatsFile, "write")
    live = stats_file.StatsFile(tmp_path / stats_file.STATS_FILE)
    composed = threading.Event()

    def integrations_stats() -> dict[str, Any]:
        composed.set()  # the stop's counters are composed: its write is asked next
        return {"when": "at the stop"}

    server = SimpleNamespace(stats=dict)
    integrations = SimpleNamespace(stats=integrations_stats,
                                   store_stats=SingleFlight(dict, "store-stats"))

    async def run() -> None:
        with pytest.raises(Unanswered):  # the stats task's write, which the disk holds
            await live.write_off_loop({"when": "before the stop"}, 0.01)
        while not hung.entered.is_set():  # its thread holds the counters of before
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(stats_file._final_stats(  # type: ignore[arg-type]
            server, integrations, live))
        while not composed.is_set():
            await asyncio.sleep(0.01)
        # Turns of the loop, not time (no thread in between): the last write's wait, a
        # task of wait_for's, takes its place behind the write under way.
        for _ in range(10):
            await asyncio.sleep(0)
        hung.release()
        await stopping

    asyncio.run(asyncio.wait_for(run(), BOUND))
    assert hung.entries == 1
    written = json.loads((tmp_path / stats_file.STATS_FILE).read_text())
    assert written["when"] == "at the stop"


def test_an_opentelemetry_collection_on_a_hung_disk_leaves_the_store_out_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hung: Hold,
        caplog: pytest.LogCaptureFixture) -> None:
    """The collection's instruments share the snapshot that waited for the disk: each
    waited (and warned) again once the wait passed the snapshot's age limit (1 s), a
    collection of ~40 instruments ~40 times the wait."""
    monkeypatch.setattr(metrics, "SHARED_WAIT", 1.5)
    reader = InMemoryMetricReader()
    with open_store(tmp_path / "data") as store:
        collected = metrics.Metrics()
        collected.add_shared("store", SingleFlight(store.stats, "store-stats"))
        collected.add("ingest", lambda: {"batches": 3})
        collected.register_otel(MeterProvider(metric_readers=[reader]))
        with caplog.at_level(logging.WARNING, logger="collector"):
            data = reader.get_metrics_data()
        hung.release()
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics
             for m in sm.metrics}
    assert "audit.collector.ingest.batches" in names
    assert not [name for name in names if ".store." in name]
    assert [r.getMessage() for r in caplog.records] == [
        ("metrics: store-stats did not answer within 1.5 s (a hung disk?); its figures are "
         "left out")]
    assert hung.entries == 1


def test_scrapes_with_metrics_auth_reader_on_a_hung_disk_leave_the_loops_pool_free(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``metrics_auth = reader``: each scrape's token check stats ``readers.json`` on the
    data disk. In the loop's pool, each scrape held a thread for as long as the disk hung
    (and the Readers' lock: the others waited for it), so that a stop waited too."""
    monkeypatch.setattr(metrics, "SHARED_WAIT", 0.2)
    data = tmp_path / "data"
    token = Readers(data).add("prometheus", root=False)
    with open_store(data) as store:
        app = served_app(data, store, AUDIT_METRICS_AUTH="reader")
        hung = Hold(monkeypatch, Readers, "_refresh")

        async def run() -> tuple[list[httpx.Response], int, list[httpx.Response]]:
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(POOL))
            try:
                replies = await asyncio.wait_for(scrape(app, SCRAPES, token), BOUND)
                pooled = await asyncio.wait_for(asyncio.to_thread(lambda: 1), BOUND)
            finally:
                hung.release()
            return replies, pooled, await scrape(app, 1, token)

        try:
            replies, pooled, after = asyncio.run(run())
        finally:
            hung.release()
    assert [r.status_code for r in replies] == [503] * SCRAPES
    assert "readers" in replies[0].text
    assert pooled == 1
    assert hung.entries == 1  # one thread checks readers.json, shared by every scrape
    assert after[0].status_code == 200
