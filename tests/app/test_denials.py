"""Denied requests (401, 403) recorded as the event type the app chose, through real
requests into Starlette, FastAPI and Flask apps: refused by an authentication
middleware before any router, by a permission check, by a dependency. A request its
``@audited`` handler recorded as failed is not recorded twice; nothing else is recorded
at all; the record holds the path, never the query string."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from typing import Any
from wsgiref.handlers import SimpleHandler
from wsgiref.util import setup_testing_defaults

import orjson
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.testclient import TestClient as FastAPIClient
from flask import Flask, abort
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    SimpleUser,
    requires,
)
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from audit_middleware import (
    AuditConfigurationError,
    AuditMiddleware,
    MemorySink,
    UnknownEventTypeError,
    WSGIAuditMiddleware,
    audited,
    configure,
    register_resource,
)
from audit_middleware._config import DEFAULT_MAX_FIELD_LENGTH
from audit_middleware._types import WSGIApp
from audit_middleware.event import AuditEvent
from audit_middleware.sanitize import TRUNCATION_MARKER

DENIED = "request_denied"


@pytest.fixture(autouse=True)
def denied_type(events: list[AuditEvent]) -> Iterator[None]:
    register_resource("request", {"denied": DENIED})  # `events` resets the catalogue after
    yield


class Bearer(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        token = conn.headers.get("authorization", "")
        if token == "Bearer alice":
            return AuthCredentials(["authenticated"]), SimpleUser("alice")
        if token == "Bearer bob":  # signed in, but not an admin
            return AuthCredentials(["authenticated"]), SimpleUser("bob")
        return None


class KeyRequired:
    """An API gateway's check in front of everything: 401 before any router runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/internal"):
            await PlainTextResponse("no key", status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


@requires("authenticated")
async def credentials(request: Request) -> Response:
    if request.user.username != "alice":
        raise StarletteHTTPException(403, "admins only")
    return PlainTextResponse("secret")


@audited("credentials_deleted", target="credentials_id", record_failure=True)
async def delete_credentials(request: Request) -> Response:
    raise StarletteHTTPException(403, "admins only")


async def hello(request: Request) -> Response:
    return PlainTextResponse("hi")


def starlette_client() -> TestClient:
    app = Starlette(routes=[
        Route("/credentials/{credentials_id}", credentials),
        Route("/credentials/{credentials_id}", delete_credentials, methods=["DELETE"]),
        Route("/hello", hello),
    ], middleware=[
        Middleware(AuditMiddleware, denied_event=DENIED),  # outermost: it sees every answer
        Middleware(KeyRequired),
        Middleware(AuthenticationMiddleware, backend=Bearer()),
    ])
    return TestClient(app, client=("203.0.113.7", 50000))


def fields(event: AuditEvent) -> tuple[str, str, str, str, str]:
    return (event.type, event.target, event.status, event.principal, event.client_ip)


def test_refused_before_any_handler_and_by_a_permission_check(events: list[AuditEvent]) -> None:
    client = starlette_client()
    assert client.get("/credentials/c-1?token=s3cret").status_code == 403  # not signed in
    assert client.post("/internal/reindex").status_code == 401  # refused before routing
    assert client.get("/credentials/c-1",
                      headers={"Authorization": "Bearer bob"}).status_code == 403
    assert [fields(e) for e in events] == [
        (DENIED, "/credentials/c-1", "HTTP 403 on GET", "", "203.0.113.7"),
        (DENIED, "/internal/reindex", "HTTP 401 on POST", "", "203.0.113.7"),
        (DENIED, "/credentials/c-1", "HTTP 403 on GET", "bob", "203.0.113.7"),
    ]
    assert all("s3cret" not in e.to_json_line().decode() for e in events)


def test_only_denials_are_recorded(events: list[AuditEvent]) -> None:
    client = starlette_client()
    assert client.get("/hello").status_code == 200
    assert client.get("/nowhere").status_code == 404
    assert client.get("/credentials/c-1",
                      headers={"Authorization": "Bearer alice"}).status_code == 200
    assert events == []


def test_a_failure_its_handler_recorded_is_not_recorded_twice(
        events: list[AuditEvent]) -> None:
    assert starlette_client().delete("/credentials/c-9").status_code == 403
    assert [fields(e) for e in events] == [
        ("credentials_deleted", "c-9", "failed: HTTP 403", "", "203.0.113.7")]


def test_a_hostile_path_is_one_escaped_capped_line(events: list[AuditEvent]) -> None:
    client = starlette_client()
    path = "/internal/a%0d%0a{\"type\":\"forged\"}%e2%80%a8%1b[31m" + "x" * 60_000
    assert client.get(path).status_code == 401
    [event] = events
    line = event.to_json_line()
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    target = orjson.loads(line)["target"]
    assert target.startswith("/internal/a\r\n{\"type\":\"forged\"}\u2028\x1b[31mxxx")
    assert len(target) == DEFAULT_MAX_FIELD_LENGTH and target.endswith(TRUNCATION_MARKER)


def test_no_denied_event_by_default(events: list[AuditEvent]) -> None:
    app = Starlette(routes=[Route("/internal/x", hello)],
                    middleware=[Middleware(AuditMiddleware), Middleware(KeyRequired)])
    assert TestClient(app).get("/internal/x").status_code == 401
    assert events == []


def test_fastapi_a_dependency_that_refuses(events: list[AuditEvent]) -> None:
    def admin() -> None:
        raise HTTPException(403, "admins only")

    app = FastAPI()
    app.add_middleware(AuditMiddleware, denied_event=DENIED)

    @app.delete("/pipelines/{pipeline_id}", dependencies=[Depends(admin)])
    @audited("pipeline_deleted", target="pipeline_id")
    async def delete(pipeline_id: str) -> dict[str, str]:
        return {}

    assert FastAPIClient(app).delete("/pipelines/p-1").status_code == 403
    assert [(e.type, e.target, e.status) for e in events] == [
        (DENIED, "/pipelines/p-1", "HTTP 403 on DELETE")]


def test_flask_denials(events: list[AuditEvent]) -> None:
    app = Flask(__name__)

    @app.get("/buckets/<bucket_id>")
    def bucket(bucket_id: str) -> str:
        abort(401)

    @app.delete("/buckets/<bucket_id>")
    @audited("bucket_deleted", target="bucket_id", record_failure=True)
    def delete(bucket_id: str) -> str:
        abort(403)

    @app.get("/ok")
    def ok() -> str:
        return "ok"

    app.wsgi_app = WSGIAuditMiddleware(app.wsgi_app, denied_event=DENIED)  # type: ignore[method-assign]
    client = app.test_client()
    assert client.get("/buckets/b-\u00e9?token=s3cret").status_code == 401
    assert client.delete("/buckets/b-2").status_code == 403
    assert client.get("/ok").status_code == 200
    assert [(e.type, e.target, e.status) for e in events] == [
        (DENIED, "/buckets/b-\u00e9", "HTTP 401 on GET"),  # the UTF-8 path, not its latin-1
        ("bucket_deleted", "b-2", "failed: HTTP 403"),
    ]


def test_a_denied_event_must_be_known_when_the_middleware_is_made() -> None:
    with pytest.raises(UnknownEventTypeError) as raised:
        AuditMiddleware(hello, denied_event="request_denid")
    assert DENIED in str(raised.value)  # the closest valid type is named
    with pytest.raises(AuditConfigurationError, match="register_resource"):
        WSGIAuditMiddleware(lambda e, s: [], denied_event=True)  # type: ignore[arg-type]


def test_a_websocket_handshake_refused_is_recorded(events: list[AuditEvent]) -> None:
    """A websocket refused before it is accepted is an HTTP 401 or 403 answer too: closed
    before ``websocket.accept`` (the server answers 403: Starlette's ``@requires`` on a
    websocket), or a denial response (``websocket.http.response``, a FastAPI dependency
    raising ``HTTPException``). One accepted, then closed, is no denial."""
    from fastapi import WebSocket as FastAPIWebSocket

    @requires("authenticated")
    async def feed(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/feed", feed)], middleware=[
        Middleware(AuditMiddleware, denied_event=DENIED),
        Middleware(AuthenticationMiddleware, backend=Bearer())])
    client = TestClient(app, client=("203.0.113.7", 50000))
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/feed?token=s3cret"):
        pass
    bob = {"Authorization": "Bearer bob"}
    with client.websocket_connect("/feed", headers=bob) as ws, pytest.raises(
            WebSocketDisconnect):
        ws.receive_text()  # accepted, then closed by the app: no denial

    def signed_in() -> None:
        raise HTTPException(401, "sign in")

    api = FastAPI()
    api.add_middleware(AuditMiddleware, denied_event=DENIED)

    @api.websocket("/events", dependencies=[Depends(signed_in)])
    async def events_feed(websocket: FastAPIWebSocket) -> None:
        await websocket.accept()

    with (pytest.raises(WebSocketDenialResponse) as denied,
          FastAPIClient(api).websocket_connect("/events")):
        pass
    assert denied.value.status_code == 401
    assert [fields(e)[:4] for e in events] == [
        (DENIED, "/feed", "HTTP 403 on GET", ""),
        (DENIED, "/events", "HTTP 401 on GET", ""),
    ]


@pytest.mark.parametrize(("outer", "inner"), [(DENIED, DENIED), (DENIED, None),
                                              (None, DENIED)])
def test_nested_audit_middlewares_record_a_denial_once(
        events: list[AuditEvent], outer: str | None, inner: str | None) -> None:
    """A sub-app built with its own AuditMiddleware, mounted in an app that has one too
    (an app factory used twice): both saw the same 403, and each recorded it; a failure
    the inner @audited recorded was not known to the outer one, which recorded a denial
    beside it."""

    async def forbidden(request: Request) -> Response:
        return PlainTextResponse("no", status_code=403)

    sub = Starlette(routes=[
        Route("/admin", forbidden),
        Route("/credentials/{credentials_id}", delete_credentials, methods=["DELETE"]),
    ], middleware=[Middleware(AuditMiddleware, denied_event=inner)])
    app = Starlette(routes=[Mount("/v2", app=sub)],
                    middleware=[Middleware(AuditMiddleware, denied_event=outer)])
    client = TestClient(app)
    assert client.get("/v2/admin").status_code == 403
    assert client.delete("/v2/credentials/c-3").status_code == 403
    assert [(e.type, e.target, e.status) for e in events] == [
        (DENIED, "/v2/admin", "HTTP 403 on GET"),
        ("credentials_deleted", "c-3", "failed: HTTP 403")]


def test_nested_wsgi_audit_middlewares_record_a_denial_once(events: list[AuditEvent]) -> None:
    inner_app = Flask("inner")
    inner_app.get("/admin")(lambda: abort(403))
    inner = WSGIAuditMiddleware(inner_app.wsgi_app, denied_event=DENIED)
    outer = WSGIAuditMiddleware(inner, denied_event=DENIED)
    from werkzeug.test import Client

    assert Client(outer).get("/admin").status_code == 403
    assert [(e.type, e.target) for e in events] == [(DENIED, "/admin")]


# -- WSGI: the status the client got, not the first one the app named -----------------

def served_status(app: WSGIApp, environ: dict[str, Any] | None = None) -> str:
    """The status line a real PEP 3333 server (the standard library's wsgiref handler)
    sends for one GET: it lets an app replace its status with ``exc_info`` until the
    first body byte, and answers 500 itself when the app raises before it."""
    env: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/files/f-1"}
    env.update(environ or {})
    setup_testing_defaults(env)
    out = io.BytesIO()
    SimpleHandler(io.BytesIO(), out, io.StringIO(), env).run(app)
    return out.getvalue().split(b"\r\n", 1)[0].decode().split(" ", 1)[1]


def _failing() -> Any:
    try:
        raise RuntimeError("the view failed")
    except RuntimeError:
        return sys.exc_info()


def denied_then_error(environ: Any, start_response: Any) -> list[bytes]:
    start_response("403 Forbidden", [("Content-Type", "text/plain")])
    start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                   _failing())  # before any body byte: the client gets the 500
    return [b"error"]


def ok_then_denied(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    start_response("403 Forbidden", [("Content-Type", "text/plain")], _failing())
    return [b"no"]


def unauthenticated_then_forbidden(environ: Any, start_response: Any) -> list[bytes]:
    start_response("401 Unauthorized", [("Content-Type", "text/plain")])
    start_response("403 Forbidden", [("Content-Type", "text/plain")], _failing())
    return [b"no"]


def lazy_denied_then_error(environ: Any, start_response: Any) -> Iterator[bytes]:
    # A generator: start_response runs at its first next(), after the middleware returned.
    start_response("403 Forbidden", [("Content-Type", "text/plain")])
    start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                   _failing())
    yield b"error"


def lazy_ok_then_denied(environ: Any, start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    start_response("403 Forbidden", [("Content-Type", "text/plain")], _failing())
    yield b"no"


def lazy_denied_sent_then_error(environ: Any, start_response: Any) -> Iterator[bytes]:
    start_response("403 Forbidden", [("Content-Type", "text/plain")])
    yield b""  # wsgiref, gunicorn and Werkzeug send the headers with any chunk, empty too
    start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                   _failing())  # too late: the server re-raises, the client has the 403
    yield b"error"


def denied_then_raises(environ: Any, start_response: Any) -> list[bytes]:
    start_response("403 Forbidden", [("Content-Type", "text/plain")])
    raise RuntimeError("the view failed")  # the server answers 500, not the 403


def lazy_denied_then_raises(environ: Any, start_response: Any) -> Iterator[bytes]:
    start_response("403 Forbidden", [("Content-Type", "text/plain")])
    raise RuntimeError("the view failed")
    yield b""  # a generator


def denied_written(environ: Any, start_response: Any) -> list[bytes]:
    write = start_response("403 Forbidden", [("Content-Type", "text/plain")])
    write(b"no")  # the legacy write(): the 403 is sent here
    return []


def denied_empty_body(environ: Any, start_response: Any) -> Iterator[bytes]:
    start_response("401 Unauthorized", [("Content-Length", "0")])
    yield from ()


class FailClosedMemorySink(MemorySink):
    """A MemorySink the middlewares treat as fail-closed: their other ``start_response``."""

    fail_closed = True
    fail_closed_timeout = 2.0


@pytest.mark.parametrize("fail_closed", [False, True], ids=["fail-open", "fail-closed"])
@pytest.mark.parametrize(("app", "sent", "recorded"), [
    (denied_then_error, "500 Internal Server Error", []),
    (ok_then_denied, "403 Forbidden", ["HTTP 403 on GET"]),
    (unauthenticated_then_forbidden, "403 Forbidden", ["HTTP 403 on GET"]),
    (lazy_denied_then_error, "500 Internal Server Error", []),
    (lazy_ok_then_denied, "403 Forbidden", ["HTTP 403 on GET"]),
    (lazy_denied_sent_then_error, "403 Forbidden", ["HTTP 403 on GET"]),
    (denied_then_raises, "500 Internal Server Error", []),
    (lazy_denied_then_raises, "500 Internal Server Error", []),
    (denied_written, "403 Forbidden", ["HTTP 403 on GET"]),
    (denied_empty_body, "401 Unauthorized", ["HTTP 401 on GET"]),
], ids=lambda v: getattr(v, "__name__", None))
def test_wsgi_records_the_status_the_client_got(
        events: list[AuditEvent], app: WSGIApp, sent: str, recorded: list[str],
        fail_closed: bool) -> None:
    """PEP 3333 lets an app call ``start_response`` again, with ``exc_info``, until the
    first body byte is sent: the last status before it is the answer. A 403 replaced by
    a 500, or followed by an exception the server answers 500, is no denial; a 200 (or a
    401) replaced by a 403 is one, recorded once, as 403."""
    sink = FailClosedMemorySink() if fail_closed else MemorySink()
    configure(sink=sink)
    register_resource("request", {"denied": DENIED})  # configure() kept the catalogue
    assert served_status(WSGIAuditMiddleware(app, denied_event=DENIED)) == sent
    assert [(e.type, e.target, e.status) for e in sink.events] == [
        (DENIED, "/files/f-1", status) for status in recorded]


# -- which recorded failure stands in for the denial -----------------------------------

@audited("credentials_accessed", target="credentials_id", record_failure=True)
def read_from_vault(credentials_id: str, refuse: bool = False) -> str:
    """A helper the handlers call, audited on its own (not a handler)."""
    if refuse:
        raise StarletteHTTPException(403, "sealed for you")
    raise ValueError("the vault is sealed")


async def rotate(request: Request) -> Response:  # no @audited of its own
    try:
        read_from_vault(credentials_id=request.path_params["credentials_id"])
    except ValueError:
        return PlainTextResponse("not now", status_code=403)
    return PlainTextResponse("rotated")


@audited("credentials_updated", target="credentials_id")
async def update(request: Request) -> Response:
    try:
        read_from_vault(credentials_id=request.path_params["credentials_id"], refuse=True)
    except StarletteHTTPException:
        return PlainTextResponse("not yours", status_code=403)  # not recorded as failed
    return PlainTextResponse("updated")


@audited("credentials_updated", target="credentials_id")
async def update_refused_by_the_helper(request: Request) -> Response:
    read_from_vault(credentials_id=request.path_params["credentials_id"], refuse=True)
    return PlainTextResponse("updated")  # never: the helper's 403 is the answer


@audited("credentials_deleted", target="credentials_id", record_failure=True)
async def delete_after_a_helper(request: Request) -> Response:
    try:
        read_from_vault(credentials_id=request.path_params["credentials_id"])
    except ValueError:
        raise StarletteHTTPException(403, "admins only") from None
    return PlainTextResponse("deleted")


def test_a_failure_a_helper_recorded_does_not_hide_the_denial(
        events: list[AuditEvent]) -> None:
    """The failure event of an audited helper whose exception the handler caught is not
    the request's answer: the handler's 403 after it is recorded as a denial. A failure
    stands in for the denial only when it is the last ``@audited`` outcome of the
    request (an exception passing through an ``@audited`` that records no failure keeps
    it) and names the status the client got (``failed: HTTP 403`` for a 403)."""
    app = Starlette(routes=[
        Route("/credentials/{credentials_id}/rotate", rotate, methods=["POST"]),
        Route("/credentials/{credentials_id}", update, methods=["PUT"]),
        Route("/credentials/{credentials_id}", delete_after_a_helper, methods=["DELETE"]),
        Route("/credentials/{credentials_id}", update_refused_by_the_helper,
              methods=["PATCH"]),
    ], middleware=[Middleware(AuditMiddleware, denied_event=DENIED)])
    client = TestClient(app)
    assert client.post("/credentials/c-1/rotate").status_code == 403
    assert client.put("/credentials/c-2").status_code == 403
    assert client.delete("/credentials/c-3").status_code == 403
    assert client.patch("/credentials/c-4").status_code == 403
    assert [(e.type, e.target, e.status) for e in events] == [
        ("credentials_accessed", "c-1", "failed: ValueError"),
        (DENIED, "/credentials/c-1/rotate", "HTTP 403 on POST"),
        ("credentials_accessed", "c-2", "failed: HTTP 403"),  # the handler answered after it
        (DENIED, "/credentials/c-2", "HTTP 403 on PUT"),
        ("credentials_accessed", "c-3", "failed: ValueError"),
        ("credentials_deleted", "c-3", "failed: HTTP 403"),  # the answer's own: once
        # The helper's 403 propagated through the handler's @audited: the answer, once.
        ("credentials_accessed", "c-4", "failed: HTTP 403"),
    ]


async def rotate_sealed(request: Request) -> Response:  # no @audited of its own
    try:
        read_from_vault(credentials_id=request.path_params["credentials_id"], refuse=True)
    except StarletteHTTPException:
        return PlainTextResponse("not yours", status_code=403)
    return PlainTextResponse("rotated")


def test_a_helpers_failure_stands_for_the_denial_under_a_handler_not_audited(
        events: list[AuditEvent]) -> None:
    """What the README says of a handler that is not itself ``@audited``: nothing clears
    the helper's ``failed: HTTP 403``, which cannot be told from a helper's failure that
    was the answer, so it stands for the denial (once, not beside it)."""
    app = Starlette(routes=[
        Route("/credentials/{credentials_id}/rotate", rotate_sealed, methods=["POST"]),
    ], middleware=[Middleware(AuditMiddleware, denied_event=DENIED)])
    assert TestClient(app).post("/credentials/c-1/rotate").status_code == 403
    assert [(e.type, e.target, e.status) for e in events] == [
        ("credentials_accessed", "c-1", "failed: HTTP 403")]


def test_flask_a_failure_a_helper_recorded_does_not_hide_the_denial(
        events: list[AuditEvent]) -> None:
    app = Flask(__name__)

    @app.post("/credentials/<credentials_id>/rotate")
    def rotate_flask(credentials_id: str) -> str:
        try:
            read_from_vault(credentials_id=credentials_id)
        except ValueError:
            abort(403)
        return "rotated"

    app.wsgi_app = WSGIAuditMiddleware(app.wsgi_app, denied_event=DENIED)  # type: ignore[method-assign]
    assert app.test_client().post("/credentials/c-1/rotate").status_code == 403
    assert [(e.type, e.target, e.status) for e in events] == [
        ("credentials_accessed", "c-1", "failed: ValueError"),
        (DENIED, "/credentials/c-1/rotate", "HTTP 403 on POST"),
    ]



@audited("access_token_deleted")
def revoke_token() -> None:
    """Audited on its own, called after the handler answered (a background task, an
    ``after_request`` hook): no failure was recorded inside it."""


@audited("credentials_deleted", target="credentials_id", record_failure=True)
async def delete_refused_then_revoke(request: Request) -> Response:
    return PlainTextResponse("admins only", status_code=403,
                             background=BackgroundTask(revoke_token))


def test_an_audited_call_after_the_handler_does_not_repeat_its_denial(
        events: list[AuditEvent]) -> None:
    """Only an ``@audited`` call that returns around a failure (its handler caught a
    helper's) clears it: one that starts after the handler recorded its 403 (a
    background task, a Flask ``after_request`` hook) cleared it too, and the denial was
    recorded beside the handler's own ``failed: HTTP 403``, twice in all."""
    app = Starlette(routes=[
        Route("/credentials/{credentials_id}", delete_refused_then_revoke,
              methods=["DELETE"]),
    ], middleware=[Middleware(AuditMiddleware, denied_event=DENIED)])
    assert TestClient(app).delete("/credentials/c-5").status_code == 403

    flask_app = Flask(__name__)

    @flask_app.delete("/credentials/<credentials_id>")
    @audited("credentials_deleted", target="credentials_id", record_failure=True)
    def delete_flask(credentials_id: str) -> str:
        abort(403)

    @flask_app.after_request
    def revoke_after(response: Any) -> Any:
        revoke_token()
        return response

    flask_app.wsgi_app = WSGIAuditMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, denied_event=DENIED)
    assert flask_app.test_client().delete("/credentials/c-6").status_code == 403
    assert [(e.type, e.target, e.status) for e in events] == [
        ("credentials_deleted", "c-5", "failed: HTTP 403"),
        ("access_token_deleted", "", ""),
        ("credentials_deleted", "c-6", "failed: HTTP 403"),
        ("access_token_deleted", "", ""),
    ]


# -- websockets under nested audit middlewares ------------------------------------------

@audited("credentials_accessed", target="credentials_id", record_failure=True)
async def credentials_feed(websocket: WebSocket) -> None:
    raise StarletteHTTPException(403, "admins only")  # before accepting: a denial response


@pytest.mark.parametrize(("outer", "inner"), [(DENIED, DENIED), (DENIED, None),
                                              (None, DENIED)])
def test_nested_audit_middlewares_record_a_websocket_denial_once(
        events: list[AuditEvent], outer: str | None, inner: str | None) -> None:
    """A websocket refused under two audit middlewares, whichever of them records
    denials: once, and not beside the failure its ``@audited`` handler recorded."""

    @requires("authenticated")
    async def feed(websocket: WebSocket) -> None:
        await websocket.accept()

    sub = Starlette(routes=[
        WebSocketRoute("/feed", feed),
        WebSocketRoute("/credentials/{credentials_id}", credentials_feed),
    ], middleware=[Middleware(AuditMiddleware, denied_event=inner),
                   Middleware(AuthenticationMiddleware, backend=Bearer())])
    app = Starlette(routes=[Mount("/v2", app=sub)],
                    middleware=[Middleware(AuditMiddleware, denied_event=outer)])
    client = TestClient(app)
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/v2/feed"):
        pass
    with (pytest.raises(WebSocketDenialResponse) as denied,
          client.websocket_connect("/v2/credentials/c-4")):
        pass
    assert denied.value.status_code == 403
    assert [(e.type, e.target, e.status) for e in events] == [
        (DENIED, "/v2/feed", "HTTP 403 on GET"),
        ("credentials_accessed", "c-4", "failed: HTTP 403")]


# -- a failure recorded once the answer has started -------------------------------------

@audited("access_token_deleted", target="token_id", record_failure=True)
def revoke_token_failing(token_id: str, refuse: bool = False) -> Response:
    """Audited on its own, and failing: called once the response has started (a
    background task, a Flask ``teardown_request``). It raises (caught by its caller), or
    returns the token service's refusal, a 403 response (``failed: HTTP 403``)."""
    if refuse:
        return PlainTextResponse("the token service refused", status_code=403)
    raise ValueError("the token store is down")


def revoke_quietly(refuse: bool = False) -> None:
    try:
        revoke_token_failing(token_id="t-1", refuse=refuse)
    except ValueError:
        pass  # best effort, after the answer: its failure event says what happened


@audited("credentials_deleted", target="credentials_id", record_failure=True)
async def delete_refused_then_revoke_fails(request: Request) -> Response:
    return PlainTextResponse("admins only", status_code=403,
                             background=BackgroundTask(revoke_quietly))


async def forbidden_then_revoke_refused(request: Request) -> Response:  # no @audited
    return PlainTextResponse("no", status_code=403,
                             background=BackgroundTask(revoke_quietly, refuse=True))


def test_a_failure_recorded_after_the_answer_does_not_change_the_denial(
        events: list[AuditEvent]) -> None:
    """A failure an ``@audited`` call records once the response has started (a
    background task, sent after the response; a Flask ``teardown_request``) became the
    request's last outcome all the same: a ``failed: ValueError`` there had the 403
    its handler recorded as ``failed: HTTP 403`` recorded a second time, as a denial;
    a ``failed: HTTP 403`` there hid the denial of a handler that recorded none. What
    stands for the denial is decided before the answer starts."""
    app = Starlette(routes=[
        Route("/credentials/{credentials_id}", delete_refused_then_revoke_fails,
              methods=["DELETE"]),
        Route("/tokens", forbidden_then_revoke_refused, methods=["POST"]),
    ], middleware=[Middleware(AuditMiddleware, denied_event=DENIED)])
    client = TestClient(app)
    assert client.delete("/credentials/c-7").status_code == 403
    assert client.post("/tokens").status_code == 403

    flask_app = Flask(__name__)

    @flask_app.delete("/credentials/<credentials_id>")
    @audited("credentials_deleted", target="credentials_id", record_failure=True)
    def delete_flask(credentials_id: str) -> str:
        abort(403)

    @flask_app.teardown_request
    def revoke_at_teardown(error: BaseException | None) -> None:
        revoke_quietly()  # Flask runs it after start_response

    flask_app.wsgi_app = WSGIAuditMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, denied_event=DENIED)
    assert flask_app.test_client().delete("/credentials/c-8").status_code == 403
    assert [(e.type, e.target, e.status) for e in events] == [
        ("credentials_deleted", "c-7", "failed: HTTP 403"),
        ("access_token_deleted", "t-1", "failed: ValueError"),
        ("access_token_deleted", "t-1", "failed: HTTP 403"),
        (DENIED, "/tokens", "HTTP 403 on POST"),
        ("credentials_deleted", "c-8", "failed: HTTP 403"),
        ("access_token_deleted", "t-1", "failed: ValueError"),
    ]
