"""``fail_closed=True``: a request whose event cannot be durably recorded gets a 503
instead of its response; and AuditMiddleware flushes the sink on lifespan shutdown."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from audit_middleware import AuditMiddleware, MemorySink, audited, configure, emit
from audit_middleware.shipper import CollectorSink
from audit_middleware.testing import reset_configuration
from collector.ingest import IngestSettings
from tests.e2e.harness import (
    CollectorProcess,
    InProcessCollector,
    open_store,
    stored_events,
)


@audited("credentials_deleted", target="cred_id")
async def delete_credentials(request: Request) -> JSONResponse:
    return JSONResponse({"deleted": request.path_params["cred_id"]})


@audited("credentials_accessed", target="cred_id")
def read_credentials(request: Request) -> PlainTextResponse:  # sync: runs in a thread
    return PlainTextResponse("secret-ish")


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")  # records nothing: never waits, never refused


def make_app(on_shutdown: Any = None) -> AuditMiddleware:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            on_shutdown()

    app = Starlette(routes=[
        Route("/credentials/{cred_id}", delete_credentials, methods=["DELETE"]),
        Route("/credentials/{cred_id}", read_credentials, methods=["GET"]),
        Route("/health", health),
    ], lifespan=lifespan)
    return AuditMiddleware(app, principal=lambda ctx: "user-1")


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    reset_configuration()


def fail_closed_sink(root: Path, **options: Any) -> CollectorSink:
    sink = CollectorSink(f"unix://{root}/c.sock", spool_dir=root / "spool", fail_closed=True,
                         fail_closed_timeout=2.0, backoff_max=0.2, **options)
    configure(sink=sink)
    return sink


@pytest.fixture
def collector(root: Path) -> Iterator[Path]:
    store = open_store(root / "data")
    server = InProcessCollector(store, IngestSettings(socket_path=root / "c.sock"))
    yield root / "data"
    server.close()
    store.close()


def test_the_response_waits_for_the_acknowledgement(root: Path, collector: Path) -> None:
    sink = fail_closed_sink(root)
    with TestClient(make_app()) as client:
        response = client.delete("/credentials/c1")
        assert response.status_code == 200
        # Acknowledged before the response started: stored already, no flush needed.
        assert [e["target"] for e in stored_events(collector)] == ["c1"]
        assert client.get("/credentials/c2").status_code == 200
    assert sink.stats()["acknowledged"] == 2
    sink.close()


def test_collector_down_means_503_and_the_event_is_still_kept(root: Path) -> None:
    sink = fail_closed_sink(root)
    with TestClient(make_app()) as client:
        response = client.delete("/credentials/c1")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert "could not be recorded" in response.text
        assert "deleted" not in response.text  # the app's own body never leaks through
        assert client.get("/credentials/c2").status_code == 503  # sync handlers too
        assert client.get("/health").status_code == 200  # nothing to record: not refused
    assert sink.flush(timeout=5)
    assert sink.stats()["spooled"] == 2  # refused, but recorded later when it is back
    sink.close()


def test_the_refusal_log_line_cannot_be_forged_through_the_path(
        root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The refusal logged the decoded path as is: a CR/LF in it wrote a forged line into
    the app's log (an app-side security review). It is logged quoted."""
    import logging

    sink = fail_closed_sink(root)
    with caplog.at_level(logging.ERROR, "audit_middleware"), TestClient(make_app()) as client:
        forged = "c1%0d%0a2026-11-26 10:00:00 INFO user root signed out"
        assert client.delete(f"/credentials/{forged}").status_code == 503
    refusals = [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]
    assert refusals and all("\n" not in m and "\r" not in m for m in refusals)
    assert "'/credentials/c1\\r\\n2026-11-26" in refusals[0]
    sink.close()


def test_a_slow_acknowledgement_past_the_deadline_is_503(root: Path) -> None:
    # A listener that accepts and never answers: the deadline decides.
    import socket

    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(str(root / "c.sock"))
    hung.listen()
    sink = CollectorSink(f"unix://{root}/c.sock", spool_dir=root / "spool", fail_closed=True,
                         fail_closed_timeout=0.3, connect_timeout=1.0)
    configure(sink=sink)
    try:
        with TestClient(make_app()) as client:
            assert client.delete("/credentials/c1").status_code == 503
    finally:
        sink.close(timeout=0.5)
        hung.close()


def test_fail_open_is_the_default_and_never_refuses(root: Path) -> None:
    sink = CollectorSink(f"unix://{root}/c.sock", spool_dir=root / "spool")
    configure(sink=sink)
    with TestClient(make_app()) as client:
        assert client.delete("/credentials/c1").status_code == 200
    sink.close(timeout=1)
    assert sink.stats()["spooled"] == 1


def test_lifespan_shutdown_flushes_the_sink(root: Path, collector: Path) -> None:
    sink = CollectorSink(f"unix://{root}/c.sock", spool_dir=root / "spool", max_delay=60.0)
    configure(sink=sink)
    with TestClient(make_app(on_shutdown=lambda: emit("run_dropped", "r1"))) as client:
        client.delete("/credentials/c1")
        assert sink.stats()["acknowledged"] == 0  # waiting for a batch to fill
    # After shutdown: both events, including the one emitted while shutting down.
    assert sink.stats()["acknowledged"] == 2
    assert [e["type"] for e in stored_events(collector)] == ["credentials_deleted",
                                                             "run_dropped"]
    sink.close()


@pytest.mark.parametrize("otel_copy", [False, True], ids=["alone", "in-OTelLogSink"])
def test_lifespan_shutdown_spools_what_a_stalled_collector_left_unacknowledged(
        root: Path, monkeypatch: pytest.MonkeyPatch, otel_copy: bool) -> None:
    """Lifespan shutdown is the last chance under uvicorn: it re-raises the SIGTERM it
    caught, whose default action ends the process without exit handlers, so the sink's
    close() never runs. A flush there waited out its timeout on a collector that had
    stopped answering (SIGSTOP, a hung disk) and left the events in flight: the process
    then died with them, nothing spooled, counted or logged (uvicorn, 163 of 500
    requests' events). They are spooled by the deadline, the sink staying open. Wrapped
    in an OTelLogSink too (it had no drain: the lifespan flushed it, 0 of 3 spooled)."""
    import signal

    from audit_middleware import middleware
    from audit_middleware.sinks.otel import OTelLogSink

    monkeypatch.setattr(middleware, "SHUTDOWN_FLUSH_TIMEOUT", 0.5)
    collector = CollectorProcess(root / "data").start()
    try:
        sink = CollectorSink(collector.url, spool_dir=root / "spool", backoff_max=0.2)
        configure(sink=OTelLogSink(sink) if otel_copy else sink)
        with TestClient(make_app()) as client:
            assert client.delete("/credentials/c0").status_code == 200
            assert sink.flush(timeout=10) and sink.stats()["acknowledged"] == 1
            assert collector.proc is not None
            collector.proc.send_signal(signal.SIGSTOP)
            for n in (1, 2, 3):
                assert client.delete(f"/credentials/c{n}").status_code == 200
        # Right after lifespan shutdown, before any exit handler.
        assert sink.stats()["spooled"] == 3
        assert list((root / "spool").glob("*.spool"))
        collector.proc.send_signal(signal.SIGCONT)
        assert sink.wait_for_delivery(timeout=20)  # replayed: still open, still shipping
        sink.close()
        assert collector.stop() == 0
        assert sorted(e["target"] for e in stored_events(root / "data")) == [
            "c0", "c1", "c2", "c3"]
    finally:
        if collector.proc is not None and collector.proc.poll() is None:
            collector.proc.send_signal(signal.SIGCONT)
        collector.kill()


def test_lifespan_passes_through_with_any_sink() -> None:
    sink = MemorySink()
    configure(sink=sink)
    with TestClient(make_app(on_shutdown=lambda: emit("run_dropped", "r1"))):
        pass
    assert [e.type for e in sink.events] == ["run_dropped"]


def make_flask_app() -> Any:
    from flask import Flask

    from audit_middleware import WSGIAuditMiddleware

    flask_app = Flask(__name__)

    @flask_app.delete("/credentials/<cred_id>")
    @audited("credentials_deleted", target="cred_id")
    def delete(cred_id: str) -> dict[str, str]:
        return {"deleted": cred_id}

    @flask_app.get("/health")
    def health() -> str:
        return "ok"

    return WSGIAuditMiddleware(flask_app, principal=lambda ctx: "user-1")


def test_wsgi_response_waits_for_the_acknowledgement(root: Path, collector: Path) -> None:
    from werkzeug.test import Client

    sink = fail_closed_sink(root)
    response = Client(make_flask_app()).delete("/credentials/c1")
    assert response.status_code == 200
    assert [e["target"] for e in stored_events(collector)] == ["c1"]
    sink.close()


def test_wsgi_collector_down_means_503_without_the_apps_body(root: Path) -> None:
    from werkzeug.test import Client

    sink = fail_closed_sink(root)
    client = Client(make_flask_app())
    response = client.delete("/credentials/c1")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert b"could not be recorded" in response.data and b"deleted" not in response.data
    assert client.get("/health").status_code == 200
    assert sink.flush(timeout=5)
    assert sink.stats()["spooled"] == 1
    sink.close()


def test_wsgi_lazy_start_response_is_refused_too(root: Path) -> None:
    from werkzeug.test import Client

    from audit_middleware import WSGIAuditMiddleware

    def lazy_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        emit("credentials_accessed", "c1", principal="system")

        def body() -> Iterator[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])  # on first chunk
            yield b"the app's body"

        return body()

    sink = fail_closed_sink(root)
    response = Client(WSGIAuditMiddleware(lazy_app)).get("/")
    assert response.status_code == 503
    assert response.data == b"Service Unavailable: the action could not be recorded in the audit log\n"
    sink.close(timeout=1)


def test_wsgi_an_event_emitted_while_the_body_is_made_is_waited_for(root: Path) -> None:
    """A generator app that records its action inside the body, before its lazy
    start_response: that event's receipt is waited for like any other (it got none,
    and the response was 200 with the collector down)."""
    from werkzeug.test import Client

    from audit_middleware import WSGIAuditMiddleware

    def generator_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        emit("credentials_deleted", "c1")  # inside the body, before start_response
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"deleted"

    closed: list[bool] = []

    class Body:
        """A body that must be closed even when the server never iterates it."""

        def __iter__(self) -> Iterator[bytes]:
            return iter([b"never sent"])

        def close(self) -> None:
            closed.append(True)

    def unread_app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return Body()

    sink = fail_closed_sink(root)
    response = Client(WSGIAuditMiddleware(generator_app)).get("/")
    assert response.status_code == 503 and b"deleted" not in response.data
    WSGIAuditMiddleware(unread_app)(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda *a: None).close()
    assert closed == [True]
    sink.close(timeout=1)


def test_at_close_what_waits_for_an_answer_is_spooled_within_the_exit_timeout(
        root: Path) -> None:
    """A collector that takes the batch and never answers: the wait for its answer
    began before close() set the exit deadline, and ran on to ack_timeout, so at exit
    the batch was neither spooled nor counted. It now ends at the deadline and the
    batch is spooled, for the next start to replay."""
    import socket
    import threading

    from audit_middleware.wire import Welcome

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(root / "c.sock"))
    listener.listen()

    def silent_collector() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)  # the hello
        conn.sendall(Welcome(1, 1 << 20, 300.0).encode())
        while conn.recv(65536):  # takes every batch, answers none
            pass

    threading.Thread(target=silent_collector, daemon=True).start()
    sink = CollectorSink(f"unix://{root}/c.sock", spool_dir=root / "spool",
                         ack_timeout=30.0, exit_timeout=1.0, max_delay=0.01)
    configure(sink=sink)
    for i in range(5):
        emit("credentials_created", f"c-{i}")
    time.sleep(0.3)  # sent, waiting for the answer
    sink.close()  # within exit_timeout and its grace, not ack_timeout
    stats = sink.stats()
    assert (stats["acknowledged"], stats["spooled"], stats["dropped"]) == (0, 5, 0)
    listener.close()


def test_a_denied_request_fail_closed_is_answered_and_recorded(root: Path,
                                                               collector: Path) -> None:
    """``denied_event`` under a fail-closed sink, ASGI and WSGI: the 403 is the app's
    (nothing of its own was waited for), and the denial reaches the store."""
    from flask import Flask, abort
    from werkzeug.test import Client

    from audit_middleware import WSGIAuditMiddleware, register_resource

    register_resource("request", {"denied": "request_denied"})

    async def forbidden(request: Request) -> PlainTextResponse:
        return PlainTextResponse("no", status_code=403)

    asgi = AuditMiddleware(Starlette(routes=[Route("/admin", forbidden)]),
                           principal=lambda ctx: "user-1", denied_event="request_denied")
    flask_app = Flask(__name__)
    flask_app.get("/admin")(lambda: abort(401))
    wsgi = WSGIAuditMiddleware(flask_app, principal=lambda ctx: "user-2",
                               denied_event="request_denied")
    sink = fail_closed_sink(root)
    with TestClient(asgi) as client:
        assert client.get("/admin").status_code == 403
    assert Client(wsgi).get("/admin").status_code == 401
    assert sink.flush(timeout=5)
    assert sorted((e["type"], e["principal"], e["status"]) for e in stored_events(collector)) == [
        ("request_denied", "user-1", "HTTP 403 on GET"),
        ("request_denied", "user-2", "HTTP 401 on GET")]
    sink.close()


def test_a_denial_fail_closed_waits_for_nobody_and_wakes_no_one(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The denial is recorded once its answer is decided (ASGI: sent; WSGI: past the
    wait): nothing will wait for it. Given a receipt, as a request's own events are, it
    woke the sink's worker at once ("a request is waiting"), so under a flood of refused
    requests every denial was shipped alone instead of batched."""
    from flask import Flask, abort
    from werkzeug.test import Client

    from audit_middleware import WSGIAuditMiddleware, register_resource

    register_resource("request", {"denied": "request_denied"})

    async def forbidden(request: Request) -> PlainTextResponse:
        return PlainTextResponse("no", status_code=403)

    asgi = AuditMiddleware(Starlette(routes=[Route("/admin", forbidden)]),
                           denied_event="request_denied")
    flask_app = Flask(__name__)
    flask_app.get("/admin")(lambda: abort(401))
    wsgi = WSGIAuditMiddleware(flask_app, denied_event="request_denied")
    sink = fail_closed_sink(root)  # no collector: only what is queued matters here
    queued: list[Any] = []
    wakes: list[None] = []
    monkeypatch.setattr(sink._queue, "submit", lambda item: queued.append(item) or True)
    monkeypatch.setattr(sink._queue, "wake", lambda: wakes.append(None))
    assert TestClient(asgi).get("/admin").status_code == 403
    assert Client(wsgi).get("/admin").status_code == 401
    assert [(event.type, receipt) for _, event, receipt in queued] == [
        ("request_denied", None), ("request_denied", None)]
    assert wakes == []


class _CancelledMeanwhile(Future):  # type: ignore[type-arg]
    """A receipt whose request stops waiting (ASGI: the fail_closed deadline cancels the
    future that ``asyncio.wrap_future`` chained to it) just after the worker saw it
    pending: the interleaving of two threads, made deterministic."""

    def done(self) -> bool:
        was = super().done()
        self.cancel()
        return was


def test_a_receipt_cancelled_as_it_is_resolved_loses_nothing(
        root: Path, collector: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Future.set_result raises InvalidStateError on a future cancelled after the
    worker's done() check: it escaped the pipeline, and the queue counted the whole
    batch as failed (dropped), the events the collector had just acknowledged
    included, with the other receipts of the batch never resolved."""
    from audit_middleware.shipper import receipts
    from audit_middleware.shipper import sink as sink_module

    made: list[Future[str | None]] = []

    def new_receipt() -> Future[str | None] | None:
        pending_list = receipts.pending.get()
        if pending_list is None:
            return None
        receipt = _CancelledMeanwhile() if not made else Future()
        made.append(receipt)
        pending_list.append(receipt)
        return receipt

    monkeypatch.setattr(sink_module, "new_receipt", new_receipt)
    sink = fail_closed_sink(root)
    token = receipts.pending.set([])
    try:
        emit("team_created", "t1")
        emit("team_created", "t2")
    finally:
        receipts.pending.reset(token)
    assert sink.flush(timeout=10)
    assert made[1].result(timeout=1) is None  # the other request is answered: recorded
    stats = sink.stats()
    assert (stats["acknowledged"], stats["dropped"]) == (2, 0), stats
    assert [e["target"] for e in stored_events(collector)] == ["t1", "t2"]
    sink.close()


# -- WSGI fail_closed: the 503 as a real PEP 3333 server sends it -----------------------

def served(app: Any) -> tuple[str, dict[str, str], bytes]:
    """What a client gets for one GET from a real PEP 3333 server, the standard library's
    wsgiref handler (Werkzeug's test client re-raises ``exc_info`` instead of letting the
    app replace its status): status line, headers, body."""
    import io
    from wsgiref.handlers import SimpleHandler
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/credentials/c1"}
    setup_testing_defaults(environ)
    out = io.BytesIO()
    SimpleHandler(io.BytesIO(), out, io.StringIO(), environ).run(app)
    head, _, body = out.getvalue().partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status.split(" ", 1)[1], headers, body


UNAVAILABLE = b"Service Unavailable: the action could not be recorded in the audit log\n"


class LateAcknowledgingSink(MemorySink):
    """A fail-closed sink whose collector acknowledges a request's events only after the
    deadline the response waited for: the test resolves the receipts itself, when the
    refusal has been made (a real collector's late answer, without its timing)."""

    fail_closed = True
    fail_closed_timeout = 0.05

    def __init__(self) -> None:
        super().__init__()
        self.receipts: list[Future[str | None]] = []

    def submit(self, event: Any) -> None:
        from audit_middleware.shipper.receipts import new_receipt

        super().submit(event)
        receipt = new_receipt()
        if receipt is not None:
            self.receipts.append(receipt)

    def acknowledge(self) -> None:
        for receipt in self.receipts:
            receipt.set_result(None)  # durably recorded, but too late for the response


def _error_info() -> Any:
    import sys

    try:
        raise RuntimeError("the view failed")
    except RuntimeError:
        return sys.exc_info()


def eager_or_lazy(respond: Callable[[Any], None], body: bytes, *, lazy: bool
                  ) -> Callable[[dict[str, Any], Any], Iterable[bytes]]:
    """A WSGI app that calls ``respond(start_response)`` and returns ``body``: in the call
    itself, or (``lazy``) on its body's first iteration."""
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        respond(start_response)
        return [body]

    def lazy_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        respond(start_response)
        yield body

    return lazy_app if lazy else app


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_wsgi_a_later_start_response_does_not_replace_the_503(lazy: bool) -> None:
    """Refused with a 503 (the request's event not acknowledged by the deadline), the app
    then replaced its status (``start_response`` again, with ``exc_info``, as PEP 3333
    lets it until the first body byte). That call waited again, found the event
    acknowledged meanwhile, and passed the app's status to the server: the client got
    the app's answer in place of the 503 (with the 503's body). The 503 stands."""
    from audit_middleware import WSGIAuditMiddleware

    sink = LateAcknowledgingSink()
    configure(sink=sink)

    def respond(start_response: Any) -> None:
        emit("credentials_deleted", "c1", principal="system")
        start_response("200 OK", [("Content-Type", "text/plain")])  # refused: 503
        sink.acknowledge()
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                       _error_info())

    status, headers, body = served(WSGIAuditMiddleware(
        eager_or_lazy(respond, b"the app's error page", lazy=lazy)))
    assert (status, headers.get("Retry-After"), body) == ("503 Service Unavailable", "5",
                                                     UNAVAILABLE)
    assert headers["Content-Length"] == str(len(UNAVAILABLE))
    assert [e.target for e in sink.events] == ["c1"]


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_wsgi_an_app_raising_after_the_refusal_does_not_replace_the_503(
        lazy: bool, caplog: pytest.LogCaptureFixture) -> None:
    """Refused with a 503, the app then raised before its body: the server answered the
    exception with its 500 in place of the 503 (under ASGI the 503 is sent already, the
    client keeps it). The 503 stands, and the app's exception is logged, not lost."""
    from audit_middleware import WSGIAuditMiddleware

    sink = LateAcknowledgingSink()
    configure(sink=sink)

    def respond(start_response: Any) -> None:
        emit("credentials_deleted", "c1", principal="system")
        start_response("200 OK", [("Content-Type", "text/plain")])  # refused: 503
        raise RuntimeError("the view failed after start_response")

    status, headers, body = served(WSGIAuditMiddleware(
        eager_or_lazy(respond, b"never", lazy=lazy)))
    assert (status, headers.get("Retry-After"), body) == ("503 Service Unavailable", "5",
                                                     UNAVAILABLE)
    assert "the view failed after start_response" in caplog.text


def test_wsgi_a_lazy_refusal_of_an_empty_body_is_a_whole_503(root: Path) -> None:
    """A generator app whose lazy ``start_response`` was refused and that then yields
    nothing (an empty answer): the server sent the 503's headers, ``Content-Length: 71``
    among them, and no body at all (a response short of the length it announces). It
    is the 503 with its body."""
    from audit_middleware import WSGIAuditMiddleware

    def empty_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        emit("credentials_deleted", "c1", principal="system")
        start_response("200 OK", [("Content-Length", "0")])  # refused: the collector is down
        yield from ()

    sink = fail_closed_sink(root)
    status, headers, body = served(WSGIAuditMiddleware(empty_app))
    assert (status, headers.get("Retry-After"), body) == ("503 Service Unavailable", "5",
                                                     UNAVAILABLE)
    assert headers["Content-Length"] == str(len(UNAVAILABLE))
    sink.close(timeout=1)


def test_wsgi_a_refusal_the_server_cannot_send_is_no_refusal(
        caplog: pytest.LogCaptureFixture) -> None:
    """The response had started (its first chunk sent) when an event emitted after it
    was not acknowledged in time and the app named an error status (``start_response``
    with ``exc_info``): the server cannot send a 503 any more and re-raises the app's
    error. The middleware had noted the refusal before asking the server: it logged a
    503 the client never got, and, for an app that went on after the re-raised error,
    sent the 503's text inside the app's 200 body. Only a 503 the server took is one."""
    from audit_middleware import WSGIAuditMiddleware

    sink = LateAcknowledgingSink()
    configure(sink=sink)

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])  # nothing to wait for
        yield b"first,"
        emit("credentials_deleted", "c1", principal="system")  # never acknowledged in time
        try:
            start_response("500 Internal Server Error", [], _error_info())
        except RuntimeError:
            pass  # the server re-raised: the 200 stands
        yield b"second"

    with caplog.at_level("ERROR", logger="audit_middleware"):
        status, _, body = served(WSGIAuditMiddleware(app))
    assert (status, body) == ("200 OK", b"first,second")
    assert "refusing" not in caplog.text
