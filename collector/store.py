"""The store: durable, deduplicated, indexed audit records (the collector's write side).

One commit thread owns the active segment and the index. ``submit`` only enqueues; the
commit thread takes every pending submission at once (group commit), drops ids already
stored, appends the records, fsyncs once, indexes them in one transaction and then
resolves every submission's future. While one group is being written the next one
gathers, so the busier the store, the more events share an fsync.

Data directory layout (dirs 0750, files 0640)::

    segments/segment-<seq:08d>-<UTC YYYYmmddTHHMMSSZ>.jsonl[.gz]
    index.sqlite          derived: rebuilt from the segments when missing or damaged
    quarantine/           torn tails cut from a segment at start-up
    digests/, keys/       tamper evidence (``collector.integrity``, docs/integrity.md)

Here: writing and the commit thread. The rest are parts ``Store`` inherits, each in a
module of its own: its opening and closing (``collector.store_lifecycle``), the commit
thread's housekeeping (``collector.store_housekeeping``: rotation, retention, idle
chunks), its readiness (``collector.store_readiness``: ``refusal``, and whether a failed
write has ended), its stats (``collector.store_stats``) and its acknowledging of losses
(``collector.store_acknowledging``). Its settings are
``collector.store_settings``. The data directory's lock, which it holds while open, is
``collector.storage.data_dir_lock``.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Any, Final

from audit_middleware._counter import worth_saying
from collector.storage import loss_acks
from collector.storage.disk_space import out_of_space
from collector.storage.errors import StorageError, StoreClosedError
from collector.storage.failures import Failures, WriteFailure, checkable, write_failure
from collector.storage.group_commit import Submission, WriteResult
from collector.storage.records import (
    Encoded,
    Unencodable,
    check_source,
    encode_each,
    encode_events,
)
from collector.storage.recovery import RepairReport
from collector.store_acknowledging import _LossAcknowledging
from collector.store_housekeeping import _Housekeeping
from collector.store_lifecycle import _Lifecycle
from collector.store_readiness import _Readiness
from collector.store_settings import StorageSettings
from collector.store_stats import _Stats

__all__ = ["RepairReport", "StorageError", "StorageSettings", "Store", "WriteResult"]

log = logging.getLogger("collector.store")

_TICK: Final = 0.5  # housekeeping period (age rotation, retention, idle chunk close)
#: What the commit thread does, as its failures are named (in the log too).
_COMMIT: Final = "commit"
_COMPRESSED: Final = "putting compressed copies in place"
_HOUSEKEEPING: Final = "housekeeping"


class Store(_Lifecycle, _Housekeeping, _Readiness, _Stats, _LossAcknowledging):
    """Durable, deduplicated, indexed audit records (see this module's doc); its opening
    and closing, housekeeping, readiness, stats and acknowledging of losses are parts it
    inherits."""

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self.segments_dir = settings.data_dir / "segments"
        self.quarantine_dir = settings.data_dir / "quarantine"
        self.index_path = settings.data_dir / "index.sqlite"
        self._lock = threading.Lock()
        self._pending: list[Submission] = []
        #: When the oldest of ``_pending`` was queued (meaningless while it is empty),
        #: and the batch the commit thread has taken with when it was queued (None:
        #: none): how long work has waited, for ``refusal``. One clock read per group,
        #: none per event.
        self._pending_since = 0.0
        self._batch: list[Submission] = []
        self._batch_since: float | None = None
        self._wake = threading.Event()
        self._state = "new"  # new -> open -> closing -> closed
        self._thread: threading.Thread | None = None
        self._rejected_count = 0
        self._last_activity = time.monotonic()
        #: What fails now on the commit thread ("commit", "housekeeping"...), each
        #: until that work goes through again (``Failures``).
        self._failures = Failures()
        #: What ends a commit that raised (``failures.write_failure``), until one goes
        #: through; a write that failed in it is the writer's (``GroupWriter.failure``).
        self._commit_failure: WriteFailure | None = None
        #: Whether the idle write checks can show it ended (``failures.checkable``).
        self._commit_failure_checkable = False
        #: A full disk's failure that the index's refusal turned into ``WRITE_FAILING``
        #: still needs ``RESERVE_ROOM`` free to end without a batch: until one is
        #: written, or the checks go through with that room (``_check_failed_write``).
        self._needs_room = False
        #: Whether ``open`` met a full disk and went on in the reserve's room
        #: (``_Lifecycle._open_in_reserve``): said ``DISK_FULL`` from the start.
        self._opened_full = False
        #: Why the commit thread ended while open (``_refuse_for_good``), or None.
        self._ended: str | None = None
        self._loss_acks: dict[str, loss_acks.Ack] = {}
        self._acks_lock = threading.Lock()
        #: The record of an acknowledgement, applied, whose staged file could not take
        #: its place yet (``StagedLossAck.keep``), or None; under ``_acks_lock``.
        self._acks_unsaved: str | None = None
        #: Retention forgot sources with an acknowledgement that the file (or the staged
        #: file its record claims) may still name: the next start, or a later one, would
        #: hand it to a new source of the same name. Whoever holds ``_acks_lock`` rewrites
        #: it before letting go (``_release_acks``); set and cleared under that lock or
        #: the writer's.
        self._forgotten_unsaved = False
        self._count_failures = 0  # events count refreshes failed in a row
        self._count_stale = False  # segments were hidden since the count was taken
        self._full_failures = 0  # commit thread failures for a full disk (logged some)
        self._checkpoint_failures = 0  # checkpoints in retention's freed room, in a row

    # -- writing ------------------------------------------------------------------------
    def submit(self, events: list[dict[str, Any]], source: str = "",
               source_seqs: list[int] | None = None, *,
               reject_unencodable: bool = False) -> Future[WriteResult]:
        """Queue ``events`` (validated dicts with the 14 schema fields and an optional
        ``peer_ip``). Thread-safe, never blocks on I/O. The future resolves after the
        records are fsynced to the segment and committed to the index, or fails with a
        ``StorageError`` naming the cause (then none of them is stored).

        ``reject_unencodable``: an event that cannot be a record (what validation let
        through and the store cannot encode) is left out and listed, with the reason, in
        ``WriteResult.rejected`` instead of failing the whole submission; a write that
        fails (disk full, I/O error) still fails all of it."""
        future: Future[WriteResult] = Future()
        refused: list[Unencodable] = []
        try:
            events = list(events)
            check_source(source, source_seqs, len(events))
            # Encoding here, on the caller's thread, while the dicts it just parsed are
            # still in the CPU cache, costs half of what it costs in a group later.
            try:
                encoded = encode_events(events)
            except Exception:  # StorageError, or a bug in encoding (see encode_each)
                if not reject_unencodable:
                    raise
                encoded, refused = encode_each(events)  # only now, one at a time
        except TypeError:
            return self._rejected(future, StorageError("events must be a list of event dicts"))
        except StorageError as exc:
            return self._rejected(future, exc)
        if refused:
            with self._lock:
                self._rejected_count += len(refused)
            if source_seqs:
                left_out = {r.position for r in refused}
                source_seqs = [n for i, n in enumerate(source_seqs) if i not in left_out]
            if not encoded.ids:
                future.set_result(WriteResult([], [], refused))
                return future
        return self._queue(Submission(encoded, source, list(source_seqs) if source_seqs
                                      else None, future, refused))

    def submit_encoded(self, encoded: Encoded, source: str = "",
                       source_seqs: list[int] | None = None,
                       numbered: int = 0) -> Future[WriteResult]:
        """``submit`` for events already encoded (``records.encode_events``, or the
        ingest server's fast path, ``collector.canonical_lines``). ``numbered``: the
        highest number ``source`` said it had given out (a batch header's), kept so that
        numbers after the last stored one that never arrive show in ``stats``."""
        future: Future[WriteResult] = Future()
        try:
            check_source(source, source_seqs, len(encoded.ids), numbered)
        except StorageError as exc:
            return self._rejected(future, exc)
        if not encoded.ids:
            future.set_result(WriteResult([], []))
            return future
        return self._queue(Submission(encoded, source, list(source_seqs) if source_seqs
                                      else None, future, numbered=numbered))

    def _queue(self, sub: Submission) -> Future[WriteResult]:
        with self._lock:
            if self._state != "open":
                sub.future.set_exception(StoreClosedError(
                    "the store is not open: call Store.open() first, and do not submit "
                    "after Store.close()"))
                return sub.future
            if self._ended is not None:
                sub.future.set_exception(StorageError(self._ended))
                return sub.future
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(sub)
        self._wake.set()
        return sub.future

    def _rejected(self, future: Future[WriteResult], exc: StorageError) -> Future[WriteResult]:
        with self._lock:
            self._rejected_count += 1
        future.set_exception(exc)
        return future

    def write(self, events: list[dict[str, Any]], source: str = "",
              source_seqs: list[int] | None = None) -> WriteResult:
        return self.submit(events, source, source_seqs).result()

    # -- the commit thread --------------------------------------------------------------
    def _run_said(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            # Only a BaseException gets here (``_run`` goes on after any Exception), and
            # threading does not log a SystemExit: said, or the store stops writing in
            # silence (``refusal`` says write_failing from then on).
            # Refused first: a log sink that blocks must not keep the probe saying ready.
            self._refuse_for_good(exc, [])
            log.critical("audit store: the commit thread ended (%r): nothing is written "
                         "any more; restart the collector", exc)
            raise

    def _refuse_for_good(self, exc: BaseException, batch: list[Submission]) -> None:
        """The commit thread is ending (``exc``): the senders of ``batch`` and of what
        waits hear so, and later submissions are refused at once. Queued, they waited
        for ever (an ingest connection, ``write()``), held in memory batch after batch."""
        ended = (f"the store's commit thread ended ({exc!r}): nothing is written any "
                 f"more; restart the collector")
        with self._lock:
            self._ended = ended
            waiting, self._pending = [*batch, *self._pending], []
        for sub in waiting:
            if not sub.future.done():
                sub.future.set_exception(StorageError(ended))

    def _run(self) -> None:
        # Retention's first pass before the first batch: started on a full disk, the
        # room the released reserve left (``_open_in_reserve``) is for its digest, and
        # the apps' retried batches, written first, took it (the pass then deleted
        # nothing, for good).
        try:
            self._housekeeping(idle=False)
        except Exception as exc:  # noqa: BLE001 - as below: logged, the thread goes on
            self._failed(exc, _HOUSEKEEPING)
        last_housekeeping = time.monotonic()
        while True:
            self._wake.wait(_TICK)
            self._wake.clear()
            with self._lock:
                batch, self._pending = self._pending, []
                self._batch = batch
                self._batch_since = self._pending_since if batch else None
                closing = self._state == "closing"
            # Each failure stays said until that very work goes through again: cleared
            # by any later housekeeping pass, a commit that raised left the stats half a
            # second later, though every batch still failed.
            doing = _COMMIT
            try:
                if batch:
                    try:
                        wrote = self._writer.commit(batch)
                    finally:
                        with self._lock:  # written or failed: no longer waiting
                            self._batch, self._batch_since = [], None
                    self._last_activity = time.monotonic()
                    if wrote:
                        # Records written, not a commit that merely returned: one whose
                        # every future was cancelled (its senders gone), or of duplicates
                        # only, wrote nothing, and the probe said ready over an index
                        # error until the next batch failed again.
                        self._failures.recovered(_COMMIT)
                        self._commit_failure = None
                        self._needs_room = False
                else:
                    # Before housekeeping, whose failure (retention unable to delete, at
                    # each pass) skipped it for good: a write failure that had ended kept
                    # the collector unready, though what fails beside writes must not.
                    self._check_failed_write()
                doing = _COMPRESSED
                self._segments.apply_compressed()
                self._failures.recovered(_COMPRESSED)
                now = time.monotonic()
                if not batch or now - last_housekeeping >= _TICK:
                    doing = _HOUSEKEEPING
                    self._housekeeping(idle=not batch)
                    last_housekeeping = now
                    self._failures.recovered(_HOUSEKEEPING)
            except Exception as exc:  # noqa: BLE001 - never let the commit thread die
                self._failed(exc, doing)
                if doing == _COMMIT:
                    self._commit_failure = write_failure(exc, self.settings.data_dir)
                    self._commit_failure_checkable = checkable(exc)
                for sub in batch:
                    if not sub.future.done():
                        sub.future.set_exception(StorageError(str(exc)))
            except BaseException as exc:
                self._refuse_for_good(exc, batch)  # the thread ends (``_run_said``)
                raise
            if closing:
                with self._lock:
                    if not self._pending:
                        return

    def _failed(self, exc: Exception, what: str) -> None:
        """Note and log a failure of the commit thread's work (which goes on). A full
        disk is no bug: one line saying so, at the 1st, 2nd, 4th... time (it fails again
        at every pass while the disk is full), not a traceback every 0.5 s."""
        self._failures.failing(what, f"{type(exc).__name__}: {exc}")
        if not out_of_space(exc, self.settings.data_dir):
            log.exception("audit store: %s failed", what)
            return
        self._full_failures += 1
        n = self._full_failures
        if worth_saying(n):
            log.error("audit store: %s failed: the disk is full (%s; %d time(s) so far); "
                      "tried again at every pass: free space on it", what, exc, n)
