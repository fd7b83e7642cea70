"""Authentication of the example, and the tiny middleware that names the audit principal.

``AuditPrincipalMiddleware`` is what a real project copies: whatever set
``request.user`` (``django.contrib.auth``, a token backend, SSO), the audit layer learns
the user's id from it. It must come after the authentication middleware.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.http import HttpRequest, HttpResponse, JsonResponse

from audit_middleware import set_principal

Handler = Callable[[HttpRequest], HttpResponse]


@dataclass(frozen=True)
class DemoUser:
    pk: str
    email: str
    password: str
    token: str
    is_authenticated: bool = True


class AnonymousUser:
    pk = None
    is_authenticated = False


USERS = {"dana@example.org": DemoUser("usr_dana", "dana@example.org", "dana-password",
                                      "demo-dana-token")}
_BY_TOKEN = {user.token: user for user in USERS.values()}
PUBLIC_PATHS = {"/sign-in"}


class BearerTokenMiddleware:
    """``Authorization: Bearer <token>`` -> ``request.user`` (401 on other paths)."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        user = _BY_TOKEN.get(token.strip()) if scheme.lower() == "bearer" else None
        request.user = user or AnonymousUser()  # type: ignore[assignment]
        if user is None and request.path not in PUBLIC_PATHS:
            return JsonResponse({"error": "send 'Authorization: Bearer <token>'"}, status=401)
        return self.get_response(request)


class AuditPrincipalMiddleware:
    """Tell the audit layer who acts in this request: ``set_principal(request.user.pk)``."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            set_principal(str(user.pk))
        return self.get_response(request)
