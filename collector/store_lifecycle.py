"""The store's opening and closing (a part of ``Store``, which inherits it).

Opening creates the directories, takes the data directory's lock
(``collector.storage.data_dir_lock``), repairs what a crash left and indexes what the
index lacks (``collector.storage.recovery``), opens the ledger, the segments, the indexer
and the group writer, loads the acknowledgements of losses, then starts the commit
thread; on a disk full to the last byte it does so in the room of the reserve
(``collector.storage.disk_space``). An opening that fails closes what it got to, writing
nothing more. Closing drains what is pending, stops the commit thread and the indexer and
releases the lock.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

from audit_middleware._dirs import make_dirs
from collector.index import Index
from collector.storage import loss_acks
from collector.storage.data_dir_lock import DataDirLock, lock_data_dir
from collector.storage.disk_space import Reserve, is_full, out_of_space
from collector.storage.errors import DiskFullError, StorageError
from collector.storage.group_commit import GroupWriter
from collector.storage.in_the_way import QUARANTINE, SEGMENTS, SEGMENTS_THEN, make_store_dir
from collector.storage.indexer import ChunkIndexer
from collector.storage.records import id_key
from collector.storage.recovery import RepairReport, open_and_recover
from collector.storage.segment_set import SegmentSet
from collector.storage.segments import DIR_MODE
from collector.storage.write_lock import WriteLock

if TYPE_CHECKING:
    from collector.integrity.ledger import Ledger
    from collector.store_settings import StorageSettings

log = logging.getLogger("collector.store")

#: Why the reserve is released at start-up (``_Lifecycle._open_in_reserve``), in its warning.
_OPENING_IN_RESERVE: Final = (
    "the store can open (its index, its start checkpoint) and retention sign its "
    "deletions; if retention has nothing to delete, records are refused (the apps spool) "
    "until space is freed on that disk")


class _Lifecycle:
    """``Store``'s opening and closing (see this module's doc)."""

    #: Set, and said, in ``Store.__init__``.
    settings: StorageSettings
    segments_dir: Path
    quarantine_dir: Path
    index_path: Path
    _lock: threading.Lock
    _wake: threading.Event
    _state: str
    _thread: threading.Thread | None
    _loss_acks: dict[str, loss_acks.Ack]
    _opened_full: bool
    _acks_unsaved: str | None
    _forgotten_unsaved: bool
    #: Made by ``open`` (``_dir_lock``) and ``_open_storage`` (the rest); an opening that
    #: failed leaves none of the parts ``_discard_storage`` closed.
    _dir_lock: DataDirLock
    _index: Index
    _ledger: Ledger | None
    _segments: SegmentSet
    _indexer: ChunkIndexer
    _writer: GroupWriter
    #: The commit thread's body (``Store``), and the rewrite of the acknowledgements'
    #: file without the sources retention forgot (``_LossAcknowledging``).
    _run_said: Callable[[], None]
    _save_forgotten: Callable[[], bool]
    #: ``DISK_FULL`` said from the open on a full disk (``_Readiness``).
    _say_full_at_open: Callable[[], None]

    def open(self) -> RepairReport:
        """Create the directories, repair what a crash left (a torn tail goes to
        quarantine), index records missing from the index, start the commit thread."""
        if self._state != "new":
            raise StorageError("this Store was opened already: create a new Store")
        make_dirs(self.settings.data_dir, DIR_MODE)
        # Put back, not made anew: a new, empty segments/ would start a store beside the
        # records (a link to a disk not mounted, say).
        make_store_dir(self.segments_dir, DIR_MODE, SEGMENTS, SEGMENTS_THEN)
        make_store_dir(self.quarantine_dir, DIR_MODE, QUARANTINE)
        self._dir_lock = lock_data_dir(self.settings.data_dir)
        try:
            report = self._open_in_reserve()
        except BaseException:
            self._discard_storage()
            self._release_storage()
            raise
        self._say_full_at_open()
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
        self._opened_full = True
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
            self._opened_full = True
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
