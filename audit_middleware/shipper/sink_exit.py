"""How long a shutdown (``CollectorSink.close``: atexit; ``drain``: ASGI lifespan) waits
for the worker past its deadline, and what it says and counts when it gives up.

At the deadline the worker stops waiting for the collector and spools what it holds.
That write was given a fixed 0.5 s: a slow disk (a loaded machine's fsync took over 2 s)
outlasted it, drain() said False and the process ended (uvicorn re-raises SIGTERM), or
close() gave the worker up and the interpreter exited: the batch was neither spooled
nor counted, and nothing said so. A write under way is now waited for, within a bound (a
hung disk must not hold the exit for ever); given up on, what the worker held is said,
and at close counted dropped, but for a batch whose record is whole in the spool file
(its fsync hangs): the exit leaves it there and the next start replays it, so it is
counted spooled.

A mixin of ``CollectorSink``, as ``Spooling`` is."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .sink_spooling import Spooling

if TYPE_CHECKING:
    from ..sinks.batching import BatchingQueue

__all__ = ["CLOSE_GRACE", "SPOOL_GRACE", "ExitGrace"]

log = logging.getLogger("audit_middleware")

#: Seconds past the deadline for the worker to spool what was in flight; and, between
#: two spool writes, to begin the next one (or finish).
CLOSE_GRACE: Final = 0.5
#: Seconds more, spent only while a spool write is under way: each write is waited for
#: up to this long from its start, and no wait goes on past the deadline, plus
#: ``CLOSE_GRACE``, plus this. An idle worker costs nothing; a hung disk this, once.
SPOOL_GRACE: Final = 5.0


class ExitGrace(Spooling):
    _queue: BatchingQueue[Any]

    def _spooling_on(self, deadline: float) -> Callable[[], bool]:
        """For a shutdown whose ``deadline`` and ``CLOSE_GRACE`` have passed: whether to
        wait on, because the worker is writing what it holds to the spool (or began a
        write less than ``CLOSE_GRACE`` ago), within ``SPOOL_GRACE``."""
        until = deadline + CLOSE_GRACE + SPOOL_GRACE

        def more() -> bool:
            now = time.monotonic()
            began = self._appending_since
            if began is not None:
                return now < min(until, began + SPOOL_GRACE)
            return now < min(until, self._appended_at + CLOSE_GRACE)

        return more

    def _not_handed_on(self) -> int:
        """Events submitted and not yet acknowledged, rejected, spooled or dropped:
        queued, or in the worker's hands. Under ``_settle_lock``."""
        counts = self._queue.counts()
        return max(counts["submitted"] - counts["dropped"] - counts["failed"]
                   - self._handed, 0)

    def _in_the_spool_file(self) -> int:
        """The events of the batch being spooled if its record is whole in the file,
        its fsync under way (a hung disk's): the process exiting now leaves it there,
        and the next start replays it; claimed, it stays there even if the fsync then
        fails (``Spool.claim_unsynced``). Under ``_settle_lock``."""
        spool = self._spool
        if (spool is None or self._appending_since is None
                or not spool.claim_unsynced()):
            return 0
        return self._appending_events - self._presumed_spooled

    def _worker_doing(self) -> str:
        began = self._appending_since
        if began is not None:
            return (f"its spool write under way for {time.monotonic() - began:.1f}s (a "
                    f"slow or hung disk)")
        return "it was still busy"

    def _drain_gave_up(self, timeout: float) -> None:
        """The worker did not finish within a drain: nothing is given up yet (it goes on,
        and spools or sends what it holds), but the process may end now."""
        with self._settle_lock:
            n = self._not_handed_on()
        if n:
            log.error("audit: drain(%gs) ended with %d events neither sent nor spooled, "
                      "%s: lost if the process ends now (uvicorn ends it after the "
                      "lifespan's shutdown), spooled as soon as the disk takes them if "
                      "it goes on", timeout, n, self._worker_doing())

    def _close_gave_up(self, timeout: float) -> None:
        """The worker did not finish within a close: what it holds (and what is queued)
        is counted dropped, lost when the process exits (atexit: the worker, a daemon
        thread, ends with it), but for the batch whose record is whole in the spool file
        (``_in_the_spool_file``): counted spooled. One it spools after all is counted
        spooled again, one the collector acknowledged after all is taken out of dropped
        (``_settle``); one counted spooled stays in the file if its fsync fails. Said in
        one line: the queue's own says nothing (``owner_says``)."""
        with self._settle_lock:
            n = self._not_handed_on() - self._written_off - self._presumed_spooled
            if n <= 0:
                return
            in_file = min(self._in_the_spool_file(), n)
            self._presumed_spooled += in_file
            self.spooled.add(in_file)
            n -= in_file
            self._written_off += n
            self.dropped.add(n)
        doing = self._worker_doing()
        if in_file and not n:
            log.error("audit: close(%gs) gave up on the sink's worker, %s: its %d events "
                      "are written to the spool file, not yet synced, and counted "
                      "spooled: replayed at the next start (lost only if the machine or "
                      "its disk fails first)", timeout, doing, in_file)
        elif in_file:
            log.error("audit: %d events counted dropped: close(%gs) gave up on the "
                      "sink's worker, %s; lost when the process exits. The %d events it "
                      "is writing are in the spool file, not yet synced, and counted "
                      "spooled: replayed at the next start (lost only if the machine or "
                      "its disk fails first)", n, timeout, doing, in_file)
        else:
            log.error("audit: %d events counted dropped: close(%gs) gave up on the "
                      "sink's worker, %s; lost when the process exits", n, timeout, doing)
