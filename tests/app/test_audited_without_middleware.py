"""``@audited`` on an app without the audit middleware (forgotten ``add_middleware``, a
Flask ``wsgi_app`` never wrapped): its events read as the application's own, principal
``system``, and a user's action looked like a background job's, silently (a new-user
review). Who acted is unknown there: the principal is left empty, and it is said once."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from audit_middleware import audited
from audit_middleware.event import AuditEvent


def test_fastapi_without_the_middleware(events: list[AuditEvent],
                                        caplog: pytest.LogCaptureFixture) -> None:
    app = FastAPI()

    @app.delete("/buckets/{bucket_id}")
    @audited("bucket_deleted", target="bucket_id")
    def delete(bucket_id: str) -> dict[str, str]:
        return {}

    client = TestClient(app)
    with caplog.at_level(logging.ERROR, "audit_middleware"):
        for _ in range(3):
            assert client.delete("/buckets/b-1", headers={
                "Authorization": "Bearer t"}).status_code == 200
    assert [(e.target, e.principal, e.client_ip) for e in events] == [("b-1", "", "")] * 3
    assert caplog.text.count("ran outside a request") == 1
    assert "install AuditMiddleware" in caplog.text
    assert 'principal=lambda call: "system"' in caplog.text  # a string would name a parameter


def test_flask_without_the_middleware(events: list[AuditEvent]) -> None:
    app = Flask(__name__)

    @app.delete("/buckets/<bucket_id>")
    @audited("bucket_deleted", target="bucket_id")
    def delete(bucket_id: str) -> str:
        return ""

    assert app.test_client().delete("/buckets/b-2").status_code == 200
    assert [(e.target, e.principal) for e in events] == [("b-2", "")]


def test_an_explicit_principal_outside_a_request_is_kept(events: list[AuditEvent]) -> None:
    @audited("run_dropped", target="run_id", principal=lambda call: "system")
    def drop(run_id: str) -> None:
        return None

    drop(run_id="r-1")
    assert [(e.target, e.principal, e.client_ip) for e in events] == [("r-1", "system", "")]


def test_a_principal_the_record_cannot_hold_outside_a_request_is_not_system(
        events: list[AuditEvent]) -> None:
    """A principal getter whose value the record refuses (a float) left the field None,
    and outside a request None makes the event the application's own: "system" (an
    app-side security review). It stays empty."""

    @audited("run_dropped", target="run_id", principal=lambda call: 7.5)
    def drop(run_id: str) -> None:
        return None

    drop(run_id="r-1")
    assert [(e.target, e.principal) for e in events] == [("r-1", "")]


def test_a_target_naming_no_path_parameter_names_the_requests_ones(
        events: list[AuditEvent], caplog: pytest.LogCaptureFixture) -> None:
    """A Starlette handler's path parameters are on its Request, not in its keyword
    arguments: without the middleware, the error said "its path parameters: none"."""

    @audited("bucket_deleted", target="id")
    async def delete(request: Request) -> JSONResponse:
        return JSONResponse({})

    app = Starlette(routes=[Route("/buckets/{bucket_id}", delete, methods=["DELETE"])])
    with caplog.at_level(logging.ERROR, "audit_middleware"):
        assert TestClient(app).delete("/buckets/b-6").status_code == 200
    assert [e.target for e in events] == [""]
    assert "no path parameter 'id' in this call; its path parameters: bucket_id" in caplog.text
