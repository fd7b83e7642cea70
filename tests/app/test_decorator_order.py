"""``@audited`` written above a decorator it belongs below (a new-user review), refused
where it is written, at import time:

- above the route decorator, the framework registered the undecorated function, and
  every request to it went unrecorded, without a word;
- above a sign-in check that redirects (Starlette's ``@requires(..., redirect=...)``;
  Django's ``@login_required`` in tests/examples/test_django_asgi.py), its redirect of
  an anonymous request was recorded as the view's success: an action that never ran.

The right order still records."""

from __future__ import annotations

import gc
import logging
import weakref
from unittest.mock import MagicMock

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from flask import Blueprint, Flask
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser, requires
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route, Router

from audit_middleware import AuditConfigurationError, AuditMiddleware, WSGIAuditMiddleware, audited
from audit_middleware.event import AuditEvent


def test_fastapi_app_route_under_audited_is_refused() -> None:
    app = FastAPI()
    with pytest.raises(AuditConfigurationError, match=r"@audited\('bucket_deleted'\) is above "
                       r"the route decorator of .*delete: app \(FastAPI\).*line below app's"):
        @audited("bucket_deleted", target="bucket_id")
        @app.delete("/buckets/{bucket_id}")
        def delete(bucket_id: str) -> dict[str, str]:
            return {}


def test_fastapi_router_route_under_audited_is_refused() -> None:
    router = APIRouter(prefix="/buckets")
    with pytest.raises(AuditConfigurationError, match=r"router \(APIRouter\)"):
        @audited("bucket_deleted", target="bucket_id")
        @router.delete("/{bucket_id}")
        async def delete(bucket_id: str) -> dict[str, str]:
            return {}


def test_flask_app_and_blueprint_routes_under_audited_are_refused() -> None:
    app = Flask(__name__)
    with pytest.raises(AuditConfigurationError, match=r"app \(Flask\)"):
        @audited("bucket_deleted", target="bucket_id")
        @app.delete("/buckets/<bucket_id>")
        def delete(bucket_id: str) -> str:
            return ""

    blueprint = Blueprint("buckets", __name__, url_prefix="/buckets")
    with pytest.raises(AuditConfigurationError, match=r"blueprint \(Blueprint\)"):
        @audited("bucket_deleted", target="bucket_id")
        @blueprint.delete("/<bucket_id>")
        def delete_in_blueprint(bucket_id: str) -> str:
            return ""


def test_audited_under_the_route_decorator_records(events: list[AuditEvent]) -> None:
    router = APIRouter(prefix="/buckets")

    @router.delete("/{bucket_id}")
    @audited("bucket_deleted", target="bucket_id")
    def delete(bucket_id: str) -> dict[str, str]:
        return {}

    api = FastAPI()
    api.include_router(router)
    assert TestClient(AuditMiddleware(api)).delete("/buckets/b-1").status_code == 200

    flask_app = Flask(__name__)
    blueprint = Blueprint("buckets", __name__, url_prefix="/buckets")

    @blueprint.delete("/<bucket_id>")
    @audited("bucket_deleted", target="bucket_id")
    def delete_in_blueprint(bucket_id: str) -> str:
        return ""

    flask_app.register_blueprint(blueprint)
    flask_app.wsgi_app = WSGIAuditMiddleware(flask_app.wsgi_app)  # type: ignore[method-assign]
    assert flask_app.test_client().delete("/buckets/b-2").status_code == 200
    assert [(e.type, e.target) for e in events] == [("bucket_deleted", "b-1"),
                                                   ("bucket_deleted", "b-2")]


class Anonymous(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        return None


def test_audited_above_a_sign_in_check_that_redirects_is_refused() -> None:
    with pytest.raises(AuditConfigurationError, match=r"@audited\('bucket_deleted'\) is "
                       r"above Starlette's @requires\(..., redirect=...\) on .*delete: "
                       r".*redirect to the sign-in page.*Put @audited\(...\) below it"):
        @audited("bucket_deleted", target="bucket_id")
        @requires("authenticated", redirect="sign_in")
        async def delete(request: Request) -> JSONResponse:
            return JSONResponse({})


def test_audited_above_a_sign_in_check_that_raises_records_its_refusal(
        events: list[AuditEvent]) -> None:
    """Without ``redirect``, ``@requires`` raises a 403: a failure, not a success."""

    @audited("bucket_deleted", target="bucket_id", record_failure=True)
    @requires("authenticated")
    async def delete(request: Request) -> JSONResponse:
        return JSONResponse({})

    app = Starlette(routes=[Route("/buckets/{bucket_id}", delete, methods=["DELETE"])],
                    middleware=[Middleware(AuthenticationMiddleware, backend=Anonymous())])
    assert TestClient(AuditMiddleware(app)).delete("/buckets/b-3").status_code == 403
    assert [(e.target, e.status) for e in events] == [("b-3", "failed: HTTP 403")]


class UnbuiltRouter(Router):
    """A subclass whose routes are built later: asking for them before raises."""

    @property  # type: ignore[override]
    def routes(self) -> list[BaseRoute]:
        raise RuntimeError("routes are built at start-up")

    @routes.setter
    def routes(self, value: list[BaseRoute]) -> None:
        pass


class FlaskBuiltAfterItsViews(Flask):
    """An app subclass decorating a view before ``Flask.__init__`` ran."""

    def __init__(self) -> None:
        @audited("bucket_deleted")
        def helper() -> None:
            return None

        super().__init__(__name__)


class Hashless(type):
    """A metaclass with ``__eq__`` and so no ``__hash__``: its classes are unhashable."""

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = None  # type: ignore[assignment]


def test_what_the_order_check_cannot_read_does_not_stop_decoration() -> None:
    """A router whose routes raise, an app not initialised yet, an object of an
    unhashable class in the namespace: each crashed ``@audited`` with its own error
    (RuntimeError, AttributeError, TypeError), breaking the app's import over a check
    that could not be made."""
    router = UnbuiltRouter()
    odd = Hashless("Odd", (), {})()

    @audited("bucket_deleted")
    def delete() -> None:
        return None

    FlaskBuiltAfterItsViews()
    assert router is not None and odd is not None  # in the namespace @audited reads


def test_a_function_routed_undecorated_may_be_audited_for_another_route(
        events: list[AuditEvent], caplog: pytest.LogCaptureFixture) -> None:
    """The same handler on an internal router as it is, and audited on the public one:
    refused as "@audited above the route decorator" before, with no way to write it.
    Not written above a route decorator (the function was defined before), so allowed;
    the undecorated route is said once (its requests record nothing)."""
    internal = APIRouter()
    public = APIRouter()

    def delete(bucket_id: str) -> dict[str, str]:
        return {}

    internal.add_api_route("/internal/buckets/{bucket_id}", delete, methods=["DELETE"])
    with caplog.at_level(logging.WARNING, "audit_middleware"):
        public.add_api_route("/buckets/{bucket_id}",
                             audited("bucket_deleted", target="bucket_id")(delete),
                             methods=["DELETE"])
    api = FastAPI()
    api.include_router(internal)
    api.include_router(public)
    client = TestClient(AuditMiddleware(api))
    assert client.delete("/internal/buckets/b-4").status_code == 200
    assert client.delete("/buckets/b-5").status_code == 200
    assert [(e.type, e.target) for e in events] == [("bucket_deleted", "b-5")]
    assert caplog.text.count("already routes to") == 1
    assert "internal (APIRouter) already routes to" in caplog.text


def test_the_order_check_keeps_nothing_of_the_namespace_alive() -> None:
    """Each Mock has a class of its own, which holds the mock (its magic methods): the
    route check's cache of the classes it met kept up to 4096 of a test suite's mocks
    alive, with all they were called with."""

    def decorate_beside_a_mock() -> weakref.ref[MagicMock]:
        app = MagicMock()

        @audited("bucket_deleted")
        def delete() -> None:
            return None

        return weakref.ref(app)

    mock = decorate_beside_a_mock()
    gc.collect()
    assert mock() is None
