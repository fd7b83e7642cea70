"""The query API's connection guard (a part of ``ApiServer``, which inherits it).

uvicorn has no deadline for a request's headers: a client that sends half a request and
waits holds its socket forever, and enough of them exhaust the process's files, which
the ingest socket needs too. ``_guard_connections`` closes a connection that has waited
longer than ``HEADER_TIMEOUT`` without a request in progress, or a sign-in whose body
(read before any token is checked) has not all arrived within ``BODY_TIMEOUT``; and,
above ``max_connections``, those first, soonest deadline first. Any other request in
progress is never closed by the guard (an export may stream for minutes, an ingest
upload come over a slow link). A request answered before its body was read (a 401 to
an upload without a token) stays open while uvicorn reads the rest and drops it: its
connection waits, so the guard closes it after ``HEADER_TIMEOUT``. No ``Connection:
close`` to end it sooner: a close with the body unread resets the connection, and a
client that sends its whole body before reading (http.client, requests) then gets a
broken pipe instead of the 401 that says what to do (RFC 9112, 9.6); what is read
meanwhile is only what the client sends, never kept. The guard reads uvicorn's
per-connection request cycle (``response_complete``, ``more_body``):
``tests/api/test_connection_guard.py`` fails if a uvicorn release renames them.

Room made for a new connection at the limit closes in the same order
(``collector.api.server_limit``); the stop closes idle connections as the guard does
(``collector.api.server_stop``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from audit_middleware._counter import worth_saying

from .app import SIGN_IN_PATH

if TYPE_CHECKING:
    import uvicorn

    from .tls import TlsListener

log = logging.getLogger("collector.api")

#: Seconds a connection may wait without a request in progress (a half-sent request
#: included) before it is closed.
HEADER_TIMEOUT = 10.0
#: Seconds the body of a request read before any credential is checked (the sign-in,
#: a few bytes) may take to arrive, from when the guard first saw the request. Other
#: bodies have no deadline here: HTTP ingest checks its token before reading one, and a
#: client holding the token may upload a large batch over a slow link.
BODY_TIMEOUT = 10.0
BODY_BEFORE_AUTH: Final = frozenset({SIGN_IN_PATH})
GUARD_INTERVAL = 1.0

#: A connection, its request cycle and its state (``_guard_pass``): a key of the time
#: since which it waits so.
_Waiting = tuple[object, object, str]


class _Guard:
    """``ApiServer``'s connection guard (see this module's doc)."""

    #: Set, and said, in ``ApiServer.__init__`` (``tls``: in ``start``).
    server: uvicorn.Server
    tls: TlsListener | None
    handshake_timeout: float
    closed_by_guard: int
    _close_failures: int
    _denials_report: asyncio.Task[None] | None
    _waiting_since: dict[_Waiting, float]
    #: The limit and the connections counted against it (``_ConnectionLimit``), and the
    #: record of refused attempts held back (``_Stop``).
    _limit: Callable[[], int]
    _open_count: Callable[[], int]
    _report_unrecorded_denials: Callable[..., Coroutine[Any, Any, None]]

    async def _guard_connections(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            await asyncio.sleep(GUARD_INTERVAL)
            # Not awaited: on a hung disk the record's write never ends, and the guard
            # waiting for it kept no deadline and no connection limit from then on. One
            # at a time: the next pass starts another once this one is done.
            if self._denials_report is None or self._denials_report.done():
                self._denials_report = asyncio.create_task(
                    self._report_unrecorded_denials())
            try:
                self._waiting_since = self._guard_pass(loop.time(), self._waiting_since)
            except Exception:
                # The guard must outlive any one connection's surprise (asyncio's TLS
                # transport raises AttributeError once closed twice): its task ending
                # left every later deadline unkept, silently.
                failures += 1
                if worth_saying(failures):  # at 1, 2, 4, 8, ... failures
                    log.exception("query API: the connection guard's pass failed (%d "
                                  "times so far); it goes on at the next", failures)

    def _guard_pass(self, now: float, waiting_since: dict[_Waiting, float]
                    ) -> dict[_Waiting, float]:
        """One pass: the connections past their deadline, and above the limit those
        nearest it, closed. Returns since when each connection waits, for the next."""
        connections = list(self.server.server_state.connections)
        seen: dict[_Waiting, float] = {}
        waiting: list[tuple[float, Callable[[], bool], bool]] = []
        for conn in connections:
            key, limit = _waiting(conn)
            since = seen[key] = waiting_since.get(key, now)
            if limit is not None:
                waiting.append((since + limit, functools.partial(_close, conn), False))
        # Unfinished TLS handshakes count too, and are closed soonest deadline first
        # among the rest; only above the limit (their own timeout ends them otherwise).
        tls = self.tls
        handshakes = list(tls.pending) if tls is not None else []
        for handshake in handshakes:
            assert tls is not None
            waiting.append((handshake.started + self.handshake_timeout,
                            functools.partial(tls.evict, handshake), True))
        excess = self._open_count() - self._limit()
        for deadline, close, only_above_limit in sorted(waiting, key=lambda item: item[0]):
            if excess <= 0:
                if now < deadline:
                    break
                if only_above_limit:
                    continue
            try:
                closed = close()
            except Exception:
                # One connection's close failing at every pass (it stays listed) ended
                # each pass there: no connection past it in deadline order was closed.
                # Room it did not make is made by the next in line.
                self._close_failures += 1
                n = self._close_failures
                if worth_saying(n):  # at 1, 2, 4, 8, ... failures
                    log.exception("query API: the guard could not close a connection (%d "
                                  "times so far); it goes on with the others", n)
                continue
            if closed:
                self.closed_by_guard += 1
            excess -= 1
        return seen


def _waiting(conn: Any) -> tuple[_Waiting, float | None]:
    """What a connection waits for, as the key of the time since which it waits so, and
    how long it may (None: a request in progress, never closed by the guard)."""
    cycle = getattr(conn, "cycle", None)
    if cycle is None or cycle.response_complete:
        state, limit = "waiting", HEADER_TIMEOUT
    elif (getattr(cycle, "more_body", False)
          and getattr(cycle, "scope", {}).get("path") in BODY_BEFORE_AUTH):
        # A sign-in's body still arriving: it is read before any token is checked, so
        # a stalled one must not hold its socket forever either.
        state, limit = "sign-in body", BODY_TIMEOUT
    else:
        state, limit = "in progress", None  # the app's business, not ours
    # A new request, or a request in a new state: a new key, timed from when first seen.
    # The objects, not their id(): a connection closed to make room for a new one had its
    # id() given to the new one's, which took over its time (and went first).
    return (conn, cycle, state), limit


def _close(conn: Any) -> bool:
    """Closes a uvicorn connection; False if it was closing already. A TLS one with
    nothing left to send is aborted: ``close()`` sends close_notify and keeps the socket
    until the client answers it, up to asyncio's ``ssl_shutdown_timeout`` (30 s), so a
    client that stalled and then stopped reading held a counted socket that long after
    the guard gave up on it. One whose answer is still being sent (written in full by
    the app, so "waiting" here, but in the transport's buffers for a slow reader) is
    closed instead: aborting it cut the answer short; asyncio's close delivers it first,
    within those 30 s."""
    transport = getattr(conn, "transport", None)
    if transport is None:
        return False
    if transport.get_extra_info("sslcontext") is not None and not _unsent(transport):
        # Closing already counts too: uvicorn's own close of an idle keep-alive
        # (``timeout_keep_alive``) waits for that close_notify the same way.
        transport.abort()
        return True
    if transport.is_closing():
        return False
    transport.close()  # a plain TCP close is at once, its FIN cleaner than a reset
    return True


def _unsent(transport: Any) -> int:
    """Bytes a TLS transport holds that the client has not been sent yet: its own
    buffers and those of the TCP transport beneath it (asyncio's ``_SSLProtocolTransport``
    keeps that one private: ``tests/api/test_connection_guard.py`` fails if a Python
    release renames it). What the kernel holds is sent after an abort too."""
    tcp = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    return int(transport.get_write_buffer_size()) + (
        int(tcp.get_write_buffer_size()) if tcp is not None else 0)
