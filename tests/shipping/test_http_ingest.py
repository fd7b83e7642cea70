"""POST /api/v1/events: JSON-lines ingest over HTTP with a token, with the socket's
validation, dedupe and acknowledgement semantics, on a real Store (and, for the
side-by-side comparison, a real ingest socket)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from audit_middleware.wire import FrameType, Result
from collector.http_ingest import HttpIngest, HttpIngestSettings, routes
from collector.ingest import IngestSettings
from collector.storage import records
from tests.collector.storage_helpers import event, refuse_to_encode
from tests.e2e.harness import InProcessCollector, RawClient, open_store, short_tmp, stored_events

TOKEN = "s3cret-ingest-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


@pytest.fixture
def store(tmp: Path) -> Iterator[Any]:
    opened = open_store(tmp / "data")
    yield opened
    opened.close()


def client_for(store: Any, **settings: Any) -> tuple[TestClient, HttpIngest]:
    app = Starlette(routes=routes())
    ingest = HttpIngest(store, HttpIngestSettings(**{"token": TOKEN, **settings}))
    app.state.http_ingest = ingest
    return TestClient(app), ingest


@pytest.fixture
def http(store: Any) -> TestClient:
    return client_for(store)[0]


def lines(*events: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


def post(http: TestClient, body: bytes, headers: dict[str, str] | None = None) -> Any:
    return http.post("/api/v1/events", content=body,
                     headers={**AUTH, "Content-Type": "application/x-ndjson", **(headers or {})})


def test_json_lines_are_stored_and_acknowledged_by_id(http: TestClient, store: Any) -> None:
    events = [event(1), event(2)]
    reply = post(http, lines(*events))
    assert reply.status_code == 200
    assert reply.json() == {"written": [e["id"] for e in events], "duplicates": [],
                            "rejected": []}
    assert [r["id"] for r in stored_events(store.settings.data_dir)] == [e["id"] for e in events]


def test_a_json_array_body_works_too(http: TestClient, store: Any) -> None:
    events = [event(1), event(2)]
    reply = http.post("/api/v1/events", json=events, headers=AUTH)
    assert reply.status_code == 200 and len(reply.json()["written"]) == 2


def test_sending_again_is_acknowledged_as_duplicates_never_stored_twice(
    http: TestClient, store: Any
) -> None:
    events = [event(1), event(2)]
    post(http, lines(*events))
    again = post(http, lines(*events, event(3)))
    assert again.json()["duplicates"] == [events[0]["id"], events[1]["id"]]
    assert len(again.json()["written"]) == 1
    assert len(stored_events(store.settings.data_dir)) == 3


def test_an_id_twice_in_one_request_is_one_record_and_one_duplicate(http: TestClient,
                                                                    store: Any) -> None:
    first = event(1)
    reply = post(http, lines(first, first)).json()
    assert (reply["written"], reply["duplicates"]) == ([first["id"]], [first["id"]])


def test_bad_events_are_rejected_with_a_reason_and_the_good_ones_stored(
    http: TestClient, store: Any
) -> None:
    good, bad_ip, third = event(1), event(2, client_ip="x" * 100), event(3)
    body = lines(good, bad_ip) + b"{not json\n" + lines({**third, "extra": 1})
    reply = post(http, body)
    assert reply.status_code == 200
    result = reply.json()
    assert result["written"] == [good["id"]]
    assert [(r["index"], r["id"]) for r in result["rejected"]] == [
        (1, bad_ip["id"]), (2, None), (3, third["id"])]
    assert "client_ip" in result["rejected"][0]["reason"]
    assert "not valid JSON" in result["rejected"][1]["reason"]
    assert "unknown field" in result["rejected"][2]["reason"]
    assert len(result["written"]) + len(result["duplicates"]) + len(result["rejected"]) == 4
    assert [r["id"] for r in stored_events(store.settings.data_dir)] == [good["id"]]


def test_an_event_the_store_cannot_encode_is_rejected_alone_not_a_503(
    http: TestClient, store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, poison, third = event(1), event(2), event(3)
    refuse_to_encode(monkeypatch, poison["id"])
    reply = post(http, lines(first, poison, third))
    assert reply.status_code == 200
    result = reply.json()
    assert result["written"] == [first["id"], third["id"]]
    assert [(r["index"], r["id"]) for r in result["rejected"]] == [(1, poison["id"])]
    assert result["rejected"][0]["reason"].startswith("storage_error: ")
    assert [r["id"] for r in stored_events(store.settings.data_dir)] == [
        first["id"], third["id"]]
    assert post(http, lines(poison)).status_code == 422  # alone: rejected, not retryable


def test_an_unexpected_encoder_failure_is_that_event_rejected_not_a_503(
    http: TestClient, store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in encoding must not turn into a retryable 503 for the whole body: its
    sender would post it again, forever."""
    first, poison, third = event(1), event(2), event(3)
    real = records.id_key

    def id_key(key: str) -> bytes | str:  # a bug: an exception the encoder does not expect
        if key == poison["id"]:
            raise RuntimeError("injected bug")
        return real(key)

    monkeypatch.setattr(records, "id_key", id_key)
    reply = post(http, lines(first, poison, third))
    assert reply.status_code == 200
    result = reply.json()
    assert result["written"] == [first["id"], third["id"]]
    assert [(r["index"], r["id"]) for r in result["rejected"]] == [(1, poison["id"])]
    assert "RuntimeError: injected bug" in result["rejected"][0]["reason"]


def test_when_every_event_is_rejected_the_answer_is_422(http: TestClient) -> None:
    reply = post(http, b'{"v": 2}\n')
    assert reply.status_code == 422
    assert reply.json()["written"] == [] and "missing field" in reply.json()["rejected"][0][
        "reason"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_without_the_token_nothing_is_stored(http: TestClient, store: Any,
                                             headers: dict[str, str]) -> None:
    reply = http.post("/api/v1/events", content=lines(event(1)), headers=headers)
    assert reply.status_code == 401
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert stored_events(store.settings.data_dir) == []


@pytest.mark.parametrize("values", [[f"Bearer {TOKEN}", "Bearer wrong"],
                                    ["Bearer wrong", f"Bearer {TOKEN}"]])
def test_two_authorization_headers_are_refused_even_with_the_token(
        http: TestClient, store: Any, values: list[str]) -> None:
    """Of two, the first was read: a proxy that checks the last one let through a
    request the collector then took on another credential."""
    reply = http.post("/api/v1/events", content=lines(event(1)),
                      headers=[("Authorization", value) for value in values])
    assert reply.status_code == 401
    assert "one Authorization header" in reply.json()["message"]
    assert stored_events(store.settings.data_dir) == []


def test_a_collector_without_a_token_refuses_http_ingest(store: Any) -> None:
    http, _ = client_for(store, token=None)
    reply = http.post("/api/v1/events", content=lines(event(1)), headers=AUTH)
    assert reply.status_code == 403 and "token" in reply.json()["message"]


def test_a_body_over_the_limit_is_refused_before_it_is_read(store: Any) -> None:
    http, ingest = client_for(store, max_body=1024)
    body = lines(*[event(i) for i in range(1, 20)])
    assert post(http, body).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield from (body[i:i + 100] for i in range(0, len(body), 100))

    assert http.post("/api/v1/events", content=chunks(), headers=AUTH).status_code == 413
    assert ingest.stats()["too_large"] == 2


@pytest.mark.parametrize("body", [b"{}\n" * 8193, b"[" + b"{}," * 8192 + b"{}]"],
                         ids=["lines", "array"])
def test_more_events_than_a_batch_may_hold_are_refused_unparsed(http: TestClient,
                                                                 body: bytes) -> None:
    reply = post(http, body)
    assert reply.status_code == 413 and reply.json()["error"] == "too_many_events"
    assert "8192" in reply.json()["message"]


@pytest.mark.parametrize("body", [b"", b"   \n\n", b"[]"])
def test_a_body_that_is_not_events_is_a_400(http: TestClient, body: bytes) -> None:
    reply = post(http, body)
    assert reply.status_code == 400 and reply.json()["error"] == "bad_body"


def test_a_store_that_cannot_write_acknowledges_nothing_and_asks_to_retry(tmp: Path) -> None:
    store = open_store(tmp / "closed")
    store.close()
    http, ingest = client_for(store)
    reply = post(http, lines(event(1)))
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "1"
    assert reply.json()["error"] == "storage_unavailable"
    assert ingest.stats()["storage_errors"] == 1


def test_the_sender_names_its_source(http: TestClient, store: Any) -> None:
    post(http, lines(event(1)), {"X-Audit-Source": "vector@edge-1"})
    assert stored_events(store.settings.data_dir)[0]["source"] == "vector@edge-1"
    assert post(http, lines(event(2)), {"X-Audit-Source": "bad source!"}).status_code == 400


def test_the_collectors_own_source_and_types_are_refused(http: TestClient, store: Any) -> None:
    """An app holding the ingest token must not forge the collector's records of who read
    the audit log (audit_log_viewed from source audit-collector-api)."""
    posing = post(http, lines(event(1)), {"X-Audit-Source": "audit-collector-api"})
    assert posing.status_code == 400 and "kept for the collector" in posing.json()["message"]
    good, forged = event(2), event(3, type="audit_log_viewed")
    reply = post(http, lines(good, forged))
    assert reply.status_code == 200 and reply.json()["written"] == [good["id"]]
    [rejected] = reply.json()["rejected"]
    assert "the collector's own record" in rejected["reason"]
    assert [r["id"] for r in stored_events(store.settings.data_dir)] == [good["id"]]


def test_counters_for_metrics(store: Any) -> None:
    http, ingest = client_for(store)
    once = event(1)
    post(http, lines(once, once) + b"nope\n")
    http.post("/api/v1/events", content=b"", headers={"Authorization": "Bearer no"})
    assert ingest.stats() == {"requests": 2, "unauthorized": 1, "events_received": 3,
                              "events_rejected": 1, "events_written": 1,
                              "events_duplicate": 1}


def test_every_request_refused_whole_as_malformed_is_a_bad_request(store: Any) -> None:
    """audit_collector_http_bad_requests_total says it counts a bad source header: the
    two bad_source answers were counted nowhere but in requests, so a sender whose
    every request was refused for its X-Audit-Source showed no failure on /metrics."""
    http, ingest = client_for(store)
    refused = [post(http, lines(event(1)), {"X-Audit-Source": "bad source!"}),
               post(http, lines(event(2)), {"X-Audit-Source": "audit-collector-api"}),
               post(http, b"   \n"),
               post(http, b"{}\n" * 8193)]
    assert [r.json()["error"] for r in refused] == ["bad_source", "bad_source", "bad_body",
                                                    "too_many_events"]
    assert ingest.stats()["bad_requests"] == 4
    assert stored_events(store.settings.data_dir) == []


def test_a_client_gone_mid_body_is_no_bad_request(store: Any) -> None:
    """A sender going away before its body ended (a timeout, a restart) is not a
    malformed sender: counted apart, an alert on bad requests does not fire for it."""
    import asyncio

    ingest = HttpIngest(store, HttpIngestSettings(token=TOKEN))
    app = Starlette(routes=routes())
    app.state.http_ingest = ingest
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "http.request", "body": lines(event(1))[:20], "more_body": True},
                     {"type": "http.disconnect"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/v1/events", "root_path": "",
             "query_string": b"", "scheme": "http", "server": ("127.0.0.1", 8080),
             "client": ("127.0.0.1", 5000), "http_version": "1.1", "app": app,
             "headers": [(b"authorization", f"Bearer {TOKEN}".encode()),
                         (b"content-type", b"application/x-ndjson")]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 400
    stats = ingest.stats()
    assert (stats.get("disconnected"), stats.get("bad_requests", 0)) == (1, 0)
    assert stored_events(store.settings.data_dir) == []



def test_a_request_waiting_for_the_store_holds_no_more_than_its_body_counts() -> None:
    """The frame budget counts a body's bytes until its events are stored. The body,
    its lines and their parsed dicts were all kept while the store wrote (a 3 MiB body
    held ~17 MiB): a full budget of bodies and a slow disk cost ~6 times
    max_inflight_bytes. Now only the answer's makings wait with it."""
    import asyncio
    import tracemalloc
    from concurrent.futures import Future

    class Writing:  # a store still writing: its answer never comes in this test
        answer: Future[Any] | None = None

        def submit(self, events: list[dict[str, Any]], *args: Any, **kwargs: Any
                   ) -> Future[Any]:
            self.answer = Future()
            return self.answer

    body = lines(*(event(i, target="t" * 100) for i in range(8000)))
    store = Writing()
    ingest = HttpIngest(store, HttpIngestSettings(token=TOKEN))
    scope = {"type": "http", "method": "POST", "path": "/api/v1/events",
             "query_string": b"", "headers": [
                 (b"authorization", f"Bearer {TOKEN}".encode()),
                 (b"content-length", str(len(body)).encode())]}
    messages = iter([{"type": "http.request", "body": body, "more_body": False}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def held_while_the_store_writes() -> int:
        from starlette.requests import Request

        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            task = asyncio.ensure_future(ingest.handle(Request(scope, receive)))
            while store.answer is None:
                assert not task.done(), task.result().body
                await asyncio.sleep(0)
            held = tracemalloc.get_traced_memory()[0] - before
            task.cancel()
            return held
        finally:
            tracemalloc.stop()

    held = asyncio.run(held_while_the_store_writes())
    assert held < len(body) // 4, f"{held >> 20} MiB held for a {len(body) >> 20} MiB body"


BAD_EVENTS = [
    b"[1]",
    b'"a string"',
    b'{"v": 1}',
    orjson.dumps({**event(1), "v": 2}),
    orjson.dumps({**event(1), "id": "NOT-A-UUID"}),
    orjson.dumps({**event(1), "type": "Bad Type"}),
    orjson.dumps({**event(1), "created": "2026-13-40T00:00:00.000000Z"}),
    orjson.dumps({**event(1), "trace_id": "xyz"}),
    orjson.dumps({**event(1), "principal": 7}),
    orjson.dumps({**event(1), "org_name": "o" * 5000}),
    orjson.dumps({**event(1), "peer_ip": ""}),
]


def test_rejections_are_the_sockets_word_for_word(tmp: Path, store: Any) -> None:
    server = InProcessCollector(store, IngestSettings(socket_path=tmp / "c.sock"))
    socket_client = RawClient(tmp / "c.sock")
    try:
        socket_client.hello()
        kind, payload = socket_client.batch(1, [line + b"\n" for line in BAD_EVENTS])
        assert kind is FrameType.RESULT
        over_socket = [(r.index, r.id, r.reason) for r in Result.decode(payload).rejected]
    finally:
        socket_client.close()
        server.close()
    http, _ = client_for(store)
    over_http = [(r["index"], r["id"], r["reason"])
                 for r in post(http, b"\n".join(BAD_EVENTS)).json()["rejected"]]
    assert over_http == over_socket
    assert len(over_http) == len(BAD_EVENTS)
