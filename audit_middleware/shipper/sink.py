"""``CollectorSink``: ship events to the collector, durably, without slowing requests.

The request thread only numbers the event and appends it to a bounded queue
(``BatchingQueue``). Its worker thread sends batches and waits for the collector's
acknowledgement; when the collector is unreachable it appends the batch to the local
spool and retries with backoff, and when the collector returns it replays the spool in
order before sending anything newer. Every event ends up acknowledged, rejected (named by
the collector with a reason), or dropped and counted: never silently lost.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, Final

from .._counter import Counter
from ..errors import AuditConfigurationError
from ..event import AuditEvent
from ..sinks.batching import BatchingQueue
from ..wire import ErrorCode, Hello, WireError, decode_batch_body, encode_batch_body
from .connection import Connection
from .endpoint import DEFAULT_URL, Endpoint, parse_url
from .receipts import Receipt, new_receipt
from .spool import Spool

log = logging.getLogger("audit_middleware")

Item = tuple[int, AuditEvent, "Receipt[str | None] | None"]
Receipts = Sequence["Receipt[str | None] | None"] | None

#: Frame bytes besides the event lines: frame header, batch id, the header line's keys.
_BATCH_OVERHEAD: Final = 5 + 4 + 64
#: Header-line bytes per event: its sequence number (up to 19 digits) and a comma.
_PER_EVENT_OVERHEAD: Final = 21
_ORPHAN_SCAN_INTERVAL: Final = 10.0
_REPLAY_SLICE: Final = 0.25  # seconds of replay per worker cycle, then newer events queue
_MIN_BACKOFF: Final = 0.05


def new_source_id() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:64] or "host"
    return f"{host}:{os.getpid()}:{os.urandom(4).hex()}"


class CollectorSink:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        tls: bool | ssl.SSLContext = False,
        tls_ca: str | os.PathLike[str] | None = None,
        spool_dir: str | os.PathLike[str] | None = "./audit-spool",
        spool_max_bytes: int = 256 * 1024 * 1024,
        max_queue: int = 10_000,
        batch_size: int = 2048,
        max_delay: float = 0.05,
        connect_timeout: float = 2.0,
        ack_timeout: float = 10.0,
        backoff_max: float = 5.0,
        fail_closed: bool = False,
        fail_closed_timeout: float = 2.0,
        exit_timeout: float = 5.0,
    ) -> None:
        self.endpoint: Endpoint = parse_url(url)
        if self.endpoint.scheme == "tcp":
            if not token:
                raise AuditConfigurationError(
                    f"{self.endpoint} needs token=...: the collector refuses TCP clients "
                    f"without its shared token")
            if not tls and not self.endpoint.loopback:
                raise AuditConfigurationError(
                    f"{self.endpoint} is not on loopback: pass tls=True (and tls_ca= for a "
                    f"private CA) so the token and the events are not sent in clear")
        for name, value in (("spool_max_bytes", spool_max_bytes), ("max_queue", max_queue),
                            ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise AuditConfigurationError(f"{name} must be a positive int, got {value!r}")
        for name, number in (("max_delay", max_delay), ("connect_timeout", connect_timeout),
                             ("ack_timeout", ack_timeout), ("backoff_max", backoff_max),
                             ("fail_closed_timeout", fail_closed_timeout)):
            if not isinstance(number, (int, float)) or number <= 0:
                raise AuditConfigurationError(f"{name} must be > 0 seconds, got {number!r}")
        self.token = token
        if isinstance(tls, ssl.SSLContext):
            self._tls: ssl.SSLContext | None = tls
        elif tls:
            self._tls = ssl.create_default_context(cafile=os.fspath(tls_ca) if tls_ca else None)
        else:
            self._tls = None
        self.fail_closed = fail_closed
        self.fail_closed_timeout = fail_closed_timeout
        self._connect_timeout = connect_timeout
        self._ack_timeout = ack_timeout
        self._backoff_max = backoff_max
        self._exit_timeout = exit_timeout
        self._spool = Spool(spool_dir, spool_max_bytes) if spool_dir is not None else None
        self._queue: BatchingQueue[Item] = BatchingQueue(
            self._export, max_queue=max_queue, max_batch=batch_size, max_delay=max_delay,
            name=f"audit-collector:{self.endpoint}", exit_timeout=exit_timeout,
            idle=self._idle,
        )
        self.acknowledged = Counter()
        self.spooled = Counter()
        self.replayed = Counter()
        self.dropped = Counter()  # besides the queue's own overflow count
        self.retried = Counter()
        self.rejected = Counter()
        self._closed = False
        self._init_process()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _call(ref, "_after_fork"))
        atexit.register(lambda: _call(ref, "close", exit_timeout))
        if self._spool is not None and self._spool.adopt_orphans():
            self._queue.start()  # replay what an earlier process left, without waiting

    def _init_process(self) -> None:
        self.source = new_source_id()
        self._seq = itertools.count(1)
        self._conn: Connection | None = None
        self._io_lock = threading.Lock()  # the connection and the spool: one user at a time
        self._backoff = 0.0
        self._next_attempt = 0.0
        self._down_since: float | None = None
        self._deadline: float | None = None  # set by close(): finish by then
        self._last_scan = time.monotonic()

    def _after_fork(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._spool is not None:
            self._spool.after_fork()
        for counter in (self.acknowledged, self.spooled, self.replayed, self.dropped,
                        self.retried, self.rejected):
            counter.reset()
        self._init_process()

    # -- request path ---------------------------------------------------------------------
    def submit(self, event: AuditEvent) -> None:
        seq = next(self._seq)  # atomic: numbers every event, even one dropped below
        if not self.fail_closed:
            self._queue.submit((seq, event, None))
            return
        receipt = new_receipt()
        if not self._queue.submit((seq, event, receipt)):
            _resolve(receipt, "the audit queue is full")
        elif receipt is not None:
            self._queue.wake()  # a request is waiting for this one: no batching delay

    # -- worker ---------------------------------------------------------------------------
    def _export(self, items: list[Item]) -> None:
        seqs = [item[0] for item in items]
        lines = [item[1].to_json_line() for item in items]
        receipts = [item[2] for item in items] if self.fail_closed else None
        with self._io_lock:
            done = 0
            if (self._spool is None or self._spool.empty) and self._may_try():
                done = self._deliver(self.source, seqs, lines, receipts)
            if done < len(lines):
                if receipts is not None:
                    reason = "the collector did not acknowledge it (spooled for replay)"
                    for receipt in receipts[done:]:
                        _resolve(receipt, reason)
                self._keep(seqs[done:], lines[done:])

    def _idle(self) -> bool:
        """Between drains: replay the spool; True when more is waiting."""
        spool = self._spool
        if spool is None:
            return False
        with self._io_lock:
            if spool.empty:
                now = time.monotonic()
                if now - self._last_scan < _ORPHAN_SCAN_INTERVAL:
                    return False
                self._last_scan = now
                if not spool.adopt_orphans():
                    return False
            return self._replay(_REPLAY_SLICE)

    def _replay(self, budget: float) -> bool:
        assert self._spool is not None
        stop = time.monotonic() + budget
        while time.monotonic() < stop:
            if not self._may_try():
                return False
            body = self._spool.peek()
            if body is None:
                log.info("audit: spool replayed, shipping to %s directly again", self.endpoint)
                return False
            try:
                source, seqs, bare = decode_batch_body(body)
            except WireError as exc:  # the crc matched, so only a bug can get here
                self._drop(body.count(b"\n") - 1, f"unreadable spool record ({exc})")
                self._spool.commit()
                continue
            lines = [line + b"\n" for line in bare]
            before = self.acknowledged.value
            if self._deliver(source, seqs, lines, None) < len(lines):
                return False  # sent again whole later: the collector dedupes
            self.replayed.add(self.acknowledged.value - before)
            self._spool.commit()
        return True

    def _keep(self, seqs: list[int], lines: list[bytes]) -> None:
        if self._spool is None:
            self._retry_in_memory(seqs, lines)
        elif self._spool.append(encode_batch_body(self.source, seqs, lines)):
            self.spooled.add(len(lines))
        else:
            self._drop(len(lines), f"the spool {self._spool.directory} is full "
                       f"({self._spool.max_bytes} bytes) or not writable")

    def _retry_in_memory(self, seqs: list[int], lines: list[bytes]) -> None:
        # No spool: hold this batch and retry; the queue fills meanwhile and counts drops.
        while lines:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self._drop(len(lines), "the collector was unreachable until shutdown")
                return
            wait = self._next_attempt - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 0.05))
                continue
            done = self._deliver(self.source, seqs, lines, None)
            seqs, lines = seqs[done:], lines[done:]

    # -- sending --------------------------------------------------------------------------
    def _may_try(self) -> bool:
        now = time.monotonic()
        if self._deadline is not None and now >= self._deadline:
            return False
        return (self._conn is not None and self._conn.open) or now >= self._next_attempt

    def _connected(self) -> Connection:
        conn = self._conn
        if conn is None or not conn.open:
            conn = Connection(self.endpoint, Hello(self.source, token=self.token),
                              tls=self._tls, connect_timeout=self._timeout(self._connect_timeout))
            conn.connect()
            self._conn = conn
        return conn

    def _timeout(self, default: float) -> float:
        if self._deadline is None:
            return default
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("shutting down: no time left to reach the collector")
        return min(default, left)

    def _deliver(self, source: str, seqs: list[int], lines: list[bytes],
                 receipts: Receipts) -> int:
        """Send in chunks that fit the collector's frame limit. Returns how many events,
        from the start, the collector took responsibility for (acknowledged or rejected)."""
        try:
            conn = self._connected()
        except (OSError, WireError) as exc:
            self._failed(exc)
            return 0
        budget = conn.max_frame - _BATCH_OVERHEAD - len(source)
        start, n = 0, len(lines)
        while start < n:
            end, size = start, 0
            while end < n and size + len(lines[end]) + _PER_EVENT_OVERHEAD <= budget:
                size += len(lines[end]) + _PER_EVENT_OVERHEAD
                end += 1
            if end == start:
                reason = (f"event of {len(lines[start])} bytes does not fit the collector's "
                          f"frame limit of {conn.max_frame} bytes")
                self._reject(seqs[start], reason, receipts[start] if receipts else None)
                start += 1
                continue
            if not self._send(source, seqs[start:end], lines[start:end],
                              receipts[start:end] if receipts else None):
                return start
            start = end
        return n

    def _send(self, source: str, seqs: list[int], lines: list[bytes], receipts: Receipts
              ) -> bool:
        body = encode_batch_body(source, seqs, lines)
        for attempt in (1, 2):
            try:
                conn = self._connected()
                reused = conn.batches > 0
                result = conn.exchange(body, self._timeout(self._ack_timeout))
            except WireError as exc:
                if exc.code == ErrorCode.BAD_BATCH:  # sending it again cannot help
                    self._drop(len(lines), f"the collector refused the batch: {exc}")
                    _resolve_all(receipts, f"refused by the collector: {exc}")
                    return True
                self._failed(exc)
                return False
            except OSError as exc:
                if attempt == 1 and reused and self._deadline is None:
                    continue  # the collector may have closed an idle connection: once more
                self._failed(exc)
                return False
            break
        rejected = {r.index: r.reason for r in result.rejected}
        if result.acknowledged + len(rejected) != len(lines):
            self._failed(WireError(ErrorCode.UNEXPECTED_FRAME, f"the collector answered a "
                                   f"batch of {len(lines)} events about "
                                   f"{result.acknowledged + len(rejected)}"))
            return False
        self._recovered()
        self.acknowledged.add(result.acknowledged)
        for index, reason in rejected.items():
            self._reject(seqs[index] if index < len(seqs) else 0, reason,
                         receipts[index] if receipts and index < len(receipts) else None)
        if receipts is not None:
            for receipt in receipts:
                _resolve(receipt, None)  # no-op for the rejected ones, resolved above
        return True

    def _failed(self, exc: BaseException) -> None:
        if self._conn is not None:
            self._conn.close()
        self.retried.add()
        self._backoff = min(max(self._backoff * 2, _MIN_BACKOFF), self._backoff_max)
        self._next_attempt = time.monotonic() + self._backoff * random.uniform(0.5, 1.0)
        fatal = isinstance(exc, WireError) and not exc.retryable
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("audit: collector %s unavailable (%s); %s", self.endpoint, exc,
                        "spooling and retrying" if self._spool is not None else "retrying")
        elif fatal and self._backoff >= self._backoff_max:
            log.error("audit: collector %s refuses this client: %s", self.endpoint, exc)

    def _recovered(self) -> None:
        self._backoff = 0.0
        if self._down_since is not None:
            log.warning("audit: collector %s reachable again after %.1fs", self.endpoint,
                        time.monotonic() - self._down_since)
            self._down_since = None

    def _reject(self, seq: int, reason: str, receipt: Receipt[str | None] | None) -> None:
        self.rejected.add()
        _resolve(receipt, f"rejected by the collector: {reason}")
        n = self.rejected.value
        if n & (n - 1) == 0:
            log.error("audit: the collector rejected event #%d of %s: %s (%d rejected so far)",
                      seq, self.source, reason, n)

    def _drop(self, n: int, why: str) -> None:
        before = self.dropped.value
        self.dropped.add(n)
        if before == 0 or (before.bit_length() != self.dropped.value.bit_length()):
            log.error("audit: %d events dropped: %s (%d dropped so far)", n, why,
                      self.dropped.value)

    # -- control --------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Every event submitted so far is acknowledged by the collector or spooled."""
        return self._queue.flush(timeout)

    def wait_for_delivery(self, timeout: float) -> bool:
        """Flush, then wait until the spool is replayed too: True when everything
        submitted so far was acknowledged (or rejected) by the collector."""
        deadline = time.monotonic() + timeout
        if not self._queue.flush(timeout):
            return False
        spool = self._spool
        while spool is not None and not spool.empty:
            if time.monotonic() >= deadline:
                return False
            self._queue.wake()
            time.sleep(0.01)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Send or spool what is queued, within ``timeout`` seconds; the spool stays on
        disk for the next start."""
        if self._closed:
            return
        self._closed = True
        limit = self._exit_timeout if timeout is None else timeout
        self._deadline = time.monotonic() + limit
        self._queue.close(limit)
        if self._io_lock.acquire(timeout=0.5):  # else the worker is stuck: leave it be
            try:
                if self._conn is not None:
                    self._conn.close()
                if self._spool is not None:
                    self._spool.close()
            finally:
                self._io_lock.release()

    def stats(self) -> dict[str, int]:
        counts = self._queue.counts()
        dropped = counts["dropped"] + counts["failed"] + self.dropped.value
        acknowledged = self.acknowledged.value
        return {
            "submitted": counts["submitted"],
            "emitted": counts["submitted"],
            "delivered": acknowledged,
            "acknowledged": acknowledged,
            "spooled": self.spooled.value,
            "replayed": self.replayed.value,
            "dropped": dropped,
            "retried": self.retried.value,
            "rejected": self.rejected.value,
            "queued": counts["queued"],
            "spool_bytes": self._spool.used_bytes if self._spool is not None else 0,
        }

    def __repr__(self) -> str:
        return f"CollectorSink({str(self.endpoint)!r}, source={self.source!r})"


def _resolve(receipt: Receipt[str | None] | None, reason: str | None) -> None:
    if receipt is not None and not receipt.done():
        receipt.set_result(reason)


def _resolve_all(receipts: Receipts, reason: str | None) -> None:
    if receipts is not None:
        for receipt in receipts:
            _resolve(receipt, reason)


def _call(ref: weakref.ref[Any], method: str, *args: object) -> None:
    obj = ref()
    if obj is not None:
        getattr(obj, method)(*args)
