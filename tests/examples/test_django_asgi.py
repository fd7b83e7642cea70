"""The Django example under ASGI (``django.core.asgi``, as uvicorn or gunicorn's uvicorn
worker serves it) inside ``AuditMiddleware``: Django puts no ``path_params`` in the
scope (Starlette's router does), it passes the URL's parameters to the view as keyword
arguments, as under WSGI. A ``path_param`` resolver must see them there too: the
workspace of the record was empty under ASGI, and ``ws_lab``/``lab`` under WSGI."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")

import django
import pytest
from starlette.testclient import TestClient

django.setup()

from django.core.asgi import get_asgi_application

from audit_middleware import AuditMiddleware, path_param
from examples.django_app.views import WORKSPACES

DANA = {"Authorization": "Bearer demo-dana-token"}


def asgi_client() -> TestClient:
    app = AuditMiddleware(get_asgi_application(),
                          workspace=path_param("workspace_id", lookup=WORKSPACES.get))
    return TestClient(app, client=("198.51.100.44", 50000))


def test_a_path_param_resolver_sees_the_django_views_url_parameters(audit) -> None:  # type: ignore[no-untyped-def]
    client = asgi_client()
    created = client.post("/workspaces/ws_lab/pipelines", json={"repository": "r"},
                          headers=DANA)
    assert created.status_code == 201
    ident = created.json()["id"]
    assert client.delete(f"/workspaces/ws_lab/pipelines/{ident}", headers=DANA).status_code == 200
    assert [(e.type, e.target, e.principal, e.workspace_id, e.workspace_name, e.client_ip)
            for e in audit.events] == [
        ("pipeline_created", ident, "usr_dana", "ws_lab", "lab", "198.51.100.44"),
        ("pipeline_deleted", ident, "usr_dana", "ws_lab", "lab", "198.51.100.44")]


def test_an_event_before_the_view_is_resolved_again_with_the_views_parameters(audit) -> None:  # type: ignore[no-untyped-def]
    """An event of a Django middleware (before the view, no parameters known yet) keeps
    an empty workspace; the view's own event, after it, resolves with the parameters."""
    from audit_middleware import emit

    inner = get_asgi_application()

    async def early_event(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            emit("pipeline_action_created", "early")
        await inner(scope, receive, send)

    client = TestClient(AuditMiddleware(early_event,
                                        workspace=path_param("workspace_id",
                                                             lookup=WORKSPACES.get)))
    created = client.post("/workspaces/ws_lab/pipelines", json={"repository": "r"},
                          headers=DANA)
    assert created.status_code == 201
    assert [(e.type, e.workspace_id, e.workspace_name) for e in audit.events] == [
        ("pipeline_action_created", "", ""), ("pipeline_created", "ws_lab", "lab")]


def test_lifespan_is_answered_for_django_and_drains_the_sink_at_shutdown() -> None:
    """Django's ASGI handler refuses the lifespan scope (it raises at once), so uvicorn
    ran without one: nothing drained the sink at shutdown, and uvicorn then re-raises
    SIGTERM, so no exit handler did either (a stalled collector's unacknowledged
    events, 200 of 500, died with the process). AuditMiddleware answers it instead."""
    import asyncio

    from audit_middleware import MemorySink, configure
    from audit_middleware.testing import reset_configuration

    drained: list[float] = []

    class DrainedSink(MemorySink):
        def drain(self, timeout: float) -> bool:
            drained.append(timeout)
            return True

    configure(sink=DrainedSink())
    try:
        app = AuditMiddleware(get_asgi_application())
        incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[str] = []

        async def receive() -> dict[str, str]:
            return incoming.pop(0)

        async def send(message: dict[str, str]) -> None:
            sent.append(message["type"])
            if message["type"] == "lifespan.startup.complete":
                assert drained == []

        asyncio.run(app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
        assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        assert len(drained) == 1
    finally:
        reset_configuration()


def test_an_apps_own_lifespan_failure_still_propagates() -> None:
    """Only an app that raises before it receives anything is taken as one that does
    not speak lifespan: a failure in its own startup is the server's to see."""
    import asyncio

    import pytest

    async def failing(scope, receive, send):  # type: ignore[no-untyped-def]
        await receive()
        raise RuntimeError("startup failed")

    async def receive() -> dict[str, str]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, str]) -> None:
        raise AssertionError(message)

    with pytest.raises(RuntimeError, match="startup failed"):
        asyncio.run(AuditMiddleware(failing)({"type": "lifespan"}, receive, send))


def test_audited_above_login_required_is_refused() -> None:
    """Around ``@login_required``, ``@audited`` recorded its redirect of an anonymous
    request to the sign-in page (302) as the view's success: an action never done (a
    new-user review). Refused at import time; below it, only the view is recorded."""
    from django.contrib.auth.decorators import (
        login_required,
        permission_required,
        user_passes_test,
    )
    from django.http import HttpRequest, JsonResponse

    from audit_middleware import AuditConfigurationError, audited

    for check in (login_required, permission_required("pipelines.delete_pipeline"),
                  user_passes_test(lambda user: user.is_staff)):
        with pytest.raises(AuditConfigurationError, match="above Django's @login_required"):
            @audited("pipeline_deleted", target="pipeline_id")
            @check
            def delete(request: HttpRequest, pipeline_id: str) -> JsonResponse:
                return JsonResponse({})

    @login_required
    @audited("pipeline_deleted", target="pipeline_id")
    def delete_below(request: HttpRequest, pipeline_id: str) -> JsonResponse:
        return JsonResponse({})


def test_audited_above_a_permission_check_that_raises_is_allowed(audit) -> None:  # type: ignore[no-untyped-def]
    """``permission_required(..., raise_exception=True)`` refuses with PermissionDenied
    (a 403, recorded as a failure with ``record_failure=True``), never a redirect: it was
    refused as one, leaving no way to record a denied request with it."""
    from django.contrib.auth.decorators import permission_required
    from django.core.exceptions import PermissionDenied
    from django.http import HttpRequest, JsonResponse
    from django.test import RequestFactory

    from audit_middleware import audited
    from tests.examples.django_anonymous import Anonymous

    @audited("pipeline_deleted", target="pipeline_id", record_failure=True)
    @permission_required("pipelines.delete_pipeline", raise_exception=True)
    def delete(request: HttpRequest, pipeline_id: str) -> JsonResponse:
        return JsonResponse({})

    request = RequestFactory().delete("/pipelines/p-9")
    request.user = Anonymous()  # type: ignore[assignment]
    with pytest.raises(PermissionDenied):
        delete(request, pipeline_id="p-9")
    assert [(e.target, e.status) for e in audit.events] == [("p-9", "failed: HTTP 403")]
