"""Ending a response that cannot be completed once it has started (an export cut by
``query_timeout``, or any other error, after its first bytes): its status is sent
already, so the client can only be told by its connection, closed before the body's
end (a failed download, never a short file). ASGI has no message for that: an exception raised to the server closed
it, and was logged as an internal error with two tracebacks (Starlette's, uvicorn's).

So the query API's server puts into each request's scope the means to abort its
connection (``Abortable``, around the app it serves), and a response that cannot end
calls ``abort``, says why, and waits until ``disconnected``: once the server has seen
the connection go, it takes the end of the response without a word.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterable
from typing import Any, Final

from starlette.types import ASGIApp, Receive, Scope, Send

#: The scope's ``extensions`` key of the request's abort.
ABORT: Final = "collector.abort_connection"


class Abortable:
    """Gives each HTTP request of ``app`` its abort (``ABORT``); ``connections``: the
    server's connections (uvicorn's protocol objects)."""

    def __init__(self, app: ASGIApp, connections: Callable[[], Iterable[Any]]) -> None:
        self.app = app
        self._connections = connections

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            extensions = scope.get("extensions") or {}
            extensions[ABORT] = functools.partial(self._abort, scope)
            scope["extensions"] = extensions
        await self.app(scope, receive, send)

    def _abort(self, scope: Scope) -> bool:
        """Abort the connection whose request is ``scope``; False if there is none (gone
        already). Found by uvicorn's request cycle (``conn.cycle.scope``), as the
        connection guard reads it: if a release renames it, every cut is taken for a
        client gone (a debug line, and uvicorn's "ASGI callable returned without
        completing response"), and the export tests of ``tests/api/test_serve_api.py``
        fail."""
        for conn in list(self._connections()):
            cycle = getattr(conn, "cycle", None)
            if cycle is not None and getattr(cycle, "scope", None) is scope:
                # Aborted, not closed: a close first sends what is buffered, which a
                # client that stopped reading never takes, and over TLS waits for its
                # close_notify; nothing more of a failed download is of use to it.
                conn.transport.abort()
                return True
        return False


class Ending(enum.Enum):
    """What ``abort`` did."""
    #: Its connection is aborted: the client's download fails.
    ABORTED = "aborted"
    #: No connection to abort: the client left already (nobody is to be told).
    GONE = "gone"
    #: No connection at all (an app served in process): the caller raises, and whoever
    #: serves it ends the response.
    IN_PROCESS = "in process"


def abort(scope: Scope) -> Ending:
    """Abort this request's connection, at once: no await, so a response whose task is
    cancelled once the server sees the connection go still says why after this."""
    aborting = (scope.get("extensions") or {}).get(ABORT)
    if aborting is None:
        return Ending.IN_PROCESS
    # Not found: uvicorn drops a connection from its list once it is lost.
    return Ending.ABORTED if aborting() else Ending.GONE


async def disconnected(receive: Receive) -> None:
    """Return once the server has seen the connection go (``http.disconnect``): it then
    takes the end of the response without a word."""
    while (await receive())["type"] != "http.disconnect":
        pass  # the rest of a request body, unread
