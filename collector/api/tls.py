"""TLS on the query API's port: accepted and handshaken here, not by asyncio's server.

uvicorn hands its SSL context to ``loop.create_server`` without a handshake timeout
(its ``Config`` has no such setting), so asyncio's default of 60 s applied; and a
connection becomes uvicorn's (``server_state.connections``, what the connection guard
counts) only once its handshake is done. A client that connected and sent nothing, or
half a ClientHello, held a file for a minute, uncounted: a few hundred of them
exhausted the process's files (the ingest socket's and the store's too) and kept honest
clients from even being accepted. asyncio's server also accepts every connection
waiting in the backlog at once, before any code of ours could count them.

Here ``TlsListener`` accepts one connection at a time (``loop.sock_accept``, in
``collector.accepting``'s loop, which the ingest port shares), and each is
a ``Handshake`` until its TLS is up: counted (``pending``, which the guard adds to
uvicorn's connections), closed at ``handshake_timeout``, and, above the API's connection
limit, unfinished handshakes are closed to make room for new connections (silent ones
first: an honest client's handshake takes milliseconds, a flood's never ends). The handshake is
``loop.connect_accepted_socket(ssl=..., ssl_handshake_timeout=...)``, which then gives
the TLS connection to uvicorn's HTTP protocol, as ``create_server(ssl=...)`` did.
A client speaking plain HTTP to the port is answered ``400`` with the https:// address.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Final

from ..accepting import Handshake, accept_forever, least_worth
from ..handshakes import FailureLog, certificate_alerts, first_bytes, handshake_hint

log = logging.getLogger("collector.api")

#: What a failed handshake's OpenSSL reason usually means, for an API client.
_HINTS: Final = (
    (("UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW", "NO_PROTOCOLS_AVAILABLE"),
     "the client offers only TLS versions below 1.2"),
    *certificate_alerts("the CA (curl --cacert, api_tls_cert for the CLI, the system's "
                        "or the browser's trust store)"),
    (("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE"),
     "the client may not be speaking TLS to this HTTPS port"),
)
#: The first byte of a TLS record carrying a handshake message (the ClientHello).
_TLS_HANDSHAKE_RECORD: Final = 0x16


class TlsListener:
    """Accepts the API's connections and runs their TLS handshakes; the finished ones
    are uvicorn's (``make_protocol``)."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext,
                 make_protocol: Callable[[], asyncio.Protocol], *, timeout: float,
                 room: Callable[[], int], limit: Callable[[], int]) -> None:
        self.sock = sock  # bound, non-blocking
        self.context = context  # uvicorn's config.ssl: reloaded in place at SIGHUP
        self.make_protocol = make_protocol
        self.timeout = timeout
        self.room = room  # how many unfinished handshakes fit under the limit now
        self.limit = limit  # the API's connection limit, for the log
        #: Unfinished handshakes, oldest first (a dict keeps insertion order).
        self.pending: dict[Handshake, None] = {}
        self.counters: Counter[str] = Counter()
        self._failures = FailureLog()
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None
        self._closing = False

    def start(self, backlog: int) -> None:
        self.sock.listen(backlog)
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    async def close(self) -> None:
        """Stop accepting; end the unfinished handshakes (they have nothing to drain)."""
        self._closing = True
        if self._accepting is not None:
            self._accepting.cancel()
        for handshake in list(self.pending):
            self._end(handshake)
        self.pending.clear()
        tasks = [*self._tasks, *([self._accepting] if self._accepting else [])]
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    def stats(self) -> dict[str, int]:
        """The counters and the handshakes under way, for ``/metrics`` and ``stats``."""
        counts = dict(self.counters)  # one C-level copy: safe from a scraper's thread
        counts["tls_handshakes_pending"] = len(self.pending)
        return counts

    def evict(self, handshake: Handshake) -> bool:
        """Closes an unfinished handshake to make room; False if it was gone already."""
        if self.pending.pop(handshake, False) is False:
            return False
        self.counters["tls_handshakes_evicted"] += 1
        handshake.evicted = True
        self._end(handshake)
        return True

    def _end(self, handshake: Handshake) -> None:
        if handshake.task is not None:
            # A task that has started closes the socket (or asyncio does, once handed):
            # not here, while the loop may still watch it. One that has not never will.
            handshake.task.cancel()
        if not handshake.running:
            handshake.sock.close()

    async def _accept(self) -> None:
        await accept_forever(self.sock, self._admit, self._make_room, self.counters,
                             self._failures, log=log, what="query API",
                             making_room="closing the oldest unfinished TLS handshake")

    def _make_room(self) -> None:
        """Out of files: an unfinished handshake closed (``least_worth``)."""
        if self.pending:
            self.evict(least_worth(self.pending))

    def _admit(self, conn: socket.socket, peer: str) -> None:
        """A new connection: counted, unfinished ones closed (``least_worth``) while there are
        more than the limit leaves room for, and its handshake started."""
        loop = asyncio.get_running_loop()
        handshake = Handshake(conn, peer, loop.time())
        room = max(self.room(), 1)
        while self.pending and len(self.pending) >= room:
            self.evict(least_worth(self.pending))
        self.pending[handshake] = None
        task = handshake.task = loop.create_task(self._handshake(handshake))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handshake(self, handshake: Handshake) -> None:
        handshake.running = True
        loop = asyncio.get_running_loop()
        sock = handshake.sock
        deadline = handshake.started + self.timeout
        try:
            # The first byte tells a port probe (none: connect, close) and a plain-HTTP
            # client (a letter) from a TLS client (a handshake record); asyncio's
            # handshake ends all three with the same errors, or none.
            first = await first_bytes(sock, self.timeout)
            if not first:
                self.counters["tls_probes"] += 1
                log.debug("query API: %s closed the connection before its TLS hello",
                          handshake.peer)
                return
            if first[0] != _TLS_HANDSHAKE_RECORD and first.isalpha():
                await self._refuse_plain_http(handshake, deadline)
                return
            handshake.handed = True  # asyncio closes it from here, whatever happens
            await loop.connect_accepted_socket(
                self.make_protocol, sock, ssl=self.context,
                ssl_handshake_timeout=max(deadline - loop.time(), 0.001))
        except asyncio.CancelledError:
            if handshake.evicted and not self._closing:
                self._failed(handshake, "closed unfinished to make room for new "
                             f"connections (the API's limit is {self.limit()})", "")
                return
            if not self._closing:
                raise
        except (TimeoutError, OSError, EOFError) as exc:
            self._failed(handshake, str(exc) or type(exc).__name__,
                         handshake_hint(exc, _HINTS))
        except Exception:  # never a task's unretrieved exception: logged, connection closed
            self.counters["internal_errors"] += 1
            log.exception("query API: unexpected error in the TLS handshake with %s",
                          handshake.peer)
        finally:
            self.pending.pop(handshake, None)
            if not handshake.handed:
                sock.close()

    async def _refuse_plain_http(self, handshake: Handshake, deadline: float) -> None:
        """``400`` and the https:// address, to a client speaking plain HTTP here (a
        browser or curl given ``http://``): said to the client, not only in the log."""
        loop = asyncio.get_running_loop()
        sock = handshake.sock
        host, port = sock.getsockname()[:2]
        url = f"https://{f'[{host}]' if ':' in host else host}:{port}/"
        body = (f"This port speaks HTTPS only: open {url} (the same address with "
                "https://).\n").encode()
        self._failed(handshake, "plain HTTP on the HTTPS port",
                     "; answered 400 with the https:// address")
        try:
            async with asyncio.timeout_at(deadline):
                await loop.sock_sendall(sock, b"HTTP/1.1 400 Bad Request\r\n"
                                        b"Content-Type: text/plain; charset=utf-8\r\n"
                                        b"X-Content-Type-Options: nosniff\r\n"
                                        b"Connection: close\r\n"
                                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                sock.shutdown(socket.SHUT_WR)
                # Read (and drop) the request until the client closes: a close with its
                # bytes unread would be a reset, which can destroy the answer unread.
                while await loop.sock_recv(sock, 65536):
                    pass
        except (TimeoutError, OSError):
            pass

    def _failed(self, handshake: Handshake, what: str, hint: str) -> None:
        self.counters["tls_handshake_failures"] += 1
        n = self._failures.count(handshake.peer.rsplit(":", 1)[0])
        if n is not None:
            log.warning("query API: TLS handshake with %s failed: %s%s (%d from this host so "
                        "far)", handshake.peer, what, hint, n)

