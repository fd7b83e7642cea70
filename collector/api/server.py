"""The query API inside ``audit-collector serve``: uvicorn's ``Server`` on the serve
loop, next to the ingest server (one process, one command).

uvicorn's ``Server.serve()`` installs its own SIGINT/SIGTERM handlers; serve owns those
signals (it drains ingest on them), so this runs uvicorn's parts instead: ``startup``
on a socket bound here (so the bound port is known, also for port 0), ``main_loop`` as
a task, and ``shutdown`` when serve stops. Forwarded-for headers are ignored
(``proxy_headers=False``): the client IP recorded for a read is the socket peer.

Over TLS, accepting and the handshake are the API's own (``collector.api.tls``): uvicorn
left them to asyncio, with a 60 s timeout and out of the guard's sight. An unfinished
handshake is closed at ``handshake_timeout`` and counts against ``max_connections``; the
guard sees it. Without TLS, accepting is the API's own too (``_admit``, in
``collector.accepting``'s loop): asyncio's server accepted every connection waiting, and
a flood passed the limit by hundreds between two passes of the guard; now a connection
at the limit is let in only by closing one nearest its deadline at once. uvicorn's
``startup`` is therefore given no socket: the listener is made here, with uvicorn's HTTP
protocol for each connection (after its handshake, over TLS).

Here: the server's settings, its listener and its start. The rest are parts
``ApiServer`` inherits, each in a module of its own: the connection guard
(``collector.api.server_guard``), the connection limit (``collector.api.server_limit``)
and the stop (``collector.api.server_stop``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from pathlib import Path
from typing import Any, Final

import uvicorn
from starlette.applications import Starlette

from audit_middleware.shipper.endpoint import is_loopback

from ..accepting import accept_forever
from ..handshakes import FailureLog
from ..ingest import DRAIN_TIMEOUT
from .aborts import Abortable
from .app import create_app
from .context import ApiSettings
from .server_guard import _Guard, _Waiting
from .server_limit import _ConnectionLimit
from .server_stop import _Stop
from .tls import TlsListener

log = logging.getLogger("collector.api")

#: Seconds a new connection to a TLS API has to finish its handshake (the collector's
#: ``handshake_timeout``, which the ingest port's TLS and hello use too).
HANDSHAKE_TIMEOUT = 10.0

#: Bytes h11 holds of a request line and headers not yet complete (its own default,
#: said here): past it, 400 and closed. What it buffers, not the headers' size: headers
#: that arrive whole in one read (asyncio's, up to 256 KiB) are taken.
H11_MAX_HEADERS: Final = 16 * 1024


class ApiError(RuntimeError):
    """The API could not start; the message says what to change."""


class ApiServer(_Guard, _ConnectionLimit, _Stop):
    """The query API's server (see this module's doc); its connection guard, connection
    limit and stop are parts it inherits."""

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
