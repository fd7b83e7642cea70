"""Delivery to one collector: the connection, backoff after failures, pipelined sending,
and counting what the collector answered. Used by the sink's worker thread only.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import InvalidStateError
from typing import Final

from .._counter import Counter, worth_saying
from ..wire import ErrorCode, Hello, Result, WireError
from .connection import CollectorStalled, Connection
from .endpoint import Endpoint
from .pipeline import Chunk, Pipeline
from .receipts import Receipt
from .refusals import Remedies, refused_certificate

log = logging.getLogger("audit_middleware")

_MIN_BACKOFF: Final = 0.05
#: What the shipper calls bytes from the collector that are no frame (see _tls_hint).
_NOT_FRAMES: Final = frozenset({ErrorCode.BAD_FRAME, ErrorCode.FRAME_TOO_LARGE,
                                ErrorCode.UNEXPECTED_FRAME})
#: What to change here when the collector's certificate is refused (see _tls_hint).
_REMEDIES: Final = Remedies(
    server="the collector's",
    trust="pass tls_ca=<its certificate or its CA's, PEM> to CollectorSink",
    address="give CollectorSink's url one it holds")

OnDrop = Callable[[int, str], None]


class Sender:
    def __init__(
        self,
        endpoint: Endpoint,
        *,
        token: str | None,
        tls: ssl.SSLContext | None,
        connect_timeout: float,
        ack_timeout: float,
        backoff_max: float,
        depth: int,
        on_drop: OnDrop,
        when_down: str,
    ) -> None:
        self.endpoint = endpoint
        self._token = token
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._ack_timeout = ack_timeout
        self._backoff_max = backoff_max
        self._depth = depth
        self._on_drop = on_drop
        self._when_down = when_down  # what happens to batches meanwhile, for the log
        self.acknowledged = Counter()
        self.rejected = Counter()
        self.retried = Counter()
        #: True when the app's queue is filling up (set by the sink that owns the queue).
        self.pressure: Callable[[], bool] = lambda: False
        self.reset("")

    def reset(self, source: str) -> None:
        """A new process (after fork) or a new sink: no connection, no history."""
        self.source = source
        self._conn: Connection | None = None
        #: The descriptor of the connection being made (``after_fork``).
        self._opening: int | None = None
        self._pipe: Pipeline | None = None
        self._backoff = 0.0
        self._next_attempt = 0.0
        self._down_since: float | None = None
        #: Set when the sink closes: give up (and spool) rather than wait past it.
        self.deadline: float | None = None
        for counter in (self.acknowledged, self.rejected, self.retried):
            counter.reset()

    def after_fork(self) -> None:
        """In a forked child: let go of the parent's connection, and of the one its
        worker thread was making at the fork (not the sender's yet, so
        ``forget_connection`` did not see it: the child held that socket for its whole
        life, and the collector saw the parent's connection open after the parent
        closed it). Closed by number: the parent's objects for it belong to a thread
        the child does not have, and are never finalized there."""
        fd, self._opening = self._opening, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        self.forget_connection()

    def _track(self, fd: int | None) -> None:
        self._opening = fd

    def forget_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()  # never a shutdown(): in a child this is the parent's socket
            self._conn = None

    @property
    def flowing(self) -> bool:
        """A ``ship`` is under way and its connection has not failed: more chunks sent now
        join its pipeline."""
        pipe = self._pipe
        return pipe is not None and pipe.failed is None and not self.past_deadline

    @property
    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def may_try(self) -> bool:
        """Connected, or the backoff after the last failure has passed."""
        if self.past_deadline:
            return False
        return (self._conn is not None and self._conn.open) or (
            time.monotonic() >= self._next_attempt)

    def ship(self, chunks: Iterable[Chunk]) -> list[Chunk]:
        """Send ``chunks`` pipelined; returns those the collector did not take (in order)."""
        for attempt in (1, 2):
            try:
                conn = self._connected()
            except Exception as exc:  # noqa: BLE001 - any failure to connect keeps the batch
                # (OSError and WireError are the expected ones; anything else escaping
                # here made the queue count the whole batch failed: dropped, not spooled)
                self._failed(exc)
                return list(chunks)
            reused = conn.batches > 0
            pipe = self._pipe = Pipeline(conn, self._depth,
                                         lambda: self._timeout(self._ack_timeout),
                                         self._on_result, self._on_refused)
            try:
                for chunk in chunks:
                    pipe.send(chunk)
                pipe.finish()
            finally:
                self._pipe = None
            if pipe.failed is None:
                self._recovered()
                return []
            if (attempt == 1 and reused and pipe.acknowledged == 0 and self.deadline is None
                    and _closed_while_idle(pipe.failed)):
                chunks = pipe.unsent  # the collector may have closed an idle connection
                continue
            self._failed(pipe.failed)
            return pipe.unsent
        raise AssertionError("unreachable")

    def _connected(self) -> Connection:
        conn = self._conn
        if conn is None or not conn.open:
            conn = Connection(self.endpoint, Hello(self.source, token=self._token),
                              tls=self._tls, connect_timeout=self._timeout(self._connect_timeout),
                              pressure=self.pressure, deadline=lambda: self.deadline,
                              track=self._track)
            conn.connect()
            self._conn = conn
            self._opening = None  # forget_connection closes it from now on
        return conn

    def _timeout(self, default: float) -> float:
        if self.deadline is None:
            return default
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("shutting down: no time left to reach the collector")
        return min(default, left)

    # -- what the collector answered ------------------------------------------------------
    def _on_result(self, chunk: Chunk, result: Result) -> None:
        self.acknowledged.add(result.acknowledged)
        receipts = chunk.receipts
        for r in result.rejected:
            inside = 0 <= r.index < len(chunk)
            self._reject(chunk.source, chunk.seqs[r.index] if inside else r.seq, r.reason,
                         receipts[r.index] if receipts is not None and inside else None)
        resolve_all(receipts, None)  # the rejected ones are resolved already

    def _on_refused(self, chunk: Chunk, why: str) -> None:
        self._on_drop(len(chunk), why)
        resolve_all(chunk.receipts, why)

    def _reject(self, source: str, seq: int, reason: str,
                receipt: Receipt[str | None] | None) -> None:
        """``source``: the batch's, which a replayed one keeps (an earlier process's),
        not this process's: named as this one's, the event was looked for in vain."""
        self.rejected.add()
        resolve(receipt, f"rejected by the collector: {reason}")
        n = self.rejected.value
        if worth_saying(n):  # logged at 1, 2, 4, 8, ... rejections: visible, no flood
            log.error("audit: the collector rejected event #%d of %s: %s (%d rejected so far)",
                      seq, source, reason, n)

    # -- up and down ----------------------------------------------------------------------
    def _failed(self, exc: BaseException) -> None:
        self.forget_connection()
        self.retried.add()
        self._backoff = min(max(self._backoff * 2, _MIN_BACKOFF), self._backoff_max)
        self._next_attempt = time.monotonic() + self._backoff * random.uniform(0.5, 1.0)
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("audit: collector %s unavailable (%s%s); %s", self.endpoint, exc,
                        self._tls_hint(exc), self._when_down)
        elif (isinstance(exc, WireError) and not exc.retryable
              and self._backoff >= self._backoff_max):
            log.error("audit: collector %s refuses this client: %s", self.endpoint, exc)

    def _tls_hint(self, exc: BaseException) -> str:
        """What to change when the failure looks like a TLS setting, not an outage: the
        bare messages ('the collector closed the connection', 'CERTIFICATE_VERIFY_FAILED')
        sent operators looking at the network."""
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"; {refused_certificate(exc, _REMEDIES)}"
        if isinstance(exc, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(exc).upper():
            return ("; the collector does not answer in TLS on this port: check the port, "
                    "or leave tls off if it listens without TLS")
        # Not refused (something listens) but closed, or answered with bytes that are no
        # frame (a TLS alert read as one); an error frame the collector sent (a wrong
        # token) says what is wrong by itself.
        closed = (type(exc) in (ConnectionError, ConnectionResetError, BrokenPipeError)
                  or (isinstance(exc, WireError) and exc.code in _NOT_FRAMES))
        if self._tls is None and self.endpoint.scheme == "tcp" and closed:
            return ("; if the collector listens with TLS (tls_cert), pass tls=True (and "
                    "tls_ca) to CollectorSink")
        return ""

    def _recovered(self) -> None:
        self._backoff = 0.0
        if self._down_since is not None:
            log.warning("audit: collector %s reachable again after %.1fs", self.endpoint,
                        time.monotonic() - self._down_since)
            self._down_since = None


def _closed_while_idle(exc: BaseException) -> bool:
    """Whether a failure on a reused connection may only mean that the collector closed
    it while it was idle: the socket refused the send (a unix socket), or the reply was
    the collector's ``timeout`` error, the frame it sends when it closes an idle
    connection. Over TCP the send succeeds (the bytes go to a socket the collector has
    closed) and that frame, waiting since, is read as the reply: taken for an outage,
    the batch was spooled, counted as retried, backed off and a fail_closed request
    answered 503, after every pause longer than the collector's idle_timeout."""
    if isinstance(exc, WireError):
        return exc.code == ErrorCode.TIMEOUT
    return isinstance(exc, OSError) and not isinstance(exc, CollectorStalled)


def resolve(receipt: Receipt[str | None] | None, reason: str | None) -> None:
    if receipt is not None and not receipt.done():
        try:
            receipt.set_result(reason)
        except InvalidStateError:
            # Cancelled since done() said no: its request stopped waiting (under ASGI
            # the fail_closed deadline cancels the future chained to it) on another
            # thread. Raised here, it escaped the pipeline: the whole batch counted
            # failed (dropped) though acknowledged, the batches in flight behind it
            # neither settled nor spooled, its other receipts never resolved.
            pass


def resolve_all(receipts: Sequence[Receipt[str | None] | None] | None,
                reason: str | None) -> None:
    if receipts is not None:
        for receipt in receipts:
            resolve(receipt, reason)
