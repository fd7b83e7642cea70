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

Here: writing, the commit thread and its housekeeping. The rest are parts ``Store``
inherits, each in a module of its own: its opening and closing
(``collector.store_lifecycle``), its readiness (``collector.store_readiness``: ``refusal``,
and whether a failed write has ended), its stats (``collector.store_stats``) and its
acknowledging of losses (``collector.store_acknowledging``). Its settings are
``collector.store_settings``. The data directory's lock, which it holds while open, is
``collector.storage.data_dir_lock``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from concurrent.futures import Future
from typing import Any, Final

from audit_middleware._counter import worth_saying
from audit_middleware.event import format_created
from collector.storage import loss_acks
from collector.storage.disk_space import free_bytes, out_of_space
from collector.storage.errors import StorageError, StoreClosedError
from collector.storage.failures import Failures, WriteFailure, checkable, write_failure
from collector.storage.group_commit import Submission, WriteResult
from collector.storage.indexer import ChunkIndexer
from collector.storage.records import (
    Encoded,
    Unencodable,
    check_source,
    encode_each,
    encode_events,
)
from collector.storage.recovery import RepairReport
from collector.store_acknowledging import _LossAcknowledging
from collector.store_lifecycle import _Lifecycle
from collector.store_readiness import _Readiness
from collector.store_settings import StorageSettings
from collector.store_stats import _Stats

__all__ = ["RepairReport", "StorageError", "StorageSettings", "Store", "WriteResult"]

log = logging.getLogger("collector.store")

_TICK: Final = 0.5  # housekeeping period (age rotation, retention, idle chunk close)
#: An idle store (no write for ``_IDLE_SECONDS``) closes and indexes an open chunk this big.
IDLE_CHUNK_ROWS: Final = 4_096
_IDLE_SECONDS: Final = 1.0
#: What the commit thread does, as its failures are named (in the log too).
_COMMIT: Final = "commit"
_COMPRESSED: Final = "putting compressed copies in place"
_HOUSEKEEPING: Final = "housekeeping"


class Store(_Lifecycle, _Readiness, _Stats, _LossAcknowledging):
    """Durable, deduplicated, indexed audit records (see this module's doc); its opening
    and closing, readiness, stats and acknowledging of losses are parts it inherits."""

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

    # -- housekeeping ------------------------------------------------------------------
    def _housekeeping(self, idle: bool) -> None:
        segments = self._segments
        writer = self._writer
        if segments.active.records and segments.too_old():
            segments.rotate(writer.sealed)
        chunk = self._index.open_chunk
        if (idle and chunk is not None and chunk.rows >= IDLE_CHUNK_ROWS
                and time.monotonic() - self._last_activity >= _IDLE_SECONDS):
            self._index.close_chunk()  # queries need not scan it while the store idles
            writer.index_closed_chunks()
        done = segments.apply_retention()
        if done.deleted:
            self._checkpoint_in_freed_room()
            for segment in done.deleted:
                chunk = self._index.open_chunk
                if chunk is not None and chunk.segment == segment:
                    self._index.close_chunk()  # sealing closed it; the indexer drops closed ones
                self._indexer.drop_segment(segment)
            try:  # one small update: no query reads them while their drops wait
                self._index.hide_segments(done.deleted)
                self._count_stale = True  # nor counts them (``_refresh_count``)
            except sqlite3.Error as exc:  # their drops hide them at their first step
                log.warning("audit store: hiding the index rows of deleted segments from "
                            "queries failed (%s); they go with their drops", exc)
            writer.counts["retention_deleted"] += len(done.deleted)
            # Said in the log too: deletions seen only as a counter surprised operators.
            log.info("retention: deleted %d sealed segment(s); records stored before %s "
                     "are gone (retention_days %g, retention_bytes %s)", len(done.deleted),
                     format_created(done.stored_before_ns), self.settings.retention_days,
                     self.settings.retention_bytes)
            # A source whose last record was in a segment older than every segment kept
            # has no record left: it goes with them (by age or by size).
            forgotten = writer.forget_sources(segments.oldest_kept(), done.stored_before_ns)
            if forgotten:
                self._forget_loss_acks(forgotten)
        if self._ledger is not None:
            self._ledger.tick(segments.active)
        self._refresh_count()

    def _checkpoint_in_freed_room(self) -> None:
        """On a nearly full disk, checkpoint the index's WAL in the room retention just
        freed, before the next commit (and the indexer's next step) can take it.

        A WAL holding pages past the end of ``index.sqlite`` (rows since the last
        checkpoint, or a checkpoint the full disk cut short) is copied back only once
        that file can grow; until then SQLite cannot write the WAL again from its start,
        and each commit grows it instead. The indexer's checkpoint (about once a second)
        lost the race for each room retention freed to the commits: the WAL grew into
        all of it (17.3 -> 20.4 MiB in ``tests/faults/test_disk_full.py``, the index
        1.9 of the 2.1 MiB it needed), retention deleted every sealed segment, and the
        store refused every batch for good, however long the apps retried. Best effort:
        a checkpoint the disk still refuses has grown the file as far as it could, and
        the next pass that frees room goes on from there; so does the indexer's
        checkpoint at each of its passes while the disk is this low, in room freed by
        hand too (``tests/faults/test_disk_full.py``). Not in the reserve's room: done
        on a full disk, it lets no batch in (their segment appends need room all the
        same), and the reserve is what retention's next digest is signed in."""
        data_dir = self.settings.data_dir
        if free_bytes(data_dir) >= ChunkIndexer.CHECKPOINT_BYTES:
            return  # room enough: the indexer's checkpoints keep up
        try:
            self._index.checkpoint()
        except sqlite3.Error as exc:
            self._checkpoint_failures += 1
            n = self._checkpoint_failures
            if worth_saying(n):  # at 1, 2, 4, 8, ... failures: said, not a flood
                log.warning("audit store: checkpointing the index's WAL in the room "
                            "retention freed failed (%s, %d failures so far); the indexer "
                            "tries again about once a second while the disk is this "
                            "low, and this after retention's next deletions", exc, n)
            return  # raised, the deleted segments' drops below were lost
        self._checkpoint_failures = 0

    def _refresh_count(self) -> None:
        """The events count again once segments were hidden or the indexer dropped their
        rows. Last in the housekeeping, and a failure kept to itself: raised before the
        deleted segments were handed to their drops, it lost them (their rows stayed,
        pointing at files that are gone, until the next start). The dropped segments stay
        counted until a refresh succeeds."""
        dropped = self._indexer.dropped
        if not dropped and not self._count_stale:
            return
        try:
            self._writer.stored = self._index.count()
            self._count_stale = False
        except sqlite3.Error as exc:
            self._count_failures += 1
            n = self._count_failures
            if worth_saying(n):  # at 1, 2, 4, 8, ... failures: said, not a flood
                log.warning("audit store: counting the events after a retention drop "
                            "failed (%s, %d failures so far); tried again at the next "
                            "housekeeping", exc, n)
            return
        self._count_failures = 0
        self._indexer.took_dropped(dropped)
