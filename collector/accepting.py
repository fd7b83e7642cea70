"""The ingest TCP port's listening sockets, and the accept loop of every listener (the
ingest unix socket and TCP port, the query API's port: ``collector.api.server``, and
its TLS one: ``collector.api.tls``), one connection at a time; and what the connection
limits share: the default limit, derived from the process's file limit, and which
connection to close first to make room.

asyncio's own server accepts every connection waiting in the backlog at once, before
the server's code could count them; and out of files it logs "socket.accept() out of
system resource" with a traceback for each connection waiting (its accept loop goes on
after the error, up to its backlog: 2048 for uvicorn's), then stops accepting for a
second, with no way for the server to close a connection that is worth less than the
one waiting (a flood's silent one, say). Here ``accept_forever`` calls ``admit`` for
each connection and, out of files, ``make_room``, then tries again shortly.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Final, Protocol, TypeVar

from .handshakes import FailureLog
from .listen import IngestError

#: accept() errors that mean the process (or system) is out of files or memory.
OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS,
                                     errno.ENOMEM})
#: Seconds before accept() is tried again after it failed (asyncio's server waits 1 s).
ACCEPT_RETRY: Final = 0.1
#: Connections the kernel may hold before they are accepted (asyncio's default).
BACKLOG: Final = 100


def default_max_connections() -> int:
    """A quarter of the process's file limit, between 16 and 1024: the ingest server's
    limit and the query API's unless set (a quarter each; the other half stays for the
    store). Read on each call: the limit can change under a running process (prlimit,
    systemd), and ``serve`` raises it at start-up."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(1024, soft // 4 if soft != resource.RLIM_INFINITY else 1024))


def bind_tcp(host: str, port: int) -> list[socket.socket]:
    """Listening, non-blocking sockets on every address of ``host`` (as
    ``asyncio.start_server`` binds them: an IPv6 one for IPv6 only)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise IngestError(f"cannot listen on {host}:{port}: {exc}") from None
    sockets: list[socket.socket] = []
    skipped: OSError | None = None
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:
                # A family the kernel lacks (IPv6 off: "" or "localhost" still give ::
                # or ::1): skipped, as asyncio's server skipped it.
                skipped = exc
                continue
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        fix = (": something else listens there (another collector?): stop it, or set tcp "
               "to a free HOST:PORT" if exc.errno == errno.EADDRINUSE else "")
        raise IngestError(f"cannot listen on {host}:{port}: {exc}{fix}") from None
    if not sockets:
        raise IngestError(f"cannot listen on {host}:{port}: {skipped}")
    return sockets


async def accept_forever(sock: socket.socket, admit: Callable[[socket.socket, str], None],
                         make_room: Callable[[], None], counters: Counter[str],
                         failures: FailureLog, *, log: logging.Logger, what: str,
                         making_room: str) -> None:
    """Accepts connections on ``sock`` until cancelled; ``admit(connection, peer)`` for
    each. A failed accept() is counted (``accept_errors``) and logged sparingly, as
    "``what``: cannot accept a connection", out of files with "; ``making_room``"; then
    ``make_room()`` is asked to close a connection. Never ends otherwise: an exception
    that ended it left the port accepting nothing while the collector ran."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, address = await loop.sock_accept(sock)
        except ConnectionAbortedError:
            pass  # the client reset before it was accepted: nothing to count or close
        except OSError as exc:
            counters["accept_errors"] += 1
            out_of_files = exc.errno in OUT_OF_RESOURCES
            n = failures.count("accept()")
            if n is not None:
                log.warning("%s: cannot accept a connection: %s (%d times so far)%s",
                            what, exc, n, f"; {making_room}" if out_of_files else "")
            if out_of_files:
                make_room()
            await asyncio.sleep(ACCEPT_RETRY)
            continue
        else:
            _admit(conn, address, admit, counters, failures, log=log, what=what)
        # A flood's connections are all ready at once: let their handshakes (and the rest
        # of the collector) run between two accepts; after one that failed too, or was
        # aborted by its client (sock_accept does not yield while connections wait).
        await asyncio.sleep(0)


def _admit(conn: socket.socket, address: object,
           admit: Callable[[socket.socket, str], None], counters: Counter[str],
           failures: FailureLog, *, log: logging.Logger, what: str) -> None:
    """``admit`` an accepted connection; one it fails on is closed, counted and logged
    (sparingly)."""
    try:
        admit(conn, _peer(address))
    except Exception:
        conn.close()
        counters["internal_errors"] += 1
        n = failures.count("admit")
        if n is not None:
            log.exception("%s: admitting a connection failed (%d times so far); "
                          "it was closed", what, n)


class Handshake:
    """An accepted TCP connection until its TLS is up (the ingest port's and the query
    API's alike)."""

    __slots__ = ("evicted", "handed", "peer", "running", "sock", "started", "task")

    def __init__(self, sock: socket.socket, peer: str, started: float) -> None:
        self.sock = sock
        self.peer = peer
        self.started = started
        self.task: asyncio.Task[None] | None = None
        self.evicted = False  # closed unfinished, to keep within the connection limit
        self.running = False  # its task has started (and closes the socket when it ends)
        # the socket is asyncio's transport's (the TLS handshake): the client has sent
        # its first byte, it is no silent connection (``least_worth``)
        self.handed = False

    @property
    def spoke(self) -> bool:
        """The client has sent a byte (``least_worth``)."""
        return self.handed


class Spoken(Protocol):
    """A connection that may be closed to make room: an unfinished TLS handshake
    (``Handshake``), or a connection that has not said its hello (ingest's)."""

    @property
    def spoke(self) -> bool: ...


_C = TypeVar("_C", bound=Spoken)


def least_worth(candidates: Iterable[_C]) -> _C:
    """The connection to close first to make room, of ``candidates`` (oldest first): the
    oldest whose client has sent nothing yet, or else the oldest. A client that sent its
    ClientHello (or began its hello) may be one round trip from done; closing it while
    newer silent connections stayed locked a client further away than a flood's next
    few connections out (the ingest port and the query API's alike)."""
    oldest = None
    for candidate in candidates:
        if not candidate.spoke:
            return candidate
        if oldest is None:
            oldest = candidate
    if oldest is None:
        raise ValueError("no connection to close")
    return oldest


def _peer(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return "a client"
