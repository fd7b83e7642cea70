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

The store's acknowledging of losses is a part it inherits
(``collector.store_acknowledging``); the data directory's lock, which it holds while
open, is ``collector.storage.data_dir_lock``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

from audit_middleware._counter import worth_saying
from audit_middleware._dirs import make_dirs
from audit_middleware.event import format_created
from collector.index import Index
from collector.index import files_bytes as index_files_bytes
from collector.storage import loss_acks, sources
from collector.storage.data_dir_lock import lock_data_dir
from collector.storage.disk_space import (
    BATCH_ROOM,
    RESERVE_ROOM,
    Reserve,
    free_bytes,
    is_full,
    known_free_bytes,
    out_of_space,
)
from collector.storage.errors import (
    DiskFullError,
    StorageError,
    StorageSettingsError,
    StoreClosedError,
)
from collector.storage.failures import (
    DISK_FULL,
    NOT_OPEN,
    WRITE_FAILING,
    WRITE_STALLED,
    Failures,
    WriteFailure,
    checkable,
    write_failure,
)
from collector.storage.group_commit import RATE_WINDOW, GroupWriter, Submission, WriteResult
from collector.storage.indexer import ChunkIndexer
from collector.storage.records import (
    Encoded,
    Unencodable,
    check_source,
    encode_each,
    encode_events,
    id_key,
)
from collector.storage.recovery import RepairReport, open_and_recover
from collector.storage.regular_files import write_new_file
from collector.storage.segment_set import SegmentSet
from collector.storage.segments import DIR_MODE, FILE_MODE, file_sizes
from collector.storage.write_lock import WriteLock
from collector.store_acknowledging import _LossAcknowledging

if TYPE_CHECKING:
    from collector.integrity.ledger import Ledger

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
#: The file an idle commit thread writes, fsyncs and removes in ``segments/`` and in the
#: data directory (the index's) while a write failure is said (a full disk's once it
#: shows room: ``Store._check_failed_write``).
_WRITE_CHECK: Final = ".write-check"
#: What it writes: a batch's room, so that it takes new blocks (a quota with less left
#: refuses it), never only an inode's inline data.
_WRITE_CHECK_DATA: Final = b"\n" * BATCH_ROOM
#: Why the reserve is released at start-up (``Store._open_in_reserve``), in its warning.
_OPENING_IN_RESERVE: Final = (
    "the store can open (its index, its start checkpoint) and retention sign its "
    "deletions; if retention has nothing to delete, records are refused (the apps spool) "
    "until space is freed on that disk")


@dataclass(frozen=True)
class StorageSettings:
    data_dir: Path
    max_segment_bytes: int = 64 * 1024 * 1024
    max_segment_age: float = 3600.0  # seconds
    compress_sealed: bool = False
    retention_days: float = 365.0
    retention_bytes: int | None = None  # total size cap of sealed segments
    #: Tamper evidence: hash-chain the records and write signed digests. Off only to
    #: measure what it costs (benchmarks/integrity.py).
    chain: bool = True
    signing_key: Path | None = None  # default: <data_dir>/keys/signing-key.pem
    digest_interval: float = 300.0  # seconds between checkpoints while records arrive
    #: Seconds accepted work may wait for the commit thread before ``refusal`` says
    #: ``WRITE_STALLED`` (a hung fsync): well above a slow disk's fsync, well below
    #: what a probe's user waits before taking the collector out of rotation.
    write_stall_timeout: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.signing_key is not None:
            object.__setattr__(self, "signing_key", Path(self.signing_key))
        if self.digest_interval <= 0:
            raise StorageSettingsError(
                f"digest_interval={self.digest_interval}: use a positive number of seconds")
        if not self.write_stall_timeout > 0:  # nan too
            raise StorageSettingsError(
                f"write_stall_timeout={self.write_stall_timeout}: use a positive number of "
                f"seconds")
        if self.max_segment_bytes < 1024:
            raise StorageSettingsError(
                f"max_segment_bytes={self.max_segment_bytes}: use at least 1024 bytes")
        if self.max_segment_age <= 0:
            raise StorageSettingsError(
                f"max_segment_age={self.max_segment_age}: use a positive number of seconds")
        if not self.retention_days > 0:  # nan too
            raise StorageSettingsError(
                f"retention_days={self.retention_days}: use a positive number of days")
        if self.retention_bytes is not None and self.retention_bytes < 0:
            raise StorageSettingsError(
                f"retention_bytes={self.retention_bytes}: use a size in bytes, or None")


class Store(_LossAcknowledging):
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

    # -- lifecycle ----------------------------------------------------------------------
    def open(self) -> RepairReport:
        """Create the directories, repair what a crash left (a torn tail goes to
        quarantine), index records missing from the index, start the commit thread."""
        if self._state != "new":
            raise StorageError("this Store was opened already: create a new Store")
        for d in (self.settings.data_dir, self.segments_dir, self.quarantine_dir):
            make_dirs(d, DIR_MODE)
        self._dir_lock = lock_data_dir(self.settings.data_dir)
        try:
            report = self._open_in_reserve()
        except BaseException:
            self._discard_storage()
            self._release_storage()
            raise
        self._state = "open"
        self._thread = threading.Thread(target=self._run_said, name="audit-store-commit",
                                        daemon=True)
        self._thread.start()
        return report

    def _open_in_reserve(self) -> RepairReport:
        """``_open_storage``; when that fails for want of space, again in the room of
        the reserve (``collector.storage.disk_space``), released a slice at a time as
        retention spends it: opening writes (the index's -shm and WAL, a start
        checkpoint, maybe a segment header), and a store restarted on a disk full to the
        last byte could not open at all, nor then let retention free space. What the
        opening does not need stays reserved for retention's digests: released whole,
        it went to the apps' batches when retention had nothing to delete yet, and the
        first pass that had, later, could not sign. Too little room even with the whole
        reserve released: ``DiskFullError``."""
        try:
            return self._open_storage()
        except Exception as exc:
            if not self._opening_refused(exc):
                raise
            self._discard_storage()  # the lock stays held for the next attempts
            full = exc
        reserve = Reserve(self.settings.data_dir)
        if not reserve.size():
            raise DiskFullError(f"its disk is full ({full}), and no reserve is left "
                                f"to release") from full
        try:
            return reserve.spend(self._open_or_discard, full,
                                 f"{_OPENING_IN_RESERVE} (opening: {full})",
                                 refused=self._opening_refused)
        except Exception as exc:
            if not self._opening_refused(exc):
                raise
            raise DiskFullError(f"its disk is full ({exc}), even with the reserve "
                                f"released") from exc

    def _open_or_discard(self) -> RepairReport:
        """``_open_storage``, closing what it got to if it fails (tried again)."""
        try:
            return self._open_storage()
        except BaseException:
            self._discard_storage()
            raise

    def _opening_refused(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised by ``_open_storage``, is its disk still full."""
        return (isinstance(exc, (OSError, sqlite3.Error, StorageError))
                and out_of_space(exc, self.settings.data_dir))

    def _open_storage(self) -> RepairReport:
        write_lock = WriteLock()
        self._index, report = open_and_recover(
            self.index_path, self.segments_dir, self.quarantine_dir,
            make_index=lambda path: Index(path, write_lock))
        index = self._index
        self._ledger = None
        if self.settings.chain:
            from collector.integrity.ledger import Ledger  # cryptography: collector extra

            self._ledger = Ledger.open(self.settings.data_dir, self.settings.signing_key,
                                       self.settings.digest_interval, self.quarantine_dir)
        # Numbers something durable already names are never given again (the newest
        # segment file may be gone: deleted while the collector was stopped).
        named_segment, named_record = report.named_segment, report.named_record
        if self._ledger is not None:
            signed_segment, signed_record = self._ledger.named()
            named_segment = max(named_segment, signed_segment)
            named_record = max(named_record, signed_record)
        self._segments = SegmentSet(self.settings, self.segments_dir, index, self._wake.set,
                                    self._ledger, named_segment)
        report.missing_newest = self._segments.missing_newest
        if self._ledger is not None:
            self._ledger.started(self._segments.sealed_files(), self._segments.active)
            self._sign_start_in_reserve(self._ledger)
        chunk = index.open_chunk
        if chunk is not None and chunk.segment != self._segments.active.header.seq:
            index.close_chunk()  # a crash right after a rotation left it open
        self._indexer = ChunkIndexer(self.index_path, write_lock)
        for closed in index.closed_chunks():
            self._indexer.submit(closed, at_open=True)
        index.newly_closed.clear()
        self._writer = GroupWriter(index, self._segments, self._indexer, self._ledger)
        self._writer.next_seq = max(self._writer.next_seq, named_record + 1)
        self._loss_acks, self._acks_unsaved, self._forgotten_unsaved = \
            self._load_loss_acks(index)
        if self._forgotten_unsaved:
            # Left out in memory only, the file kept them: a source of the same name
            # seen during this run had the old acknowledgement at the next start.
            self._save_forgotten()
        return report

    def _load_loss_acks(self, index: Index
                        ) -> tuple[dict[str, loss_acks.Ack], str | None, bool]:
        """The acknowledgements, the record of those the file lacks (None: it lacks
        none; see ``_acks_unsaved``), and whether the file names sources the store no
        longer knows (see ``_forgotten_unsaved``). A staged file left by the last run (see
        ``loss_acks``) is put in place if its record was written (the acknowledgement
        was made: the record says so), removed if not."""
        data_dir = self.settings.data_dir
        acks, unsaved = loss_acks.load(data_dir), None
        left = loss_acks.staged(data_dir)
        path = data_dir / loss_acks.STAGED_NAME
        if left is not None and not loss_acks.claimed(
                left, lambda record: bool(index.known_ids([id_key(record)]))):
            path.unlink(missing_ok=True)  # never recorded: never made
        elif left is not None:
            acks, record = left
            try:
                loss_acks.commit(path)
                log.info("audit store: put %s, recorded by %s, in place",
                         loss_acks.FILE_NAME, record)
            except OSError as exc:
                log.error("audit store: cannot put %s in place (%s): the acknowledgements "
                          "its record %s claims apply, and are put in place at the next "
                          "acknowledgement", path, exc, record)
                unsaved = record
        # Only the sources the store knows: a source retention forgot (its file not
        # rewritten since, or by a version that kept them) does not hand its
        # acknowledgement to a source of the same name.
        known = self._writer.sources
        applied = {name: ack for name, ack in acks.items() if name in known}
        return applied, unsaved, len(applied) < len(acks)

    def _sign_start_in_reserve(self, ledger: Ledger) -> None:
        """The start checkpoint (and a seal written at start-up) on disk now, in the
        released reserve's room if the disk is full: it signs what the store holds,
        a previous run's records whose own digests met the same full disk included.
        Only queued (retried at every tick), they were lost when the collector was
        stopped before space was freed, and ``verify`` called the active segment's
        digests removed (an INVALID store)."""
        try:
            ledger.flush()
        except OSError as exc:
            if not is_full(exc):
                return  # queued: retried at every tick, as before
            try:  # a slice at a time, as retention (``_open_in_reserve`` says why)
                Reserve(self.settings.data_dir).spend(
                    ledger.flush, exc, f"{_OPENING_IN_RESERVE} (the start checkpoint: {exc})")
            except OSError:
                pass  # still queued (the ledger logged why): retried at every tick

    def close(self) -> None:
        """Drain pending submissions (written and acknowledged), fsync, stop the threads."""
        with self._lock:
            if self._state != "open":
                self._state = "closed"
                return
            self._state = "closing"
        self._wake.set()
        assert self._thread is not None
        self._thread.join()
        self._writer.close()
        try:
            if self._ledger is not None:
                self._ledger.stopped(self._segments.active)
                self._ledger.close()
            self._segments.close()
        finally:
            self._release_storage()
            self._state = "closed"

    def _discard_storage(self) -> None:
        """Close what an ``open`` that failed got to, writing nothing more (its retry, or
        the next start, starts over): a collector waiting for disk space tries again
        and again, and leaked a segment file and threads each time."""
        # In this order: the segments abandoned (nothing written), then what they used.
        for name, end in (("_segments", "abandon"), ("_ledger", "close"),
                          ("_indexer", "close"), ("_index", "close")):
            part = getattr(self, name, None)
            if part is not None:
                getattr(part, end)()
            if hasattr(self, name):
                delattr(self, name)

    def _release_storage(self) -> None:
        """Stop the indexer (it finishes the closed chunks' indexes), close the index,
        release the data directory: whatever of it ``open`` got to."""
        indexer = getattr(self, "_indexer", None)
        if indexer is not None:
            indexer.close()
        index = getattr(self, "_index", None)
        if index is not None:
            index.close()
        self._dir_lock.close()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def _check_failed_write(self) -> None:
        """While the last write failed and no batch comes, see whether that failure has
        ended, so that ``refusal`` (which reads only memory) says so: a collector a load
        balancer took out of rotation for it gets no batch to show that it ended, and
        stayed out for good. The next batch tells for sure: failing again, it is said
        again. A full disk ends once it has ``RESERVE_ROOM`` free (``_room_to_write``:
        the data directory's disk and ``segments/``'s; judged here, on this thread, and
        not by the probe: a hung disk can hold statvfs, and a probe must answer at
        once) and ``segments/`` takes a write again (a file written, fsynced, removed);
        an index that refuses a write even then fails otherwise (``WRITE_FAILING``,
        which still needs that room: ``_needs_room``).
        The other failures of a file or of the index (an I/O error, a read-only file
        system or file, a quota, the index's lock held) end once both take a write
        (``_takes_writes``; a pass that finds the indexer writing judges nothing).
        Judged by the segments' write alone, an index's error (SQLite's "disk I/O
        error", a read-only or full index file) lasted until a batch was written: none
        came to a collector out of rotation, unready for good. A bug's error ends with
        a batch only (``failures.checkable``)."""
        writer = self._writer
        if writer.failure is None and self._commit_failure is None:
            self._needs_room = False  # a batch was written
            return
        if DISK_FULL in (writer.failure, self._commit_failure):
            self._check_full_disk()
            return
        said = [(writer.failure, writer.failure_checkable),
                (self._commit_failure, self._commit_failure_checkable)]
        if any(failure is not None and not judged for failure, judged in said):
            return  # a bug's: only a batch written shows it ended
        # A full disk's failure the index turned write_failing needs room all the same:
        # ended by the checks alone, it read ready on a disk full again by the time the
        # index let go (the checks' small writes fit), and every batch failed again.
        if self._needs_room and not self._room_to_write():
            return
        if self._takes_writes():
            writer.failure = None
            self._commit_failure = None
            self._needs_room = False

    def _check_full_disk(self) -> None:
        """``_check_failed_write`` for a full disk: it ends once both disks have
        ``RESERVE_ROOM`` free and ``segments/`` takes a write; into ``WRITE_FAILING``
        (still needing that room: ``_needs_room``) if the index refuses a write even then."""
        # The write too: a disk can be full with free blocks showing (no inode left
        # for a new segment, a file system's metadata full), and judged by them
        # alone it read ready half a second after each batch it refused.
        if not (self._room_to_write() and self._directory_takes_a_write(self.segments_dir)):
            return
        index_takes = self._index_takes_a_write()
        if index_takes is None:
            return  # not judged this pass
        # Space freed: the next batch is written (or fails again, said). An index that
        # refuses a write even so fails otherwise: said so, never ready.
        ended: WriteFailure | None = None if index_takes else WRITE_FAILING
        self._needs_room = not index_takes
        writer = self._writer
        if writer.failure == DISK_FULL:
            writer.failure = ended
        if self._commit_failure == DISK_FULL:
            self._commit_failure = ended

    def _takes_writes(self) -> bool:
        """Whether both files a commit writes take a write now: ``segments/`` (a new
        file) and the index (``_index_takes_a_write``); False too when the index's
        was not judged this pass."""
        return (self._directory_takes_a_write(self.segments_dir)
                and self._index_takes_a_write() is True)

    def _index_takes_a_write(self) -> bool | None:
        """Whether the index takes a write now: a new file in its directory (the data
        directory) and a write in it (``Index.check_writes``). None: not judged this
        pass (the indexer holds the in-process write lock; waiting for it could take
        SQLite's whole busy timeout). The file first: the index's own write can reuse
        the WAL's room after a checkpoint, needing no new block, and went through over
        a quota (``EDQUOT``, which SQLite says is an I/O error) that failed every batch."""
        if not self._directory_takes_a_write(self.settings.data_dir):
            return False
        try:
            return True if self._index.check_writes() else None
        except sqlite3.Error:
            return False  # still failing: said as it is (the commit's failure is in the log)

    def _room_to_write(self) -> bool:
        """Whether both disks a commit writes to have ``RESERVE_ROOM`` free: the data
        directory's (the index) and that of ``segments/``, which may be a file system of
        its own (a mount there, or a symlink to one). Judged by the data directory's
        alone, a full segments disk with a few KiB left (which the write check's one
        byte takes) read ready, and every batch failed again."""
        return all(free_bytes(d) >= RESERVE_ROOM
                   for d in (self.settings.data_dir, self.segments_dir))

    @staticmethod
    def _directory_takes_a_write(directory: Path) -> bool:
        """Whether a new file of a batch's room can be written, fsynced and removed in
        ``directory``."""
        path = directory / _WRITE_CHECK
        try:
            write_new_file(path, _WRITE_CHECK_DATA, FILE_MODE)
            path.unlink()
        except OSError:
            return False  # still failing: said as it is (the commit's failure is in the log)
        return True

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

    # -- stats --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        writer = getattr(self, "_writer", None)
        if writer is None:
            raise StoreClosedError("stats are kept from Store.open() on: open the store first")
        now = time.monotonic()
        recent = sum(n for t, n in list(writer.rate) if now - t <= RATE_WINDOW)
        counts = writer.counts
        with writer.lock:  # copies only, the commit thread waits on it (ranges are
            # replaced on commit, never changed in place: the copies stay consistent)
            snapshot = dict(writer.sources), dict(writer.numbered), dict(writer.seen)
        acknowledged = {source: ack.through for source, ack in self._loss_acks.items()}
        known = sources.overview(*snapshot, acknowledged=acknowledged)
        with self._lock:
            pending = sum(len(s.encoded.ids) for s in self._pending)
            rejected = self._rejected_count
        # An operator may delete a quarantined file between the listing and its stat, or
        # the whole directory once reviewed: none then (the stats task died of it).
        try:
            quarantined = file_sizes(self.quarantine_dir.iterdir())
        except FileNotFoundError:
            quarantined = {}
        return {
            "events": writer.stored,
            **self._segments.stats(),
            "unindexed_chunks": self._indexer.backlog,
            "segments_dropping": self._indexer.drops_pending,
            "written": counts["written"],
            "duplicates": counts["duplicates"],
            "rejected": rejected,
            "write_errors": counts["write_errors"],
            "last_error": writer.last_error or self._failures.newest
            or self._segments.last_error or self._indexer.failed or self._indexer.drop_error,
            "pending": pending,
            "quarantined": len(quarantined),
            "quarantined_bytes": sum(quarantined.values()),
            # What an operator alerts on before the disk fills (beside "segments"' bytes,
            # which retention_bytes caps). A stat and a statvfs: read at each scrape and
            # stats file write, off the event loop (GET /metrics, the OpenTelemetry
            # reader and serve's stats task share one reading on a daemon thread of its
            # own, collector/single_flight.py; the losses listing calls this in a worker
            # thread; serve's last write, at a stop, once ingest and the API are closed),
            # so a hung disk holds that thread, never ingest or GET /healthz (``refusal``
            # reads memory only). None (no gauge) when the file system cannot be asked:
            # 0 read as a full disk.
            "index_bytes": index_files_bytes(self.index_path),
            "disk_free_bytes": known_free_bytes(self.settings.data_dir),
            "retention_deleted": counts["retention_deleted"],
            "sources_forgotten": counts["sources_forgotten"],
            "ingest_rate": round(recent / RATE_WINDOW, 1),
            "fsyncs": counts["fsyncs"],
            "events_per_fsync": round(counts["written"] / counts["fsyncs"], 1)
            if counts["fsyncs"] else 0.0,
            "fsync_seconds_total": round(writer.fsync_seconds_total, 6),
            "fsync_seconds_max": round(writer.fsync_seconds_max, 6),
            "commit_wait_seconds": round(self.waiting_seconds(), 6),
            "sources": known.reports,
            "sources_total": known.total,
            "sources_omitted": known.omitted,
            "gap_events": known.gap_events,
            "unreceived_tail_events": known.unreceived_tail_events,
            "unacknowledged_gap_events": known.unacknowledged_gap_events,
            "unacknowledged_tail_events": known.unacknowledged_tail_events,
            "integrity": self.integrity_stats(),
        }

    def waiting_seconds(self) -> float:
        """How long the oldest work not yet written (a batch being written, or one
        queued for the next group) has waited; 0.0 when there is none, however long the
        store idles."""
        with self._lock:
            batch, since = self._batch, self._batch_since
            queued = self._pending_since if self._pending else None
        # A batch whose futures are all answered is written (or failed), though the
        # commit thread is still in its commit (waiting for the indexer to catch up,
        # ``index_closed_chunks``): counted until then, an acknowledged batch said
        # write_stalled. The list is never changed once taken: read without the lock.
        if since is None or all(sub.future.done() for sub in batch):
            since = queued
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def refusal(self) -> str | None:
        """Why the store cannot take events now, or None when it can: ``NOT_OPEN`` (before
        ``open``, from ``close`` on), ``WRITE_STALLED`` (work has waited for the commit
        thread longer than ``write_stall_timeout``: a hung fsync; until it is written),
        ``DISK_FULL`` (the last commit failed for want of space) or ``WRITE_FAILING``
        (it failed otherwise, or the commit thread is ending or has ended: see
        ``_refuse_for_good``). A failure lasts until a commit writes records, or until
        the idle commit thread sees it ended (``_check_failed_write``: the disks have
        ``RESERVE_ROOM`` free again, ``segments/`` and the index take a write again). Read from
        memory only, under no lock held across I/O, so that a probe answers at once on a
        hung disk: the commit thread held in that check's statvfs leaves ``DISK_FULL``
        said, then ``WRITE_STALLED`` once a batch has waited past the timeout."""
        with self._lock:
            if self._state != "open":
                return NOT_OPEN
        # The commit thread ending (``_refuse_for_good``, before it logs its end, on every
        # way out of it while open): only a BaseException does that (a SystemExit in it,
        # which threading does not even log); nothing is written from then on.
        if self._ended is not None:
            return WRITE_FAILING
        # First: a commit hung now says more than how the last one ended.
        if self.waiting_seconds() > self.settings.write_stall_timeout:
            return WRITE_STALLED
        return self._writer.failure or self._commit_failure

    def integrity_stats(self) -> dict[str, Any] | None:
        """The signed digests' figures (``Ledger.stats``); None when the store keeps no
        hash chain (``chain = false``)."""
        return self._ledger.stats() if self._ledger is not None else None
