"""``CollectorSink``: ship events to the collector, durably, without slowing requests.

The request thread only numbers the event and appends it to a bounded queue
(``BatchingQueue``). Its worker thread sends batches and waits for the collector's
acknowledgement; when the collector is unreachable it appends the batch to the local
spool and retries with backoff, and when the collector returns it replays the spool in
order before sending anything newer (``sink_spooling``: what is kept, dropped and replayed).
Every event ends up acknowledged, rejected (named by the collector with a reason), or
dropped and counted: never silently lost.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from .._counter import Counter
from .._options import check_flags, check_seconds, check_sizes
from ..errors import AuditConfigurationError
from ..event import AuditEvent, PendingEvent, json_line
from ..sinks.batching import BatchingQueue, call_if_alive, close_in_multiprocessing_children
from .endpoint import DEFAULT_URL, Endpoint, parse_url
from .pipeline import Chunk
from .receipts import Receipt, new_receipt
from .sender import Sender, resolve, resolve_all
from .sink_exit import CLOSE_GRACE, ExitGrace
from .sink_transport import check_token, tls_context
from .spool import Spool
from .spool_files import place_problem

Item = tuple[int, AuditEvent | PendingEvent, "Receipt[str | None] | None"]


def new_source_id() -> str:
    """``host:pid:random``, valid as ``wire.SOURCE_PATTERN`` wants whatever the host is
    called: it must start with a letter or digit (a host named ``ärzte-app`` or ``_build``
    gave ``-rzte-app:...``, which the collector refused, and every event was lost)."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:64].lstrip(".-") or "host"
    return f"{host}:{os.getpid()}:{os.urandom(4).hex()}"


DEFAULT_SPOOL_DIR: Final = "./audit-spool"


def _checked_spool_dir(spool_dir: object) -> str | None:
    """``spool_dir`` as text, or None: ``''`` spooled into the working directory, and
    bytes, a number or ``False`` failed with a bare TypeError from ``os.path``."""
    if spool_dir is None:
        return None
    if isinstance(spool_dir, (str, os.PathLike)):
        text = os.fspath(spool_dir)
        if isinstance(text, str) and text.strip():
            return text
    raise AuditConfigurationError(
        f"spool_dir must be a directory's path (a str or a Path), or None to hold undelivered "
        f"batches in memory only; got {spool_dir!r}")


class CollectorSink(ExitGrace):
    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        tls: bool | ssl.SSLContext = False,
        tls_ca: str | os.PathLike[str] | None = None,
        spool_dir: str | os.PathLike[str] | None = DEFAULT_SPOOL_DIR,
        spool_max_bytes: int = 256 * 1024 * 1024,
        max_queue: int = 10_000,
        batch_size: int = 1024,
        pipeline: int = 4,
        max_delay: float = 0.05,
        connect_timeout: float = 2.0,
        ack_timeout: float = 10.0,
        backoff_max: float = 5.0,
        fail_closed: bool = False,
        fail_closed_timeout: float = 2.0,
        exit_timeout: float = 5.0,
    ) -> None:
        self.endpoint: Endpoint = parse_url(url)
        check_token(self.endpoint, token)
        # Against the URL: a TLS option a unix socket ignores is refused (sink_transport).
        self._tls: ssl.SSLContext | None = tls_context(self.endpoint, tls, tls_ca)
        check_sizes(spool_max_bytes=spool_max_bytes, max_queue=max_queue,
                    batch_size=batch_size, pipeline=pipeline)
        # A timeout that is NaN, infinite or a string fails only when first used: at a
        # connection (every batch then dropped) or at exit (the queue lost).
        check_seconds(max_delay=max_delay, connect_timeout=connect_timeout,
                      ack_timeout=ack_timeout, backoff_max=backoff_max,
                      fail_closed_timeout=fail_closed_timeout, exit_timeout=exit_timeout)
        check_flags(fail_closed=fail_closed)
        self.fail_closed = fail_closed
        self.fail_closed_timeout = fail_closed_timeout
        self._exit_timeout = exit_timeout
        self._batch_size = batch_size  # events per frame
        spool_dir = _checked_spool_dir(spool_dir)
        # Resolved now: a later chdir must not move the spool (or split it in two).
        problem = place_problem(Path(os.path.abspath(spool_dir))) if spool_dir else None
        if problem is not None and spool_dir != DEFAULT_SPOOL_DIR:
            raise AuditConfigurationError(problem)
        # Tagged with the collector's URL: another app spooling in the same directory for
        # another collector leaves these batches for a sink of this one (spool.py). Its
        # identity, not its spelling: the next start may spell the same collector anew.
        self._spool = (Spool(os.path.abspath(spool_dir), spool_max_bytes,
                             destination=self.endpoint.identity)
                       if spool_dir is not None else None)
        if self._spool is not None:
            # The default, relative to a working directory the app may not own (a
            # container's root-owned WORKDIR, a unit run from /): said, not fatal, as the
            # spool matters only during an outage. Checked again for a worker that drops
            # root after the fork (``_idle``, ``stats``).
            self._spool.check_place()
        self.dropped = Counter()  # besides the queue's own overflow count
        self._sender = Sender(
            self.endpoint, token=token, tls=self._tls, connect_timeout=connect_timeout,
            ack_timeout=ack_timeout, backoff_max=backoff_max, depth=pipeline,
            on_drop=self._drop, when_down="spooling and retrying" if self._spool is not None
            else "holding the batch in memory and retrying",
        )
        self._queue: BatchingQueue[Item] = BatchingQueue(
            self._export, max_queue=max_queue, max_batch=batch_size * pipeline,
            max_delay=max_delay,
            name=f"audit-collector:{self.endpoint}", exit_timeout=exit_timeout,
            idle=self._idle, after_fork=self._after_fork,
        )
        if self._spool is not None:  # with somewhere to put batches, do not wait for a
            half = max(max_queue // 2, 1)  # silent collector until the queue overflows
            self._sender.pressure = lambda: self._queue.depth >= half
        self.spooled = Counter()
        self.replayed = Counter()
        self._closed = False
        #: Under a server that forks without the at-fork hook (uWSGI), the request path
        #: compares the process id (``batching.forks_without_hooks``).
        self._watch_pid = self._queue.watch_pid
        self._init_process()
        ref = weakref.ref(self)
        atexit.register(lambda: call_if_alive(ref, "close", exit_timeout))
        # After its queue's: at a multiprocessing child's exit this close runs first
        # (same priority: reverse order), sending or spooling, then closing the queue.
        close_in_multiprocessing_children(self, exit_timeout)
        if self._spool is not None and self._spool.adopt_orphans():
            self._queue.start()  # replay what an earlier process left, without waiting

    def _init_process(self) -> None:
        self.source = new_source_id()
        self._seq = itertools.count(1)
        self._io_lock = threading.Lock()  # the connection and the spool: one user at a time
        #: The spool's head record (its source, first seq, size) and the seqs of it the
        #: collector already settled (acknowledged, rejected or refused) in a try whose
        #: rest failed: left out when it is sent again, until it is committed.
        self._head_settled: tuple[tuple[str, int, int], set[int]] | None = None
        self._drops_seen = 0  # the dropped count wait_for_delivery last reported on
        self._corrupt_seen = 0  # and the spool's corrupt bytes
        self._sender.reset(self.source)
        self._last_scan = time.monotonic()
        self._init_settling()
        self._encoded = 0  # events the export under way encoded (``_encode``)

    def _check_fork(self) -> None:
        """In a child forked without the at-fork hook (uWSGI's workers): what the hook
        would have done, for the queue and then the sink, before this process numbers
        its first event (else it numbered as its parent's source, as every sibling
        did), sends (else its events waited for its parent's worker thread, which it
        lacks) or counts."""
        self._queue.check_fork()

    def _after_fork(self) -> None:
        """Run by the queue (``after_fork``) after its own reset, whichever path finds
        the fork: its at-fork hook or, without it, any check; a thread that finds the
        fork meanwhile waits for this reset before it numbers an event."""
        self._sender.after_fork()
        if self._spool is not None:
            self._spool.after_fork()
        for counter in (self.spooled, self.replayed, self.dropped):
            counter.reset()
        self._init_process()

    # -- request path ---------------------------------------------------------------------
    def submit(self, event: AuditEvent | PendingEvent) -> None:
        if self._watch_pid and self._queue.forked():
            self._check_fork()
        seq = next(self._seq)  # atomic: numbers every event, even one dropped below
        if not self.fail_closed:
            self._queue.submit((seq, event, None))
            return
        receipt = new_receipt()
        if not self._queue.submit((seq, event, receipt)):
            resolve(receipt, "the audit queue is full")
        elif receipt is not None:
            self._queue.wake()  # a request is waiting for this one: no batching delay

    def numbered(self) -> int:
        """The highest sequence number this process's source has given out so far
        (events dropped included); 0 means "not said". ``itertools.count`` keeps the
        request path's numbering atomic and shows its next value only in its repr."""
        try:
            return int(repr(self._seq)[len("count("):-1]) - 1
        except ValueError:  # "count(<NULL>)" at sys.maxsize (CPython gh-126618)
            return 0

    #: The request path's tuple form (``event.PendingEvent``): the event is built, with
    #: its line, on the worker thread.
    submit_pending = submit

    # -- worker ---------------------------------------------------------------------------
    def _export(self, items: list[Item]) -> None:
        with self._io_lock:
            direct = (self._spool is None or self._spool.empty) and self._sender.may_try()
            self._encoded = 0
            chunks = self._encode(items)  # lazily: chunk k+1 is encoded while k is stored
            unsent = self._sender.ship(chunks) if direct else list(chunks)
            # The rest were acknowledged, rejected or refused: settled as the spooled
            # are, taken out of what a close that gave up on this worker wrote off.
            self._settle(self._encoded - sum(len(chunk) for chunk in unsent))
            for chunk in unsent:
                resolve_all(chunk.receipts, "the collector did not acknowledge it in time "
                             "(kept for replay)")
                self._keep(chunk)

    def _encode(self, items: list[Item]) -> Iterator[Chunk]:
        """``items`` as frames, encoded lazily (frame k+1 while k is stored), then, while
        the connection is flowing, every full frame's worth that was queued meanwhile: the
        pipeline stays full instead of draining to zero between the queue's batches."""
        size = self._batch_size
        while items:
            self._encoded += len(items)
            for start in range(0, len(items), size):
                part = items[start:start + size]
                yield Chunk(self.source, [item[0] for item in part],
                            [json_line(item[1]) for item in part],
                            [item[2] for item in part] if self.fail_closed else None,
                            self.numbered())
            items = self._queue.take(size) if self._sender.flowing else []

    # -- control --------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event submitted so far was handed on: acknowledged by the
        collector, spooled, or dropped (counted in ``stats()``, e.g. with the spool full);
        False at the timeout. ``wait_for_delivery`` also says whether any was dropped."""
        return self._queue.flush(timeout)  # its fork check resets this sink too

    def drain(self, timeout: float) -> bool:
        """Send or spool everything submitted so far within ``timeout`` seconds, as
        ``close`` does, the sink staying open: what was not acknowledged by then (a
        collector that stopped answering) is spooled, or counted as dropped, rather
        than left in flight. For ASGI lifespan shutdown, after which the process may
        end without exit handlers: uvicorn re-raises the SIGTERM it caught, whose
        default action skips atexit (and so this sink's ``close``). True when it was
        all handed on in time."""
        self._check_fork()
        sender = self._sender
        if self._closed or sender.deadline is not None:  # closing: its deadline holds
            return self._queue.flush(timeout)
        sender.deadline = time.monotonic() + timeout
        try:
            # A little past the deadline, as close(): a reply wait ends at it, then
            # what was in flight is spooled, waited for while a slow disk writes it.
            if self._queue.flush(timeout + CLOSE_GRACE,
                                 longer=self._spooling_on(sender.deadline)):
                return True
            self._drain_gave_up(timeout)
            return False
        finally:
            if not self._closed:
                sender.deadline = None

    def wait_for_delivery(self, timeout: float) -> bool:
        """Flush, then wait until the spool is replayed too: True when everything
        submitted so far was acknowledged (or rejected) by the collector; False at the
        timeout, or when events were dropped since the last call that did not time out
        (or since the sink was made): counted in ``stats()``. Spooled bytes found corrupt
        (``spool_corrupt_bytes``) make it False the same way."""
        self._check_fork()
        delivered = self._wait_until_replayed(timeout)
        stats = self.stats()
        # Spooled bytes found corrupt are lost events too, even those that could not be
        # counted (their batch header went with the rest).
        lost = (stats["dropped"], stats["spool_corrupt_bytes"])
        baseline = (self._drops_seen, self._corrupt_seen)
        if delivered:  # a timed-out call reports nothing: the next one still will
            self._drops_seen, self._corrupt_seen = lost
        return delivered and lost == baseline

    def _wait_until_replayed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self._queue.flush(timeout):
            return False
        spool = self._spool
        while spool is not None:
            # Under the worker's lock: a replay's commit takes the last file off the spool's
            # list before it unlinks it; seen between the two, "empty" is not done yet.
            if not self._io_lock.acquire(timeout=max(deadline - time.monotonic(), 0)):
                return False
            try:
                if not spool.replay_pending:
                    return True
            finally:
                self._io_lock.release()
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
        self._check_fork()
        self._closed = True
        limit = self._exit_timeout if timeout is None else timeout
        deadline = self._sender.deadline = time.monotonic() + limit
        # A little past the deadline: a reply wait ends at it, then what was in flight
        # is spooled (or counted as dropped), waited for while a slow disk writes it,
        # before the worker is given up on: what it holds is then counted dropped.
        stopped = self._queue.close(limit + CLOSE_GRACE, longer=self._spooling_on(deadline),
                                    owner_says=True)  # _close_gave_up: what it held
        if not stopped:
            self._close_gave_up(limit)
        # Else the worker is stuck (in the spool's write: leave it be).
        if self._io_lock.acquire(timeout=0.5 if stopped else 0.0):
            try:
                self._sender.forget_connection()
                if self._spool is not None:
                    self._spool.close()
            finally:
                self._io_lock.release()

    def stats(self) -> dict[str, int]:
        """Counters of this process (a forked child starts from zero): ``emitted`` (=
        ``submitted``), ``acknowledged`` (= ``delivered``: stored by the collector, including
        duplicates), ``spooled`` and ``replayed`` (through the spool), ``rejected`` (named
        by the collector with a reason), ``dropped`` (queue full, spool full: logged),
        ``retried`` (failed sends, retried later), ``queued`` (the queue depth),
        ``spool_bytes`` (the spool directory's bytes for this collector, every process's
        files, as this process last counted them plus its own changes since: an estimate,
        counted again only as often as the shared cap needs, see docs/shipping.md; do not
        sum it over workers), ``spool_corrupt_bytes`` (spooled bytes found torn or corrupt
        when replayed, logged: lost, their events in ``dropped`` as far as they could be
        counted), ``spool_unread_files`` (spool files this process holds aside because
        the disk refused to read them, logged: no known loss, tried again at each scan;
        ``wait_for_delivery`` is False while any is) and ``spool_unusable`` (1 while this process's user cannot spool in
        ``spool_dir``, logged with what to do: batches the collector cannot take are
        dropped; checked again after a worker drops root)."""
        counts = self._queue.counts()  # first: its fork check resets this sink too
        spool = self._spool
        dropped = counts["dropped"] + counts["failed"] + self.dropped.value + (
            spool.lost_events if spool is not None else 0)
        sender = self._sender
        acknowledged = sender.acknowledged.value
        return {
            "submitted": counts["submitted"],
            "emitted": counts["submitted"],
            "delivered": acknowledged,
            "acknowledged": acknowledged,
            "spooled": self.spooled.value,
            "replayed": self.replayed.value,
            "dropped": dropped,
            "retried": sender.retried.value,
            "rejected": sender.rejected.value,
            "queued": counts["queued"],
            "spool_bytes": spool.used_bytes if spool is not None else 0,
            "spool_corrupt_bytes": spool.corrupt_bytes if spool is not None else 0,
            "spool_unread_files": spool.unread_files if spool is not None else 0,
            "spool_unusable": int(bool(spool.check_place())) if spool is not None else 0,
        }

    def __repr__(self) -> str:
        return f"CollectorSink({str(self.endpoint)!r}, source={self.source!r})"
