"""A JSON-lines file sink: one event per line, appended in batches from a background
thread, fsynced per batch.

Several processes may append to one file: the workers of a pre-forking server
(gunicorn, ``uvicorn --workers``, uWSGI) that inherited the sink, or apps configured
with the same path. Each batch is written under an exclusive ``flock`` of the file (one
lock and unlock per batch, never per event), and a forked child opens the file anew (a
``flock`` belongs to the open file, which a child shares with its parent). So a batch's
lines are contiguous, unless a write of it fails partway (below). Writers that do not
take the lock (a shell's ``>>``, an older version of this sink) are not excluded.

The file never shrinks: a reader that follows it (``tail -F``, Filebeat, Vector, Fluent
Bit) takes a smaller file for one truncated in place, and reads it again from offset 0
or loses its place. So what a failed write wrote stays, and its retry resumes where it
stopped when the file still ends there. When another process appended meanwhile (its
newline ended the partial line), the file was truncated, or it was replaced, the retry
writes the batch again from the start of its first line not wholly written: that line's
fragment stays, as one line that is not valid JSON. No event is written twice as a
whole line, and none is lost, unless the file may only be appended to, not read: then
the other process cannot see the cut line, writes no newline first, and its first
event is glued to the fragment (one bad line: that event is lost).

A write that fails (a full disk, a quota, an I/O error, a file that cannot be opened)
is retried, waiting 0.05 s doubling up to 2 s, for as long as it fails: a disk that
frees up loses nothing. Meanwhile the queue keeps accepting up to ``max_queue`` events,
and drops (and counts) those beyond. Once ``close()`` has begun (at exit too), a batch
that fails once more is lost: counted ``failed`` and logged. Failures in a row are
logged at the 1st, 2nd, 4th, 8th, ..., and the recovery once. A failed ``fsync`` is not
retried (the lines are written; rewriting them would duplicate them): the batch counts
``failed``.

The file is created 0640 and its directory 0750 (less the umask); an existing file keeps
its mode. A symlink is followed, to a regular file only. When the path names another
file (a rotation that moves the file and creates a new one) the sink reopens it; for
rotation in place, ``copytruncate`` works too (the sink appends with ``O_APPEND``: its
next line starts at offset 0, no hole). This sink never rotates by itself: for that, and
an index, ship to the collector.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Final

from .._counter import worth_saying
from .._dirs import make_dirs
from .._options import check_flags
from ..errors import AuditConfigurationError
from ..event import AuditEvent, PendingEvent, json_line
from .batching import BatchingQueue

log = logging.getLogger("audit_middleware")

_FIRST_RETRY: Final = 0.05  # seconds before the first retry of a failed write, doubled
_MAX_RETRY: Final = 2.0  # up to this: a freed disk is written to within 2 s
# O_NONBLOCK: a FIFO put at the path after construction must not hang the worker in open
# (then refused: not a regular file); it changes nothing for a regular file.
_OPEN_FLAGS: Final = os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK


class JsonlFileSink:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = True,
        max_queue: int = 10_000,
        max_batch: int = 512,
        max_delay: float = 0.2,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
            raise AuditConfigurationError(
                f"JsonlFileSink: path must be a file's path (a str or a Path), got {path!r}")
        check_flags(fsync=fsync)
        self.path = Path(path)
        _refuse_a_non_file(self.path)
        self._fsync = fsync
        self._closed = False
        self._locking = True
        self._init_process()
        self._queue = BatchingQueue(
            self._write, max_queue=max_queue, max_batch=max_batch, max_delay=max_delay,
            name=f"audit-jsonl:{self.path.name}", after_fork=self._after_fork,
        )

    def _init_process(self) -> None:
        self._fd: int | None = None
        self._readable = True  # opened for reading too: the last byte can be checked
        self._file_id = (0, 0)  # (st_dev, st_ino) of the open file: a rotation changes it
        #: Where this process's last write left the file's end; None (at open, after a
        #: lost batch) means unknown. Another end means another process appended (or a
        #: crash, or a truncate, or a new file): the last byte is checked, see _append.
        self._end: int | None = None
        #: Bytes of the batch being written that are in the file: a retry resumes there.
        self._done = 0
        #: Held for one write attempt (never while waiting to retry): close() takes it
        #: before closing the descriptor, which a worker still running after close's
        #: timeout would otherwise write to, or to a file that reused its number.
        self._fd_lock = threading.Lock()
        self._failures = 0  # failed attempts in a row
        self._down_since = 0.0
        self._retrying = 0  # events of the batch being retried: neither delivered nor lost

    def _after_fork(self) -> None:
        """In a child: its own descriptor (and lock) from its first write on. Closing
        the inherited copy leaves the parent's open file, and its flock, untouched. Run
        by the queue (``after_fork``) after its own reset, by its at-fork hook or, in a
        child forked without it (uWSGI), by the queue's fork check that every entry
        point (submit, flush, close, stats, the exit hook) makes before it writes (else
        it shared its parent's open file, and flock), closes (else it waited on a lock
        its parent's worker held at the fork) or counts."""
        inherited = self._fd
        self._init_process()
        if inherited is not None:
            os.close(inherited)

    # -- worker ---------------------------------------------------------------------------
    def _write(self, batch: list[AuditEvent | PendingEvent]) -> None:
        data = b"".join([json_line(item) for item in batch])
        self._done = 0
        # A batch begun once close() has: one attempt (a retry would hold close's drain)
        delay, closing = _FIRST_RETRY, self._queue.wait_closing(0)
        # The flock is released between attempts, even with a line half written: held
        # across the retry wait it would stall every other process's writer (and its
        # close()) for as long as this disk is full, and the retry must cope with a file
        # that changed meanwhile anyway (a writer without the lock, a rotation, a
        # copytruncate, no flock on NFS): _append resumes, or starts the line again.
        while True:
            try:
                self._attempt(data)
                break
            except OSError as exc:
                events = data.count(b"\n", self._done)  # not yet in the file whole
                self._failed(exc, events)
                if closing:
                    self._lost(exc, events)
                    return
            closing = self._queue.wait_closing(delay)
            delay = min(delay * 2, _MAX_RETRY)
        self._retrying = 0
        if self._failures:
            self._recovered()
        if self._fsync:
            self._sync()

    def _sync(self) -> None:
        with self._fd_lock:  # else close() could close it under us
            if self._fd is not None:
                os.fsync(self._fd)  # raises into the queue: counted failed, not rewritten

    def _attempt(self, data: bytes) -> None:
        with self._fd_lock:
            if self._closed:  # close() gave up waiting for this worker: it closes the file
                self._close_fd()
                raise OSError(errno.EBADF, "the sink was closed before this batch was written")
            fd = self._open_file()
            locked = self._lock(fd)
            try:
                self._append(fd, data)
            finally:
                if locked:
                    fcntl.flock(fd, fcntl.LOCK_UN)

    def _lock(self, fd: int) -> bool:
        """The file's flock; False where its file system has none (an NFS mount without
        its lock manager): writing unlocked beats never writing. Said once."""
        if not self._locking:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return True
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                raise
        self._locking = False
        log.warning("audit file sink %s: the file system has no flock; appending without "
                    "it: a failed write of another process may cut this one's lines",
                    self.path)
        return False

    def _open_file(self) -> int:
        """This process's descriptor of the file now at ``path``."""
        if self._fd is not None and self._moved():
            self._close_fd()
        if self._fd is None:
            make_dirs(self.path.parent, 0o750)
            self._fd, self._readable = _open(self.path)
            st = os.fstat(self._fd)
            self._file_id = (st.st_dev, st.st_ino)
            self._end = None
        return self._fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _moved(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._file_id

    def _append(self, fd: int, data: bytes) -> None:
        """Write what of the batch ``data`` is not in the file yet. Never truncates: a
        failed write leaves what it wrote, and ``_end``/``_done`` say where it stopped."""
        size = os.lseek(fd, 0, os.SEEK_END)
        prefix = b""
        if size != self._end:
            # The file's end is not where this process left it: another process appended
            # (ending our partial line, if any, with its newline), or a crash left a torn
            # line, or the file was truncated or replaced. The batch's first incomplete
            # line is written again whole; its fragment, if any, stays as a bad line.
            self._done = data.rfind(b"\n", 0, self._done) + 1
            if size > 0 and not self._ends_a_line(fd, size):
                prefix = b"\n"  # end the torn line there: ours are not glued to it
        view = memoryview(prefix + data[self._done:])
        written = 0
        try:
            while written < len(view):
                written += os.write(fd, view[written:])
        finally:
            if written < len(prefix):  # not even the newline: check the last byte again
                self._end = None
            else:
                self._end = size + written
                self._done += written - len(prefix)

    def _ends_a_line(self, fd: int, size: int) -> bool:
        return not self._readable or os.pread(fd, 1, size - 1) == b"\n"

    # -- failures, logged at 1, 2, 4, 8, ... in a row: visible, never a flood --------------
    def _failed(self, exc: OSError, events: int) -> None:
        self._retrying = events
        self._failures += 1
        n = self._failures
        if n == 1:
            self._down_since = time.monotonic()
        if worth_saying(n):
            log.error("audit file sink %s: cannot write (%s); %d events kept and retried "
                      "(%d failures in a row), more queued up to max_queue, then dropped",
                      self.path, exc, events, n)

    def _recovered(self) -> None:
        log.warning("audit file sink %s: writing again after %d failures in %.1fs",
                    self.path, self._failures, time.monotonic() - self._down_since)
        self._failures = 0

    def _lost(self, exc: OSError, events: int) -> None:
        self._queue.failed.add(events)
        self._retrying = 0
        self._end = None  # a partial line of it may end the file: the next batch ends it
        log.error("audit file sink %s: %d events lost at close: %s", self.path, events, exc)

    # -- the sink -------------------------------------------------------------------------
    def submit(self, event: AuditEvent | PendingEvent) -> None:
        self._queue.submit(event)

    #: The request path's tuple form: the event is built on the writer thread.
    submit_pending = submit

    def flush(self, timeout: float | None = None) -> bool:
        return self._queue.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._queue.close(timeout)  # first: in a uWSGI child, it resets this sink
        # Within the same timeout: a worker still writing after the queue's wait (a hung
        # disk) keeps the descriptor, and stops at its next attempt (``_closed``).
        wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if self._fd_lock.acquire(timeout=wait):
            try:
                self._closed = True
                self._close_fd()
            finally:
                self._fd_lock.release()
        else:
            self._closed = True

    def stats(self) -> dict[str, int]:
        counts = self._queue.counts()  # first: in a uWSGI child, it resets this sink
        # The batch being retried left the queue but is not written yet: queued still.
        retrying = self._retrying
        counts["queued"] += retrying
        counts["delivered"] = self._queue.drained.value - counts["failed"] - retrying
        return counts


def _open(path: Path) -> tuple[int, bool]:
    """Open for appending, and for reading the last byte when allowed."""
    try:
        fd, readable = os.open(path, os.O_RDWR | _OPEN_FLAGS, 0o640), True
    except PermissionError:  # a file this user may append to but not read
        fd, readable = os.open(path, os.O_WRONLY | _OPEN_FLAGS, 0o640), False
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path} is not a regular file")
    return fd, readable


def _refuse_a_non_file(path: Path) -> None:
    """At construction: a directory, FIFO or device at ``path`` (or a symlink to one)
    failed every batch on the worker thread, or, a FIFO, hung it in open()."""
    try:
        mode = os.stat(path).st_mode
    except NotADirectoryError:
        raise AuditConfigurationError(
            f"JsonlFileSink: a parent of {path} is a file, not a directory; give a path "
            f"in a directory (created if missing)") from None
    except OSError:
        return  # not there yet (created at the first write), or unreadable: reported then
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise AuditConfigurationError(
            f"JsonlFileSink: {path} is {kind}; give the path of a file (created if missing), "
            f"e.g. {path / 'events.jsonl' if stat.S_ISDIR(mode) else 'audit-data/events.jsonl'}")
