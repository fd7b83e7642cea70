"""Free space on the data directory's disk, and the space the store keeps back for
retention.

Retention signs a digest before it deletes anything (``verify`` then tells retention
from theft; ``collector.integrity.ledger``). On a disk full to the last byte that digest
cannot be written, so retention deleted nothing, the disk stayed full, and the store
took no record until someone freed space by hand, however old its segments were. The
store therefore keeps a ``reserve`` file of ``RESERVE_BYTES`` in the data directory:
when the retention digest meets a full disk, the reserve is deleted and the digest
written in its place, then the segments. The reserve is made again right after, out of
the space the deletions freed, before the apps' retried batches take it: made later
(once the disk had room to spare), it never was, as ingest refilled each freed segment
within a second, and the next pass met a full disk again with no reserve
(``tests/faults/test_disk_full.py``). Never out of the last free bytes
(``RESERVE_ROOM``).

Start-up writes too (the index's ``-shm`` and WAL, the start checkpoint, a new
segment's header): restarted on a disk full to the last byte, the store could not open
and the collector exited, however old its segments. ``Store.open`` therefore releases
the reserve when its opening fails for want of space (``out_of_space``) and opens again
in its room, and retention's first pass runs before the first batch is written, so that
what is left of that room signs its deletions.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path
from typing import Final

from collector.storage.regular_files import write_new_file

__all__ = ["RESERVE_BYTES", "RESERVE_NAME", "Reserve", "free_bytes", "is_full",
           "out_of_space"]

log = logging.getLogger("collector.store")

RESERVE_NAME: Final = "reserve"
#: A retention digest is a line of ~600 bytes (and a new digest file's first block):
#: 256 KiB holds hundreds. Small enough to be made again out of what one deleted
#: segment frees.
RESERVE_BYTES: Final = 256 * 1024
#: Free bytes the disk must have before the reserve is made (again).
RESERVE_ROOM: Final = RESERVE_BYTES + 64 * 1024
_FILE_MODE: Final = 0o640
#: Seconds before retention's pass (every 0.5 s) makes the reserve again after it could
#: not, or after it was released and the digest still could not be written (a full disk
#: the reserve does not help: full metadata, no inode...): the pass made it and released
#: it again each time, a 256 KiB write and fsync on the commit thread and a warning.
RESERVE_RETRY: Final = 30.0


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on ``directory``'s file system."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def is_full(exc: OSError) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def out_of_space(exc: BaseException, directory: Path) -> bool:
    """Whether ``exc`` (or an error it was raised from) is the disk of ``directory``
    being full. SQLite says "database or disk is full" (``SQLITE_FULL``) when a write
    fails so, but only "disk I/O error" when it cannot grow its ``-shm`` file (which the
    index needs before its first read): that counts when the disk is nearly full too."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and is_full(seen):
            return True
        name = getattr(seen, "sqlite_errorname", "") or ""
        if name == "SQLITE_FULL" or (name.startswith("SQLITE_IOERR")
                                     and free_bytes(directory) < RESERVE_ROOM):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Reserve:
    """The reserve file of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / RESERVE_NAME
        self._retry_at = 0.0  # time.monotonic(): not made again before (but after deletions)
        self._failures = 0

    def ensure(self, after_deletions: bool = False) -> None:
        """Make the reserve if it is missing and the disk has room for it. Cheap when
        it is there (a stat); a failure is only logged: the store runs without it. Not
        tried again for ``RESERVE_RETRY`` after a failure or a release, unless retention
        just deleted segments (``after_deletions``: out of the space they freed)."""
        if self._whole() or (not after_deletions and time.monotonic() < self._retry_at):
            return
        if free_bytes(self.path.parent) < RESERVE_ROOM:
            return
        try:
            # Random bytes, not zeros: a compressing file system (btrfs compress=, ZFS)
            # stores zeros in next to nothing (8 KiB of 256 KiB measured on btrfs), and
            # the release would free nothing.
            write_new_file(self.path, os.urandom(RESERVE_BYTES), _FILE_MODE)
        except OSError as exc:
            self._retry_at = time.monotonic() + RESERVE_RETRY
            self._failures += 1
            n = self._failures
            if n & (n - 1) == 0:  # at 1, 2, 4, 8, ... failures: said, not a flood
                log.warning("audit store: could not make the disk space reserve %s (%s); "
                            "trying again later (%d failures so far)", self.path, exc, n)
            return
        self._failures = 0

    def _whole(self) -> bool:
        """Whether the reserve is there at its full size (a kill while it was written
        leaves it short, or empty: a release would free nothing)."""
        try:
            return self.path.stat().st_size >= RESERVE_BYTES
        except FileNotFoundError:
            return False

    def release(self, why: str = "retention can sign its deletions and free space (it "
                "is made again out of the space they free)") -> bool:
        """Delete the reserve, freeing its space now so that ``why`` (said in the
        warning); False if there was none."""
        try:
            size = self.path.stat().st_size
            self.path.unlink()
        except FileNotFoundError:
            return False
        self._retry_at = time.monotonic() + RESERVE_RETRY
        log.warning("audit store: the disk is full; released the %d-byte reserve %s so "
                    "that %s", size, self.path, why)
        return True
