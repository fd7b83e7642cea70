"""The Django example end to end with Django's test client, through the real WSGI stack
(``WSGIAuditMiddleware`` around Django's handler, as ``wsgi.py`` builds it): the principal
from Django's ``request.user`` via ``set_principal``, the client IP behind trusted
proxies, the target from the URL or the view's JSON."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")

import django
from django.test import Client
from django.test.client import ClientHandler

django.setup()

from examples.django_app import wsgi

DANA = {"HTTP_AUTHORIZATION": "Bearer demo-dana-token"}
IP = "198.51.100.44"


class AuditedClientHandler(ClientHandler):
    """Django's test handler inside the example's WSGIAuditMiddleware: the test client
    then runs the same WSGI stack as ``wsgi.application``, and still gets Django's
    response objects (``.json()``, ``.status_code``)."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.wrapped = wsgi.audited_wsgi(self._django, trusted_proxies=["10.0.0.0/8"])

    def _django(self, environ: dict[str, Any], start_response: Any) -> Any:
        response = super().__call__(environ)
        self.response = response
        start_response(f"{response.status_code} {response.reason_phrase}",
                       list(response.items()))
        return [response.content]

    def __call__(self, environ: dict[str, Any]) -> Any:  # type: ignore[override]
        body = self.wrapped(environ, lambda status, headers, exc_info=None: None)
        b"".join(body)
        return self.response


@pytest.fixture
def client(audit) -> Client:  # type: ignore[no-untyped-def]
    test_client = Client(REMOTE_ADDR=IP)
    test_client.handler = AuditedClientHandler()
    return test_client


def summary(audit) -> list[tuple[str, ...]]:  # type: ignore[no-untyped-def]
    return [(e.type, e.target, e.principal, e.status, e.workspace_id, e.workspace_name,
             e.client_ip) for e in audit.events]


def test_views_record_the_django_user_as_principal(client: Client, audit) -> None:  # type: ignore[no-untyped-def]
    created = client.post("/workspaces/ws_lab/pipelines", {"repository": "r"},
                          content_type="application/json", **DANA)
    assert created.status_code == 201
    ident = created.json()["id"]
    assert client.delete(f"/workspaces/ws_lab/pipelines/{ident}", **DANA).status_code == 200
    assert summary(audit) == [
        ("pipeline_created", ident, "usr_dana", "", "ws_lab", "lab", IP),
        ("pipeline_deleted", ident, "usr_dana", "", "ws_lab", "lab", IP)]


def test_sign_in_records_the_user_the_method_and_the_ip(client: Client, audit) -> None:  # type: ignore[no-untyped-def]
    reply = client.post("/sign-in", {"email": "dana@example.org", "password": "dana-password"},
                        content_type="application/json")
    assert reply.status_code == 200
    assert summary(audit) == [("user_sign_in", "usr_dana", "usr_dana", "password", "", "", IP)]
    assert b"dana-password" not in audit.lines()[0]


def test_failures_and_refusals_record_nothing(client: Client, audit) -> None:  # type: ignore[no-untyped-def]
    assert client.post("/sign-in", {"email": "dana@example.org", "password": "no"},
                       content_type="application/json").status_code == 401
    assert client.post("/workspaces/ws_lab/pipelines", {}, content_type="application/json",
                       **DANA).status_code == 422
    assert client.delete("/workspaces/ws_lab/pipelines/pipe_nope", **DANA).status_code == 404
    assert client.post("/workspaces/ws_lab/pipelines", {"repository": "r"},
                       content_type="application/json").status_code == 401  # no token
    assert audit.events == []


def test_a_request_through_a_trusted_proxy_records_the_forwarded_ip(client: Client,
                                                                    audit) -> None:  # type: ignore[no-untyped-def]
    client.post("/workspaces/ws_lab/pipelines", {"repository": "r"},
                content_type="application/json", REMOTE_ADDR="10.0.0.2",
                HTTP_X_FORWARDED_FOR="192.0.2.50", **DANA)
    assert [(e.client_ip, e.peer_ip) for e in audit.events] == [("192.0.2.50", "10.0.0.2")]


def test_a_forwarded_header_from_an_untrusted_peer_is_ignored(client: Client, audit) -> None:  # type: ignore[no-untyped-def]
    client.post("/workspaces/ws_lab/pipelines", {"repository": "r"},
                content_type="application/json", HTTP_X_FORWARDED_FOR="192.0.2.50", **DANA)
    assert [e.client_ip for e in audit.events] == [IP]


def test_the_wsgi_application_itself_records_events(audit) -> None:  # type: ignore[no-untyped-def]
    from werkzeug.test import Client as WSGIClient

    from audit_middleware import WSGIAuditMiddleware

    assert isinstance(wsgi.application, WSGIAuditMiddleware)
    reply = WSGIClient(wsgi.application).post(
        "/sign-in", json={"email": "dana@example.org", "password": "dana-password"},
        environ_base={"REMOTE_ADDR": IP})
    assert reply.status_code == 200
    assert summary(audit) == [("user_sign_in", "usr_dana", "usr_dana", "password", "", "", IP)]


def test_runserver_as_documented_serves_the_audited_application(audit) -> None:  # type: ignore[no-untyped-def]
    """``python -m django runserver`` (the package docstring's command) serves
    ``settings.WSGI_APPLICATION``: without it, Django's bare handler, outside
    ``WSGIAuditMiddleware``, whose ``set_principal`` answered 500 to every signed-in
    request."""
    from django.core.servers.basehttp import get_internal_wsgi_application
    from werkzeug.test import Client as WSGIClient

    reply = WSGIClient(get_internal_wsgi_application()).post(
        "/workspaces/ws_lab/pipelines", json={"repository": "r"},
        headers={"Authorization": "Bearer demo-dana-token"}, environ_base={"REMOTE_ADDR": IP})
    assert reply.status_code == 201
    ident = reply.get_json()["id"]
    assert summary(audit) == [("pipeline_created", ident, "usr_dana", "", "ws_lab", "lab", IP)]
