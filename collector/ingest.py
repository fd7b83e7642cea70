"""The ingest server: framed batches in, acknowledgements out (``audit_middleware.wire``).

asyncio, one task per connection, on a unix socket (mode 0600) and optionally TCP
(token required; TLS unless bound to loopback). Each batch is validated event by event;
the good events go to the Store, whose future resolves after fsync and index commit
(group commit across every connection), and only then is the batch acknowledged.

Here: its settings, its listeners' start and its stop (the drain), and its stats. The
rest are parts ``IngestServer`` inherits, each in a module of its own: a connection
until its session starts (``collector.ingest_accept``: the unix socket's and the TCP
port's connections, TLS handshakes, the connection limit and the making of room), a
client's session (``collector.ingest_session``: its hello, frames within the frame
budget and their deadlines, replies, its close with an error frame) and its batches
(``collector.ingest_batches``: validated, stored, acknowledged). Every listener is
accepted one connection at a time by ``collector.accepting``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from audit_middleware.shipper.endpoint import is_loopback
from audit_middleware.wire import DEFAULT_MAX_FRAME

from .accepting import Handshake, accept_forever, bind_tcp
from .batch_events import LineReader
from .disk_calls import DiskCalls, DiskLate
from .frame_budget import DEFAULT_MAX_INFLIGHT_BYTES, FrameBudget
from .handshakes import FailureLog
from .ingest_accept import _Accepting
from .ingest_batches import StoreLike, _Batches
from .ingest_session import REFUSALS, _Conn, _Sessions
from .listen import IngestError, SocketFile, bind_unix, tls_context
from .validation import DEFAULT_MAX_FIELD_LENGTH

__all__ = ["REFUSALS", "IngestError", "IngestServer", "IngestSettings"]

#: Seconds a shutdown waits for in-flight batches (and API requests) to finish.
DRAIN_TIMEOUT: Final = 10.0
#: Seconds a stop waits for the unix socket's file to be removed (a hung disk: left
#: there, and the next start replaces it, as any stale socket).
SOCKET_REMOVAL_WAIT: Final = 5.0

log = logging.getLogger("collector.ingest")


@dataclass(frozen=True)
class IngestSettings:
    socket_path: Path | None
    tcp_host: str | None = None
    tcp_port: int = 0
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    #: None: ``accepting.default_max_connections`` (from the file limit, read as it is
    #: needed: it can change under a running process), as the query API's limit.
    max_connections: int | None = None
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    read_timeout: float = 30.0
    write_timeout: float = 30.0
    max_field_length: int = DEFAULT_MAX_FIELD_LENGTH
    #: Bytes of batch frames being read or stored at once, over every connection and
    #: HTTP ingest request (``collector.frame_budget``); at least ``max_frame``.
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES


class IngestServer(_Accepting, _Sessions, _Batches):
    """The ingest server (see this module's doc); its accepting, clients' sessions and
    batches are parts it inherits."""

    def __init__(self, store: StoreLike, settings: IngestSettings) -> None:
        if settings.tcp_host is not None and not settings.token:
            raise IngestError("a TCP listener needs a shared token (--token-file or "
                              "AUDIT_TOKEN): clients must prove they may write audit records")
        if (settings.tcp_host is not None and settings.tls_cert is None
                and not is_loopback(settings.tcp_host)):
            raise IngestError(f"TCP on {settings.tcp_host} is not loopback: give it a TLS "
                              "certificate and key (--tls-cert, --tls-key)")
        if settings.max_frame > settings.max_inflight_bytes:
            raise IngestError(inflight_below_frame(settings.max_inflight_bytes,
                                                   settings.max_frame))
        self._store = store
        self.settings = settings
        self._lines = LineReader(settings.max_field_length)
        self._unix: socket.socket | None = None  # the unix socket's listener
        #: Its file, removed at the stop if it still is the one bound (``SocketFile``).
        self._socket_file: SocketFile | None = None
        self._conns: dict[asyncio.Task[None], _Conn] = {}
        self._closing = False
        self._shutting_down: asyncio.Future[None] | None = None  # (``shutdown``)
        self._token = settings.token.encode() if settings.token else b""
        self.counters: Counter[str] = Counter()
        self.addresses: list[str] = []
        self.tls: ssl.SSLContext | None = None  # the TCP listener's (reloaded at SIGHUP)
        self._handshake_failures = FailureLog()  # by client host (see _tls_handshake)
        #: TLS handshakes under way, oldest first (a dict keeps insertion order).
        self._handshakes: dict[Handshake, None] = {}
        self._listeners: list[socket.socket] = []  # the TCP port's
        self._accepting: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()  # the connections' (referenced)
        #: Shared with HTTP ingest (``collector.integrations``): one bound for both.
        self.budget = FrameBudget(settings.max_inflight_bytes)

    # -- listening ------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        if s.socket_path is not None:
            # Accepted here too, not by asyncio's server: out of files, its accept logged
            # a traceback per connection waiting (up to 100 each time, every second) and
            # made no room, so the apps' socket stayed shut while anything held the files.
            self._unix, self._socket_file = bind_unix(s.socket_path)
            self._accept(self._unix, self._admit_unix)
            self.addresses.append(f"unix:{s.socket_path}")
        if s.tcp_host is not None:
            tls = tls_context(s.tls_cert, s.tls_key)
            self.tls = tls
            # Accepted here, not by asyncio's server: see ``collector.ingest_accept``.
            self._listeners = bind_tcp(s.tcp_host, s.tcp_port)
            for sock in self._listeners:
                self._accept(sock, self._admit)
                host, port = sock.getsockname()[:2]
                self.addresses.append(f"{'tls' if tls else 'tcp'}:{host}:{port}")

    def _accept(self, sock: socket.socket,
                admit: Callable[[socket.socket, str], None]) -> None:
        self._accepting.append(asyncio.get_running_loop().create_task(accept_forever(
            sock, admit, self._make_room, self.counters, self._handshake_failures,
            log=log, what="ingest", making_room="closing a connection that has not "
            "said hello (or finished its TLS handshake), one that has sent nothing first")))

    def tcp_port(self) -> int | None:
        for sock in self._listeners:
            return int(sock.getsockname()[1])
        return None

    async def shutdown(self, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        """Stop accepting; let batches in flight get their reply; close the rest. Also
        after a ``start`` that failed half way (the unix socket bound, then the TCP port
        taken). Once: a later call (serve's clean-up on every way out, after its stop's
        drain) waits for the first one to end, rather than start again with connections
        that would not end. It must wait: a stop whose forwarder raised leaves the first
        call draining, and the store would be closed under batches still being written."""
        if self._shutting_down is None:
            self._closing = True  # now, as the call is made: no connection admitted after
            self._shutting_down = asyncio.ensure_future(self._shutdown(drain_timeout))
        # Shielded: a caller cancelled (a stop's gather) must not cut the drain short
        # for the call that waits after it.
        await asyncio.shield(self._shutting_down)

    async def _shutdown(self, drain_timeout: float) -> None:
        for task in self._accepting:
            task.cancel()
        if self._accepting:
            await asyncio.wait(self._accepting, timeout=1.0)
        for sock in [*self._listeners, *([self._unix] if self._unix else [])]:
            sock.close()
        # Handshakes under way have sent nothing to drain: ended now (left to asyncio.run,
        # each was cancelled there and logged an "Exception in callback" traceback).
        handshakes = [h.task for h in self._handshakes if h.task is not None]
        for handshake in list(self._handshakes):
            self._end(handshake)
        self._handshakes.clear()
        if handshakes:
            await asyncio.wait(handshakes, timeout=1.0)
        for conn in list(self._conns.values()):
            # Before its hello there is no batch to finish: a hello under way would only
            # be welcomed to be closed, so it is told shutting_down now instead.
            if conn.idle or not conn.greeted:
                conn.task.cancel()
        tasks = [c.task for c in self._conns.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=drain_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._socket_file is not None:
            await _remove_socket_file(self._socket_file)

    def stats(self) -> dict[str, int]:
        counts = dict(self.counters)
        counts["connections_open"] = len(self._conns)
        counts["max_connections"] = self.max_connections()
        counts.update(self.budget.stats())  # the socket's frames and HTTP ingest's bodies
        if self.tls is not None:
            # Not in connections_open (a TCP connection joins those once its TLS is
            # up), but under max_connections with them (``_admit``).
            counts["tls_handshakes_pending"] = len(self._handshakes)
        return counts


def inflight_below_frame(max_inflight_bytes: int, max_frame: int) -> str:
    """Why a budget smaller than one frame cannot work (a frame that never fits would
    wait until its deadline, every time it is sent again)."""
    return (f"max_inflight_bytes ({max_inflight_bytes}) is below max_frame ({max_frame}): "
            "a frame of max_frame bytes could never be read; raise max_inflight_bytes or "
            "lower max_frame")


async def _remove_socket_file(socket_file: SocketFile) -> None:
    """The unix socket's file removed, if it still is the one bound (``SocketFile``), on
    a thread of its own, waited for ``SOCKET_REMOVAL_WAIT`` at most. The default socket
    is in the data directory: on a hung disk, its unlink on the loop held the loop
    during the stop's drain (the API's requests in progress, the forwarder's stop), and
    the stop for good."""
    path = socket_file.path
    removal = DiskCalls(1, "audit-socket-removal")
    try:
        outcome = await removal.wait(
            removal.submit(socket_file.remove), SOCKET_REMOVAL_WAIT,
            f"the unix socket's file {path} was not removed within "
            f"{SOCKET_REMOVAL_WAIT:g} s (a hung disk?): left there, the next start "
            f"replaces it")
    except DiskLate as exc:
        log.warning("%s", exc)
    except OSError as exc:
        log.warning("could not remove the unix socket's file %s (%s): the next start "
                    "replaces it", path, exc)
    else:
        if outcome == "another's":
            log.info("the unix socket's file %s is another's now (a collector started "
                     "since?): left in place", path)
