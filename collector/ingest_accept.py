"""Ingest's connections before their session (a part of ``IngestServer``, which
inherits it): a new connection on the unix socket or the TCP port, its TLS handshake,
the connection limit and the making of room.

The TCP port is accepted one connection at a time (``collector.accepting``), and over
TLS each connection is a ``Handshake`` until its TLS is up: counted against
``max_connections`` with the connections, one closed to make room for a new one (the
oldest that has sent nothing, ``accepting.least_worth``: an honest client's handshake
takes milliseconds, a flood's never ends), and one closed too when accept() finds the
process out of files. Uncounted, a flood of silent connections held a file each for
``handshake_timeout`` and exhausted the process's files: no honest shipper was
accepted, and the store could not open its own. At the limit, a connection that has not
said hello is closed to make room likewise (``_evict_one_silent``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from .accepting import Handshake, default_max_connections, least_worth
from .handshakes import FailureLog, certificate_alerts, first_bytes, handshake_hint

if TYPE_CHECKING:
    from .ingest import IngestSettings
    from .ingest_session import _Conn

#: What a failed handshake's OpenSSL reason usually means, said in the log.
#: What a failed handshake's OpenSSL reason usually means, said in the log.
_HANDSHAKE_HINTS: Final = (
    (("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"),
     "the client may be speaking plain TCP to this TLS port: give it tls=True"),
    (("UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW", "NO_PROTOCOLS_AVAILABLE"),
     "the client offers only TLS versions below 1.2"),
    *certificate_alerts("the CA (CollectorSink(tls_ca=...))"),
)

log = logging.getLogger("collector.ingest")


class _Accepting:
    """``IngestServer``'s connections until their session starts (see this module's
    doc)."""

    #: Set, and said, in ``IngestServer.__init__`` (``tls``: in ``start``).
    settings: IngestSettings
    counters: Counter[str]
    tls: ssl.SSLContext | None
    _closing: bool
    _conns: dict[asyncio.Task[None], _Conn]
    _handshakes: dict[Handshake, None]
    _handshake_failures: FailureLog
    _tasks: set[asyncio.Task[None]]
    #: A connection's session, once its streams are up (``_Sessions``).
    _client: Callable[..., Coroutine[Any, Any, None]]

    def _admit_unix(self, sock: socket.socket, peer: str) -> None:
        """A new connection on the unix socket (``accept_forever``): its task started."""
        self._started(asyncio.get_running_loop().create_task(self._plain(sock, tcp=False)))

    def _started(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)  # referenced until it ends
        task.add_done_callback(self._tasks.discard)

    def _admit(self, sock: socket.socket, peer: str) -> None:
        """A new TCP connection (``accept_forever``): its task started; over TLS, counted
        as a handshake, unfinished ones closed (``accepting.least_worth``) while there are more than
        ``max_connections`` leaves room for (at least this one: a handshake that ends
        with every slot taken is refused with ``too_many_connections``)."""
        loop = asyncio.get_running_loop()
        if self.tls is None:
            task = loop.create_task(self._plain(sock, tcp=True))
        else:
            room = max(self.max_connections() - self._open_count(), 1)
            while self._handshakes and len(self._handshakes) >= room:
                self._evict_handshake(least_worth(self._handshakes))
            handshake = Handshake(sock, peer, loop.time())
            self._handshakes[handshake] = None
            task = handshake.task = loop.create_task(self._tls_client(handshake))
        self._started(task)

    def _make_room(self) -> None:
        """Out of files: an unfinished TLS handshake closed (``accepting.least_worth``),
        or else a connection that has not said hello (``_evict_one_silent``)."""
        if self._handshakes:
            self._evict_handshake(least_worth(self._handshakes))
        else:
            self._evict_one_silent()

    def _evict_handshake(self, handshake: Handshake) -> None:
        if self._handshakes.pop(handshake, False) is False:
            return  # gone already
        self.counters["tls_handshakes_evicted"] += 1
        handshake.evicted = True
        self._end(handshake)

    def _end(self, handshake: Handshake) -> None:
        if handshake.task is not None:
            # A task that has started closes the socket (or asyncio does, once handed):
            # not here, while the loop may still watch it. One that has not never will.
            handshake.task.cancel()
        if not handshake.running:
            handshake.sock.close()

    async def _plain(self, sock: socket.socket, *, tcp: bool) -> None:
        try:
            reader, writer = await _streams(sock)
        except OSError:
            sock.close()  # reset before its transport was made: nothing to say to it
            return
        await self._client(reader, writer, tcp=tcp)

    async def _tls_client(self, handshake: Handshake) -> None:
        streams = await self._tls_handshake(handshake)
        if streams is not None:
            await self._client(*streams, tcp=True)

    async def _tls_handshake(self, handshake: Handshake
                             ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """TLS on an accepted connection; None (counted, logged, closed) if it fails.

        Here rather than in asyncio's server, which logs a failed handshake at debug
        level only (``ssl.SSLError`` is an ``OSError``): a client that does not trust the
        certificate, speaks plain TCP to the TLS port or an old TLS version was turned
        away without a word at the collector. Logged at each client host's 1st, 2nd,
        4th... failure: a misconfigured client shows, a scanner does not flood the log."""
        assert self.tls is not None
        handshake.running = True
        loop = asyncio.get_running_loop()
        timeout = self.settings.handshake_timeout
        try:
            if not await first_bytes(handshake.sock, timeout):
                # A TCP health check or port probe (connect, close; a load balancer's
                # may reset): nothing went wrong with TLS, and a load balancer checking
                # every few seconds is no client failing. Counted apart, at debug level.
                self.counters["tls_probes"] += 1
                log.debug("ingest: %s closed the connection before its TLS hello",
                          handshake.peer)
                return None
            handshake.handed = True  # asyncio closes it from here, whatever happens
            left = max(handshake.started + timeout - loop.time(), 0.001)
            return await _streams(handshake.sock, self.tls, left)
        except asyncio.CancelledError:
            if handshake.evicted and not self._closing:
                self._handshake_failed(handshake.peer, "closed unfinished to make room for "
                                       "new connections (max_connections is "
                                       f"{self.max_connections()})", "")
                return None
            if not self._closing:
                raise
            return None  # the collector stops (``shutdown``): nothing to say
        except (TimeoutError, OSError, EOFError) as exc:
            self._handshake_failed(handshake.peer, str(exc) or type(exc).__name__,
                                   handshake_hint(exc, _HANDSHAKE_HINTS))
            return None
        except Exception:  # never a task's unretrieved exception: logged, connection closed
            self.counters["internal_errors"] += 1
            log.exception("ingest: unexpected error in the TLS handshake with %s",
                          handshake.peer)
            return None
        finally:
            self._handshakes.pop(handshake, None)
            if not handshake.handed:
                handshake.sock.close()

    def _handshake_failed(self, peer: str, what: str, hint: str) -> None:
        self.counters["tls_handshake_failures"] += 1
        n = self._handshake_failures.count(peer.rsplit(":", 1)[0])
        if n is not None:
            log.warning("ingest: TLS handshake with %s failed: %s%s (%d from this host so "
                        "far)", peer, what, hint, n)

    def _evict_one_silent(self) -> None:
        """At the connection limit, close a connection that has not said hello yet
        (``accepting.least_worth``: one that has sent nothing first, the oldest):
        clients that connect and stay silent (or, on TCP, have no token to say it with)
        must not keep the slots from clients that speak at once; and a client in the
        middle of its hello is nearer done than a silent one."""
        silent = [c for c in self._conns.values() if not c.greeted and not c.evicted]
        if not silent:
            return
        conn = least_worth(silent)  # oldest first, as self._conns
        conn.evicted = True
        self.counters["connections_evicted"] += 1
        conn.task.cancel()

    def _open_count(self) -> int:
        return sum(1 for c in self._conns.values() if not c.evicted)

    def max_connections(self) -> int:
        """The connection limit in force: the setting, or the default as the file limit
        is now."""
        return self.settings.max_connections or default_max_connections()


async def _streams(sock: socket.socket, tls: ssl.SSLContext | None = None,
                   handshake_timeout: float | None = None
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream reader and writer on an accepted socket, as ``asyncio.start_server``
    gives them; over TLS once the handshake is done. On failure the socket is closed
    once a transport was made (always over TLS)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.connect_accepted_socket(
        lambda: protocol, sock, ssl=tls, ssl_handshake_timeout=handshake_timeout)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
