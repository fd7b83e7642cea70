"""A client's session on ingest (a part of ``IngestServer``, which inherits it): its
hello (and token, on TCP), its frames within the frame budget and their deadlines, its
replies, and its close with an error frame.

Whatever a client sends, the answer is an error frame and a closed connection, never an
exception escaping a connection task. Slow and half-open clients run into the handshake,
idle and read deadlines; what the replies of one connection may hold is bounded
(``reply_queue``), and so is what the batch frames of all of them (and HTTP ingest's
bodies) may hold (``frame_budget``, ``max_inflight_bytes``): a frame that does not fit
waits unread, within its read timeout, and one holding room while others wait must
arrive at a minimum rate (``frame_rate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import ssl
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from audit_middleware.wire import (
    HEADER_SIZE,
    MAX_CONTROL_FRAME,
    ErrorCode,
    ErrorReply,
    FrameType,
    Hello,
    Welcome,
    WireError,
    parse_header,
)

from .frame_budget import FrameBudget, Lease
from .frame_rate import FrameTooSlow, read_payload
from .reply_queue import ReplyQueue

if TYPE_CHECKING:
    from .ingest import IngestSettings

#: Seconds a closed connection's client has to let go of it (take its error, answer
#: TLS's close_notify) before it is aborted: until then its file is out of the count
#: of connections (``max_connections``) and still held.
CLOSE_GRACE: Final = 1.0
#: Why a new connection is refused at once (``connections_refused``), each counted as
#: ``connections_refused_<code>`` too: at the limit, or the collector stopping.
REFUSALS: Final = (ErrorCode.TOO_MANY_CONNECTIONS, ErrorCode.SHUTTING_DOWN)

log = logging.getLogger("collector.ingest")


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


class _Sessions:
    """``IngestServer``'s clients' sessions (see this module's doc)."""

    #: Set, and said, in ``IngestServer.__init__``.
    settings: IngestSettings
    counters: Counter[str]
    budget: FrameBudget
    _closing: bool
    _conns: dict[asyncio.Task[None], _Conn]
    _token: bytes
    #: The connection limit and the making of room at it (``_Accepting``), and a
    #: batch's validation and storing (``_Batches``).
    max_connections: Callable[[], int]
    _evict_one_silent: Callable[[], None]
    _open_count: Callable[[], int]
    _batch: Callable[[bytes], tuple[asyncio.Future[bytes], int]]

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
                if budget is None:
                    return kind, await reader.readexactly(length), lease
                return kind, await read_payload(reader, length, budget), lease
        except BaseException as exc:
            lease.release()
            if isinstance(exc, FrameTooSlow):
                self.counters["inflight_too_slow"] += 1
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
            # Not wait_for (here and below): on Python 3.11 it drops a cancel (a stop's)
            # that comes as the drain ends.
            async with asyncio.timeout(self.settings.write_timeout):
                await writer.drain()
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
                async with asyncio.timeout(CLOSE_GRACE):
                    await writer.drain()
        if abort:
            # Not close() as well: a TLS transport closed after its abort drops its
            # protocol, and its next call raises AttributeError.
            writer.transport.abort()
        else:
            writer.close()
        with contextlib.suppress(Exception):  # the connection's own failure: closed
            try:
                async with asyncio.timeout(CLOSE_GRACE):
                    await writer.wait_closed()
            except TimeoutError:
                # A client that does not let go: over TLS, close() waits for its answer
                # to close_notify (asyncio: up to 30 s), on plain TCP for it to read what
                # is still buffered (without end). Its file was held all that time out
                # of the count of connections: a flood refused at max_connections held
                # a file each that long. What the kernel holds of the error still goes.
                writer.transport.abort()


def _peer_name(writer: asyncio.StreamWriter, tcp: bool) -> str:
    if not tcp:
        return "unix client"
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "tcp client"
