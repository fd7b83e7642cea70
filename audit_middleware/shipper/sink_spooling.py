"""What the collector did not acknowledge: spooled (or, without a spool, held in memory
and retried), else dropped and counted; and the spool replayed between the queue's
drains, oldest first, before anything newer is sent, less what an earlier try of its
head record settled.

A mixin of ``CollectorSink``, run on its worker thread: these methods read and set the
sink's spool, sender and counters as they did in it; the attributes are declared below
and set by ``CollectorSink.__init__`` (``_init_process`` after a fork)."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Final

from ..wire import BatchBody, WireError, decode_batch_body, encode_batch_body
from .pipeline import Chunk

if TYPE_CHECKING:
    from .._counter import Counter
    from .endpoint import Endpoint
    from .sender import Sender
    from .spool import Spool

__all__ = ["Spooling"]

log = logging.getLogger("audit_middleware")  # the sink's lines, one logger

_ORPHAN_SCAN_INTERVAL: Final = 10.0
_REPLAY_SLICE: Final = 0.25  # seconds of replay per worker cycle, then newer events queue


class Spooling:
    endpoint: Endpoint
    _spool: Spool | None
    _sender: Sender
    _io_lock: threading.Lock
    _last_scan: float
    _head_settled: tuple[tuple[str, int, int], set[int]] | None
    spooled: Counter
    replayed: Counter
    dropped: Counter

    def _init_settling(self) -> None:
        """What a shutdown that gives up on the worker needs to know (``sink_exit``);
        made again after a fork."""
        #: Held while the worker counts events it handed on, and while a shutdown counts
        #: those it did not: an event is never in both counts.
        self._settle_lock = threading.Lock()
        #: Events the worker took from the queue and handed on: acknowledged, rejected,
        #: spooled or dropped (the queue counts those an export raised on, ``failed``).
        self._handed = 0
        #: Of the events the worker holds, those a close that gave up on it counted
        #: dropped (``sink_exit``): one it spools after all moves back to ``spooled``.
        self._written_off = 0
        #: Of the batch being spooled, the events a close that gave up on the worker
        #: counted spooled, its record being whole in the file (``sink_exit``): it stays
        #: there even if its fsync fails (``Spool.claim_unsynced``); were it reported
        #: not kept after all, it moves to ``dropped`` (``_settle``).
        self._presumed_spooled = 0
        #: When the spool append under way began (None: none is), and when the last one
        #: ended: a shutdown waits on while the worker is writing (``sink_exit``); and
        #: the events of the batch it writes.
        self._appending_since: float | None = None
        self._appended_at = -math.inf
        self._appending_events = 0

    def _idle(self) -> bool:
        """Between drains: replay the spool; True when more is waiting."""
        spool = self._spool
        if spool is None:
            return False
        # Here, not at the fork: a server's worker drops root after it (gunicorn --user).
        spool.check_place()
        with self._io_lock:
            if spool.empty:
                now = time.monotonic()
                # Orphans the last scan left (it adopts so many at a time): at once.
                if now - self._last_scan < _ORPHAN_SCAN_INTERVAL and not spool.orphans_left:
                    return False
                self._last_scan = now
                if not spool.adopt_orphans():
                    return False
            return self._replay(_REPLAY_SLICE)

    def _replay(self, budget: float) -> bool:
        assert self._spool is not None
        stop = time.monotonic() + budget
        while time.monotonic() < stop:
            if not self._sender.may_try():
                return False
            body = self._spool.peek()
            if body is None:
                if not self._spool.replay_pending:  # else not yet: a file the disk refused
                    log.info("audit: spool replayed, shipping to %s directly again",
                             self.endpoint)
                return False
            try:
                kept = decode_batch_body(body)
            except WireError as exc:  # the crc matched: a bug, or bytes made to match
                self._drop(max(body.count(b"\n") - 1, 0), f"unreadable spool record ({exc})")
                self._commit_head()
                continue
            chunk = self._unsettled(kept)
            before = self._sender.acknowledged.value
            unsent = self._sender.ship([chunk]) if chunk.seqs else []
            self.replayed.add(self._sender.acknowledged.value - before)
            if unsent:
                # Sent again later, without what the collector settled this time: a part
                # it refused (split to fit its frame) was dropped and counted; sent again,
                # it was refused again, the record never committed, forever.
                back = {seq for part in unsent for seq in part.seqs}
                assert self._head_settled is not None
                self._head_settled[1].update(s for s in chunk.seqs if s not in back)
                return False
            self._commit_head()
        return True

    def _unsettled(self, kept: BatchBody) -> Chunk:
        """The spool's head record as a chunk, less what an earlier try settled."""
        key = (kept.source, kept.seqs[0] if kept.seqs else 0, len(kept.seqs))
        if self._head_settled is None or self._head_settled[0] != key:
            self._head_settled = (key, set())
        settled = self._head_settled[1]
        keep = [i for i, seq in enumerate(kept.seqs) if seq not in settled]
        return Chunk(kept.source, [kept.seqs[i] for i in keep],
                     [kept.lines[i] + b"\n" for i in keep], numbered=kept.numbered)

    def _commit_head(self) -> None:
        assert self._spool is not None
        self._spool.commit()
        self._head_settled = None

    def _keep(self, chunk: Chunk) -> None:
        spool = self._spool
        if spool is None:
            self._settle(len(chunk), *self._retry_in_memory(chunk))
            return
        self._appending_events = len(chunk)
        self._appending_since = time.monotonic()
        try:
            kept = spool.append(encode_batch_body(chunk.source, chunk.seqs, chunk.lines,
                                                  chunk.numbered))
        finally:
            self._appended_at = time.monotonic()  # first: a waiter never sees neither
            self._appending_since = None
        if kept:
            self._settle(len(chunk), spooled=len(chunk))
        else:  # the cap, or the disk's error
            self._settle(len(chunk), 0, len(chunk), spool.refusal)

    def _retry_in_memory(self, chunk: Chunk) -> tuple[int, int, str]:
        """No spool: hold this batch and retry; the queue fills meanwhile and counts
        drops. (0, events dropped, why): the rest was acknowledged or rejected."""
        pending = [chunk]
        while pending:
            if self._sender.past_deadline:
                return 0, sum(len(c) for c in pending), ("the collector was unreachable "
                                                         "until shutdown")
            if not self._sender.may_try():
                time.sleep(0.05)  # backing off
                continue
            pending = self._sender.ship(pending)
        return 0, 0, ""

    def _settle(self, n: int, spooled: int = 0, dropped: int = 0, why: str = "") -> None:
        """``n`` events the worker held, handed on: ``spooled`` of them spooled,
        ``dropped`` dropped (``why``), the rest acknowledged or rejected. Those a close
        wrote off were counted dropped then: one dropped now is not counted again, one
        spooled (or sent) after all is taken out of ``dropped`` again."""
        with self._settle_lock:
            self._handed += n
            presumed = min(self._presumed_spooled, n)  # only ever this batch's (_keep)
            if presumed:
                self._presumed_spooled -= presumed
                n -= presumed
                unsynced = presumed - min(presumed, spooled)  # not kept after all
                spooled -= presumed - unsynced  # counted spooled already
                dropped -= unsynced
                self.spooled.add(-unsynced)
                if unsynced:
                    self._drop(unsynced, f"{why}; counted spooled when close() gave up "
                                         f"on the sink's worker, its sync then failed")
            late = min(self._written_off, n)
            self._written_off -= late
            self.spooled.add(spooled)
            again = min(late, dropped)  # dropped now, counted dropped already
            if late > again:
                self.dropped.add(again - late)
                log.warning("audit: %d events counted dropped when close() gave up on the "
                            "sink's worker were spooled (or sent) after all",
                            late - again)
            if dropped > again:
                self._drop(dropped - again, why)

    def _drop(self, n: int, why: str) -> None:
        before = self.dropped.value
        self.dropped.add(n)
        if before == 0 or (before.bit_length() != self.dropped.value.bit_length()):
            log.error("audit: %d events dropped: %s (%d dropped so far)", n, why,
                      self.dropped.value)
