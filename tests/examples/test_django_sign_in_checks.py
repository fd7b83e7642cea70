"""README's "Common mistakes" about Django's sign-in checks on function views, through
real requests (``AuditMiddleware`` around ``get_asgi_application()``), every request an
anonymous user's: a check that raises 403 under ``@audited(record_failure=True)`` is
its recorded failure; a check that redirects (302) is no denial ``denied_event``
records, and, below it, ``@audited`` records nothing either."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")

import django
from starlette.testclient import TestClient

django.setup()

from django.contrib.auth.decorators import login_required, permission_required
from django.core.asgi import get_asgi_application
from django.http import HttpRequest, JsonResponse
from django.test import override_settings
from django.urls import path

from audit_middleware import AuditMiddleware, audited, register_resource
from audit_middleware.catalogue import PIPELINE_DELETED
from tests.examples.django_anonymous import SETTINGS as SIGN_IN_CHECKS


@audited(PIPELINE_DELETED, target="pipeline_id", record_failure=True)
@permission_required("pipelines.delete_pipeline", raise_exception=True)
def delete_if_permitted(request: HttpRequest, pipeline_id: str) -> JsonResponse:
    return JsonResponse({"id": pipeline_id, "deleted": True})


@login_required
@audited(PIPELINE_DELETED, target="pipeline_id")
def delete_if_signed_in(request: HttpRequest, pipeline_id: str) -> JsonResponse:
    return JsonResponse({"id": pipeline_id, "deleted": True})


@permission_required("pipelines.delete_pipeline", raise_exception=True)
def delete_unaudited(request: HttpRequest, pipeline_id: str) -> JsonResponse:
    return JsonResponse({"id": pipeline_id, "deleted": True})


urlpatterns = [path("permitted/<str:pipeline_id>", delete_if_permitted),
               path("signed-in/<str:pipeline_id>", delete_if_signed_in),
               path("unaudited/<str:pipeline_id>", delete_unaudited)]


def client() -> TestClient:
    register_resource("request", {"denied": "request_denied"})
    app = AuditMiddleware(get_asgi_application(), denied_event="request_denied")
    return TestClient(app, raise_server_exceptions=False)


@override_settings(ROOT_URLCONF=__name__, **SIGN_IN_CHECKS)
def test_a_check_that_raises_under_audited_is_its_recorded_failure(audit) -> None:  # type: ignore[no-untyped-def]
    """Recorded once: the failure stands for the denial (``denied_event`` adds none)."""
    assert client().delete("/permitted/p-1").status_code == 403
    assert [(e.type, e.target, e.status) for e in audit.events] == [
        (PIPELINE_DELETED, "p-1", "failed: HTTP 403")]


@override_settings(ROOT_URLCONF=__name__, **SIGN_IN_CHECKS)
def test_a_refusal_answered_with_a_redirect_is_not_recorded(audit) -> None:  # type: ignore[no-untyped-def]
    """Beside a 403 of the same app, which ``denied_event`` records."""
    redirected = client().delete("/signed-in/p-2", follow_redirects=False)
    assert redirected.status_code == 302
    assert redirected.headers["location"].startswith("/accounts/login/")
    assert client().delete("/unaudited/p-3").status_code == 403
    assert [(e.type, e.target, e.status) for e in audit.events] == [
        ("request_denied", "/unaudited/p-3", "HTTP 403 on DELETE")]
