"""``AuditMiddleware``: pure ASGI capture of the request context.

For each http request it sets the audit context (a contextvar) for the duration of the
app call and observes the response status by wrapping ``send``; it never reads or
buffers bodies. Other scope types (websocket, lifespan) pass straight through.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._types import ASGIApp, Message, Receive, Scope, Send
from .client_ip import ForwardedHeader, TrustedProxies
from .context import CaptureConfig, PrincipalResolver, RequestContext, Resolver, current


class AuditMiddleware:
    def __init__(
        self,
        app: ASGIApp,
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = RequestContext(self.config, scope=scope)

        async def send_observing_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx.status_code = message["status"]
            await send(message)

        token = current.set(ctx)
        try:
            await self.app(scope, receive, send_observing_status)
        finally:
            current.reset(token)
