"""A small Flask app: ``@audited`` views under ``WSGIAuditMiddleware``.

Flask authenticates (a ``before_request`` hook checking a bearer token) and tells the
audit layer who acted with ``set_principal``, as an app using Flask-Login or Django's
``request.user`` would. Sign-in has nobody to name yet, so its event takes the principal
from the view's result instead.

    AUDIT_COLLECTOR_URL=unix://$PWD/audit-data/collector.sock \
        flask --app examples.flask_app:create_app run

(``AUDIT_COLLECTOR_URL``: the collector ``make run`` starts, or ``audit-collector
serve``'s; or ``AUDIT_EVENTS_FILE=events.jsonl``: see ``examples/audit_sink.py``.)
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from flask import Flask, Response, g, jsonify, request

from audit_middleware import WSGIAuditMiddleware, audited, from_result, path_param, set_principal
from audit_middleware.catalogue import PIPELINE_CREATED, PIPELINE_DELETED, USER_SIGN_IN
from examples.audit_sink import configure_sink_from_environment

#: Demo users: email -> (user id, password, bearer token).
USERS = {"erin@example.org": ("usr_erin", "erin-password", "demo-erin-token")}
WORKSPACES = {"ws_lab": "lab"}
PUBLIC_ENDPOINTS = {"sign_in"}

Reply = Response | tuple[Response, int]


def create_app(*, trusted_proxies: Iterable[str] = ()) -> Flask:
    configure_sink_from_environment()
    app = Flask(__name__)
    app.wsgi_app = WSGIAuditMiddleware(  # type: ignore[method-assign]
        app.wsgi_app,
        trusted_proxies=list(trusted_proxies),
        workspace=path_param("workspace_id", lookup=WORKSPACES.get),
    )
    tokens = {token: user_id for user_id, _, token in USERS.values()}
    pipelines: dict[str, str] = {}  # pipeline id -> workspace id

    @app.before_request
    def authenticate() -> Reply | None:
        if request.endpoint in PUBLIC_ENDPOINTS:
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        user_id = tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user_id is None:
            return jsonify(error="send 'Authorization: Bearer <token>'"), 401
        g.user_id = user_id
        set_principal(user_id)
        return None

    @app.post("/sign-in")
    @audited(USER_SIGN_IN, target=from_result("user_id"), principal=from_result("user_id"),
             status="password")
    def sign_in() -> Reply:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return jsonify(error='send {"email": ..., "password": ...} as JSON'), 400
        user = USERS.get(str(body.get("email")))
        if user is None or not secrets.compare_digest(str(body.get("password")), user[1]):
            return jsonify(error="wrong email or password"), 401
        return jsonify(user_id=user[0], token=user[2])

    @app.post("/workspaces/<workspace_id>/pipelines")
    @audited(PIPELINE_CREATED, target=from_result("id"))
    def add_pipeline(workspace_id: str) -> Reply:
        if workspace_id not in WORKSPACES:
            return jsonify(error=f"no workspace {workspace_id!r}"), 404
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("repository"), str):
            return jsonify(error='send {"repository": "https://..."} as JSON'), 422
        pipeline_id = "pipe_" + secrets.token_hex(5)
        pipelines[pipeline_id] = workspace_id
        return jsonify(id=pipeline_id, created_by=g.user_id), 201

    @app.delete("/workspaces/<workspace_id>/pipelines/<pipeline_id>")
    @audited(PIPELINE_DELETED, target="pipeline_id")
    def delete_pipeline(workspace_id: str, pipeline_id: str) -> Reply:
        if pipelines.get(pipeline_id) != workspace_id:
            return jsonify(error=f"no pipeline {pipeline_id!r} in {workspace_id!r}"), 404
        del pipelines[pipeline_id]
        return jsonify(id=pipeline_id, deleted=True)

    return app
