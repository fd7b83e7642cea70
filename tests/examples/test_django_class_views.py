"""``@audited`` on a Django class-based view through ``method_decorator``, Django's own
way to decorate a view's method (a new-user review). ``method_decorator`` applies the
decorator again at every request, to a new ``partial`` of the method: ``@audited``
prepared itself anew each time (the handler's signature and type hints, ~100 us a
request) and forgot what it had said, so its "ran outside a request" error, meant once,
was logged at every request."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")

import django
import pytest
from starlette.testclient import TestClient

django.setup()

from django.contrib.auth.decorators import login_not_required, login_required, permission_required
from django.core.asgi import get_asgi_application
from django.http import HttpRequest, JsonResponse
from django.test import Client, override_settings
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache

from audit_middleware import AuditMiddleware, audited
from audit_middleware.catalogue import PIPELINE_DELETED
from tests.examples.django_anonymous import SETTINGS as SIGN_IN_CHECKS

DANA = {"Authorization": "Bearer demo-dana-token"}


@method_decorator(audited(PIPELINE_DELETED, target="pipeline_id"), name="delete")
class PipelineView(View):
    def delete(self, request: HttpRequest, pipeline_id: str) -> JsonResponse:
        return JsonResponse({"id": pipeline_id, "deleted": True})


@method_decorator([audited(PIPELINE_DELETED, target="pipeline_id"), never_cache], name="delete")
class UncachedPipelineView(View):
    """``@audited`` outermost of a list of decorators: it decorates never_cache's wrapper
    of the partial, not the partial itself."""

    def delete(self, request: HttpRequest, pipeline_id: str) -> JsonResponse:
        return JsonResponse({"id": pipeline_id, "deleted": True})


urlpatterns = [path("pipelines/<str:pipeline_id>", PipelineView.as_view()),
               path("uncached/<str:pipeline_id>", UncachedPipelineView.as_view())]


@override_settings(ROOT_URLCONF=__name__)
def test_method_decorator_records_each_request(audit) -> None:  # type: ignore[no-untyped-def]
    client = TestClient(AuditMiddleware(get_asgi_application()),
                        client=("198.51.100.45", 50000))
    for ident in ("p-1", "p-2"):
        assert client.delete(f"/pipelines/{ident}", headers=DANA).status_code == 200
    assert [(e.type, e.target, e.principal, e.client_ip) for e in audit.events] == [
        (PIPELINE_DELETED, ident, "usr_dana", "198.51.100.45") for ident in ("p-1", "p-2")]


@pytest.mark.parametrize("prefix", ["pipelines", "uncached"])
@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=[])
def test_method_decorator_prepares_once_and_says_once(
        audit, caplog: pytest.LogCaptureFixture, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """Without the audit middleware (nor the example's, which needs it): its error is
    said once, not at every request; also with ``@audited`` first of a list of
    decorators (prepared anew at each request before)."""
    client = Client()
    with caplog.at_level(logging.ERROR, "audit_middleware"):
        for ident in ("p-3", "p-4", "p-5"):
            assert client.delete(f"/{prefix}/{ident}").status_code == 200
    assert [e.target for e in audit.events] == ["p-3", "p-4", "p-5"]
    assert caplog.text.count("ran outside a request") == 1


@method_decorator(audited(PIPELINE_DELETED, target="pipeline_id"), name="dispatch")
@method_decorator(login_required, name="dispatch")
class SignedInPipelineView(View):
    def delete(self, request: HttpRequest, pipeline_id: str) -> JsonResponse:
        return JsonResponse({"id": pipeline_id, "deleted": True})


@method_decorator([audited(PIPELINE_DELETED, target="pipeline_id"), login_required],
                  name="dispatch")
class ListedSignedInPipelineView(View):
    def delete(self, request: HttpRequest, pipeline_id: str) -> JsonResponse:
        return JsonResponse({"id": pipeline_id, "deleted": True})


@pytest.mark.parametrize(("view", "said"), [
    (SignedInPipelineView, "@user_passes_test) through method_decorator"),
    (ListedSignedInPipelineView, "above Django's @login_required")])
@override_settings(ROOT_URLCONF=__name__, **SIGN_IN_CHECKS)
def test_method_decorator_audited_over_login_required_fails_before_the_view(
        audit, caplog: pytest.LogCaptureFixture, view: type[View], said: str,
) -> None:  # type: ignore[no-untyped-def]
    """Stacked on ``dispatch`` (or listed first in one ``method_decorator``),
    ``@audited`` wraps ``@login_required``: its redirect of an anonymous request (302)
    was recorded as the view's success. Seen at the first request (``method_decorator``
    decorates then), which fails before the view."""
    urlpatterns.append(path("signed-in/<str:pipeline_id>", view.as_view()))
    try:
        client = TestClient(AuditMiddleware(get_asgi_application()),
                            raise_server_exceptions=False)
        with caplog.at_level(logging.ERROR, "django.request"):
            response = client.delete("/signed-in/p-6", follow_redirects=False)
    finally:
        urlpatterns.pop()
    assert audit.events == []  # not a pipeline_deleted for the anonymous redirect
    assert response.status_code == 500
    assert said in caplog.text


@method_decorator(audited(PIPELINE_DELETED, target="pipeline_id", record_failure=True),
                  name="dispatch")
@method_decorator(permission_required("pipelines.delete_pipeline", raise_exception=True),
                  name="dispatch")
class PermittedPipelineView(View):
    def delete(self, request: HttpRequest, pipeline_id: str) -> JsonResponse:
        return JsonResponse({"id": pipeline_id, "deleted": True})


@method_decorator(audited(PIPELINE_DELETED, target="pipeline_id"), name="dispatch")
@method_decorator(login_not_required, name="dispatch")
class PublicPipelineView(View):
    def delete(self, request: HttpRequest, pipeline_id: str) -> JsonResponse:
        return JsonResponse({"id": pipeline_id, "deleted": True})


@override_settings(ROOT_URLCONF=__name__, **SIGN_IN_CHECKS)
def test_method_decorator_audited_over_checks_that_redirect_nothing_records(
        audit) -> None:  # type: ignore[no-untyped-def]
    """Over ``login_not_required`` (Django's mark of a public view, of the same module as
    ``login_required``) and ``permission_required(..., raise_exception=True)`` (a 403),
    each request failed with "above Django's @login_required" (a 500), though neither
    redirects: the view runs, or its refusal is recorded as a failure."""
    urlpatterns.extend([path("permitted/<str:pipeline_id>", PermittedPipelineView.as_view()),
                        path("public/<str:pipeline_id>", PublicPipelineView.as_view())])
    try:
        client = TestClient(AuditMiddleware(get_asgi_application()),
                            raise_server_exceptions=False)
        refused = client.delete("/permitted/p-7", follow_redirects=False)
        public = client.delete("/public/p-8", follow_redirects=False)
    finally:
        del urlpatterns[-2:]
    assert (refused.status_code, public.status_code) == (403, 200)
    assert [(e.target, e.status) for e in audit.events] == [("p-7", "failed: HTTP 403"),
                                                           ("p-8", "")]
