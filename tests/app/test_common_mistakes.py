"""README's "Common mistakes" that no other test showed, each through real requests
into a small app, as the README says it: what the user gets (an error at import, a 500,
a log line, an event or none). The others are shown where their feature is tested:
tests/app/test_decorator_order.py, test_audited_without_middleware.py, test_denials.py,
test_nested_middleware.py, test_frameworks.py and tests/examples/test_django_*.py."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, HTTPException
from fastapi.testclient import TestClient
from flask import Flask
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from audit_middleware import (
    AuditArgumentTypeError,
    AuditConfigurationError,
    AuditMiddleware,
    Catalogue,
    audited,
    emit,
    path_param,
    register_resource,
    set_principal,
)
from audit_middleware.context import RequestContext
from audit_middleware.event import AuditEvent
from audit_middleware.testing import reset_configuration

CLIENT = "198.51.100.7"


def by_token(ctx: RequestContext) -> str | None:
    return {"Bearer alice": "u-alice"}.get(ctx.header("authorization") or "")


# -- @audited above the route decorator --------------------------------------------------

MISORDERED_MODULE = '''
from fastapi import FastAPI
from audit_middleware import audited

app = FastAPI()

@audited("bucket_deleted", target="bucket_id")
@app.delete("/buckets/{bucket_id}")
def delete(bucket_id: str) -> dict[str, str]:
    return {}
'''


def test_audited_above_a_route_decorator_fails_the_modules_import(tmp_path: Path) -> None:
    """The app a name in the module's globals (as an app module is written): the import
    itself fails, before any request could go unrecorded."""
    source = tmp_path / "misordered_app.py"
    source.write_text(MISORDERED_MODULE)
    spec = importlib.util.spec_from_file_location("misordered_app", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(AuditConfigurationError, match=r"@audited\('bucket_deleted'\) is above "
                       r"the route decorator of delete: app \(FastAPI\)"):
        spec.loader.exec_module(module)


class BucketsAPI:
    """A router reached through an attribute: not in the namespace @audited reads."""

    def __init__(self) -> None:
        self.router = APIRouter()

        @audited("bucket_deleted", target="bucket_id")
        @self.router.delete("/buckets/{bucket_id}")
        def delete(bucket_id: str) -> dict[str, str]:
            return {}


def test_audited_above_a_route_decorator_reached_through_an_attribute_records_nothing(
        events: list[AuditEvent]) -> None:
    """The README's limit of the check: ``@self.router.delete`` is not seen (no error),
    and its requests record nothing."""
    api = FastAPI()
    api.include_router(BucketsAPI().router)
    assert TestClient(AuditMiddleware(api)).delete("/buckets/b-1").status_code == 200
    assert events == []


# -- a target naming no path parameter ----------------------------------------------------

def test_a_target_naming_no_path_parameter_is_said_at_each_request(
        events: list[AuditEvent], caplog: pytest.LogCaptureFixture) -> None:
    api = FastAPI()

    @api.delete("/items/{item_id}")
    @audited("bucket_deleted", target="id")
    def delete(item_id: str) -> dict[str, str]:
        return {}

    client = TestClient(AuditMiddleware(api))
    with caplog.at_level(logging.ERROR, "audit_middleware"):
        for ident in ("i-1", "i-2"):
            assert client.delete(f"/items/{ident}").status_code == 200
    assert [(e.type, e.target) for e in events] == [("bucket_deleted", "")] * 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert all("its path parameters: item_id" in r.getMessage() for r in errors)


# -- a FastAPI dependency that refuses ----------------------------------------------------

def test_a_dependency_that_refuses_leaves_nothing_to_record_failure_included(
        events: list[AuditEvent]) -> None:
    def load_item(item_id: str) -> str:
        raise HTTPException(404, "no such item")

    api = FastAPI()

    @api.delete("/items/{item_id}")
    @audited("bucket_deleted", target="item_id", record_failure=True)
    def delete(item_id: str, item: str = Depends(load_item)) -> dict[str, str]:
        return {}

    assert TestClient(AuditMiddleware(api)).delete("/items/i-1").status_code == 404
    assert events == []


# -- no middleware: set_principal() -------------------------------------------------------

def test_set_principal_without_the_middleware_is_a_500(events: list[AuditEvent]) -> None:
    api = FastAPI()

    @api.delete("/buckets/{bucket_id}")
    @audited("bucket_deleted", target="bucket_id")
    def delete(bucket_id: str) -> dict[str, str]:
        set_principal("u-alice")
        return {}

    client = TestClient(api, raise_server_exceptions=False)
    assert client.delete("/buckets/b-1").status_code == 500
    with pytest.raises(AuditConfigurationError, match="set_principal\\(\\) needs a request "
                       "context: install AuditMiddleware"):
        TestClient(api).delete("/buckets/b-1")
    assert events == []


def test_flask_without_the_middleware_records_no_client_ip_and_says_so_once(
        events: list[AuditEvent], caplog: pytest.LogCaptureFixture) -> None:
    app = Flask(__name__)

    @app.delete("/buckets/<bucket_id>")
    @audited("bucket_deleted", target="bucket_id")
    def delete(bucket_id: str) -> str:
        return ""

    client = app.test_client()
    with caplog.at_level(logging.ERROR, "audit_middleware"):
        for ident in ("b-1", "b-2"):
            response = client.delete(f"/buckets/{ident}", environ_base={"REMOTE_ADDR": CLIENT})
            assert response.status_code == 200
    assert [(e.target, e.principal, e.client_ip) for e in events] == [
        ("b-1", "", ""), ("b-2", "", "")]
    assert caplog.text.count("ran outside a request") == 1


# -- no configure(sink=...) ---------------------------------------------------------------

@pytest.fixture
def no_sink() -> Iterator[None]:
    reset_configuration()
    yield
    reset_configuration()


def test_without_a_sink_the_first_event_fails_the_request_after_its_handler_ran(
        no_sink: None) -> None:
    done: list[str] = []
    api = FastAPI()

    @api.delete("/buckets/{bucket_id}")
    @audited("bucket_deleted", target="bucket_id")
    def delete(bucket_id: str) -> dict[str, str]:
        done.append(bucket_id)
        return {}

    client = TestClient(AuditMiddleware(api), raise_server_exceptions=False)
    assert client.delete("/buckets/b-1").status_code == 500
    assert done == ["b-1"]  # the work was done: the 500 comes after it
    with pytest.raises(AuditConfigurationError, match=r"no audit sink configured: call "
                       r"audit_middleware.configure\(sink=...\) at start-up"):
        TestClient(AuditMiddleware(api)).delete("/buckets/b-2")
    assert done == ["b-1", "b-2"]


# -- two @audited stacked; emit() in a background task -------------------------------------

def test_two_audited_stacked_record_two_events_the_inner_ones_first(
        events: list[AuditEvent]) -> None:
    api = FastAPI()

    @api.delete("/buckets/{bucket_id}")
    @audited("bucket_deleted", target="bucket_id")
    @audited("bucket_hidden", target="bucket_id")
    def delete(bucket_id: str) -> dict[str, str]:
        return {}

    assert TestClient(AuditMiddleware(api)).delete("/buckets/b-1").status_code == 200
    assert [(e.type, e.target) for e in events] == [("bucket_hidden", "b-1"),
                                                   ("bucket_deleted", "b-1")]


def test_an_emit_in_a_background_task_is_the_requests_unless_said_system(
        events: list[AuditEvent]) -> None:
    def clean_up(bucket_id: str) -> None:
        emit("bucket_updated", f"{bucket_id}/tmp")
        emit("bucket_updated", f"{bucket_id}/cache", principal="system")

    api = FastAPI()

    @api.delete("/buckets/{bucket_id}")
    @audited("bucket_deleted", target="bucket_id")
    def delete(bucket_id: str, tasks: BackgroundTasks) -> dict[str, str]:
        tasks.add_task(clean_up, bucket_id)
        return {}

    client = TestClient(AuditMiddleware(api, principal=by_token), client=(CLIENT, 50000))
    response = client.delete("/buckets/b-1", headers={"Authorization": "Bearer alice"})
    assert response.status_code == 200
    assert [(e.target, e.principal, e.client_ip) for e in events] == [
        ("b-1", "u-alice", CLIENT), ("b-1/tmp", "u-alice", CLIENT),
        ("b-1/cache", "system", "")]


# -- a second AuditMiddleware in a mounted sub-app ----------------------------------------

def test_the_outer_middlewares_resolvers_see_the_sub_apps_path_parameters(
        events: list[AuditEvent]) -> None:
    """The outer middleware's ``org`` and ``workspace`` resolvers read path parameters
    only the mounted sub-app's router matched."""
    register_resource("bucket", {"archived": "bucket_archived"})

    @audited("bucket_archived", target="bucket_id")
    async def archive(request: Request) -> Response:
        return PlainTextResponse("ok")

    sub = Starlette(routes=[Route("/orgs/{org_id}/ws/{ws_id}/buckets/{bucket_id}", archive,
                                  methods=["POST"])],
                    middleware=[Middleware(AuditMiddleware)])
    app = Starlette(routes=[Mount("/plugin", app=sub)], middleware=[Middleware(
        AuditMiddleware, org=path_param("org_id", lookup={"o-1": "Acme"}.get),
        workspace=path_param("ws_id"))])
    client = TestClient(app, client=(CLIENT, 50000))
    assert client.post("/plugin/orgs/o-1/ws/w-2/buckets/b-3").status_code == 200
    assert [(e.target, e.org_id, e.org_name, e.workspace_id) for e in events] == [
        ("b-3", "o-1", "Acme", "w-2")]


# -- an event type that is no str: a list, a dict ------------------------------------------

NOT_A_TYPE = r"an event type is a str such as 'run_launched' .*, got \['bucket_deleted'\]"


def test_an_unhashable_event_type_in_a_request_is_said_as_ours(
        events: list[AuditEvent]) -> None:
    """``emit(["x"])`` failed with Python's "unhashable type: 'list'" (the catalogue
    lookup), which names nothing to pass; with or without fields of its own."""
    api = FastAPI()

    @api.delete("/buckets/{bucket_id}")
    def delete(bucket_id: str, principal: str | None = None) -> dict[str, str]:
        emit(["bucket_deleted"], bucket_id, principal=principal)  # type: ignore[arg-type]
        return {}

    client = TestClient(AuditMiddleware(api))
    for url in ("/buckets/b-1", "/buckets/b-1?principal=u-alice"):
        with pytest.raises(AuditArgumentTypeError, match=NOT_A_TYPE) as raised:
            client.delete(url)
        assert isinstance(raised.value, TypeError)  # as Python's own was
        assert raised.value.__context__ is None or raised.value.__suppress_context__
    assert events == []


@pytest.mark.parametrize("event_type", [["bucket_deleted"], {"bucket_deleted": 1}])
def test_an_unhashable_event_type_outside_a_request_is_said_as_ours(
        events: list[AuditEvent], event_type: object) -> None:
    with pytest.raises(AuditArgumentTypeError, match="an event type is a str such as"):
        emit(event_type, "b-1")  # type: ignore[arg-type]
    assert events == []


def test_an_unhashable_resource_or_action_is_said_as_ours() -> None:
    catalogue = Catalogue()
    with pytest.raises(AuditArgumentTypeError, match=r"event_type\(resource, action\) "
                       r"takes two names \(str\), e.g. event_type\('run', 'launch'\); "
                       r"got \['run'\], 'launch'"):
        catalogue.event_type(["run"], "launch")  # type: ignore[arg-type]
    with pytest.raises(AuditArgumentTypeError, match="got 'run', {}"):
        catalogue.event_type("run", {})  # type: ignore[arg-type]
    with pytest.raises(AuditArgumentTypeError, match=r"resource \['report'\] is not a name: "
                       r"pass a str"):
        register_resource(["report"], {"export": "report_exported"})  # type: ignore[arg-type]
    with pytest.raises(AuditArgumentTypeError, match=r"event type \['report_exported'\] is "
                       r"not a name"):
        catalogue.register_resource("report", {"export": ["report_exported"]})  # type: ignore[dict-item]
    with pytest.raises(AuditArgumentTypeError, match=r"Catalogue\(\) takes a mapping"):
        Catalogue([("report", {"export": "report_exported"})])  # type: ignore[arg-type]


def test_a_resource_or_action_that_is_a_number_is_said_as_a_type_error() -> None:
    """A number hashes: it was "unknown audit event type '5.launch'", where
    docs/record.md says any resource or action that is no name is this error."""
    catalogue = Catalogue()
    with pytest.raises(AuditArgumentTypeError, match=r"takes two names \(str\).*got 5, "
                       r"'launch'"):
        catalogue.event_type(5, "launch")  # type: ignore[arg-type]
    with pytest.raises(AuditArgumentTypeError, match="got 'run', 5"):
        catalogue.event_type("run", 5)  # type: ignore[arg-type]
