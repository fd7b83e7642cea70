"""Every 503 the API answers carries ``Retry-After`` (RFC 9110) and says what to do: the
client is told when to ask again instead of guessing. Each 503 below was sent without
one: ``/metrics`` on a hung disk, the readers file read too late, the store's refusals
(another acknowledgement under way), the index being rebuilt, a damaged readers file,
``/healthz`` while stopping."""

from __future__ import annotations

import asyncio
import errno
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from collector import metrics, store_acknowledging
from collector.api import app as api_app
from collector.api import unavailable
from collector.api.queries import QueriesBusy, QueriesHung
from collector.api.reads import ReadNotRecordedError
from collector.disk_calls import RETRY_AFTER
from collector.query import IndexUnavailableError
from collector.readers import Readers
from collector.storage.errors import CorruptSegmentError
from collector.storage.records import encode_events
from collector.storage.regular_files import NotRegularFileError
from collector.storage.time_limit import QueryTimeoutError
from collector.store import Store
from tests.api.served import client_of, counters, refusals, served_app
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


def losses_late(make: Make, monkeypatch: pytest.MonkeyPatch) -> httpx.Response:
    monkeypatch.setattr(metrics, "SHARED_WAIT", 0.2)
    hung = Hold(monkeypatch, Store, "stats")  # before the app takes store.stats
    try:
        return make().get("/api/v1/sources/losses")
    finally:
        hung.release()


def acknowledgement_not_recorded(make: Make,
                                 monkeypatch: pytest.MonkeyPatch) -> httpx.Response:
    served = make()

    async def refused(*args: object, **kwargs: object) -> str:
        raise ReadNotRecordedError("the store refused it (injected)")

    monkeypatch.setattr(served.app.state.api, "write_record", refused)
    return served.post("/api/v1/sources/acknowledge-losses",
                       json={"source": "app-1", "reason": "known"})


def segment_unreadable(make: Make, monkeypatch: pytest.MonkeyPatch) -> httpx.Response:
    served = make()

    async def damaged(*args: object) -> None:
        raise CorruptSegmentError("segment 000001.seg: a record that is not JSON; move it "
                                  "out and run `audit-collector reindex`")

    monkeypatch.setattr(served.app.state.api.pool, "run", damaged)
    return served.get(LOOKUP)


def segment_file_in_the_way(make: Make, monkeypatch: pytest.MonkeyPatch) -> httpx.Response:
    served = make()
    fifo = served.app.state.api.settings.data_dir / "segments" / "segment-00000001.jsonl"

    async def in_the_way(*args: object) -> None:
        raise NotRegularFileError(errno.EINVAL, "a FIFO, not a regular file", str(fifo))

    monkeypatch.setattr(served.app.state.api.pool, "run", in_the_way)
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
    "losses_late": (losses_late, RETRY_AFTER),
    "stopping": (stopping, RETRY_AFTER),
}
#: And 503s whose message is the exception's own (injected here), for counting.
ALSO_COUNTED: dict[str, Callable[[Make, pytest.MonkeyPatch], httpx.Response]] = {
    "acknowledgement_not_recorded": acknowledgement_not_recorded,
    "segment_unreadable": segment_unreadable,
    "segment_file_in_the_way": segment_file_in_the_way,
}
#: The reason each case's 503 is counted by (``collector.api.unavailable``): None for
#: /healthz's, a readiness answer to a probe rather than a refusal.
COUNTED_AS: dict[str, str | None] = {
    "metrics_on_a_hung_disk": "disk",
    "readers_late": "readers_late",
    "another_acknowledgement_under_way": "storage",
    "index_being_rebuilt": "index",
    "readers_file_damaged": "readers",
    "losses_late": "disk",
    "acknowledgement_not_recorded": "not_recorded",
    "segment_unreadable": "segment",
    "segment_file_in_the_way": "segment",
    "stopping": None,
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



def counted_after(served: Served, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """The refusal counters ``GET /metrics`` serves once the disk answers again."""
    # A bound on a failure only: a reading may take longer than a case's short wait.
    monkeypatch.setattr(metrics, "SHARED_WAIT", 20.0)

    async def scrape() -> dict[str, float]:
        async with client_of(served.app, served.token) as client:
            return await asyncio.wait_for(refusals(client), 20)

    return asyncio.run(scrape())


@pytest.mark.parametrize("case", list(CASES) + list(ALSO_COUNTED))
def test_every_503_is_counted_once_by_its_reason(case: str, tmp_path: Path, store: Store,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """These 503s were log lines only (when they were logged): an operator alerting on
    the API's refusals in /metrics saw the query pool's and not these. Each is counted
    once, in queries_refused and by its reason."""
    made: list[Served] = []

    def make() -> Served:
        made.append(Served(tmp_path / "data", store))
        return made[-1]

    ask = CASES[case][0] if case in CASES else ALSO_COUNTED[case]
    assert ask(make, monkeypatch).status_code == 503
    reason = COUNTED_AS[case]
    assert counted_after(made[0], monkeypatch) == (
        counters(**{reason: 1}) if reason is not None else counters())


def test_metrics_refused_for_the_readers_file_late_are_counted_once(
        tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scrape answered 503 is one of the API's: seen at the next one answered."""
    served = Served(tmp_path / "data", store, AUDIT_METRICS_AUTH="reader")
    assert readers_late(lambda: served, monkeypatch, "/metrics").status_code == 503
    assert counted_after(served, monkeypatch) == counters(readers_late=1)


def test_every_503_handler_counts_its_answers_by_a_reason(tmp_path: Path) -> None:
    """A 503 answered by a handler for an exception with no reason would go uncounted
    (the count raises ``LookupError``): every kind the app answers 503 for has one, the
    query pool's refusals none (``QueryPool.run`` counts those, once)."""
    app = api_app.create_app(api_app.ApiSettings(data_dir=tmp_path),
                             store=None)  # type: ignore[arg-type]  # nothing is asked
    try:
        handlers: dict[Any, Any] = app.exception_handlers
    finally:
        app.state.api.close()
    answers_503 = {kind for kind, handler in handlers.items() if handler in (
        api_app._unavailable, api_app._index_unavailable, api_app._query_timeout,
        api_app._readers_late, api_app._disk_late, api_app._queries_hung,
        api_app._readers_unavailable, api_app._not_a_regular_file)}
    reasons = {kind: unavailable.reason_of(kind) for kind in answers_503}
    # A damaged segment is a StorageError, answered by its handler.
    assert set(reasons.values()) | {unavailable.reason_of(CorruptSegmentError)} == {
        None, *unavailable.REASONS}
    assert {kind for kind, reason in reasons.items() if reason is None} == {
        QueryTimeoutError, QueriesHung}
    assert unavailable.reason_of(QueriesBusy) is None  # answered by DiskLate's handler
