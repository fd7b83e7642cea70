"""The Flask example: ``@audited`` views under ``WSGIAuditMiddleware``, with the
principal from ``set_principal`` (or the sign-in result) and the client IP resolved
behind the configured trusted proxies."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from examples.flask_app import create_app

ERIN = {"Authorization": "Bearer demo-erin-token"}
IP = "198.51.100.40"


@pytest.fixture
def client(audit) -> FlaskClient:
    client = create_app(trusted_proxies=["10.0.0.0/8"]).test_client()
    client.environ_base["REMOTE_ADDR"] = IP
    return client


def summary(audit) -> list[tuple[str, str, str, str, str, str]]:
    return [(e.type, e.target, e.principal, e.status, e.workspace_name, e.client_ip)
            for e in audit.events]


def test_views_record_the_principal_set_by_the_app_and_the_client_ip(
    client: FlaskClient, audit
) -> None:
    created = client.post("/workspaces/ws_lab/pipelines", json={"repository": "r"},
                          headers=ERIN)
    assert created.status_code == 201
    ident = created.json["id"]
    assert client.delete(f"/workspaces/ws_lab/pipelines/{ident}", headers=ERIN).status_code == 200
    assert summary(audit) == [("pipeline_created", ident, "usr_erin", "", "lab", IP),
                              ("pipeline_deleted", ident, "usr_erin", "", "lab", IP)]
    assert {e.workspace_id for e in audit.events} == {"ws_lab"}


def test_sign_in_records_the_user_the_method_and_the_ip(client: FlaskClient, audit) -> None:
    response = client.post("/sign-in", json={"email": "erin@example.org",
                                              "password": "erin-password"})
    assert response.status_code == 200
    assert summary(audit) == [("user_sign_in", "usr_erin", "usr_erin", "password", "", IP)]
    assert b"erin-password" not in audit.lines()[0]


def test_a_request_through_a_trusted_proxy_records_the_forwarded_ip(
    client: FlaskClient, audit
) -> None:
    client.post("/workspaces/ws_lab/pipelines", json={"repository": "r"}, headers={
        **ERIN, "X-Forwarded-For": "192.0.2.50"}, environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert [(e.client_ip, e.peer_ip) for e in audit.events] == [("192.0.2.50", "10.0.0.2")]


def test_a_forwarded_header_from_an_untrusted_peer_is_ignored(client: FlaskClient, audit) -> None:
    client.post("/workspaces/ws_lab/pipelines", json={"repository": "r"},
                headers={**ERIN, "X-Forwarded-For": "192.0.2.50"})
    assert [e.client_ip for e in audit.events] == [IP]


@pytest.mark.parametrize(("path", "headers", "status"), [
    ("/workspaces/ws_lab/pipelines", {}, 401),
    ("/workspaces/ws_nope/pipelines", ERIN, 404),
])
def test_a_refused_request_records_nothing(client: FlaskClient, audit, path, headers,
                                           status: int) -> None:
    assert client.post(path, json={"repository": "r"}, headers=headers).status_code == status
    assert audit.events == []


def test_a_failed_sign_in_records_nothing(client: FlaskClient, audit) -> None:
    assert client.post("/sign-in", data=b"\xff not json").status_code == 400
    assert client.post("/sign-in", json={"email": "erin@example.org",
                                         "password": "nope"}).status_code == 401
    assert audit.events == []


def test_run_as_documented_the_app_writes_to_the_sink_named_by_the_environment(
    events_file
) -> None:
    """``AUDIT_EVENTS_FILE=... flask --app examples.flask_app:create_app run``: without a
    sink from the environment, every audited view answered 500 (no sink configured)."""
    client = create_app().test_client()
    response = client.post("/sign-in", json={"email": "erin@example.org",
                                              "password": "erin-password"})
    assert response.status_code == 200
    assert [(r["type"], r["principal"]) for r in events_file()] == [
        ("user_sign_in", "usr_erin")]


def test_run_without_a_sink_in_the_environment_says_so_at_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Started without ``AUDIT_COLLECTOR_URL`` or ``AUDIT_EVENTS_FILE``, the examples
    answered 500 with a traceback at each audited request and said nothing at start."""
    monkeypatch.delenv("AUDIT_COLLECTOR_URL", raising=False)
    monkeypatch.delenv("AUDIT_EVENTS_FILE", raising=False)
    with caplog.at_level("WARNING", logger="examples.audit_sink"):
        create_app()
    [warning] = [r.getMessage() for r in caplog.records if r.name == "examples.audit_sink"]
    assert "neither AUDIT_COLLECTOR_URL nor AUDIT_EVENTS_FILE is set" in warning
    assert "AUDIT_EVENTS_FILE=audit-events.jsonl" in warning
