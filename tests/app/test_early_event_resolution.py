"""An event emitted before the path parameters are known (a Flask ``before_request``
hook, a WSGI or ASGI middleware in front of the router) must not leave the
``@audited`` event of the same request without its organization or workspace."""

from __future__ import annotations

import pytest
from flask import Blueprint, Flask, g, jsonify, request
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send
from werkzeug.test import Client

from audit_middleware import (
    AuditMiddleware,
    WSGIAuditMiddleware,
    audited,
    emit,
    path_param,
    set_principal,
)
from audit_middleware.event import AuditEvent

WORKSPACES = {"ws1": "Lab"}


def flask_client() -> Client:
    app = Flask(__name__)

    @app.before_request
    def authenticate() -> None:
        set_principal("usr_erin")
        if request.headers.get("X-Api-Key"):
            emit("user_sign_in", "usr_erin", status="api_key")  # before the view

    @app.delete("/workspaces/<workspace_id>/pipelines/<pipeline_id>")
    @audited("pipeline_deleted", target="pipeline_id")
    def delete_pipeline(workspace_id: str, pipeline_id: str):  # type: ignore[no-untyped-def]
        WORKSPACES.get(workspace_id)  # the view may delete what the name is looked up in
        return jsonify(deleted=True)

    app.wsgi_app = WSGIAuditMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, workspace=path_param("workspace_id", lookup=WORKSPACES.get))
    return Client(app)


def test_wsgi_event_after_an_early_event_has_its_workspace(events: list[AuditEvent]) -> None:
    client = flask_client()
    assert client.delete("/workspaces/ws1/pipelines/p1",
                         headers={"X-Api-Key": "k"}).status_code == 200
    assert [(e.type, e.principal, e.workspace_id, e.workspace_name) for e in events] == [
        ("user_sign_in", "usr_erin", "", ""),  # the URL's parameters were not known yet
        ("pipeline_deleted", "usr_erin", "ws1", "Lab"),
    ]


def test_wsgi_event_without_an_early_event_is_unchanged(events: list[AuditEvent]) -> None:
    assert flask_client().delete("/workspaces/ws1/pipelines/p1").status_code == 200
    assert [(e.type, e.workspace_id, e.workspace_name) for e in events] == [
        ("pipeline_deleted", "ws1", "Lab")]


def test_wsgi_workspace_resolved_before_the_handler_is_kept(events: list[AuditEvent]) -> None:
    """Resolved again once the parameters are known, and not after: a view that deletes
    its workspace is recorded with the name it had, also after an early event."""
    names = {"ws1": "Lab"}
    app = Flask(__name__)

    @app.before_request
    def early() -> None:
        emit("user_sign_in", "usr_erin")

    @audited("pipeline_deleted", target="pipeline_id")
    def delete_one(workspace_id: str, pipeline_id: str) -> None:
        pass

    @app.delete("/workspaces/<workspace_id>")
    @audited("workspace_deleted", target="workspace_id")
    def delete_workspace(workspace_id: str):  # type: ignore[no-untyped-def]
        del names[workspace_id]
        delete_one(workspace_id=workspace_id, pipeline_id="p1")  # a nested @audited
        return jsonify(deleted=True)

    app.wsgi_app = WSGIAuditMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, workspace=path_param("workspace_id", lookup=names.get))
    assert Client(app).delete("/workspaces/ws1").status_code == 200
    assert [(e.type, e.workspace_id, e.workspace_name) for e in events] == [
        ("user_sign_in", "", ""),
        ("pipeline_deleted", "ws1", "Lab"),
        ("workspace_deleted", "ws1", "Lab"),
    ]


class EmitsBeforeRouting:
    """An inner ASGI middleware that records an event before the router has run."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            emit("user_sign_in", "usr_erin", status="api_key")
        await self.app(scope, receive, send)


def test_asgi_event_after_an_early_event_has_its_workspace(events: list[AuditEvent]) -> None:
    @audited("pipeline_deleted", target="pipeline_id")
    async def delete_pipeline(request: Request) -> JSONResponse:
        return JSONResponse({"deleted": True})

    app = Starlette(
        routes=[Route("/workspaces/{workspace_id}/pipelines/{pipeline_id}", delete_pipeline,
                      methods=["DELETE"])],
        middleware=[Middleware(AuditMiddleware,
                               workspace=path_param("workspace_id", lookup=WORKSPACES.get)),
                    Middleware(EmitsBeforeRouting)])
    assert TestClient(app).delete("/workspaces/ws1/pipelines/p1").status_code == 200
    assert [(e.type, e.workspace_id, e.workspace_name) for e in events] == [
        ("user_sign_in", "", ""),
        ("pipeline_deleted", "ws1", "Lab"),
    ]


def test_flask_url_value_preprocessor_value_through_a_g_resolver(
        events: list[AuditEvent]) -> None:
    """The documented limitation: a value a url_value_preprocessor pops never reaches
    the view, so path_param cannot see it; a resolver reading flask.g does."""
    bp = Blueprint("ws", __name__, url_prefix="/workspaces/<workspace_id>")

    @bp.url_value_preprocessor
    def pull_workspace(endpoint: str | None, values: dict | None) -> None:
        g.workspace_id = (values or {}).pop("workspace_id")

    @bp.delete("/pipelines/<pipeline_id>")
    @audited("pipeline_deleted", target="pipeline_id")
    def delete_pipeline(pipeline_id: str):  # type: ignore[no-untyped-def]
        return jsonify(deleted=True)

    app = Flask(__name__)
    app.register_blueprint(bp)

    def workspace(ctx: object) -> tuple[str, str] | None:
        ident = g.get("workspace_id")
        return (ident, WORKSPACES.get(ident, "")) if ident else None

    app.wsgi_app = WSGIAuditMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, workspace=workspace)
    assert Client(app).delete("/workspaces/ws1/pipelines/p1").status_code == 200
    assert [(e.target, e.workspace_id, e.workspace_name) for e in events] == [
        ("p1", "ws1", "Lab")]


def test_wsgi_resolver_that_failed_before_the_view_is_tried_again(
        events: list[AuditEvent], caplog: pytest.LogCaptureFixture) -> None:
    """A WSGI middleware in front of Flask records an event before Flask has a context:
    the resolver reading flask.g raises there (logged, the event recorded without the
    workspace); the view's event resolves it again and has it."""
    app = Flask(__name__)

    @app.url_value_preprocessor
    def pull_workspace(endpoint: str | None, values: dict | None) -> None:
        g.workspace_id = (values or {}).pop("workspace_id", None)

    @app.delete("/workspaces/<workspace_id>/pipelines/<pipeline_id>")
    @audited("pipeline_deleted", target="pipeline_id")
    def delete_pipeline(pipeline_id: str):  # type: ignore[no-untyped-def]
        return jsonify(deleted=True)

    flask_wsgi = app.wsgi_app

    def sign_in_first(environ, start_response):  # type: ignore[no-untyped-def]
        emit("user_sign_in", "usr_erin")
        return flask_wsgi(environ, start_response)

    def workspace(ctx: object) -> tuple[str, str] | None:
        ident = g.get("workspace_id")  # outside Flask's context: RuntimeError
        return (ident, WORKSPACES.get(ident, "")) if ident else None

    app.wsgi_app = WSGIAuditMiddleware(sign_in_first,  # type: ignore[method-assign]
                                       workspace=workspace)
    assert Client(app).delete("/workspaces/ws1/pipelines/p1").status_code == 200
    assert [(e.type, e.workspace_id, e.workspace_name) for e in events] == [
        ("user_sign_in", "", ""),
        ("pipeline_deleted", "ws1", "Lab"),
    ]
    assert "resolving workspace failed" in caplog.text
