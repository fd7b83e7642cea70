"""The WSGI application: Django's, inside ``WSGIAuditMiddleware``.

The audit middleware is outermost, so every Django middleware and view runs inside the
request's audit context (``set_principal`` in ``auth.py`` needs it).
"""

from __future__ import annotations

import os

from audit_middleware import WSGIAuditMiddleware, path_param
from audit_middleware._types import WSGIApp
from examples.audit_sink import configure_sink_from_environment

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")


def audited_wsgi(app: WSGIApp, *, trusted_proxies: list[str] | None = None
                 ) -> WSGIAuditMiddleware:
    """``app`` inside the audit middleware (trusted proxies: settings.AUDIT_TRUSTED_PROXIES)."""
    from django.conf import settings

    from .views import WORKSPACES

    return WSGIAuditMiddleware(
        app,
        trusted_proxies=(settings.AUDIT_TRUSTED_PROXIES if trusted_proxies is None
                         else trusted_proxies),
        workspace=path_param("workspace_id", lookup=WORKSPACES.get),
    )


def _application() -> WSGIAuditMiddleware:
    from django.core.wsgi import get_wsgi_application

    configure_sink_from_environment()
    return audited_wsgi(get_wsgi_application())


application = _application()
