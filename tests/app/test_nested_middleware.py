"""A second audit middleware in a mounted sub-app (a plugin or a sub-application shipped
with its own default middleware), through real requests: for each option the inner one
was left at its default, it takes the enclosing one's (the outer one sits closer to the
network: its trusted proxies decide the client IP); an option it was given wins."""

from __future__ import annotations

from typing import Any

from flask import Flask
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from audit_middleware import (
    AuditMiddleware,
    WSGIAuditMiddleware,
    audited,
    emit,
    header,
    register_resource,
    set_principal,
)
from audit_middleware.event import AuditEvent

PROXY = ["10.0.0.0/8"]
#: The load balancer in front of the app, and the client it forwards.
LB, CLIENT = "10.0.0.5", "198.51.100.7"
FORWARDED = {"X-Forwarded-For": CLIENT, "Authorization": "Bearer alice", "X-Org": "o-1"}


def by_token(ctx: Any) -> str | None:
    return {"Bearer alice": "u-alice"}.get(ctx.header("authorization") or "")


#: The outer middleware's options: what the app's owner configured.
OUTER: dict[str, Any] = {"trusted_proxies": PROXY, "principal": by_token,
                         "org": header("x-org")}


@audited("bucket_created", target=lambda call: "b1")
async def create_bucket(request: Request) -> Response:
    return PlainTextResponse("ok")


def mounted(outer: dict[str, Any], inner: dict[str, Any]) -> TestClient:
    """The app's own AuditMiddleware around a mounted sub-app that has one of its own."""
    sub = Starlette(routes=[Route("/b", create_bucket, methods=["POST"])],
                    middleware=[Middleware(AuditMiddleware, **inner)])
    app = Starlette(routes=[Mount("/plugin", app=sub)],
                    middleware=[Middleware(AuditMiddleware, **outer)])
    return TestClient(app, client=(LB, 50000))


def recorded(event: AuditEvent) -> tuple[str, str, str, str]:
    return (event.principal, event.client_ip, event.peer_ip, event.org_id)


def test_an_inner_middleware_with_defaults_takes_the_outer_ones_options(
        events: list[AuditEvent]) -> None:
    client = mounted(OUTER, {})
    assert client.post("/plugin/b", headers=FORWARDED).status_code == 200
    assert [recorded(e) for e in events] == [("u-alice", CLIENT, LB, "o-1")]


def test_the_options_an_inner_middleware_was_given_win(events: list[AuditEvent]) -> None:
    client = mounted(OUTER, {"org": header("x-plugin-org"), "principal": lambda ctx: "plug"})
    headers = {**FORWARDED, "X-Plugin-Org": "p-9"}
    assert client.post("/plugin/b", headers=headers).status_code == 200
    assert [recorded(e) for e in events] == [("plug", CLIENT, LB, "p-9")]


def test_trusted_proxies_given_to_the_inner_middleware_decide_its_client_ip(
        events: list[AuditEvent]) -> None:
    """The inner one was told to trust none of 10.0.0.0/8 but one other proxy: the load
    balancer is its client."""
    client = mounted(OUTER, {"trusted_proxies": ["192.0.2.1"]})
    assert client.post("/plugin/b", headers=FORWARDED).status_code == 200
    assert [recorded(e) for e in events] == [("u-alice", LB, "", "o-1")]


def test_the_outer_forwarded_header_is_taken_with_its_proxies(
        events: list[AuditEvent]) -> None:
    client = mounted({**OUTER, "forwarded_header": "forwarded"}, {})
    headers = {"Forwarded": f"for={CLIENT}", "X-Forwarded-For": "6.6.6.6"}
    assert client.post("/plugin/b", headers=headers).status_code == 200
    assert [(e.client_ip, e.peer_ip) for e in events] == [(CLIENT, LB)]


class SignIn:
    """An app's own authentication between the two audit middlewares."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            set_principal("u-from-sign-in")
        await self.app(scope, receive, send)


def test_a_principal_set_outside_the_inner_middleware_is_kept(
        events: list[AuditEvent]) -> None:
    sub = Starlette(routes=[Route("/b", create_bucket, methods=["POST"])],
                    middleware=[Middleware(AuditMiddleware)])
    app = Starlette(routes=[Mount("/plugin", app=sub)],
                    middleware=[Middleware(AuditMiddleware, trusted_proxies=PROXY),
                                Middleware(SignIn)])
    client = TestClient(app, client=(LB, 50000))
    assert client.post("/plugin/b", headers=FORWARDED).status_code == 200
    assert [recorded(e) for e in events] == [("u-from-sign-in", CLIENT, LB, "")]


def test_three_levels_resolve_from_the_outermost(events: list[AuditEvent]) -> None:
    inner = Starlette(routes=[Route("/b", create_bucket, methods=["POST"])],
                      middleware=[Middleware(AuditMiddleware)])
    middle = Starlette(routes=[Mount("/inner", app=inner)],
                       middleware=[Middleware(AuditMiddleware)])
    app = Starlette(routes=[Mount("/middle", app=middle)],
                    middleware=[Middleware(AuditMiddleware, **OUTER)])
    client = TestClient(app, client=(LB, 50000))
    assert client.post("/middle/inner/b", headers=FORWARDED).status_code == 200
    assert [recorded(e) for e in events] == [("u-alice", CLIENT, LB, "o-1")]


def test_a_denial_the_inner_middleware_records_has_the_outer_ones_fields(
        events: list[AuditEvent]) -> None:
    register_resource("request", {"denied": "request_denied"})

    async def forbidden(request: Request) -> Response:
        return PlainTextResponse("no", status_code=403)

    sub = Starlette(routes=[Route("/admin", forbidden)],
                    middleware=[Middleware(AuditMiddleware, denied_event="request_denied")])
    app = Starlette(routes=[Mount("/plugin", app=sub)],
                    middleware=[Middleware(AuditMiddleware, **OUTER)])
    client = TestClient(app, client=(LB, 50000))
    assert client.get("/plugin/admin", headers=FORWARDED).status_code == 403
    assert [(e.type, *recorded(e)) for e in events] == [
        ("request_denied", "u-alice", CLIENT, LB, "o-1")]


def test_an_event_over_a_websocket_of_the_sub_app_has_the_outer_ones_fields(
        events: list[AuditEvent]) -> None:
    async def talk(websocket: WebSocket) -> None:
        await websocket.accept()
        emit("bucket_created", "b2")
        await websocket.close()

    sub = Starlette(routes=[WebSocketRoute("/ws", talk)],
                    middleware=[Middleware(AuditMiddleware)])
    app = Starlette(routes=[Mount("/plugin", app=sub)],
                    middleware=[Middleware(AuditMiddleware, **OUTER)])
    with TestClient(app, client=(LB, 50000)).websocket_connect(
            "/plugin/ws", headers=FORWARDED) as websocket:
        assert websocket.receive()["type"] == "websocket.close"
    assert [recorded(e) for e in events] == [("u-alice", CLIENT, LB, "o-1")]


# -- WSGI: a Flask sub-app with its own WSGIAuditMiddleware under Werkzeug's dispatcher --

def flask_plugin(**options: Any) -> WSGIAuditMiddleware:
    plugin = Flask("plugin")

    @plugin.post("/b")
    @audited("bucket_created", target=lambda call: "b1")
    def create() -> str:
        return "ok"

    return WSGIAuditMiddleware(plugin.wsgi_app, **options)


def dispatched(outer: dict[str, Any], inner: dict[str, Any]) -> Client:
    root = Flask("root")
    app = DispatcherMiddleware(root.wsgi_app, {"/plugin": flask_plugin(**inner)})
    return Client(WSGIAuditMiddleware(app, **outer))


def post_forwarded(client: Client, headers: dict[str, str]) -> int:
    response = client.post("/plugin/b", headers=headers,
                           environ_base={"REMOTE_ADDR": LB})
    return response.status_code


def test_wsgi_an_inner_middleware_with_defaults_takes_the_outer_ones_options(
        events: list[AuditEvent]) -> None:
    assert post_forwarded(dispatched(OUTER, {}), FORWARDED) == 200
    assert [recorded(e) for e in events] == [("u-alice", CLIENT, LB, "o-1")]


def test_wsgi_the_options_an_inner_middleware_was_given_win(
        events: list[AuditEvent]) -> None:
    client = dispatched(OUTER, {"org": header("x-plugin-org"),
                                "trusted_proxies": ["192.0.2.1"]})
    headers = {**FORWARDED, "X-Plugin-Org": "p-9"}
    assert post_forwarded(client, headers) == 200
    assert [recorded(e) for e in events] == [("u-alice", LB, "", "p-9")]


def test_the_outer_denial_record_names_the_principal_the_sub_app_set(
        events: list[AuditEvent]) -> None:
    """The sub-app signs its user in (``set_principal``), then refuses them: the outer
    middleware records the denial, once, and names that user, as a lone one would."""
    register_resource("request", {"denied": "request_denied"})

    async def forbidden(request: Request) -> Response:
        set_principal("u-7")
        return PlainTextResponse("no", status_code=403)

    sub = Starlette(routes=[Route("/admin", forbidden)],
                    middleware=[Middleware(AuditMiddleware)])
    app = Starlette(routes=[Mount("/plugin", app=sub)], middleware=[
        Middleware(AuditMiddleware, trusted_proxies=PROXY, denied_event="request_denied")])
    client = TestClient(app, client=(LB, 50000))
    assert client.get("/plugin/admin", headers=FORWARDED).status_code == 403
    assert [(e.type, *recorded(e)) for e in events] == [
        ("request_denied", "u-7", CLIENT, LB, "")]


def test_an_inner_middlewares_own_proxies_are_read_from_its_own_header(
        events: list[AuditEvent]) -> None:
    """The inner one trusts 192.0.2.1 to append X-Forwarded-For (its default header);
    the outer trusts 10.0.0.0/8 with ``Forwarded``. Behind 192.0.2.1, which passes a
    client's ``Forwarded`` through untouched, the client's own ``Forwarded`` must not
    name it: neither middleware trusts that header from that peer."""
    sub = Starlette(routes=[Route("/b", create_bucket, methods=["POST"])],
                    middleware=[Middleware(AuditMiddleware, trusted_proxies=["192.0.2.1"])])
    app = Starlette(routes=[Mount("/plugin", app=sub)], middleware=[
        Middleware(AuditMiddleware, trusted_proxies=PROXY, forwarded_header="forwarded")])
    client = TestClient(app, client=("192.0.2.1", 50000))
    headers = {"Forwarded": "for=6.6.6.6", "X-Forwarded-For": CLIENT}
    assert client.post("/plugin/b", headers=headers).status_code == 200
    assert [(e.client_ip, e.peer_ip) for e in events] == [(CLIENT, "192.0.2.1")]


# -- a request the app makes to itself in-process: its own request, not a nested one --

def calling_itself(path: str, token: str) -> TestClient:
    """An app whose ``/outer`` handler, signed in as alice (``set_principal``), calls the
    app itself in-process (httpx's ASGITransport) with another user's token, then records
    an event of its own."""
    import httpx

    @audited("bucket_created", target=lambda call: "outer")
    async def outer(request: Request) -> Response:
        set_principal("u-alice")
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 123))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as own:
            await own.post(path, headers={"Authorization": token})
        return PlainTextResponse("ok")

    async def refuse(request: Request) -> Response:
        set_principal("u-svc")
        return PlainTextResponse("no", status_code=403)

    app = Starlette(routes=[Route("/outer", outer, methods=["POST"]),
                            Route("/b", create_bucket, methods=["POST"]),
                            Route("/refuse", refuse, methods=["POST"])],
                    middleware=[Middleware(AuditMiddleware, principal=by_token)])
    return TestClient(app, client=(CLIENT, 50000))


def test_a_request_the_app_makes_to_itself_is_recorded_as_its_own(
        events: list[AuditEvent]) -> None:
    client = calling_itself("/b", "Bearer bob")
    assert client.post("/outer").status_code == 200
    by_target = {e.target: (e.principal, e.client_ip) for e in events}
    assert by_target == {"b1": ("", "127.0.0.1"), "outer": ("u-alice", CLIENT)}


def test_a_request_the_app_makes_to_itself_names_no_principal_for_the_outer_one(
        events: list[AuditEvent]) -> None:
    """Its set_principal() and 403 are its own: the outer request's user stays alice."""
    client = calling_itself("/refuse", "Bearer svc")
    assert client.post("/outer").status_code == 200
    assert [(e.target, e.principal) for e in events] == [("outer", "u-alice")]


def test_an_inner_configuration_keeps_no_enclosing_one_alive() -> None:
    """Apps built per test (or per request) around one long-lived mounted sub-app: the
    sub-app's configuration must not keep every outer configuration it was nested in."""
    import gc
    import weakref

    from audit_middleware.context import CaptureConfig

    inner = CaptureConfig()
    outer = CaptureConfig(principal=by_token)
    assert inner.within(outer) is inner.within(outer)  # made once per pair
    gone = weakref.ref(outer)
    del outer
    gc.collect()
    assert gone() is None
    assert not inner._within


def test_wsgi_a_request_the_app_makes_to_itself_is_recorded_as_its_own(
        events: list[AuditEvent]) -> None:
    flask_app = Flask("calls_itself")
    app = WSGIAuditMiddleware(flask_app.wsgi_app, principal=by_token)

    @flask_app.post("/b")
    @audited("bucket_created", target=lambda call: "b1")
    def create() -> str:
        return "ok"

    @flask_app.post("/outer")
    def outer() -> str:
        set_principal("u-alice")
        Client(app).post("/b", headers={"Authorization": "Bearer bob"},
                         environ_base={"REMOTE_ADDR": "127.0.0.1"})
        return "ok"

    response = Client(app).post("/outer", environ_base={"REMOTE_ADDR": CLIENT})
    assert response.status_code == 200
    assert [(e.principal, e.client_ip) for e in events] == [("", "127.0.0.1")]
