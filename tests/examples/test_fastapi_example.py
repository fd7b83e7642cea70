"""The FastAPI example: ``@audited`` leaves dependency injection working, for async and
sync path operations, and the injected user is the event's principal."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from examples.fastapi_app import create_app

CAROL = {"Authorization": "Bearer demo-carol-token"}
DAVE = {"Authorization": "Bearer demo-dave-token"}
IP = "198.51.100.30"
BASE = "/workspaces/ws_lab/credentials"


@pytest.fixture
def api(audit) -> TestClient:
    return TestClient(create_app(), client=(IP, 1234))


def summary(audit) -> list[tuple[str, str, str, str, str, str]]:
    return [(e.type, e.target, e.principal, e.workspace_id, e.workspace_name, e.client_ip)
            for e in audit.events]


def test_async_path_operation_gets_its_dependencies_and_records_the_injected_user(
    api: TestClient, audit
) -> None:
    response = api.post(BASE, json={"name": "aws", "secret": "s"}, headers=CAROL)
    assert response.status_code == 201
    created = response.json()
    assert created["owner"] == "usr_carol"  # the dependency's value reached the handler
    assert summary(audit) == [
        ("credentials_created", created["id"], "usr_carol", "ws_lab", "lab", IP)]


def test_sync_path_operations_run_in_the_threadpool_with_the_request_context(
    api: TestClient, audit
) -> None:
    ident = api.post(BASE, json={"name": "aws", "secret": "s"}, headers=CAROL).json()["id"]
    edited = api.put(f"{BASE}/{ident}", json={"name": "gcp", "secret": "t"}, headers=DAVE)
    deleted = api.delete(f"{BASE}/{ident}", headers=DAVE)
    assert (edited.json()["owner"], deleted.json()["deleted_by"]) == ("usr_dave", "usr_dave")
    assert summary(audit)[1:] == [
        ("credentials_updated", ident, "usr_dave", "ws_lab", "lab", IP),
        ("credentials_deleted", ident, "usr_dave", "ws_lab", "lab", IP),
    ]


def test_a_request_the_auth_dependency_refuses_is_recorded_as_denied(
    api: TestClient, audit
) -> None:
    for headers in ({}, {"Authorization": "Bearer stolen-or-guessed"}):
        assert api.post(BASE, json={"name": "a", "secret": "s"},
                        headers=headers).status_code == 401
    assert [(e.type, e.target, e.status, e.principal, e.workspace_id, e.client_ip)
            for e in audit.events] == [
        ("request_denied", BASE, "HTTP 401 on POST", "", "ws_lab", IP)] * 2
    assert "stolen" not in "".join(e.to_json_line().decode() for e in audit.events)


@pytest.mark.parametrize(("headers", "body", "status"), [
    (CAROL, {"name": "a"}, 422),  # the body model refused
    (CAROL, {"name": "", "secret": "s"}, 422),
])
def test_a_validation_failure_records_nothing(
    api: TestClient, audit, headers: dict[str, str], body: dict[str, str], status: int
) -> None:
    assert api.post(BASE, json=body, headers=headers).status_code == status
    assert audit.events == []


def test_a_handler_raising_http_exception_records_nothing(api: TestClient, audit) -> None:
    assert api.delete(f"{BASE}/cred_nope", headers=CAROL).status_code == 404
    assert api.post("/workspaces/ws_nope/credentials", json={"name": "a", "secret": "s"},
                    headers=CAROL).status_code == 404
    assert audit.events == []


def test_openapi_still_documents_path_parameters_and_body() -> None:
    paths = create_app().openapi()["paths"]
    operation = paths["/workspaces/{workspace_id}/credentials/{credentials_id}"]["put"]
    assert {p["name"] for p in operation["parameters"]} == {"workspace_id", "credentials_id"}
    assert "requestBody" in operation


def test_the_secret_in_the_body_is_in_no_record(api: TestClient, audit) -> None:
    ident = api.post(BASE, json={"name": "a", "secret": "MARKER-1"}, headers=CAROL).json()["id"]
    api.put(f"{BASE}/{ident}", json={"name": "b", "secret": "MARKER-2"}, headers=CAROL)
    assert len(audit.events) == 2
    assert not [line for line in audit.lines() if b"MARKER" in line or b"demo-carol" in line]


def test_run_as_documented_the_app_writes_to_the_sink_named_by_the_environment(
    events_file
) -> None:
    """``AUDIT_EVENTS_FILE=... uvicorn --factory examples.fastapi_app:create_app``: without
    a sink from the environment, every audited path operation answered 500."""
    with TestClient(create_app(), raise_server_exceptions=False) as api:
        response = api.post(BASE, json={"name": "aws", "secret": "s"}, headers=CAROL)
    assert response.status_code == 201
    assert [(r["type"], r["target"]) for r in events_file()] == [
        ("credentials_created", response.json()["id"])]
