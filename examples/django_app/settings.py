"""Settings of the example: no database, no templates, no sessions, an API only."""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
ROOT_URLCONF = "examples.django_app.urls"
#: What ``runserver`` serves: Django's handler inside ``WSGIAuditMiddleware`` (left out,
#: it serves the bare handler, where ``set_principal`` fails every signed-in request).
WSGI_APPLICATION = "examples.django_app.wsgi.application"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
MIDDLEWARE = [
    "examples.django_app.auth.BearerTokenMiddleware",  # sets request.user
    "examples.django_app.auth.AuditPrincipalMiddleware",  # request.user -> the audit principal
]
USE_TZ = True
#: Proxies whose X-Forwarded-For the audit layer believes (none by default).
AUDIT_TRUSTED_PROXIES = [p for p in os.environ.get("AUDIT_TRUSTED_PROXIES", "").split(",") if p]
