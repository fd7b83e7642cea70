"""@audited on sync and async Starlette endpoints: targets, status, failures."""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Callable

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from audit_middleware import (
    AuditArgumentTypeError,
    AuditConfigurationError,
    AuditMiddleware,
    WSGIAuditMiddleware,
    audited,
    from_param,
    from_result,
    header,
    path_param,
    set_principal,
)
from audit_middleware.event import AuditEvent


class Boom(Exception):
    pass


@audited("credentials_deleted", target="credentials_id")
async def delete_async(request: Request) -> Response:
    return Response(status_code=204)


@audited("credentials_deleted", target=from_param("credentials_id"), status="soft")
def delete_sync(request: Request) -> Response:
    return Response(status_code=204)


@audited("credentials_created", target=from_result("id"))
async def create(request: Request) -> JSONResponse:
    return JSONResponse({"id": "cred-9"}, status_code=201)


@audited("run_relaunched", target=lambda call: call.result_value("initial_run_id"),
         status=lambda call: f"attempt {call.result_value('attempt')}")
def relaunch(request: Request) -> JSONResponse:
    return JSONResponse({"id": "run-3", "initial_run_id": "run-1", "attempt": 3})


@audited("credentials_updated", target="credentials_id")
async def update_fails(request: Request) -> Response:
    raise Boom("database down")


@audited("credentials_updated", target="credentials_id", record_failure=True)
async def update_fails_recorded(request: Request) -> Response:
    raise Boom("secret detail that must not be recorded")


@audited("credentials_updated", target="credentials_id", record_failure=True)
async def update_not_found(request: Request) -> Response:
    return PlainTextResponse("no such credentials", status_code=404)


@audited("credentials_updated", target="credentials_id")
async def update_forbidden(request: Request) -> Response:
    return PlainTextResponse("forbidden", status_code=403)


@audited("user_sign_in", target=from_result("user_id"), status=from_result("method"))
async def sign_in(request: Request) -> JSONResponse:
    set_principal("u-7")
    return JSONResponse({"user_id": "u-7", "method": "password"})


@audited("team_created", target=from_result("missing"))
async def target_bug(request: Request) -> JSONResponse:
    return JSONResponse({"id": "t1"})


app = AuditMiddleware(Starlette(routes=[
    Route("/a/{credentials_id}", delete_async, methods=["DELETE"]),
    Route("/s/{credentials_id}", delete_sync, methods=["DELETE"]),
    Route("/c", create, methods=["POST"]),
    Route("/relaunch", relaunch, methods=["POST"]),
    Route("/fail/{credentials_id}", update_fails, methods=["PUT"]),
    Route("/fail-recorded/{credentials_id}", update_fails_recorded, methods=["PUT"]),
    Route("/missing/{credentials_id}", update_not_found, methods=["PUT"]),
    Route("/forbidden/{credentials_id}", update_forbidden, methods=["PUT"]),
    Route("/sign-in", sign_in, methods=["POST"]),
    Route("/bug", target_bug, methods=["POST"]),
]))
client = TestClient(app, raise_server_exceptions=False)


def types_and_targets(events: list[AuditEvent]) -> list[tuple[str, str, str]]:
    return [(e.type, e.target, e.status) for e in events]


@pytest.mark.parametrize("path", ["/a/c1", "/s/c1"])
def test_sync_and_async_handlers_record_target_from_path(
    path: str, events: list[AuditEvent]
) -> None:
    assert client.delete(path).status_code == 204
    assert [(e.type, e.target) for e in events] == [("credentials_deleted", "c1")]


def test_constant_status(events: list[AuditEvent]) -> None:
    client.delete("/s/c2")
    assert events[0].status == "soft"


def test_target_from_json_response(events: list[AuditEvent]) -> None:
    assert client.post("/c").status_code == 201
    assert types_and_targets(events) == [("credentials_created", "cred-9", "")]


def test_target_and_status_from_callables(events: list[AuditEvent]) -> None:
    client.post("/relaunch")
    assert types_and_targets(events) == [("run_relaunched", "run-1", "attempt 3")]


def test_exception_records_nothing_by_default_and_propagates(events: list[AuditEvent]) -> None:
    with pytest.raises(Boom, match="database down"):
        TestClient(app).put("/fail/c1")
    assert events == []


def test_exception_records_failure_event_when_asked(events: list[AuditEvent]) -> None:
    with pytest.raises(Boom):
        TestClient(app).put("/fail-recorded/c1")
    assert types_and_targets(events) == [("credentials_updated", "c1", "failed: Boom")]
    assert "secret detail" not in events[0].to_json_line().decode()


def test_error_response_is_a_failure(events: list[AuditEvent]) -> None:
    assert client.put("/forbidden/c1").status_code == 403
    assert events == []
    assert client.put("/missing/c1").status_code == 404
    assert types_and_targets(events) == [("credentials_updated", "c1", "failed: HTTP 404")]


def test_set_principal_names_the_signed_in_user(events: list[AuditEvent]) -> None:
    client.post("/sign-in", headers={"authorization": "Bearer secret-token"})
    assert (events[0].principal, events[0].target, events[0].status) == (
        "u-7", "u-7", "password")
    assert events[0].client_ip == "testclient"


def test_unresolvable_target_still_records_the_event(
    events: list[AuditEvent], caplog: pytest.LogCaptureFixture
) -> None:
    assert client.post("/bug").status_code == 200
    assert types_and_targets(events) == [("team_created", "", "")]
    assert "target for team_created could not be resolved" in caplog.text


def test_decorator_keeps_name_and_docstring() -> None:
    @audited("team_deleted", target="team_id")
    async def delete_team(team_id: str) -> None:
        """Delete a team."""

    assert delete_team.__name__ == "delete_team"
    assert delete_team.__doc__ == "Delete a team."
    assert delete_team.__wrapped__ is not None  # type: ignore[attr-defined]


def test_target_spec_of_wrong_kind_is_refused_saying_what_was_passed_and_what_to_pass(
        ) -> None:
    """A TypeError still (as it was), and one of ours: what was passed, what to pass."""
    with pytest.raises(TypeError, match=r"@audited target= takes a path parameter's name "
                       r"\(e.g. target='bucket_id'\), from_param\(\), from_result\(\) or a "
                       r"callable receiving the AuditCall; got 42 \(int\)") as raised:
        audited("team_deleted", target=42)  # type: ignore[arg-type]
    assert isinstance(raised.value, AuditArgumentTypeError)
    with pytest.raises(AuditArgumentTypeError, match=r"status= .* got b'ok' \(bytes\)"):
        audited("team_deleted", status=b"ok")  # type: ignore[arg-type]


def _handler() -> None:
    pass


async def _async_resolver(ctx: object) -> str:
    return "o-1"


class _AsyncCallable:
    async def __call__(self, ctx: object) -> str:
        return "u-1"


@pytest.mark.parametrize(("make", "message"), [
    # Each was accepted, then failed at every request (logged, the field left empty, or
    # a TypeError), or was said wrong: a bare @audited was "unknown event type
    # '<function ...>'", and None "unknown event type 'None'".
    (lambda: audited(_handler), "the event type is missing: write @audited"),  # type: ignore[arg-type]
    (lambda: audited(None), "an event type is a str"),  # type: ignore[arg-type]
    (lambda: audited(["team_deleted"]), "an event type is a str"),  # type: ignore[arg-type]
    (lambda: audited("team_deleted")("not a handler"), "decorates a handler"),  # type: ignore[type-var]
    (lambda: from_param(None), "from_param\\(\\) takes a path parameter's name"),  # type: ignore[arg-type]
    (lambda: from_result(""), "from_result\\(\\) takes a key"),
    (lambda: path_param(None), "path_param\\(\\) takes a path parameter's name"),  # type: ignore[arg-type]
    (lambda: path_param("org_id", lookup="orgs"), "lookup= takes a callable"),  # type: ignore[arg-type]
    (lambda: header(""), "header\\(\\) takes a header's name"),
    (lambda: header("X Org"), "a header's name is letters, digits"),
    (lambda: AuditMiddleware(None), "wraps the application"),  # type: ignore[type-var]
    (lambda: WSGIAuditMiddleware("app"), "wraps the application"),  # type: ignore[type-var]
    # matched without its zone: trusted fe80::1 on every interface, the repr said %eth0
    (lambda: AuditMiddleware(Starlette(), trusted_proxies=["fe80::1%eth0"]),
     "trusted proxy 'fe80::1%eth0' has a zone id .%eth0.* write 'fe80::1'"),
    (lambda: AuditMiddleware(Starlette(), trusted_proxies=["fe80::%eth0/64"]),
     "write 'fe80::/64'"),
    (lambda: AuditMiddleware(Starlette(), trusted_proxies=[ipaddress.ip_address("fe80::1%2")]),
     "has a zone id .%2."),
    # host bits set: the network's address lost the zone, and the host-bits error said
    # to write 'fe80::1%eth0' alone, which is refused in turn
    (lambda: AuditMiddleware(Starlette(), trusted_proxies=["fe80::1%eth0/64"]),
     "has a zone id .%eth0.* write 'fe80::1/64'"),
    # async: called, never awaited, the field left empty at every request with a
    # "coroutine was never awaited" warning.
    (lambda: AuditMiddleware(Starlette(), org=_async_resolver), "org= resolver .* is async"),
    (lambda: WSGIAuditMiddleware(_handler, principal=_AsyncCallable()),  # type: ignore[arg-type]
     "principal= resolver _AsyncCallable is async"),
    (lambda: AuditMiddleware(Starlette(), workspace=functools.partial(_async_resolver)),
     "workspace= resolver .* is async"),
    (lambda: path_param("org_id", lookup=_async_resolver), "lookup= .* is async"),
    (lambda: audited("team_deleted", target=_async_resolver), "target= getter .* is async"),
    (lambda: audited("team_deleted", org_name=_AsyncCallable()), "org_name= getter .* is async"),
])
def test_wrong_arguments_are_refused_when_configured(make: Callable[[], object],
                                                     message: str) -> None:
    with pytest.raises(AuditConfigurationError, match=message):
        make()


def test_record_failure_takes_a_bool() -> None:
    """'no' is truthy: it would turn failure events on."""
    with pytest.raises(TypeError, match="record_failure must be True or False, "
                       "got 'no'") as raised:
        audited("credentials_updated", record_failure="no")  # type: ignore[arg-type]
    assert isinstance(raised.value, AuditArgumentTypeError)


class _Names(enum.StrEnum):
    ID = "credentials_id"
    ORG = "X-Org-Id"


def test_names_given_as_a_str_enum_are_taken(events: list[AuditEvent]) -> None:
    """A ``StrEnum`` member is a str (the catalogue takes one as an event type): the
    construction-time name check refused it, where each of these had worked."""

    @audited("credentials_deleted", target=_Names.ID, status=from_param(_Names.ID))
    async def handler(request: Request) -> Response:
        return Response(status_code=204)

    app = AuditMiddleware(Starlette(routes=[Route("/c/{credentials_id}", handler,
                                                  methods=["DELETE"])]),
                          org=header(_Names.ORG), workspace=path_param(_Names.ID))
    assert from_result(_Names.ID) is not None
    TestClient(app).delete("/c/c-1", headers={"X-Org-Id": "o-1"})
    assert [(e.target, e.status, e.org_id, e.workspace_id)
            for e in events] == [("c-1", "c-1", "o-1", "c-1")]
