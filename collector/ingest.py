"""The ingest server: framed batches in, acknowledgements out (``audit_middleware.wire``).

asyncio, one task per connection, on a unix socket (mode 0600) and optionally TCP
(token required; TLS unless bound to loopback). Each batch is validated event by event;
the good events go to the Store, whose future resolves after fsync and index commit
(group commit across every connection), and only then is the batch acknowledged.

Whatever a client sends, the answer is an error frame and a closed connection, never an
exception escaping a connection task. Slow and half-open clients run into the
handshake, idle and read deadlines; the number of connections is bounded, and so is
what the replies of one connection may hold (``reply_queue``) and what the batch frames
of all of them (and HTTP ingest's bodies) may hold (``frame_budget``,
``max_inflight_bytes``): a frame that does not fit waits unread, within its read timeout.

The TCP port is accepted here, one connection at a time (``collector.accepting``), and
over TLS each connection is a ``Handshake`` until its TLS is up: counted against
``max_connections`` with the connections, one closed to make room for a new one (the
oldest that has sent nothing, ``accepting.least_worth``: an honest client's handshake
takes milliseconds, a flood's never ends), and one closed too when accept() finds the
process out of files. Uncounted, a flood of silent connections held a file each for
``handshake_timeout`` and exhausted the process's files: no honest shipper was
accepted, and the store could not open its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from audit_middleware.shipper.endpoint import is_loopback
from audit_middleware.wire import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    MAX_BATCH_EVENTS,
    MAX_CONTROL_FRAME,
    ErrorCode,
    ErrorReply,
    FrameType,
    Hello,
    Rejection,
    Result,
    Welcome,
    WireError,
    decode_batch,
    parse_header,
)

from .accepting import (
    Handshake,
    accept_forever,
    bind_tcp,
    default_max_connections,
    least_worth,
)
from .batch_events import BatchEvents, LineReader
from .disk_calls import DiskCalls, DiskLate
from .frame_budget import DEFAULT_MAX_INFLIGHT_BYTES, FrameBudget, Lease
from .handshakes import FailureLog, certificate_alerts, first_bytes, handshake_hint
from .listen import IngestError, SocketFile, bind_unix, tls_context
from .own_records import own_source, own_source_reason
from .reply_queue import ReplyQueue, result_size
from .storage.records import Encoded
from .validation import DEFAULT_MAX_FIELD_LENGTH

__all__ = ["IngestError", "IngestServer", "IngestSettings"]

#: Seconds a shutdown waits for in-flight batches (and API requests) to finish.
DRAIN_TIMEOUT: Final = 10.0
#: Seconds a closed connection's client has to let go of it (take its error, answer
#: TLS's close_notify) before it is aborted: until then its file is out of the count
#: of connections (``max_connections``) and still held.
CLOSE_GRACE: Final = 1.0
#: Seconds a stop waits for the unix socket's file to be removed (a hung disk: left
#: there, and the next start replaces it, as any stale socket).
SOCKET_REMOVAL_WAIT: Final = 5.0
#: Why a new connection is refused at once (``connections_refused``), each counted as
#: ``connections_refused_<code>`` too: at the limit, or the collector stopping.
REFUSALS: Final = (ErrorCode.TOO_MANY_CONNECTIONS, ErrorCode.SHUTTING_DOWN)
#: What a failed handshake's OpenSSL reason usually means, said in the log.
_HANDSHAKE_HINTS: Final = (
    (("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"),
     "the client may be speaking plain TCP to this TLS port: give it tls=True"),
    (("UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW", "NO_PROTOCOLS_AVAILABLE"),
     "the client offers only TLS versions below 1.2"),
    *certificate_alerts("the CA (CollectorSink(tls_ca=...))"),
)

log = logging.getLogger("collector.ingest")

class StoreLike(Protocol):
    def submit_encoded(self, encoded: Encoded, source: str = "",
                       source_seqs: list[int] | None = None, numbered: int = 0) -> Any: ...


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


class _Conn:
    __slots__ = ("evicted", "greeted", "idle", "peer", "spoke", "task", "writer")

    def __init__(self, task: asyncio.Task[None], writer: asyncio.StreamWriter, peer: str):
        self.task = task
        self.writer = writer
        # Waiting for a frame to start: safe to cancel when draining. False from a
        # frame's first byte (``_read_frame``): a batch half received is finished,
        # stored and acknowledged within the drain, not cancelled for its client to resend.
        self.idle = True
        self.peer = peer
        self.greeted = False  # its hello was accepted (and its token, on TCP)
        self.evicted = False  # closed to make room for a newer connection
        # it has sent a byte: its hello may be on its way (``accepting.least_worth``)
        self.spoke = False


class IngestServer:
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
            # Accepted here, not by asyncio's server: see the module's docstring.
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
        """Stop accepting; let batches in flight get their reply; close the rest."""
        self._closing = True
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

    # -- connections ----------------------------------------------------------------------
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

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      *, tcp: bool) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = _peer_name(writer, tcp)
        self.counters["connections"] += 1
        limit = self.max_connections()
        if not self._closing and len(self._conns) >= limit:
            self._evict_one_silent()
        if self._closing or self._open_count() >= limit:
            await self._refuse(writer, limit)
            return
        conn = _Conn(task, writer, peer)
        self._conns[task] = conn
        error: ErrorReply | None = None
        try:
            await self._serve(conn, reader, writer, tcp)
        except WireError as exc:
            error = ErrorReply.from_exception(exc)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                error = ErrorReply(ErrorCode.BAD_FRAME, "connection closed in the middle of a "
                                   "frame")
        except (ConnectionError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            if conn.evicted:
                error = ErrorReply(ErrorCode.TOO_MANY_CONNECTIONS, "closed before its hello "
                                   "to make room for another client; reconnect and say hello")
            elif not self._closing:
                raise
            else:
                error = ErrorReply(ErrorCode.SHUTTING_DOWN, "the collector is shutting down")
        except Exception:
            log.exception("ingest: unexpected error serving %s; connection closed", conn.peer)
            self.counters["internal_errors"] += 1
        finally:
            del self._conns[task]
        if error is not None:
            self.counters[f"error_{error.code}"] += 1
            if error.code not in REFUSALS:
                log.warning("ingest: %s: %s [%s]", conn.peer, error.message, error.code)
        # Closed to make room: its file is what the room is for. Over TLS, close() would
        # keep it until the client answers close_notify (asyncio waits up to 30 s), and
        # a client that has not said hello in time is not one to wait for.
        await self._close(writer, error, abort=conn.evicted)

    async def _refuse(self, writer: asyncio.StreamWriter, limit: int) -> None:
        """A new connection refused at once, counted with its reason: a full collector
        and a stopping one call for different actions (``connections_refused`` alone
        did not tell them apart)."""
        if self._closing:
            error = ErrorReply(ErrorCode.SHUTTING_DOWN, "the collector is shutting down")
        else:
            error = ErrorReply(ErrorCode.TOO_MANY_CONNECTIONS, f"{limit} clients are "
                               "connected already; retry later")
        self.counters["connections_refused"] += 1
        self.counters[f"connections_refused_{error.code}"] += 1
        await self._close(writer, error)

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

    async def _serve(self, conn: _Conn, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, tcp: bool) -> None:
        s = self.settings
        # Not from the budget: a hello comes before the token, and a client without one
        # must not take what the apps' batches need (hellos are bounded apart, 64 KiB
        # each within handshake_timeout, at most max_connections of them).
        kind, payload, _ = await self._read_frame(reader, MAX_CONTROL_FRAME,
                                                  s.handshake_timeout, s.handshake_timeout,
                                                  conn)
        if kind is not FrameType.HELLO:
            raise WireError(ErrorCode.UNEXPECTED_FRAME, f"the first frame must be a HELLO, "
                            f"got {kind.name} (see docs/protocol.md)")
        hello = Hello.decode(payload)
        version = hello.choose_version()
        if tcp and not (hello.token and hmac.compare_digest(hello.token.encode(), self._token)):
            self.counters["unauthorized"] += 1
            raise WireError(ErrorCode.UNAUTHORIZED, "missing or wrong token: configure the "
                            "collector's shared token in the client (CollectorSink(token=...))")
        conn.peer = f"{conn.peer} ({hello.source})"
        conn.greeted = True
        conn.idle = True  # its hello read (``_read_frame`` cleared it): nothing to finish
        writer.write(Welcome(version, s.max_frame, s.idle_timeout).encode())
        await self._drain(writer)
        # Pipelined: the next batch is read and validated while earlier ones are being
        # stored; the queue's own task sends the replies, in batch order. No frame is
        # read while the client leaves too many reply bytes unread (reply_queue.py).
        replies = ReplyQueue(writer, functools.partial(self._drain, writer))
        try:
            while True:
                await replies.room()
                # Checked after room() (which returns at once when there is room): a
                # stop that came while the client was taking its replies passed this
                # connection by, not idle then, and no one would close it while it
                # waits for a next frame: the stop was held until its deadline.
                if self._closing or replies.task.done():
                    break
                conn.idle = True
                kind, payload, lease = await self._read_frame(
                    reader, s.max_frame, s.idle_timeout, s.read_timeout, conn, self.budget)
                try:
                    if kind is not FrameType.BATCH:
                        raise WireError(ErrorCode.UNEXPECTED_FRAME, f"expected a BATCH "
                                        f"frame, got {kind.name}")
                    reply, size = self._batch(payload)
                except BaseException:
                    lease.release()
                    raise
                del payload  # not held while the next frame waits for room
                # Its bytes stay taken until its events are stored: until then the store's
                # queue holds them (a hung disk must not let frames pile up unbounded).
                reply.add_done_callback(lease.release)
                await replies.put(reply, size)
        finally:
            conn.idle = False
            await replies.finish()  # the replies to what was accepted, then the sender ends

    async def _read_frame(self, reader: asyncio.StreamReader, max_frame: int,
                          first_byte_timeout: float, rest_timeout: float, conn: _Conn,
                          budget: FrameBudget | None = None
                          ) -> tuple[FrameType, bytes, Lease]:
        """A frame; its payload's bytes taken from ``budget`` (if given) before it is
        read, for the caller to give back (``Lease.release``)."""
        try:
            # Not wait_for: on Python 3.11 it drops a cancel (a stop closing idle
            # connections) that comes as the byte arrives, and the stop then waited out
            # the rest of the frame (up to its read timeout, or the drain's deadline).
            async with asyncio.timeout(first_byte_timeout):
                first = await reader.readexactly(1)
        except TimeoutError:
            raise WireError(ErrorCode.TIMEOUT, f"no frame within {first_byte_timeout:g}s; "
                            "reconnect when there is something to send") from None
        conn.spoke = True
        conn.idle = False  # its bytes are arriving: a stop lets it finish (``shutdown``)
        lease = Lease(None, 0)
        waiting = False
        try:
            async with asyncio.timeout(rest_timeout):
                kind, length = parse_header(first + await reader.readexactly(HEADER_SIZE - 1),
                                            max_frame)
                if budget is not None:
                    # Until it fits, its payload is left unread: the client's socket fills
                    # and TCP holds it back, within this frame's read deadline.
                    waiting = True
                    lease = await budget.take(length)
                    waiting = False
                return kind, await reader.readexactly(length), lease
        except BaseException as exc:
            lease.release()
            if not isinstance(exc, TimeoutError):
                raise
            if waiting:
                self.counters["inflight_wait_timeouts"] += 1
                raise WireError(ErrorCode.TIMEOUT, f"a frame waited more than "
                                f"{rest_timeout:g}s for room: the collector holds "
                                "max_inflight_bytes of other clients' frames; send it "
                                "again") from None
            raise WireError(ErrorCode.TIMEOUT, f"a frame took more than {rest_timeout:g}s to "
                            "arrive") from None

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(writer.drain(), self.settings.write_timeout)
        except TimeoutError:
            raise ConnectionError("client does not read its replies") from None

    async def _close(self, writer: asyncio.StreamWriter, error: ErrorReply | None, *,
                     abort: bool = False) -> None:
        """Sends ``error`` (if any) and closes; ``abort``: at once, the socket's file
        freed now whatever the client does (what the kernel holds of the error still
        goes out); else politely, and aborted if the client has not let go of it within
        ``CLOSE_GRACE``."""
        with contextlib.suppress(Exception):
            if error is not None and not writer.is_closing():
                writer.write(error.encode())
                await asyncio.wait_for(writer.drain(), CLOSE_GRACE)
        if abort:
            # Not close() as well: a TLS transport closed after its abort drops its
            # protocol, and its next call raises AttributeError.
            writer.transport.abort()
        else:
            writer.close()
        with contextlib.suppress(Exception):  # the connection's own failure: closed
            try:
                await asyncio.wait_for(writer.wait_closed(), CLOSE_GRACE)
            except TimeoutError:
                # A client that does not let go: over TLS, close() waits for its answer
                # to close_notify (asyncio: up to 30 s), on plain TCP for it to read what
                # is still buffered (without end). Its file was held all that time out
                # of the count of connections: a flood refused at max_connections held
                # a file each that long. What the kernel holds of the error still goes.
                writer.transport.abort()

    # -- batches --------------------------------------------------------------------------
    def _batch(self, payload: bytes) -> tuple[asyncio.Future[bytes], int]:
        """Validate a batch and hand its good events to the Store now (so they join the
        next group commit); the returned future gives the reply once they are stored,
        the number about how many bytes it will be."""
        batch = decode_batch(payload)
        if own_source(batch.source):
            raise WireError(ErrorCode.BAD_BATCH, own_source_reason(batch.source),
                            batch=batch.batch_id)
        if len(batch.lines) > MAX_BATCH_EVENTS:
            raise WireError(ErrorCode.BAD_BATCH, f"{len(batch.lines)} events in one batch, "
                            f"over the limit of {MAX_BATCH_EVENTS}: send smaller batches",
                            batch=batch.batch_id)
        events = self._lines.sort(batch.lines, batch.seqs)
        self.counters["batches"] += 1
        self.counters["events_received"] += len(batch.lines)
        if events.rejected:
            self._log_rejections(batch.source, events.rejected)
        if not events.seqs:
            self.counters["events_duplicate"] += len(events.repeated)
            done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            reply = Result(batch.batch_id, [], events.repeated, events.rejected).encode()
            done.set_result(reply)
            return done, len(reply)
        try:
            stored = asyncio.wrap_future(self._store.submit_encoded(
                events.encoded, batch.source, events.seqs, batch.numbered))
        except Exception as exc:  # noqa: BLE001 - any store failure: no ack, retryable
            stored = asyncio.get_running_loop().create_future()
            stored.set_exception(exc)
        size = result_size(len(events.seqs) + len(events.repeated), events.rejected)
        events.encoded = Encoded([], [], [])  # the store has them: not held here meanwhile
        return (asyncio.ensure_future(self._reply(batch.batch_id, stored, events)),
                size)

    async def _reply(self, batch_id: int, stored: Awaitable[Any],
                     events: BatchEvents) -> bytes:
        try:
            result = await stored
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any store failure: no ack, retryable
            self.counters["storage_errors"] += 1
            log.error("ingest: the store failed to write %d events: %s", len(events.seqs),
                      exc)
            return ErrorReply(ErrorCode.STORAGE_UNAVAILABLE, f"events not stored "
                              f"({exc or type(exc).__name__}); send the batch again later",
                              batch_id).encode()
        written = list(result.written)
        duplicates = list(result.duplicates) + events.repeated
        self.counters["events_written"] += len(written)
        self.counters["events_duplicate"] += len(duplicates)
        return Result(batch_id, written, duplicates, events.rejected).encode()

    def _log_rejections(self, source: str, rejected: list[Rejection]) -> None:
        before = self.counters["events_rejected"]
        self.counters["events_rejected"] += len(rejected)
        if before.bit_length() != self.counters["events_rejected"].bit_length():
            first = rejected[0]  # logged at 1, 2, 4, 8, ... rejections: visible, no flood
            log.warning("ingest: rejected %d event(s) from %s, e.g. #%d: %s (%d so far)",
                        len(rejected), source, first.seq, first.reason,
                        self.counters["events_rejected"])

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


def _peer_name(writer: asyncio.StreamWriter, tcp: bool) -> str:
    if not tcp:
        return "unix client"
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "tcp client"


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
