"""Security headers on every response (pure ASGI: the response is observed by wrapping
``send``). The panel runs under a strict Content-Security-Policy: scripts, styles and
connections from this origin only, no inline script or style, no frames, no plugins."""

from __future__ import annotations

from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
              "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
              "form-action 'self'; frame-ancestors 'none'")

_HEADERS: Final = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    # Audit records and session answers must not linger in shared or browser caches.
    (b"cache-control", b"no-store"),
)
_HSTS: Final = (b"strict-transport-security", b"max-age=31536000")


def security_headers(tls: bool) -> tuple[tuple[bytes, bytes], ...]:
    """The headers every response carries (HSTS only over TLS)."""
    return _HEADERS + ((_HSTS,) if tls else ())


class SecurityHeaders:
    """Adds ``security_headers`` to every response of the app it wraps. Starlette answers
    an unhandled exception (a 500) outside every middleware, so that response gets them
    from its handler instead (``collector.api.app``)."""

    def __init__(self, app: ASGIApp, *, tls: bool = False) -> None:
        self.app = app
        self.headers = security_headers(tls)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in self.headers}
                message["headers"] = [(n, v) for n, v in message.get("headers", [])
                                      if n.lower() not in names] + list(self.headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)
