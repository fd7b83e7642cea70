"""FastAPI path operations (dependency injection intact) and Flask views under WSGI."""

from __future__ import annotations

import pytest
from fastapi import Depends, FastAPI
from flask import Flask
from starlette.responses import JSONResponse
from starlette.testclient import TestClient

from audit_middleware import AuditMiddleware, WSGIAuditMiddleware, audited, emit, set_principal
from audit_middleware.event import AuditEvent


def current_user_id() -> str:
    return "u-fastapi"


def make_fastapi() -> FastAPI:
    api = FastAPI()

    @api.post("/orgs/{org_id}/pipelines")
    @audited("pipeline_created", target=lambda call: call.result["id"],
             org_id=lambda call: call.param("org_id"))
    async def create_pipeline(org_id: str, user: str = Depends(current_user_id)) -> dict:
        set_principal(user)
        return {"id": f"p-{org_id}", "by": user}

    @api.delete("/pipelines/{pipeline_id}")
    @audited("pipeline_deleted", target="pipeline_id")
    def delete_pipeline(pipeline_id: int, user: str = Depends(current_user_id)) -> dict:
        return {"deleted": pipeline_id, "by": user}

    return api


def test_fastapi_dependency_injection_survives_the_decorator(events: list[AuditEvent]) -> None:
    client = TestClient(AuditMiddleware(make_fastapi()))
    response = client.post("/orgs/o1/pipelines")
    assert response.json() == {"id": "p-o1", "by": "u-fastapi"}
    deleted = client.delete("/pipelines/7")
    assert deleted.json() == {"deleted": 7, "by": "u-fastapi"}  # path param type-converted
    assert [(e.type, e.target, e.principal, e.org_id) for e in events] == [
        ("pipeline_created", "p-o1", "u-fastapi", "o1"),
        ("pipeline_deleted", "7", "", ""),
    ]


def test_a_value_the_record_cannot_hold_never_turns_a_success_into_a_500(
        events: list[AuditEvent], caplog: pytest.LogCaptureFixture) -> None:
    """The handler has done its work when the event is made: a float path parameter or
    a date from a getter is left out of the record (and logged), not raised."""
    import datetime

    api = FastAPI()

    @api.put("/runs/{run_id}/progress")
    @audited("run_status_changed", target="run_id",
             status=lambda call: datetime.date(2026, 11, 26))
    async def progress(run_id: float) -> dict:
        return {"run": run_id}

    @api.delete("/runs/{run_id}")
    @audited("run_deleted", target="run_id")
    async def delete(run_id: float) -> dict:
        return {"deleted": run_id}

    @api.post("/runs/{run_id}/relaunch")
    @audited("run_relaunched", target="run_id", record_failure=True)
    async def relaunch(run_id: float):  # type: ignore[no-untyped-def]
        if run_id > 100:
            return JSONResponse({"error": "no such run"}, status_code=404)
        raise RuntimeError("the scheduler is down")

    client = TestClient(AuditMiddleware(api), raise_server_exceptions=False)
    assert client.delete("/runs/1.5").json() == {"deleted": 1.5}
    assert client.put("/runs/2.5/progress").json() == {"run": 2.5}
    # Failure events keep their status when a value is left out.
    assert client.post("/runs/101.5/relaunch").status_code == 404
    assert client.post("/runs/3.5/relaunch").status_code == 500  # its own exception
    assert [(e.type, e.target, e.status) for e in events] == [
        ("run_deleted", "", ""), ("run_status_changed", "", ""),
        ("run_relaunched", "", "failed: HTTP 404"),
        ("run_relaunched", "", "failed: RuntimeError")]
    assert "audit field 'target' must be a str" in caplog.text


def test_fastapi_openapi_still_sees_the_parameters() -> None:
    schema = make_fastapi().openapi()
    params = schema["paths"]["/pipelines/{pipeline_id}"]["delete"]["parameters"]
    assert [p["name"] for p in params] == ["pipeline_id"]


def make_flask() -> WSGIAuditMiddleware:
    flask_app = Flask(__name__)

    @flask_app.delete("/orgs/<org_id>/teams/<team_id>")
    @audited("team_deleted", target="team_id")
    def delete_team(org_id: str, team_id: str) -> tuple[str, int]:
        return "", 204

    @flask_app.post("/teams")
    @audited("team_created", target=lambda call: call.result_value("id"))
    def create_team() -> dict:
        return {"id": "t-new"}

    @flask_app.put("/teams/<team_id>")
    @audited("team_created", target="team_id")
    def fail(team_id: str) -> tuple[str, int]:
        return "nope", 409

    return WSGIAuditMiddleware(
        flask_app,
        trusted_proxies=["10.0.0.0/8"],
        principal=lambda ctx: (ctx.header("authorization") or "")[7:] or None,
        org=lambda ctx: (ctx.path_params.get("org_id"), "Org " + ctx.path_params.get("org_id", "")),
    )


def flask_client(peer: str = "192.0.2.10"):  # type: ignore[no-untyped-def]
    from werkzeug.test import Client

    return Client(make_flask()), {"REMOTE_ADDR": peer}


def test_flask_view_records_principal_ip_org_and_target(events: list[AuditEvent]) -> None:
    client, env = flask_client()
    response = client.delete("/orgs/o2/teams/t5", headers={"Authorization": "Bearer alice"},
                             environ_base=env)
    assert response.status_code == 204
    [event] = events
    assert (event.type, event.target, event.principal, event.client_ip) == (
        "team_deleted", "t5", "alice", "192.0.2.10")
    assert (event.org_id, event.org_name) == ("o2", "Org o2")


def test_flask_target_from_dict_result(events: list[AuditEvent]) -> None:
    client, env = flask_client()
    client.post("/teams", environ_base=env)
    assert events[0].target == "t-new"


def test_flask_error_tuple_records_nothing(events: list[AuditEvent]) -> None:
    client, env = flask_client()
    assert client.put("/teams/t1", environ_base=env).status_code == 409
    assert events == []


@pytest.mark.parametrize(("peer", "xff", "expected"), [
    ("10.1.1.1", "198.51.100.2", "198.51.100.2"),
    ("192.0.2.10", "198.51.100.2", "192.0.2.10"),
])
def test_wsgi_client_ip_behind_proxies(
    peer: str, xff: str, expected: str, events: list[AuditEvent]
) -> None:
    client, env = flask_client(peer)
    client.delete("/orgs/o2/teams/t5", headers={"X-Forwarded-For": xff}, environ_base=env)
    assert events[0].client_ip == expected


def test_wsgi_status_is_observed() -> None:
    from audit_middleware import current_request

    seen: list[object] = []

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        seen.append(current_request())
        start_response("418 I'm a teapot", [])
        return [b""]

    from werkzeug.test import Client

    Client(WSGIAuditMiddleware(app)).get("/")
    assert seen[0].status_code == 418  # type: ignore[attr-defined]


def test_wsgi_a_streamed_body_emits_as_the_requests_user(events: list[AuditEvent]) -> None:
    """A download recorded once it is sent is emitted while the server iterates the body,
    after the app callable returned: still the request's user and address, as under
    ASGI (it was 'system' with no address). A list body is handed over as it is."""
    from werkzeug.test import Client

    def stream(environ, start_response):  # type: ignore[no-untyped-def]
        set_principal("u-downloader")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def body():  # type: ignore[no-untyped-def]
            yield b"part 1"
            yield b"part 2"
            emit("bucket_file_downloaded", "f-9")  # once it is all sent

        return body()

    listed: list[object] = []

    def plain(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [])
        listed.append(body := [b"whole"])
        return body

    response = Client(WSGIAuditMiddleware(stream)).get(
        "/", environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert response.get_data() == b"part 1part 2"
    assert [(e.type, e.target, e.principal, e.client_ip) for e in events] == [
        ("bucket_file_downloaded", "f-9", "u-downloader", "198.51.100.7")]
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": None}
    assert WSGIAuditMiddleware(plain)(environ, lambda *a: None) is listed[0]
    # A file (what uWSGI's wsgi.file_wrapper returns) is handed back as it is: the server
    # sends it with sendfile only if it gets that very object.
    import io

    file_body = io.BytesIO(b"x" * 100)

    def download(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [])
        return file_body

    assert WSGIAuditMiddleware(download)(environ, lambda *a: None) is file_body


def test_a_target_naming_no_path_parameter_names_the_ones_there_are(
        events: list[AuditEvent], caplog: pytest.LogCaptureFixture) -> None:
    """``target="id"`` on ``/pipelines/{pipeline_id}`` (a new-user review): the event is
    recorded without its target, and the error logged names the route's parameters to pick from,
    not FastAPI's injected ones."""
    api = FastAPI()

    @api.delete("/pipelines/{pipeline_id}")
    @audited("pipeline_deleted", target="id")
    def delete(pipeline_id: str, user: str = Depends(current_user_id)) -> dict:
        return {}

    flask_app = Flask(__name__)
    flask_app.wsgi_app = WSGIAuditMiddleware(flask_app.wsgi_app)  # type: ignore[method-assign]

    @flask_app.delete("/teams/<team_id>/pipelines/<pipeline_id>")
    @audited("pipeline_deleted", target="id")
    def delete_in_flask(team_id: str, pipeline_id: str) -> str:
        return ""

    assert TestClient(AuditMiddleware(api)).delete("/pipelines/p-1").status_code == 200
    assert flask_app.test_client().delete("/teams/t-1/pipelines/p-2").status_code == 200
    assert [(e.type, e.target) for e in events] == [("pipeline_deleted", "")] * 2
    assert caplog.text.count("no path parameter 'id' in this call") == 2
    assert "its path parameters: pipeline_id\"" in caplog.text
    assert "its path parameters: pipeline_id, team_id\"" in caplog.text
