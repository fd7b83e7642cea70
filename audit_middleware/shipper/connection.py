"""One blocking connection to the collector, used only by the shipper's worker thread.

Batches may be pipelined: :meth:`Connection.send` several, then :meth:`Connection.receive`
their replies in the same order. Any error closes the connection: replies still in flight
are then lost, and their batches are sent again (the collector deduplicates).

Sending never waits on a collector that waits on us: while a batch does not fit the
socket, replies that arrive are read (and kept for :meth:`receive`), since the collector
stops reading a connection whose replies are not being read (``collector.reply_queue``).
"""

from __future__ import annotations

import collections
import select
import socket
import ssl
import time
from collections.abc import Callable

from ..wire import (
    HEADER_SIZE,
    MAX_BATCH_ID,
    ErrorCode,
    ErrorReply,
    FrameType,
    Hello,
    Result,
    Welcome,
    WireError,
    encode_batch,
    parse_header,
)
from .endpoint import Endpoint

#: The largest reply frame a client accepts (a result lists the ids of a whole batch).
MAX_REPLY_FRAME = 64 * 1024 * 1024
#: How long a silent collector is waited for while the app's queue fills up, before the
#: connection is given up and batches go to the spool (a healthy one answers in
#: milliseconds; a stopped or hung one would be waited for until the queue overflowed).
PRESSURE_GRACE = 0.5
_POLL = 0.05
_SEND_SLICE = 16 * 1024  # the largest TLS record's payload


_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR
_WRITABLE = select.POLLOUT | select.POLLHUP | select.POLLERR


def _wait_for(sock: socket.socket, read: bool, write: bool,
              timeout: float) -> tuple[bool, bool]:
    """(readable, writable) within ``timeout`` seconds. poll(), not select(): select()
    refuses a file number above 1023, which a busy app server's sockets reach. A closed
    or failed socket counts as both, so that the read or send after says why."""
    poller = select.poll()
    poller.register(sock, (select.POLLIN if read else 0) | (select.POLLOUT if write else 0))
    events = 0
    for _, event in poller.poll(timeout * 1000):
        events |= event
    return bool(events & _READABLE), bool(events & _WRITABLE)


class CollectorStalled(TimeoutError):
    """The collector neither answers nor reads while the app's queue fills up."""


class Connection:
    def __init__(
        self,
        endpoint: Endpoint,
        hello: Hello,
        *,
        tls: ssl.SSLContext | None,
        connect_timeout: float,
        pressure: Callable[[], bool] = lambda: False,
        deadline: Callable[[], float | None] = lambda: None,
        track: Callable[[int | None], None] = lambda fd: None,
    ) -> None:
        self.endpoint = endpoint
        #: Told the socket's descriptor while the connection is being made, and None
        #: before it is closed (see ``Sender.after_fork``).
        self._track = track
        self._pressure = pressure  # True: the app's queue is filling up
        # When the sink must be done (closing at exit), or None: a wait for a reply that
        # began before it was set ends there too, so what is in flight is spooled or
        # counted before the process ends, not lost with it.
        self._deadline = deadline
        self._hello = hello
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._sock: socket.socket | None = None
        self._next_batch = 1
        self._unanswered = 0  # batches sent whose reply has not been read
        self._early: collections.deque[tuple[FrameType, bytes]] = collections.deque()
        self.welcome: Welcome | None = None
        self.batches = 0  # exchanged on this connection
        self.early_replies = 0  # read while a send waited (the collector not reading)

    @property
    def open(self) -> bool:
        return self._sock is not None

    @property
    def max_frame(self) -> int:
        assert self.welcome is not None
        return self.welcome.max_frame

    def connect(self) -> None:
        """Connect and shake hands; raises OSError or WireError (e.g. unauthorized)."""
        sock = self.endpoint.connect(self._connect_timeout, self._tls, self._track,
                                     deadline=self._deadline)
        self._sock = sock
        try:
            sock.sendall(self._hello.encode())
            kind, payload = self._read_frame(self._await_reply(self._connect_timeout))
            if kind is FrameType.ERROR:
                raise ErrorReply.decode(payload).exception()
            if kind is not FrameType.WELCOME:
                raise WireError(ErrorCode.UNEXPECTED_FRAME,
                                f"collector answered the hello with a {kind.name} frame")
            self.welcome = Welcome.decode(payload)
        except BaseException:
            self.close()
            raise

    def send(self, body: bytes, timeout: float) -> int:
        """Send one batch body; returns its batch id. Replies come back in send order
        (:meth:`receive`), so several batches may be in flight."""
        sock = self._sock
        if sock is None:
            raise ConnectionError("not connected to the collector")
        batch_id = self._next_batch
        self._next_batch = batch_id + 1 if batch_id < MAX_BATCH_ID else 1
        try:
            sock.settimeout(timeout)
            self._send_all(sock, encode_batch(batch_id, body), timeout)
        except BaseException:
            self.close()
            raise
        self.batches += 1
        self._unanswered += 1
        return batch_id

    def _send_all(self, sock: socket.socket, data: bytes, timeout: float) -> None:
        """``sendall``, except that a collector that stops reading (its socket buffer
        full) is given up on like a silent one, once the app's queue fills up."""
        view = memoryview(data)
        start = time.monotonic()
        # At most one TLS record at a time over TLS: an SSL socket's send() writes all it
        # is given before returning, so a large slice could block past the point where
        # the collector waits for us to read (a plain socket returns partial sends).
        piece = _SEND_SLICE if isinstance(sock, ssl.SSLSocket) else len(data)
        while view:
            readable, writable = _wait_for(
                sock, self._unanswered > len(self._early), True, _POLL)
            if readable and not writable:
                # The collector is answering earlier batches rather than reading this
                # one: take the reply, or neither side would ever move again.
                self._early.append(self._read_frame(timeout))
                self.early_replies += 1
                start = time.monotonic()
                continue
            if not writable:
                waited = time.monotonic() - start
                if waited >= timeout:
                    raise TimeoutError(f"the collector took nothing for {waited:.1f}s")
                if waited >= PRESSURE_GRACE and self._pressure():
                    raise CollectorStalled(f"the collector took nothing for {waited:.1f}s "
                                       "while the audit queue fills up: spooling meanwhile")
                continue
            view = view[sock.send(view[:piece]):]

    def _await_reply(self, timeout: float) -> float:
        """Wait until a reply starts to arrive; returns what is left of ``timeout`` for
        it to arrive whole (the reply is read within ``timeout`` in all). TimeoutError
        when nothing arrived within it: this wait returned at the timeout and the read
        after it waited a whole timeout again, so a silent collector held a batch for
        twice ``ack_timeout`` (and a hello for twice ``connect_timeout``). A collector
        silent for ``PRESSURE_GRACE`` seconds while the app's queue fills up is given up
        on early (CollectorStalled): waiting longer would overflow the queue and drop
        events the spool has room for."""
        sock = self._sock
        start = now = time.monotonic()
        if sock is None or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return timeout
        while not _wait_for(sock, True, False, max(min(_POLL, start + timeout - now), 0))[0]:
            now = time.monotonic()
            if now >= start + timeout:
                raise TimeoutError(f"no answer from the collector within {timeout:.1f}s")
            deadline = self._deadline()
            if deadline is not None and now >= deadline:
                raise TimeoutError("closing: no answer from the collector before the exit "
                                   "deadline (what is in flight is spooled or counted)")
            if now - start >= PRESSURE_GRACE and self._pressure():
                raise CollectorStalled(f"no answer from the collector for {now - start:.1f}s "
                                   "while the audit queue fills up: spooling meanwhile")
        return max(start + timeout - time.monotonic(), 0.0)

    def receive(self, batch_id: int, timeout: float) -> Result:
        """The reply to batch ``batch_id``, the oldest one in flight. A WireError with a
        retryable code (storage unavailable, shutting down) means: send it again later."""
        try:
            assert self._sock is not None, "not connected to the collector"
            if self._early:
                kind, payload = self._early.popleft()
            else:
                self._sock.settimeout(timeout)
                kind, payload = self._read_frame(self._await_reply(timeout))
            self._unanswered -= 1
            if kind is FrameType.RESULT:
                result = Result.decode(payload)
                if result.batch_id != batch_id:
                    raise WireError(ErrorCode.UNEXPECTED_FRAME, f"collector answered batch "
                                    f"{batch_id} with the result of batch {result.batch_id}")
                return result
            if kind is FrameType.ERROR:
                raise ErrorReply.decode(payload).exception()
            raise WireError(ErrorCode.UNEXPECTED_FRAME, f"collector answered a batch with a "
                            f"{kind.name} frame")
        except BaseException:
            # Whatever went wrong, the replies still in flight cannot be matched any more.
            self.close()
            raise

    def exchange(self, body: bytes, timeout: float) -> Result:
        return self.receive(self.send(body, timeout), timeout)

    def _read_frame(self, timeout: float) -> tuple[FrameType, bytes]:
        """One whole frame within ``timeout`` seconds. The socket's own timeout bounds
        each ``recv``: a collector trickling its reply (or stopped half way through a
        large one) held the sender for as long as it liked, past the exit deadline and
        while the app's queue overflowed with room left in the spool."""
        started = time.monotonic()
        until = started + timeout
        kind, length = parse_header(self._recv_exactly(HEADER_SIZE, started, until),
                                    MAX_REPLY_FRAME)
        return kind, self._recv_exactly(length, started, until)

    def _recv_exactly(self, n: int, started: float, until: float) -> bytes:
        sock = self._sock
        assert sock is not None
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            self._wait_readable(started, until)
            k = sock.recv_into(view[got:])
            if k == 0:
                raise ConnectionError("the collector closed the connection")
            got += k
        return bytes(buf)

    def _wait_readable(self, started: float, until: float) -> None:
        """Until the socket has bytes to read: TimeoutError past ``until`` or the exit
        deadline, CollectorStalled once a reply begun at ``started`` took PRESSURE_GRACE
        while the app's queue fills up."""
        sock = self._sock
        assert sock is not None
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        now = time.monotonic()
        while not _wait_for(sock, True, False, max(min(_POLL, until - now), 0))[0]:
            now = time.monotonic()
            if now >= until:
                raise TimeoutError(f"the collector's reply did not arrive whole within "
                                   f"{until - started:.1f}s")
            deadline = self._deadline()
            if deadline is not None and now >= deadline:
                raise TimeoutError("closing: the collector's reply did not arrive before "
                                   "the exit deadline (what is in flight is spooled or "
                                   "counted)")
            if now - started >= PRESSURE_GRACE and self._pressure():
                raise CollectorStalled(f"the collector's reply is still arriving after "
                                       f"{now - started:.1f}s while the audit queue fills "
                                       f"up: spooling meanwhile")

    def close(self) -> None:
        # close() never shuts the connection down: in a forked child, closing its copy of
        # the parent's descriptor leaves the parent's connection untouched.
        sock, self._sock = self._sock, None
        self._early.clear()
        self._unanswered = 0
        self._track(None)  # before the close: the number may be reused at once
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
