"""An object's str() never reaches a record: it can hold anything, secrets included
(``docs/record.md``). Through a path parameter a converter turned into an object, an int
or UUID subclass with a __str__ of its own, and set_principal (an app-side security
review found each)."""

from __future__ import annotations

import logging
import uuid

import pytest
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from audit_middleware import AuditMiddleware, audited, path_param, set_principal
from audit_middleware.event import AuditEvent


class Workspace:
    def __init__(self, ident: str) -> None:
        self.ident, self.api_key = ident, "sk_live_SECRET"

    def __str__(self) -> str:
        return f"Workspace({self.ident}, api_key={self.api_key})"


class WorkspaceConvertor(Convertor[Workspace]):
    regex = "[a-z0-9-]+"

    def convert(self, value: str) -> Workspace:
        return Workspace(value)

    def to_string(self, value: Workspace) -> str:
        return value.ident


register_url_convertor("workspace_object", WorkspaceConvertor())


class UserId(int):
    def __str__(self) -> str:
        return f"UserId({int(self)}, token=tok_SECRET)"


class SessionId(uuid.UUID):
    def __str__(self) -> str:
        return "session tok_SECRET"


def test_a_path_parameter_that_is_an_object_is_refused(
        events: list[AuditEvent], caplog: pytest.LogCaptureFixture) -> None:
    @audited("pipeline_deleted", target=lambda call: "p-1")
    async def delete(request: Request) -> Response:
        return Response(status_code=204)

    app = AuditMiddleware(
        Starlette(routes=[Route("/ws/{workspace:workspace_object}/p", delete,
                                methods=["DELETE"])]),
        workspace=path_param("workspace"))
    with caplog.at_level(logging.ERROR, "audit_middleware"):
        assert TestClient(app).delete("/ws/ws1/p").status_code == 204
    assert [(e.workspace_id, e.workspace_name) for e in events] == [("", "")]
    assert "SECRET" not in repr(events) and "return the id, not the object" in caplog.text


def test_subclasses_of_int_and_uuid_are_recorded_as_their_value(
        events: list[AuditEvent]) -> None:
    session = SessionId("12345678-1234-5678-1234-567812345678")

    @audited("user_sign_in", target=lambda call: session)
    async def sign_in(request: Request) -> Response:
        set_principal(UserId(7))  # type: ignore[arg-type]
        return Response(status_code=204)

    app = AuditMiddleware(Starlette(routes=[Route("/in", sign_in, methods=["POST"])]))
    assert TestClient(app).post("/in").status_code == 204
    assert [(e.principal, e.target) for e in events] == [
        ("7", "12345678-1234-5678-1234-567812345678")]


def test_set_principal_refuses_an_object(events: list[AuditEvent]) -> None:
    @audited("user_sign_in", target=lambda call: "u")
    async def sign_in(request: Request) -> Response:
        set_principal(Workspace("x"))  # type: ignore[arg-type]
        return Response(status_code=204)

    app = AuditMiddleware(Starlette(routes=[Route("/in", sign_in, methods=["POST"])]))
    client = TestClient(app, raise_server_exceptions=True)
    with pytest.raises(TypeError, match="return the id, not the object"):
        client.post("/in")
    assert events == []
