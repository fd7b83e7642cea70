"""Driving an ASGI app in-process: a prepared scope, trivial ``receive``/``send``, one
event loop. No network and no test client, so what is timed is the app and its
middleware, not a transport."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message

#: The socket peer of every benchmark request (no proxy is trusted: it is the client IP).
CLIENT = ("10.0.0.7", 51234)

_REQUEST_MESSAGE: Message = {"type": "http.request", "body": b"", "more_body": False}


def http_scope(method: str, path: str,
               headers: Sequence[tuple[bytes, bytes]] = ()) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("ascii"),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench.local"), (b"user-agent", b"bench/1"),
                    (b"accept", b"*/*"), *headers],
        "client": CLIENT,
        "server": ("bench.local", 80),
    }


async def _receive() -> Message:
    return _REQUEST_MESSAGE


async def _discard(message: Message) -> None:
    return None


class Driver:
    """Owns one event loop; runs single checked requests and timed batches."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.loop.close()

    def request(self, app: ASGIApp, scope: dict[str, Any]) -> tuple[int, bytes]:
        """One request; its status and body (to check a variant before timing it)."""
        messages: list[Message] = []

        async def send(message: Message) -> None:
            messages.append(message)

        self.loop.run_until_complete(app(dict(scope), _receive, send))
        status = next(m["status"] for m in messages if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        return status, body

    def batch_ns(self, app: ASGIApp, scope: dict[str, Any], n: int) -> int:
        """Nanoseconds for ``n`` sequential requests. Each request gets its own scope
        dict (a server builds one per request; the router writes into it), copied before
        the clock starts."""
        scopes = [dict(scope) for _ in range(n)]

        async def drive() -> None:
            for s in scopes:
                await app(s, _receive, _discard)

        coro = drive()
        start = time.perf_counter_ns()
        self.loop.run_until_complete(coro)
        return time.perf_counter_ns() - start
