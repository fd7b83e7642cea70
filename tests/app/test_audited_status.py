"""``@audited`` reads a handler's failure from the status the response really gets:
FastAPI's injected ``response: Response``, Flask's status line, a response object's own
status; never from a result that merely has a ``status_code`` (a model, a dataclass)."""

from __future__ import annotations

import dataclasses

from fastapi import FastAPI, Response
from flask import Flask
from pydantic import BaseModel
from starlette.responses import JSONResponse
from starlette.testclient import TestClient
from werkzeug.test import Client

from audit_middleware import AuditMiddleware, WSGIAuditMiddleware, audited, from_result
from audit_middleware.event import AuditEvent


class Probe(BaseModel):
    id: str
    status_code: int  # the status an upstream health check answered, not this response's


@dataclasses.dataclass
class Upstream:
    id: str
    status_code: int


def fastapi_client() -> TestClient:
    api = FastAPI()

    @api.delete("/credentials/{cid}")
    @audited("credentials_deleted", target="cid")
    async def delete(cid: str, response: Response) -> dict:
        if cid.startswith("missing"):
            response.status_code = 404
        elif cid.startswith("created"):
            response.status_code = 201
        return {"id": cid}

    @api.put("/credentials/{cid}")
    @audited("credentials_updated", target=from_result("id"), record_failure=True)
    def update(cid: str, reply: Response) -> dict:  # any name; a sync handler too
        if cid.startswith("missing"):
            reply.status_code = 404
        return {"id": cid}

    @api.post("/credentials/{cid}")
    @audited("credentials_created", target="cid")
    async def create(cid: str, response: Response) -> JSONResponse:
        response.status_code = 404  # ignored by FastAPI: the returned response wins
        return JSONResponse({"id": cid}, status_code=200 if cid == "ok" else 409)

    @api.get("/probes/{cid}", response_model=Probe)
    @audited("credentials_accessed", target="cid")
    async def probe(cid: str) -> Probe:
        return Probe(id=cid, status_code=503)

    @api.get("/probes/{cid}/raw")
    @audited("credentials_accessed", target=from_result("id"))
    def probe_raw(cid: str) -> Upstream:
        return Upstream(id=cid, status_code=502)

    return TestClient(AuditMiddleware(api))


def test_fastapi_injected_response_status_is_the_handlers_status(
        events: list[AuditEvent]) -> None:
    client = fastapi_client()
    assert client.delete("/credentials/missing-1").status_code == 404
    assert client.delete("/credentials/created-2").status_code == 201
    assert client.delete("/credentials/c3").status_code == 200
    assert client.put("/credentials/missing-4").status_code == 404
    assert client.put("/credentials/c5").status_code == 200
    assert [(e.type, e.target, e.status) for e in events] == [
        ("credentials_deleted", "created-2", ""),
        ("credentials_deleted", "c3", ""),
        ("credentials_updated", "missing-4", "failed: HTTP 404"),
        ("credentials_updated", "c5", ""),
    ]


def test_fastapi_returned_response_wins_over_the_injected_one(
        events: list[AuditEvent]) -> None:
    client = fastapi_client()
    assert client.post("/credentials/ok").status_code == 200
    assert client.post("/credentials/c1").status_code == 409
    assert [(e.type, e.target) for e in events] == [("credentials_created", "ok")]


def test_a_result_with_a_status_code_field_is_no_response(events: list[AuditEvent]) -> None:
    client = fastapi_client()
    assert client.get("/probes/c1").status_code == 200
    assert client.get("/probes/c2/raw").status_code == 200
    assert [(e.type, e.target) for e in events] == [
        ("credentials_accessed", "c1"), ("credentials_accessed", "c2")]


def flask_client() -> Client:
    app = Flask(__name__)

    @app.delete("/credentials/<cid>")
    @audited("credentials_deleted", target="cid")
    def delete(cid: str):  # type: ignore[no-untyped-def]
        if cid.startswith("missing"):
            return "no such credentials", "404 NOT FOUND"
        return "deleted", "200 OK"

    @app.put("/credentials/<cid>")
    @audited("credentials_updated", target="cid", record_failure=True)
    def update(cid: str):  # type: ignore[no-untyped-def]
        if cid.startswith("missing"):
            return "no such credentials", "404 NOT FOUND", {"X-Reason": "gone"}
        return "updated", "201 CREATED", {"X-Reason": "new"}

    @app.post("/credentials/<cid>")
    @audited("credentials_created", target="cid")
    def create(cid: str):  # type: ignore[no-untyped-def]
        status = 409 if cid.startswith("taken") else 201
        return app.response_class("…", status=status), {"X-Reason": "r"}

    app.wsgi_app = WSGIAuditMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return Client(app)


def test_flask_status_line_is_the_status(events: list[AuditEvent]) -> None:
    client = flask_client()
    assert client.delete("/credentials/missing-1").status_code == 404
    assert client.delete("/credentials/c2").status_code == 200
    assert client.put("/credentials/missing-3").status_code == 404
    assert client.put("/credentials/c4").status_code == 201
    assert [(e.type, e.target, e.status) for e in events] == [
        ("credentials_deleted", "c2", ""),
        ("credentials_updated", "missing-3", "failed: HTTP 404"),
        ("credentials_updated", "c4", ""),
    ]


def test_flask_response_with_headers_keeps_its_status(events: list[AuditEvent]) -> None:
    client = flask_client()
    assert client.post("/credentials/taken-1").status_code == 409
    assert client.post("/credentials/c2").status_code == 201
    assert [(e.type, e.target) for e in events] == [("credentials_created", "c2")]


def test_a_raised_http_exception_is_recorded_with_its_status(events: list[AuditEvent]) -> None:
    """A raised HTTPException (FastAPI, Starlette, Flask's abort) fails the request with
    its status, as a returned response does: "failed: HTTP 404" either way, not
    "failed: HTTPException", which lost the status (a new-user review)."""
    from fastapi import HTTPException
    from flask import abort

    api = FastAPI()

    @api.delete("/buckets/{bid}")
    @audited("bucket_deleted", target="bid", record_failure=True)
    async def delete(bid: str) -> dict:
        raise HTTPException(404, "no such bucket")

    assert TestClient(AuditMiddleware(api)).delete("/buckets/b-1").status_code == 404
    flask_app = Flask(__name__)

    @flask_app.delete("/buckets/<bid>")
    @audited("bucket_deleted", target="bid", record_failure=True)
    def flask_delete(bid: str) -> str:
        abort(403)

    flask_app.wsgi_app = WSGIAuditMiddleware(flask_app.wsgi_app)  # type: ignore[method-assign]
    assert flask_app.test_client().delete("/buckets/b-2").status_code == 403

    @audited("bucket_deleted", target="bid", record_failure=True)
    def broken(bid: str) -> None:
        raise RuntimeError("disk")

    try:
        broken(bid="b-3")
    except RuntimeError:
        pass
    assert [(e.target, e.status) for e in events] == [
        ("b-1", "failed: HTTP 404"), ("b-2", "failed: HTTP 403"), ("b-3", "failed: RuntimeError")]
