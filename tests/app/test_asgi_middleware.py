"""AuditMiddleware: principal, org/workspace resolution, pass-through, isolation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from audit_middleware import AuditMiddleware, audited, current_request, emit, path_param
from audit_middleware.event import AuditEvent

ORGS = {"o1": "Acme"}
WORKSPACES = {"w1": "Research"}


class TokenUser(BaseUser):
    def __init__(self, user_id: str) -> None:
        self.user_id = user_id

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def identity(self) -> str:
        return self.user_id

    @property
    def display_name(self) -> str:
        return f"User {self.user_id}"


class BearerBackend(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        auth = conn.headers.get("authorization", "")
        if auth.startswith("Bearer "):
            return AuthCredentials(["authenticated"]), TokenUser("user-" + auth[7:10])
        return None


@audited("workspace_deleted", target="workspace_id")
async def delete_workspace(request: Request) -> Response:
    return Response(status_code=204)


@audited("run_deleted", target="run_id")
async def delete_run(request: Request) -> Response:
    await asyncio.sleep(0.01)  # interleave concurrent requests
    return Response(status_code=204)


async def echo(ws: WebSocket) -> None:
    await ws.accept()
    text = await ws.receive_text()  # a message from the client, untouched
    emit("run_launched", text)  # an action taken over the websocket
    await ws.send_text(f"echo {text}")
    await ws.close()


ROUTES = [
    Route("/orgs/{org_id}/workspaces/{workspace_id}", delete_workspace, methods=["DELETE"]),
    Route("/runs/{run_id}", delete_run, methods=["DELETE"]),
    WebSocketRoute("/ws", echo),
]
RESOLVERS = {"org": path_param("org_id", lookup=ORGS.get),
             "workspace": path_param("workspace_id", lookup=WORKSPACES.get)}


def app_with_auth(audit_outside: bool) -> Starlette:
    """AuditMiddleware outside or inside AuthenticationMiddleware: both must work."""
    auth = Middleware(AuthenticationMiddleware, backend=BearerBackend())
    audit = Middleware(AuditMiddleware, **RESOLVERS)
    return Starlette(routes=ROUTES, middleware=[audit, auth] if audit_outside else [auth, audit])


@pytest.mark.parametrize("audit_outside", [True, False])
def test_principal_from_authentication_middleware_in_either_order(
    audit_outside: bool, events: list[AuditEvent]
) -> None:
    client = TestClient(app_with_auth(audit_outside))
    assert client.delete("/orgs/o1/workspaces/w1",
                         headers={"authorization": "Bearer abcdef"}).status_code == 204
    event = events[0]
    assert (event.type, event.target, event.principal) == ("workspace_deleted", "w1", "user-abc")
    assert (event.org_id, event.org_name) == ("o1", "Acme")
    assert (event.workspace_id, event.workspace_name) == ("w1", "Research")


def test_anonymous_request_has_empty_principal(events: list[AuditEvent]) -> None:
    TestClient(app_with_auth(True)).delete("/orgs/o1/workspaces/w1")
    assert events[0].principal == ""


def test_simple_user_username_is_the_principal(events: list[AuditEvent]) -> None:
    class Backend(AuthenticationBackend):
        async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser]:
            return AuthCredentials(), SimpleUser("alice")

    app = Starlette(routes=ROUTES, middleware=[Middleware(AuditMiddleware),
                                               Middleware(AuthenticationMiddleware,
                                                          backend=Backend())])
    TestClient(app).delete("/runs/r1")
    assert events[0].principal == "alice"


def test_principal_resolver_wins_over_scope_user(events: list[AuditEvent]) -> None:
    app = Starlette(routes=ROUTES, middleware=[
        Middleware(AuditMiddleware, principal=lambda ctx: "svc-" + ctx.path_params["run_id"]),
        Middleware(AuthenticationMiddleware, backend=BearerBackend())])
    TestClient(app).delete("/runs/r9", headers={"authorization": "Bearer abc"})
    assert events[0].principal == "svc-r9"


def test_client_header_never_sets_the_principal(events: list[AuditEvent]) -> None:
    client = TestClient(app_with_auth(True))
    client.delete("/runs/r1", headers={"x-user-id": "root", "x-principal": "root",
                                       "x-forwarded-user": "root", "remote-user": "root"})
    assert events[0].principal == ""


def test_concurrent_requests_never_mix_contexts(events: list[AuditEvent]) -> None:
    app = app_with_auth(True)

    async def run_all() -> None:
        import httpx

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await asyncio.gather(*(
                client.delete(f"/runs/r{i:03d}", headers={"authorization": f"Bearer {i:03d}"})
                for i in range(100)))

    asyncio.run(run_all())
    assert len(events) == 100
    assert all(e.principal == "user-" + e.target[1:] for e in events)


def test_websocket_messages_pass_through_and_its_actions_are_its_users(
        events: list[AuditEvent]) -> None:
    """No wrapping of a websocket's messages, but an action taken over it is the
    connection's user's, from its address, not ``system`` (as it was without context)."""
    client = TestClient(app_with_auth(True), client=("203.0.113.9", 50000))
    with client.websocket_connect("/ws", headers={"Authorization": "Bearer 042"}) as ws:
        ws.send_text("p-7")
        assert ws.receive_text() == "echo p-7"
    assert [(e.type, e.target, e.principal, e.client_ip) for e in events] == [
        ("run_launched", "p-7", "user-042", "203.0.113.9")]


def test_lifespan_passes_through(events: list[AuditEvent]) -> None:
    seen: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        seen.append("startup")
        emit("team_created", "t-startup")
        yield
        seen.append("shutdown")

    app = Starlette(routes=ROUTES, lifespan=lifespan, middleware=[Middleware(AuditMiddleware)])
    with TestClient(app):
        pass
    assert seen == ["startup", "shutdown"]
    assert (events[0].principal, events[0].client_ip) == ("system", "")


def test_response_status_is_observed() -> None:
    statuses: list[int | None] = []

    async def endpoint(request: Request) -> Response:
        ctx = current_request()
        assert ctx is not None
        statuses.append(ctx.status_code)  # not started yet
        return PlainTextResponse("gone", status_code=410)

    async def outer(scope, receive, send):  # type: ignore[no-untyped-def]
        await inner(scope, receive, send)
        statuses.append(seen_ctx[0].status_code)

    seen_ctx: list = []  # type: ignore[type-arg]

    async def capture(scope, receive, send):  # type: ignore[no-untyped-def]
        seen_ctx.append(current_request())
        await Starlette(routes=[Route("/", endpoint)])(scope, receive, send)

    inner = AuditMiddleware(capture)
    assert TestClient(outer).get("/").status_code == 410
    assert statuses == [None, 410]


def test_system_event_inside_a_request_has_no_client_ip(events: list[AuditEvent]) -> None:
    @audited("run_deleted", target="run_id")
    async def delete(request: Request) -> Response:
        emit("credentials_accessed", "cred-1", principal="system")
        return Response(status_code=204)

    app = AuditMiddleware(Starlette(routes=[Route("/runs/{run_id}", delete, methods=["DELETE"])]),
                          principal=lambda ctx: "u1", **RESOLVERS)
    TestClient(app).delete("/runs/r1")
    accessed, deleted = events
    assert (accessed.type, accessed.principal, accessed.client_ip) == (
        "credentials_accessed", "system", "")
    assert (deleted.type, deleted.principal, deleted.client_ip) == ("run_deleted", "u1",
                                                                     "testclient")


@pytest.mark.parametrize("resolver", [True, False], ids=["resolver", "scope user"])
def test_a_user_whose_id_is_system_is_told_from_the_applications_own_events(
        resolver: bool, events: list[AuditEvent]) -> None:
    """The application's own events carry no client IP; a user who is merely called
    'system' keeps the request's address, or their actions would pass for the app's."""
    from audit_middleware import set_principal

    @audited("run_deleted", target="run_id")
    async def delete(request: Request) -> Response:
        if request.query_params.get("declare"):
            set_principal("system")  # the app declares the action its own
        return Response(status_code=204)

    class NamedSystem(TokenUser):
        pass

    class SystemBackend(AuthenticationBackend):
        async def authenticate(self, conn: HTTPConnection):  # type: ignore[no-untyped-def]
            return AuthCredentials(["authenticated"]), NamedSystem("system")

    routes = [Route("/runs/{run_id}", delete, methods=["DELETE"])]
    if resolver:
        app = AuditMiddleware(Starlette(routes=routes), principal=lambda ctx: "system")
    else:
        app = Starlette(routes=routes, middleware=[
            Middleware(AuditMiddleware), Middleware(AuthenticationMiddleware,
                                                    backend=SystemBackend())])
    client = TestClient(app, client=("203.0.113.9", 1))
    client.delete("/runs/r1")
    client.delete("/runs/r2?declare=1")
    assert [(e.target, e.principal, e.client_ip) for e in events] == [
        ("r1", "system", "203.0.113.9"), ("r2", "system", "")]


def test_after_set_principal_system_no_event_of_the_request_carries_an_address(
        events: list[AuditEvent]) -> None:
    from audit_middleware import set_principal

    async def endpoint(request: Request) -> Response:
        set_principal("system")
        emit("credentials_accessed", "c-1", client_ip="198.51.100.7")  # explicit, still
        emit("credentials_accessed", "c-2")
        return Response(status_code=204)

    app = AuditMiddleware(Starlette(routes=[Route("/", endpoint)]))
    TestClient(app, client=("203.0.113.9", 1)).get("/")
    assert [(e.target, e.principal, e.client_ip) for e in events] == [
        ("c-1", "system", ""), ("c-2", "system", "")]


def test_emit_outside_a_request_is_a_system_event(events: list[AuditEvent]) -> None:
    event = emit("run_dropped", "r1", org_id="o1", org_name="Acme")
    assert (event.principal, event.client_ip, event.org_id, event.org_name) == (
        "system", "", "o1", "Acme")


def test_failing_resolver_is_logged_and_event_kept(
    events: list[AuditEvent], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(ctx: object) -> str:
        raise RuntimeError("org lookup down")

    app = AuditMiddleware(Starlette(routes=ROUTES), org=broken)
    assert TestClient(app).delete("/runs/r1").status_code == 204
    assert (events[0].type, events[0].org_id) == ("run_deleted", "")
    assert "resolving org failed" in caplog.text


def test_a_resolver_returning_an_object_records_nothing_of_it(
    events: list[AuditEvent], caplog: pytest.LogCaptureFixture
) -> None:
    """A resolver that returns the user or org object, not its id: the record must not
    hold the object's text (its repr can carry anything, a password included); the
    field stays empty and the mistake is logged."""
    class User:
        def __str__(self) -> str:
            return "User(alice, password=hunter2)"

    app = AuditMiddleware(Starlette(routes=ROUTES), principal=lambda ctx: User(),
                          org=lambda ctx: object(), workspace=lambda ctx: ("w1", "n", "x"))
    assert TestClient(app).delete("/runs/r1").status_code == 204
    event = events[0]
    assert (event.principal, event.org_id, event.workspace_id) == ("", "", "")
    assert "hunter2" not in event.to_json_line().decode()
    assert "return the id, not the object" in caplog.text
    assert "a tuple of 3" in caplog.text


def test_names_are_resolved_before_the_handler_deletes_them(events: list[AuditEvent]) -> None:
    names = {"w9": "Doomed"}

    @audited("workspace_deleted", target="workspace_id")
    async def delete(request: Request) -> Response:
        del names[request.path_params["workspace_id"]]
        return Response(status_code=204)

    app = AuditMiddleware(
        Starlette(routes=[Route("/w/{workspace_id}", delete, methods=["DELETE"])]),
        workspace=path_param("workspace_id", lookup=names.get))
    TestClient(app).delete("/w/w9")
    assert (events[0].workspace_id, events[0].workspace_name) == ("w9", "Doomed")
