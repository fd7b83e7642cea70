"""The data directory's lock: one writer process per data directory (the collector's
store, or ``reindex``), held from ``Store.open`` to ``Store.close``. ``verify`` and the
index's read-only readers ask ``data_dir_held`` whether a writer runs.

Not the index's write lock (``write_lock.py``), which orders the threads of one process.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Final

from .errors import DataDirInUseError
from .in_the_way import in_the_way
from .regular_files import open_regular_fd
from .segments import FILE_MODE

__all__ = ["LOCK_FILE", "DataDirLock", "data_dir_held", "data_dir_holder", "lock_data_dir"]

LOCK_FILE: Final = "store.lock"


class DataDirLock:
    """This process's hold on a data directory; ``close()`` lets it go."""

    def __init__(self, fds: list[int]) -> None:
        self._fds = fds

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())


def data_dir_held(data_dir: Path) -> bool:
    """Whether a process holds ``data_dir`` (``lock_data_dir``) right now: its lock file
    or the directory itself, which cannot be replaced under it as the file can. False
    also when neither could be looked at (``data_dir_holder`` tells that apart)."""
    return data_dir_holder(data_dir) is True


def data_dir_holder(data_dir: Path) -> bool | None:
    """``data_dir_held``, or None when this process could tell neither way: it may open
    neither the lock file nor the directory (another user's, mode 0750), or the file
    system refused the lock. "Nothing runs" would then be a guess, and readers told
    an operator so while a collector was at work."""
    openers: tuple[Callable[[], int], ...] = (
        partial(open_regular_fd, data_dir / LOCK_FILE),
        partial(os.open, data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    told = False
    for opener in openers:
        # The lock file opened as a regular file only: a FIFO planted in its place held
        # a plain read-only open for good (every verify hung); refused, the directory's
        # lock still tells.
        try:
            fd = opener()
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            told = True
        except BlockingIOError:
            return True
        except OSError:
            pass
        finally:
            os.close(fd)  # closing releases a lock this took
    return False if told else None


def lock_data_dir(data_dir: Path) -> DataDirLock:
    """Hold the data directory for this process (one writer: the store, or reindex).

    Both ``store.lock`` and the directory itself are locked: the file alone could be
    moved away and replaced by a fresh one under a running collector, and a second
    collector then started on the same data (and ``verify`` took it for stopped). A
    directory cannot be swapped under its open descriptor."""
    held: list[int] = []
    in_use = DataDirInUseError(
        f"{data_dir} is in use by another process (a running collector or a reindex): stop "
        f"it first, or use another data directory")
    try:
        held.append(_open_lock_file(data_dir / LOCK_FILE))
        fd = held[-1]
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise in_use from None
        fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        held.append(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise in_use from None
        except OSError:  # a file system without locks on directories: the file's lock
            os.close(held.pop())
    except BaseException:
        DataDirLock(held).close()
        raise
    return DataDirLock(held)


def _open_lock_file(path: Path) -> int:
    """``store.lock`` opened (made if missing) for writing; ``InTheWayError`` when
    something else is there: a directory failed with "Is a directory", and a FIFO was
    opened and locked as if it were the file."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        if os.path.lexists(path) and not os.path.isfile(path):
            raise in_the_way(path, _LOCK) from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise in_the_way(path, _LOCK)
    return fd


#: What ``store.lock`` is, in ``in_the_way``'s words.
_LOCK = (f"its lock file {LOCK_FILE} (an empty regular file, locked by the collector or a "
         f"reindex while it runs)")

