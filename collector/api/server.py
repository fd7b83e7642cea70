"""The query API inside ``audit-collector serve``: uvicorn's ``Server`` on the serve
loop, next to the ingest server (one process, one command).

uvicorn's ``Server.serve()`` installs its own SIGINT/SIGTERM handlers; serve owns those
signals (it drains ingest on them), so this runs uvicorn's parts instead: ``startup``
on a socket bound here (so the bound port is known, also for port 0), ``main_loop`` as
a task, and ``shutdown`` when serve stops. Forwarded-for headers are ignored
(``proxy_headers=False``): the client IP recorded for a read is the socket peer.

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

Over TLS, accepting and the handshake are the API's own (``collector.api.tls``): uvicorn
left them to asyncio, with a 60 s timeout and out of the guard's sight. An unfinished
handshake is closed at ``handshake_timeout`` and counts against ``max_connections``; the
guard sees it. Without TLS, accepting is the API's own too (``_admit``, in
``collector.accepting``'s loop): asyncio's server accepted every connection waiting, and
a flood passed the limit by hundreds between two passes of the guard; now a connection
at the limit is let in only by closing one nearest its deadline at once. uvicorn's
``startup`` is therefore given no socket: the listener is made here, with uvicorn's HTTP
protocol for each connection (after its handshake, over TLS).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import uvicorn
from starlette.applications import Starlette

from audit_middleware._counter import worth_saying
from audit_middleware.shipper.endpoint import is_loopback

from ..accepting import accept_forever, default_max_connections
from ..handshakes import FailureLog
from ..ingest import DRAIN_TIMEOUT
from .aborts import Abortable
from .app import SIGN_IN_PATH, create_app
from .context import Api, ApiSettings
from .refusal import refuse
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
#: Seconds a new connection to a TLS API has to finish its handshake (the collector's
#: ``handshake_timeout``, which the ingest port's TLS and hello use too).
HANDSHAKE_TIMEOUT = 10.0

#: Seconds a stop waits at least for the query threads, however little of
#: ``drain_timeout`` is left: idle ones end at once.
THREADS_END_WAIT: Final = 1.0

#: Seconds a stop waits at least for the refused attempts held back by the denials'
#: limit to be recorded, however little of ``drain_timeout`` is left: on a sound disk
#: the record takes milliseconds.
DENIALS_END_WAIT: Final = 1.0

#: Bytes h11 holds of a request line and headers not yet complete (its own default,
#: said here): past it, 400 and closed. What it buffers, not the headers' size: headers
#: that arrive whole in one read (asyncio's, up to 256 KiB) are taken.
H11_MAX_HEADERS: Final = 16 * 1024

#: A connection, its request cycle and its state (``_guard_pass``): a key of the time
#: since which it waits so.
_Waiting = tuple[object, object, str]


class ApiError(RuntimeError):
    """The API could not start; the message says what to change."""


class ApiServer:
    def __init__(self, app: Starlette, host: str, port: int, *,
                 tls_cert: Path | None = None, tls_key: Path | None = None,
                 drain_timeout: float = DRAIN_TIMEOUT,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.app = app
        self.host, self.port = host, port
        self.tls_files = (tls_cert, tls_key) if tls_cert and tls_key else None
        self.config = uvicorn.Config(
            # Each request can abort its connection (an export cut past its first bytes).
            Abortable(app, lambda: self.server.server_state.connections),
            proxy_headers=False, lifespan="off", log_config=None, log_level="warning",
            access_log=False, server_header=False,
            # h11, never uvicorn's "auto": that picks httptools when it is installed
            # (uvicorn[standard]), which keeps every header line a client sends until
            # the headers end: one client without a credential grew the collector by
            # gigabytes within the guard's 10 s. h11 holds at most H11_MAX_HEADERS of a
            # request line and headers still incomplete (past it: 400, connection closed).
            http="h11", h11_max_incomplete_event_size=H11_MAX_HEADERS,
            # No WebSocket: the API has no such route, and "auto" hands an upgrade
            # request to the websockets library's handshake code where it is installed:
            # code no request of ours needs, for any client to reach. Without it an
            # upgrade is a plain request (404).
            ws="none",
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            timeout_graceful_shutdown=max(int(drain_timeout), 1))
        self.drain_timeout = drain_timeout
        self.server = uvicorn.Server(self.config)
        #: None: a quarter of the file limit, read on each check (it can change under a
        #: running process: prlimit, systemd).
        self.max_connections: int | None = None
        self.closed_by_guard = 0
        #: The guard's record of refused attempts held back, while it is being written.
        self._denials_report: asyncio.Task[None] | None = None
        self._close_failures = 0  # closes that raised (logged sparingly)
        self.handshake_timeout = handshake_timeout
        #: Over TLS, the handshakes under way (``start``); None for plain HTTP.
        self.tls: TlsListener | None = None
        self._socket: socket.socket | None = None
        self._main: asyncio.Task[None] | None = None
        self._guard: asyncio.Task[None] | None = None
        #: Plain HTTP: the accept loop, the connections accepted whose protocol uvicorn
        #: has not yet been given (they hold a file, uncounted by uvicorn), and the
        #: listener's counters (over TLS, ``TlsListener`` has its own).
        self._accepting: asyncio.Task[None] | None = None
        self._joining = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters: Counter[str] = Counter()
        #: Since when each connection waits (``_guard_pass``), shared by the guard's
        #: passes and the room made for a new connection.
        self._waiting_since: dict[_Waiting, float] = {}
        self.url = ""

    async def start(self) -> str:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            raise ApiError(f"cannot listen on {self.host}:{self.port} ({exc}): set "
                           f"api_listen to a free HOST:PORT, or to '' for no API") from None
        sock.setblocking(False)
        self._socket = sock
        config = self.config
        try:
            if not config.loaded:
                config.load()  # reads the TLS files, if any
            self.server.lifespan = config.lifespan_class(config)
            # No socket for uvicorn to listen on (it would hand config.ssl to asyncio,
            # 60 s handshakes and all): this sets up the rest. The listener is made
            # below; uvicorn's shutdown closes it (``servers``, or ``sockets`` for TLS).
            await self.server.startup(sockets=[])
            if config.ssl is not None:
                self.tls = TlsListener(sock, config.ssl, self._http_protocol,
                                       timeout=self.handshake_timeout,
                                       room=self._room_for_handshakes, limit=self._limit)
                self.tls.start(config.backlog)
            else:
                # Accepted here, not by asyncio's server (``_admit``); the listener is
                # closed by uvicorn's shutdown (``sockets``).
                sock.listen(config.backlog)
                self._accepting = asyncio.create_task(accept_forever(
                    sock, self._admit, self._make_room, self.counters, FailureLog(),
                    log=log, what="query API", making_room="closing the connection "
                    "nearest its deadline"))
        except (OSError, ValueError) as exc:
            sock.close()
            raise ApiError(f"cannot start the query API: {exc}") from None
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if config.ssl else 'http'}://{shown}:{port}"
        self._main = asyncio.create_task(self.server.main_loop())
        self._guard = asyncio.create_task(self._guard_connections())
        return self.url

    def _http_protocol(self) -> asyncio.Protocol:
        """uvicorn's HTTP protocol for one connection, made as ``Server.startup`` makes
        it (``tests/api/test_connection_guard.py`` fails if a release changes that)."""
        protocol_class: Any = self.config.http_protocol_class
        protocol: asyncio.Protocol = protocol_class(
            config=self.config, server_state=self.server.server_state,
            app_state=self.server.lifespan.state)
        return protocol

    def stats(self) -> dict[str, int]:
        """The connection protection's figures, for ``/metrics`` and ``stats`` (called
        from other threads too: reads only). Over TLS, the listener's counters and its
        unfinished handshakes as well (``TlsListener.stats``)."""
        stats = {"connections_open": len(self.server.server_state.connections),
                 "max_connections": self._limit(),
                 "closed_by_guard": self.closed_by_guard,
                 **self.counters}  # one C-level copy: safe from a scraper's thread
        if self.tls is not None:
            stats.update(self.tls.stats())
        return stats

    def _limit(self) -> int:
        return self.max_connections or default_max_connections()

    def _room_for_handshakes(self) -> int:
        return self._limit() - len(self.server.server_state.connections)

    def _admit(self, sock: socket.socket, peer: str) -> None:
        """A new plain-HTTP connection (``accept_forever``), given to uvicorn's protocol;
        at the limit, room made for it first (``_room_for_one``), or it is refused when
        every connection has a request in progress: answered 503 with ``Retry-After``
        (``collector.api.refusal``, never waiting) and closed. asyncio's server accepted
        every connection waiting, and a flood of them passed the limit by hundreds between
        two passes of the guard: the process ran out of files (the apps' socket and the
        store's too), and asyncio logged a traceback for each connection it could not
        accept, up to 2048 a second."""
        if not self._room_for_one():
            refuse(sock)  # closed without a word, the client saw a reset and no reason
            self.counters["connections_refused"] += 1
            return
        self._joining += 1
        task = asyncio.get_running_loop().create_task(self._join(sock))
        self._tasks.add(task)  # referenced until it ends
        task.add_done_callback(self._tasks.discard)

    async def _join(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.connect_accepted_socket(self._http_protocol, sock)
        except OSError:
            sock.close()  # reset before its transport was made: nothing to say to it
            return
        finally:
            self._joining -= 1
        # Timed from now, not from the guard's next pass: until then a flood's new
        # connections all tied with it, and room was made by closing any one of them.
        key, _ = _waiting(protocol)
        self._waiting_since.setdefault(key, loop.time())

    def _room_for_one(self) -> bool:
        """Whether one more connection fits under the limit, once the connections nearest
        their deadline without a request in progress are closed (the guard's order)."""
        excess = self._open_count() + 1 - self._limit()
        return excess <= 0 or self._close_nearest(excess) <= 0

    def _make_room(self) -> None:
        """Out of files: the connection nearest its deadline without a request in
        progress closed."""
        self._close_nearest(1)

    def _close_nearest(self, excess: int) -> int:
        """Closes up to ``excess`` connections without a request in progress, nearest
        their deadline first; how many are left to close. One scan each, no pass of the
        guard (which sorts them all): this runs at each connection of a flood."""
        now = asyncio.get_running_loop().time()
        while excess > 0:
            nearest: tuple[float, Any] | None = None
            for conn in self.server.server_state.connections:
                key, limit = _waiting(conn)
                transport = getattr(conn, "transport", None)
                if limit is None or transport is None or transport.is_closing():
                    continue
                deadline = self._waiting_since.get(key, now) + limit
                if nearest is None or deadline < nearest[0]:
                    nearest = (deadline, conn)
            if nearest is None:
                break
            if _close(nearest[1]):
                self.closed_by_guard += 1
            excess -= 1
        return excess

    def _open_count(self) -> int:
        """Connections holding a file: uvicorn's, those on their way to it, and (over TLS)
        those in their handshake."""
        pending = len(self.tls.pending) if self.tls is not None else 0
        return len(self.server.server_state.connections) + self._joining + pending

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

    async def _report_unrecorded_denials(self, *, now: bool = False,
                                         timeout: float | None = None) -> None:
        """Refused attempts past the denials' budget are written once their window is
        over, whether or not another refusal comes (``collector.api.denials``); within
        ``timeout`` seconds (None: no bound), else left unrecorded, said in the log."""
        api = self.app.state.api
        report = getattr(api, "report_unrecorded", None)
        if report is None:
            return
        bound = asyncio.timeout(timeout)
        try:
            async with bound:
                await report(now=now)
        except Exception:  # the guard must go on; the count is kept for the next try
            if not bound.expired():
                log.exception("query API: refused attempts past the budget not recorded")
                return
            limiter = getattr(api, "denials", None)
            held = f"{limiter.held_back()} " if limiter is not None else ""
            log.warning("query API: %srefused attempts held back by the denials' rate "
                        "limit were not recorded within %.1f s (the data disk does not "
                        "answer?): the stop goes on without them", held, timeout)

    async def shutdown(self) -> None:
        """Requests in progress answered, within ``drain_timeout`` (then cancelled); the
        refused attempts held back recorded, and the query threads ended, each within
        what is left of it: a hung disk leaves those attempts unrecorded (logged) and a
        thread held in a read (a daemon thread), where waiting for them held the stop for
        good."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        if self._guard is not None:
            self._guard.cancel()
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.wait([self._accepting], timeout=1.0)
        if self.tls is not None:
            await self.tls.close()  # no more accepted, unfinished handshakes ended
        self.server.should_exit = True
        if self._main is not None:
            await self._main
        # uvicorn's shutdown closes an idle connection with close(), which over TLS waits
        # for the client's close_notify: a client that does not read its idle kept-alive
        # connection (a pool's) held the stop for all of drain_timeout. Nothing is left
        # to finish on it: closed here as the guard closes it (over TLS, aborted).
        for conn in list(self.server.server_state.connections):
            cycle = getattr(conn, "cycle", None)
            if cycle is None or cycle.response_complete:
                _close(conn)
        await self.server.shutdown(sockets=[self._socket] if self._socket else None)
        # Bounded: a hung fsync held this write, and the stop with it, for good. The
        # guard's own write, if one is under way, is waited for within the same bound.
        denials_wait = max(deadline - loop.time(), DENIALS_END_WAIT)
        if self._denials_report is not None and not self._denials_report.done():
            await asyncio.wait([self._denials_report], timeout=denials_wait)
            if self._denials_report.cancel():
                # Cancelled, it gives what it had not written back to the limiter, but
                # only once it runs: the stop's record below, taken before that, left
                # those attempts out, unrecorded without a word. Its wait is a future's,
                # which ends at once on a cancel (bounded all the same).
                await asyncio.wait([self._denials_report], timeout=DENIALS_END_WAIT)
        await self._report_unrecorded_denials(
            now=True, timeout=max(deadline - loop.time(), DENIALS_END_WAIT))
        api: Api = self.app.state.api
        # Not on the loop's default pool (a stop's other parts need its threads), and at
        # least a moment: idle threads end at once, on a loaded machine not instantly.
        await api.aclose(max(deadline - loop.time(), THREADS_END_WAIT))


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


async def start_api(store: Any, config: Any) -> ApiServer | None:
    """The API of a ``CollectorConfig``, listening; None when ``api_listen`` is empty."""
    address = config.api_address
    if address is None:
        return None
    app = create_app(ApiSettings(data_dir=config.data_dir,
                                 trace_url_template=config.trace_url_template,
                                 tls=config.api_tls_cert is not None,
                                 public_origin=config.api_public_url,
                                 query_timeout=config.query_timeout,
                                 loopback=is_loopback(address[0])), store)
    server = ApiServer(app, *address, tls_cert=config.api_tls_cert,
                       tls_key=config.api_tls_key, drain_timeout=config.drain_timeout,
                       handshake_timeout=config.handshake_timeout)
    try:
        await server.start()
    except ApiError:
        app.state.api.close()
        raise
    return server
