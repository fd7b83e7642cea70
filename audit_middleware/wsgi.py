"""``WSGIAuditMiddleware``: the same capture for WSGI apps (Flask, Django).

The context is set while the app callable runs, which is when views run in Flask and
Django; the response status is observed through ``start_response``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._types import Environ, StartResponse, WSGIApp
from .client_ip import ForwardedHeader, TrustedProxies
from .context import CaptureConfig, PrincipalResolver, RequestContext, Resolver, current


class WSGIAuditMiddleware:
    def __init__(
        self,
        app: WSGIApp,
        *,
        trusted_proxies: Iterable[str] = (),
        forwarded_header: ForwardedHeader = "x-forwarded-for",
        principal: PrincipalResolver | None = None,
        org: Resolver | None = None,
        workspace: Resolver | None = None,
    ) -> None:
        self.app = app
        self.config = CaptureConfig(
            trusted_proxies=TrustedProxies(trusted_proxies),
            forwarded_header=forwarded_header,
            principal=principal,
            org=org,
            workspace=workspace,
        )

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        ctx = RequestContext(self.config, environ=environ)

        def start_response_observing_status(status: str, headers: Any, *exc: Any) -> Any:
            try:
                ctx.status_code = int(status.split(" ", 1)[0])
            except ValueError:
                pass
            return start_response(status, headers, *exc)

        token = current.set(ctx)
        try:
            return self.app(environ, start_response_observing_status)
        finally:
            current.reset(token)
