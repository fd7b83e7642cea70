"""DNS rebinding protection for an API that listens on loopback.

A page on any web site can make its own host name resolve to 127.0.0.1 a moment after it
loaded ("DNS rebinding"). The browser then sends that page's requests to the collector
on loopback, as the page's own origin: same-origin to the browser, so the page may read
the answers. Session cookies are not sent (they belong to ``localhost``), but whatever
needs none is exposed to every site the operator visits: ``/metrics`` by default, the
sign-in form as a token oracle. The request still names the attacker's host in its
``Host`` header, and that is what this checks: on loopback, only ``localhost`` (and
``*.localhost``), an IP address, or the host of ``api_public_url`` are answered.

An API listening on other addresses is reached by names this process cannot know, and is
not checked (it needs TLS and tokens anyway, see ``collector.options``).
"""

from __future__ import annotations

import ipaddress
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from .headers import security_headers

_BODY: Final = (b"this collector's API listens on loopback and answers only to Host "
                b"localhost or an IP address: open it as http://localhost:<port>/ or "
                b"http://127.0.0.1:<port>/, or behind a proxy set api_public_url to the "
                b"URL browsers open\n")


def host_name(host_header: str) -> str:
    """The name in a ``Host`` header, without its port and IPv6 brackets, lower case."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class LoopbackHostCheck:
    """Answers 421 to a request whose ``Host`` names anything but ``localhost``, an IP
    address or one of ``extra_names`` (the public URL's host)."""

    def __init__(self, app: ASGIApp, *, extra_names: frozenset[str] = frozenset(),
                 tls: bool = False) -> None:
        self.app = app
        self.extra_names = extra_names
        self.headers = security_headers(tls)

    def allowed(self, host_header: str | None) -> bool:
        if host_header is None:  # HTTP/1.0 without Host: no name a page could choose
            return True
        name = host_name(host_header).removesuffix(".")
        return (name == "localhost" or name.endswith(".localhost") or is_ip_literal(name)
                or name in self.extra_names)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            hosts = [v for k, v in scope.get("headers", ()) if k == b"host"]
            if len(hosts) > 1 or not self.allowed(
                    hosts[0].decode("latin-1") if hosts else None):
                await send({"type": "http.response.start", "status": 421, "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(_BODY)).encode()), *self.headers]})
                await send({"type": "http.response.body", "body": _BODY})
                return
        await self.app(scope, receive, send)
