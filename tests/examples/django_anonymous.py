"""Every request an anonymous user's: the Django middleware the sign-in check tests put
in ``MIDDLEWARE`` (with ``django.contrib.auth`` installed, as its decorators need)."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from examples.django_app.auth import AnonymousUser

#: ``override_settings`` for a test of Django's sign-in checks.
SETTINGS = {"MIDDLEWARE": [f"{__name__}.anonymous"],
            "INSTALLED_APPS": ["django.contrib.auth", "django.contrib.contenttypes"]}


class Anonymous(AnonymousUser):
    def has_perms(self, perms: object) -> bool:  # asked by permission_required
        return False


def anonymous(get_response: Callable[[HttpRequest], HttpResponse]
              ) -> Callable[[HttpRequest], HttpResponse]:
    """A Django middleware: every request is an anonymous user's."""

    def middleware(request: HttpRequest) -> HttpResponse:
        request.user = Anonymous()  # type: ignore[assignment]
        return get_response(request)

    return middleware
