"""Appending batches to the spool: each written whole, and fsynced, to this process's
active file; a new file made (named in the order files are made, locked before it gets
its name) when there is none or it is full; and what is done when the disk refuses a
write, when the file is removed under the process, or when it meets the process's file
size limit. See ``spool``'s module doc."""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import secrets
import threading
import time
import zlib
from pathlib import Path

from .._counter import worth_saying
from .._dirs import make_dirs
from .spool_adoption import _Adoption
from .spool_files import (
    _PARTIAL,
    _TAG_MARK,
    NO_FLOCK,
    NO_FLOCK_ADVICE,
    SUFFIX,
    _File,
    _fsync_dir,
    _removed,
    _stamp_of,
    _unlink_quietly,
    _unsafe,
    log,
    no_flock,
)
from .spool_format import RECORD, _events_in, _write_all


class _Appending(_Adoption):
    """``Spool``'s appending of batches (see this module's doc)."""

    #: Set, and said, in ``Spool.__init__``.
    file_bytes: int
    _write_failures: int
    refusal: str
    written_unsynced: bool
    _unsynced_claimed: bool
    _unsynced_lock: threading.Lock
    _size_limit_said: bool

    def claim_unsynced(self) -> bool:
        """For a close giving up on the worker (another thread): True when the record
        being appended is whole in its file, its fsync under way, and then stays there
        whatever the fsync says (the caller counts it spooled). Truncated away after
        that count on a failed fsync, it was lost uncounted by a process that exited
        meanwhile, the close having said it would be replayed."""
        with self._unsynced_lock:
            self._unsynced_claimed = self.written_unsynced
            return self._unsynced_claimed

    def append(self, body: bytes) -> bool:
        """Store one batch body durably (written and fsynced); False when the spool is
        full or the disk refused it: the caller drops and counts. (True, too, for one
        the disk refused that could not be removed: see ``_keep_failed``.)"""
        if not self._scanned:
            self.adopt_orphans()
        record = RECORD.pack(len(body), zlib.crc32(body)) + body
        if not self._room_for(len(record)):
            self.refusal = (f"the spool {self.directory} is full (spool_max_bytes: "
                            f"{self.max_bytes} bytes, shared by every process spooling "
                            f"there)")
            return False
        kept = self._write(record)
        if kept is None:  # its file reached the file size limit: once more, in a new one
            kept = self._write(record)
        return bool(kept)

    def _write(self, record: bytes) -> bool | None:
        """``append`` the record to the active file (or a new one): True when it counts
        as spooled, False when the caller counts it dropped, None when the file reached
        the process's file size limit (see ``_size_limited``) and a new file may take it."""
        try:
            active = self._active
            if active is not None and _removed(active):
                self._removed_under_us(active)
                active = None
            if active is None or (active.size
                                  and active.size + len(record) > self._file_room()):
                active = self._new_file()
        except OSError as exc:
            self._write_failed(exc)
            return False
        written = [0]  # bytes of it in the file: its end, when even fstat fails
        claimed = False
        try:
            _write_all(active.fd, record, active.size, written)
            self.written_unsynced = True  # whole in the file: the next start replays it
            try:
                os.fsync(active.fd)
            finally:
                with self._unsynced_lock:  # a claim is seen here, or not made at all
                    self.written_unsynced = False  # synced, or truncated away below
                    claimed, self._unsynced_claimed = self._unsynced_claimed, False
        except OSError as exc:
            if claimed:
                self._write_failed(exc)
                return self._keep_claimed(active, record, exc)
            try:
                os.ftruncate(active.fd, active.size)  # no torn record, no unsynced one
            except OSError as again:
                self._write_failed(exc)
                return self._keep_failed(active, record, again, written[0])
            if exc.errno == errno.EFBIG and active.size:
                self._size_limited(active)
                return None
            self._write_failed(exc, _too_large(len(record)) if exc.errno == errno.EFBIG
                               else "")
            return False
        active.size += len(record)
        self._used += len(record)
        self._since += len(record)
        self._write_succeeded()
        return True

    def _keep_claimed(self, active: _File, record: bytes, error: OSError) -> bool:
        """A record whose fsync failed after a close counted it spooled
        (``claim_unsynced``): kept, as ``_keep_failed`` keeps one it cannot truncate,
        replayed if the disk kept it, else counted as corrupt when read. The file takes
        no more batches (the disk is failing)."""
        active.size += len(record)
        self._used += len(record)
        self._since += len(record)
        if active is self._active:
            self._active = None
        log.error("audit spool %s: the batch close() counted spooled could not be synced "
                  "(%s): its %d bytes stay in %s, replayed if the disk kept them, else "
                  "counted as corrupt when read; no more batches go to that file",
                  self.directory, error, len(record), active.path.name)
        return True

    def _size_limited(self, active: _File) -> None:
        """``active`` reached the process's file size limit (EFBIG: ``ulimit -f``,
        systemd's ``LimitFSIZE=``): kept as the file appended to, every later batch
        failed in it and was dropped while the spool had room. Later files are kept
        under the limit (``_file_room``, which said it)."""
        self._active = None

    def _file_room(self) -> int:
        """The size a spool file may reach: ``file_bytes``, or the process's file size
        limit (``RLIMIT_FSIZE``) below it, read as it is now. Lowered to the size of the
        file that met the limit, one too full for a large batch (of 2 KiB, under a limit
        of 64 KiB) made every later file that small (a descriptor for each), even once
        the limit was raised. Said once, when it first keeps files small."""
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit == resource.RLIM_INFINITY or limit >= self.file_bytes:
            return self.file_bytes
        if not self._size_limit_said:
            self._size_limit_said = True
            log.warning("audit spool %s: this process's file size limit (RLIMIT_FSIZE: "
                        "ulimit -f, systemd LimitFSIZE=) is %d bytes: spool files are "
                        "kept under it (not %d bytes), more files for as many batches; a "
                        "batch larger than it is dropped. Raise the limit to spare them",
                        self.directory, limit, self.file_bytes)
        return int(limit)

    def _removed_under_us(self, active: _File) -> None:
        """Our active file was removed by something else (an operator emptying a spool
        grown large, a temporary-file cleaner): appended to, later batches were counted
        spooled in a file no process could adopt, lost when this one exited. They go to
        a new file; what the removed one holds is still replayed from its descriptor."""
        self._active = None
        log.error("audit spool %s: %s was removed while this process spooled in it: its "
                  "batches are replayed by this process from the open file (lost if it "
                  "exits before the collector takes them); new batches go to a new file. "
                  "Do not remove spool files of a running app",
                  self.directory, active.path.name)

    def _write_failed(self, exc: OSError, why: str = "") -> None:
        """A batch the disk refused: said at the 1st, 2nd, 4th, ... in a row, with
        ``why`` (what it means and what to do, when the error alone does not say). Said
        at each, a full disk logged 20 errors a second through an outage, into logs as
        likely as not on that same disk; the caller counts the batches dropped."""
        self._write_failures += 1
        n = self._write_failures
        self.refusal = (f"the spool {self.directory} could not write it ({exc})"
                        + (f": {why}" if why else ""))
        if worth_saying(n):
            log.error("audit spool %s: could not write a batch (%s)%s%s", self.directory,
                      exc, f": {why}" if why else "",
                      f" ({n} in a row; said again at {2 * n})" if n > 1 else "")

    def _write_succeeded(self) -> None:
        if self._write_failures:
            log.warning("audit spool %s: writing batches again, after %d batches it could "
                        "not write", self.directory, self._write_failures)
            self._write_failures = 0

    def _keep_failed(self, active: _File, record: bytes, error: OSError,
                     written: int) -> bool:
        """A batch whose write or fsync failed could not be truncated away either: its
        bytes (all of them, or the part written) stay in the file, where whoever reads
        the file finds them. Counted dropped, they were also replayed (a whole record)
        or counted again as corrupt (a torn one) by the process that adopted the file;
        kept, the file's known end moves past them: a whole one is replayed like any
        other (unsynced: a power loss can still tear it, counted as corrupt when read),
        a torn one is counted lost when read. True when it counts as spooled; the file
        takes no more batches (the disk is failing). False (the caller counts it
        dropped) when nothing of it was written, or when it was torn inside its header
        line: its reader counts its bytes as corrupt but cannot count its events, so
        kept as spooled they were counted nowhere. ``written``: the bytes of it the
        writes took, its end when the file's size cannot be read."""
        try:
            end = os.fstat(active.fd).st_size
        except OSError:
            # Not the whole record: one torn in its header line was counted spooled,
            # and no reader could count its events (lost, counted nowhere).
            end = active.size + written
        if end <= active.size:
            return False  # nothing of it was written: dropped, as the caller counts
        kept = end - active.size
        active.size = end
        self._used += kept
        self._since += kept
        if active is self._active:
            self._active = None
        # What its reader will count of it: all of it (replayed whole), the events of
        # its header line (torn after it), or none (torn inside it: dropped now).
        spooled = kept >= len(record) or _events_in(record[:kept]) > 0
        log.error("audit spool %s: the batch that could not be written could not be "
                  "removed either (%s): its %d bytes stay in %s, %s; no more batches go "
                  "to that file", self.directory, error, kept, active.path.name,
                  "kept as spooled: replayed if whole, else counted as corrupt when read"
                  if spooled else "torn inside its header line: counted as dropped now, "
                  "its bytes as corrupt when read")
        return spooled

    def _new_file(self) -> _File:
        directory = self.directory
        make_dirs(directory, 0o700)
        if directory == self.configured and _unsafe(directory):
            self._directories.clear()  # made shared by someone else since we looked
            directory = self.directory
            directory.mkdir(mode=0o700, exist_ok=True)
        reason = _unsafe(directory, follow=directory == self.configured)
        if reason:
            raise PermissionError(reason)
        name = f"{self._stamp():020d}-{os.getpid()}-{secrets.token_hex(4)}"
        if self._tag:
            name += _TAG_MARK + self._tag
        partial = directory / (name + _PARTIAL)
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._opening.add(fd)
        path = directory / (name + SUFFIX)
        try:
            _lock_new(fd, directory)
            os.rename(partial, path)
            _fsync_dir(directory)
        except BaseException:  # no descriptor left open, no empty file behind
            self._opening.discard(fd)
            os.close(fd)
            _unlink_quietly(partial)
            _unlink_quietly(path)
            raise
        self._active = _File(path, fd, 0)
        self._files.append(self._active)
        self._opening.discard(fd)
        return self._active

    def _stamp(self) -> int:
        """A new file's time stamp, which orders it (files are replayed in name order):
        the clock's, but after every file this spool holds. A clock stepped back (NTP, a
        VM restored) gave a file a name before its elders', and whoever adopted them
        replayed the newer batches first."""
        return max([time.time_ns()] + [_stamp_of(f.path.name) + 1
                                       for f in self._files + self._unread])


def _lock_new(fd: int, directory: Path) -> None:
    """Lock a new spool file (its lock is its process's claim on it: see the module's
    doc). Where the file system has no ``flock``, every batch is dropped: the error
    said only "[Errno 37] No locks available", so it says what that means and what to
    do. (Spooling unlocked is no way out: any other process would adopt, replay and
    remove the files of a live one.)"""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno not in NO_FLOCK:
            raise
        raise OSError(exc.errno, f"{exc.strerror}: {no_flock(directory)}: every batch "
                      f"that cannot be delivered is dropped. {NO_FLOCK_ADVICE}") from exc


def _too_large(size: int) -> str:
    """Why a write of a ``size``-byte record to an empty spool file failed with EFBIG,
    and what to do: the process's file size limit is below one batch (said before any
    file reached it: ``_file_room`` never said it, nor what to do), or, with none that
    low, the file system's largest file."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit == resource.RLIM_INFINITY or limit >= size:
        return (f"this batch of {size} bytes is larger than the file system takes in "
                f"one file: lower the sink's batch_size (events per batch), or give a "
                f"spool_dir on another file system")
    return (f"this batch of {size} bytes is larger than this process's file size limit "
            f"(RLIMIT_FSIZE: ulimit -f, systemd LimitFSIZE=) of {limit} bytes, so every "
            f"batch that large is dropped: raise the limit (or remove it), or lower the "
            f"sink's batch_size (events per batch) so that batches fit under it")
