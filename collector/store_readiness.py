"""The store's readiness (a part of ``Store``, which inherits it): why it cannot take
events now (``refusal``, what ``GET /healthz`` says), read from memory only so that a
probe answers at once on a hung disk; and the idle commit thread's judging of whether a
failed write has ended (``_check_failed_write``): free space again, and a write that goes
through in ``segments/``, in the data directory and in the index.

What a failure is, and what ends it, is ``collector.storage.failures``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from collector.index import Index
from collector.storage.disk_space import BATCH_ROOM, RESERVE_ROOM, free_bytes, known_free_bytes
from collector.storage.failures import (
    DISK_FULL,
    NOT_OPEN,
    WRITE_FAILING,
    WRITE_STALLED,
    WriteFailure,
)
from collector.storage.group_commit import GroupWriter, Submission
from collector.storage.regular_files import write_new_file
from collector.storage.segments import FILE_MODE

if TYPE_CHECKING:
    from collector.store_settings import StorageSettings

#: The file an idle commit thread writes, fsyncs and removes in ``segments/`` and in the
#: data directory (the index's) while a write failure is said (a full disk's once it
#: shows room: ``_Readiness._check_failed_write``).
_WRITE_CHECK: Final = ".write-check"
#: What it writes: a batch's room, so that it takes new blocks (a quota with less left
#: refuses it), never only an inode's inline data.
_WRITE_CHECK_DATA: Final = b"\n" * BATCH_ROOM


class _Readiness:
    """``Store``'s readiness (see this module's doc)."""

    #: Set, and said, in ``Store.__init__`` (``_writer``, ``_index``: in ``Store.open``).
    settings: StorageSettings
    segments_dir: Path
    _lock: threading.Lock
    _state: str
    _pending: list[Submission]
    _pending_since: float
    _batch: list[Submission]
    _batch_since: float | None
    _ended: str | None
    _commit_failure: WriteFailure | None
    _commit_failure_checkable: bool
    _needs_room: bool
    _opened_full: bool
    _writer: GroupWriter
    _index: Index

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
        ``DISK_FULL`` (the last commit failed for want of space, or the store opened on a
        full disk: ``_say_full_at_open``) or ``WRITE_FAILING``
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

    def _say_full_at_open(self) -> None:
        """At ``open``: ``DISK_FULL`` said from the start when the disk is full already
        (the opening needed the reserve's room, ``_opened_full``, or a disk has less than
        a batch's room free), until the idle commit thread sees room
        (``_check_failed_write``) or a batch is written. Judged by the first batch
        alone, the probe said ready on a full disk, and a balancer sent the apps'
        batches on, each refused. A file system that cannot be asked is not judged."""
        free = [known_free_bytes(d) for d in (self.settings.data_dir, self.segments_dir)]
        if self._opened_full or any(f is not None and f < BATCH_ROOM for f in free):
            self._commit_failure = DISK_FULL
            self._commit_failure_checkable = True

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
