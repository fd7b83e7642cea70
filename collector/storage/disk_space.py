"""Free space on the data directory's disk, and the space the store keeps back for
retention.

Retention signs a digest before it deletes anything (``verify`` then tells retention
from theft; ``collector.integrity.ledger``). On a disk full to the last byte that digest
cannot be written, so retention deleted nothing, the disk stayed full, and the store
took no record until someone freed space by hand, however old its segments were. The
store therefore keeps a ``reserve`` file of ``RESERVE_BYTES`` in the data directory:
when the retention digest meets a full disk, a slice of the reserve (``SLICE``, cut off
its end; more slices if the digest needs them) is released and the digest written in
its room, then the segments deleted. The reserve is made whole again right after each
deletion, out of the space it freed, before anything else may take it, however little
that is (no room to spare asked for, ``RESERVE_ROOM``, as when it is made otherwise):
made later (once the disk had room to spare), it never was, as ingest refilled each
freed segment within a second (``tests/faults/test_disk_full.py``); and made only with
``RESERVE_ROOM`` free, a pass whose deletions freed less than 64 KiB over the reserve's
own room left none at all, the room went to the next writer, and no retention digest
could be written again: retention stalled for good, the disk full of expired segments
(``tests/faults/test_disk_full_reserve.py``). Released a slice at a time, the reserve
keeps the rest for the next passes even when another writer takes all a pass frees.

Start-up writes too (the index's ``-shm`` and WAL, the start checkpoint, a new
segment's header): restarted on a disk full to the last byte, the store could not open
and the collector exited, however old its segments. ``Store.open`` therefore spends the
reserve the same way when its opening fails for want of space (``out_of_space``): a
slice at a time, opening again in its room after each, and retention's first pass runs
before the first batch is written, so that what is left of that room signs its
deletions. Released whole there, the reserve went for good to the apps' retried batches
when retention had nothing to delete yet, and the first pass with something to delete,
later on the same full disk, could not sign: retention stalled until space was freed by
hand.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, TypeVar

from audit_middleware._counter import worth_saying
from collector.storage.regular_files import fsync_dir, write_new_file

__all__ = ["RESERVE_BYTES", "RESERVE_NAME", "SLICE", "Reserve", "error_chain", "free_bytes",
           "is_full", "known_free_bytes", "out_of_space"]

log = logging.getLogger("collector.store")

RESERVE_NAME: Final = "reserve"
#: A retention digest is a line of ~600 bytes (and a new digest file's first block):
#: 256 KiB holds hundreds. Small enough to be made again out of what one deleted
#: segment frees.
RESERVE_BYTES: Final = 256 * 1024
#: The room a batch's commit takes (its records, the index's pages in the WAL).
BATCH_ROOM: Final = 64 * 1024
#: Free bytes the disk must have before the reserve is made (again), except right after
#: retention deleted segments (``Reserve.ensure``).
RESERVE_ROOM: Final = RESERVE_BYTES + BATCH_ROOM
#: What retention releases of the reserve at a time for its digest (a few digests, a new
#: digest file or two), and what the reserve is written in.
SLICE: Final = 64 * 1024
_FILE_MODE: Final = 0o640
#: Seconds before retention's pass (every 0.5 s) makes the reserve again after it could
#: not, or after it was released and the digest still could not be written (a full disk
#: the reserve does not help: full metadata, no inode...): the pass made it and released
#: it again each time, a 256 KiB write and fsync on the commit thread and a warning.
RESERVE_RETRY: Final = 30.0
#: Why retention spends the reserve, in the warning of ``Reserve.spend``.
FOR_RETENTION: Final = ("retention can sign its deletions and free space (made whole again "
                        "out of the space they free)")

_T = TypeVar("_T")


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on ``directory``'s file system; 0 when
    it cannot be asked: a writer then waits as for a full disk."""
    free = known_free_bytes(directory)
    return 0 if free is None else free


def known_free_bytes(directory: Path) -> int | None:
    """``free_bytes``, or None when the file system cannot be asked (an I/O error, a
    directory gone): what a figure for an operator says, not a full disk's 0."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def is_full(exc: OSError) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def out_of_space(exc: BaseException, directory: Path) -> bool:
    """Whether ``exc`` (or an error it was raised from) is the disk of ``directory``
    being full. SQLite says "database or disk is full" (``SQLITE_FULL``) when a write
    fails so, but only "disk I/O error" when it cannot grow its ``-shm`` file (which the
    index needs before its first read): that counts when the disk is nearly full too."""
    for seen in error_chain(exc):
        if isinstance(seen, OSError) and is_full(seen):
            return True
        name = getattr(seen, "sqlite_errorname", "") or ""
        if name == "SQLITE_FULL" or (name.startswith("SQLITE_IOERR")
                                     and free_bytes(directory) < RESERVE_ROOM):
            return True
    return False


def error_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then the errors it was raised from or while handling, innermost last."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


class Reserve:
    """The reserve file of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / RESERVE_NAME
        self._retry_at = 0.0  # time.monotonic(): not made again before (but after deletions)
        self._failures = 0

    def ensure(self, after_deletions: bool = False) -> bool:
        """Make the reserve whole if it is missing or short and the disk has room for
        it. Cheap when it is whole (a stat); a failure is only logged: the store runs
        without it. Not tried again for ``RESERVE_RETRY`` after a failure or a release,
        unless retention just deleted segments (``after_deletions``): then out of the
        space they freed, as much of it as the reserve lacks, before any other writer
        may take it, and without the room to spare asked otherwise (what it takes is
        what retention's digest used of it). False if a write failed."""
        size = self.size()
        missing = RESERVE_BYTES - size
        if missing <= 0 or (not after_deletions and time.monotonic() < self._retry_at):
            return True
        free = free_bytes(self.path.parent)
        if after_deletions:
            # All of it if need be: a reserve left short after a release is what every
            # later retention pass on a full disk signs in, the batches kept waiting
            # only until the next deletions free more.
            want = min(missing, free)
        elif free >= missing + RESERVE_ROOM - RESERVE_BYTES:
            want = missing
        else:
            return True
        if want <= 0:
            return True
        try:
            self._grow(size, want)
        except OSError as exc:
            self._retry_at = time.monotonic() + RESERVE_RETRY
            self._failures += 1
            n = self._failures
            if worth_saying(n):  # at 1, 2, 4, 8, ... failures: said, not a flood
                log.warning("audit store: could not make the disk space reserve %s (%s); "
                            "trying again later (%d failures so far)", self.path, exc, n)
            return False
        self._failures = 0
        return True

    def size(self) -> int:
        """The reserve's size; 0 when missing or not a regular file (made afresh). A
        kill while it was written leaves it short, or empty: made whole again."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return 0
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

    def _grow(self, size: int, more: int) -> None:
        """Add ``more`` random bytes to the reserve (of ``size``), a slice at a time,
        keeping what a disk that fills meanwhile took. Random bytes, not zeros: a
        compressing file system (btrfs compress=, ZFS) stores zeros in next to nothing
        (8 KiB of 256 KiB measured on btrfs), and the release would free nothing.
        ``OSError`` if not a byte could be added (a reserve made afresh is not left)."""
        added = 0
        if size == 0:
            # Made afresh, empty (a link planted under its name is not followed), then
            # grown as a short one is: its first slice written all or nothing, a disk
            # that filled meanwhile (another writer after the look at its free space, a
            # full quota that look does not show) took part of it and none was left.
            write_new_file(self.path, b"", _FILE_MODE)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            while added < more:
                try:
                    added += os.write(fd, os.urandom(min(more - added, SLICE)))
                except OSError as exc:
                    if not is_full(exc) or added == 0:
                        raise
                    break  # the disk is full: what it took stays reserved
            os.fsync(fd)
        except BaseException:
            if size == 0 and added == 0:
                self.path.unlink(missing_ok=True)  # an empty reserve frees nothing
            raise
        finally:
            os.close(fd)
        if size == 0:
            # Its name durable too: a power loss could otherwise drop the new entry (its
            # blocks with it), and the next start on a full disk found no reserve to
            # open in, or retention none to sign in.
            fsync_dir(self.path.parent)

    def spend(self, write: Callable[[], _T], full: BaseException, why: str = FOR_RETENTION,
              refused: Callable[[BaseException], bool] | None = None) -> _T:
        """``write``, which met a full disk (``full``), again in the reserve's room:
        released a slice (``SLICE``) at a time, until ``write`` succeeds (its result),
        the rest kept for the next pass whatever takes the room this one frees; ``why``
        is said in the warning. ``refused(exc)``: whether an error of ``write`` is the
        disk still full (by default, an ``OSError`` saying so); any other is raised as
        it is. Raises ``write``'s last error (``full`` if there was no reserve) once the
        reserve is used up."""
        still_full = refused or _full_os_error
        released = 0
        last = full
        try:
            while True:
                freed = self._release_slice()
                if freed == 0:
                    raise last
                released += freed
                try:
                    return write()
                except Exception as exc:
                    if not still_full(exc):
                        raise
                    last = exc
        finally:
            if released:
                self._retry_at = time.monotonic() + RESERVE_RETRY
                log.warning("audit store: the disk is full; released the %d bytes it "
                            "needed of the disk space reserve %s (%d left) so that %s",
                            released, self.path, self.size(), why)

    def _release_slice(self) -> int:
        """Free up to ``SLICE`` bytes of the reserve (its end; the file goes with its
        last slice); how many (0: no reserve left)."""
        size = self.size()
        if size <= SLICE:
            try:
                self.path.unlink()
            except FileNotFoundError:
                return 0
            return size
        fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size - SLICE)
            os.fsync(fd)  # freed blocks a journal holds until its commit (ext4) are free now
        finally:
            os.close(fd)
        return SLICE


def _full_os_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and is_full(exc)
