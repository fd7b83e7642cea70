"""The local spool: batches the collector could not take yet, on disk, in order.

A spool directory holds append-only files of records (``length, crc32, batch body``),
each appended with one write and fsynced before the events count as spooled. Records are
replayed oldest first; a file is deleted once every record in it was acknowledged.

Several processes may share one directory (pre-forked workers): each writes its own
files and holds an ``flock`` on every file it owns, for as long as it owns it. A file
whose lock can be taken belongs to nobody alive (its process exited or crashed) and is
adopted and replayed by whoever finds it (so a file system without ``flock`` cannot
hold a spool: said, with what to do; see ``_lock_new``). Files are created under a
temporary name and
locked before they get their final name, so nobody adopts a file being born. The size
cap is the directory's, shared by them all (see ``_room_for``).

Orphans are adopted by one process at a time, which holds the destination's adoption
lock (an ``flock`` on ``ADOPTING`` in the directory) while it holds adopted files not
yet replayed: two adopters at once (one took the oldest ``ADOPT_MAX``, the next scan of
another the following ones) replayed a dead process's later batches before its earlier
ones. An adopted file the disk cannot read, held aside (``_read_failed``), keeps its
own lock but not the adoption lock: others adopt meanwhile. The kernel releases it with a process that dies; whoever scans next goes on from
the progress files. Process ids are not used (containers sharing a volume repeat them).

Each file's name carries a tag of the collector its batches are for (the sink's URL:
``<time>-<pid>-<rand>~<tag>.spool``). Two apps started in one directory share the
default spool; one shipping to another collector must not replay the other's batches
into its own audit log: files of another destination are left for a sink of that one,
and said. A file without a tag (an older version's) is adopted by any.

A crash can leave a torn last record, and a disk can garble any record. A region that
is no valid record (its crc32 fails, its length runs past the file, or bytes that are
no record at all; or the file ends before its known size: cut while read) is skipped to the next valid record (see
``_next_record``), or to the end of the file, and the
records after it are replayed as the ones before it. The loss is never silent: its
bytes are counted (``corrupt_bytes``), so are the events whose batch header line is
still readable in it (``lost_events``), and it is logged as an error. Finding the next
record reads from the damaged region onwards only as far as that record (see
``_next_record``): many damaged regions cost a replay in proportion to the file. A
file without any valid record (a newer release's format after a rollback, or damage
throughout) is counted so too, but set aside, not removed (see ``UNREADABLE``). A file
the disk refuses to read (EIO) is no known loss: held aside, locked, and tried again at
the next scan, the files after it replayed meanwhile (see ``_read_failed``).

How far a file was replayed (acknowledged, or skipped and counted as corrupt) is kept
beside it, in a progress file (``PROGRESS``: its offset and that offset's crc32),
written at each step (not fsynced: see ``_save_progress``). Whoever adopts the file
goes on from there: batches already acknowledged are not sent again, and a damaged
region is counted once, not once per process that adopts its file (but for the last
step of a process killed before its progress write: repeated, never skipped). A spool
file without one (an older version's) is replayed from its start. The record format is
unchanged. Anything but a regular file at a progress file's path is neither followed
nor waited on (see ``_open_progress``), and said, with what to do.

A batch whose write or fsync failed is truncated away and the caller counts it dropped;
when even the truncate fails, its bytes stay in the file, so they are kept as spooled
(replayed, or counted as corrupt when read if torn) rather than counted dropped and
then replayed by whoever adopts the file; one torn inside its header line, whose events
no reader can count, is counted dropped (see ``_keep_failed``).

Files are named, and replayed, in the order they were made, whatever the wall clock
does (see ``_stamp``). A file removed under its process takes no more batches (see
``_removed_under_us``); one replayed whole that cannot be removed is held, its progress
at its end (see ``_keep_replayed``). Files are kept under the process's file size
limit (``RLIMIT_FSIZE``, read at each append; see ``_file_room``); one that reached it
anyway (EFBIG) takes no more batches (see ``_size_limited``).

``Spool`` (here: writing, reading, closing) is made of one part per concern, each in a
sibling module: ``spool_format`` (the record format, the search past a damaged region,
the events counted lost in it), ``spool_files`` (the directory, file names, the state
the parts share), ``spool_progress`` (progress files), ``spool_held`` (files held once
done with, and ``UNREADABLE``), ``spool_cap`` (the shared cap's counting) and
``spool_adoption`` (orphans and the adoption lock).
"""

from __future__ import annotations

import errno
import fcntl
import math
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
    destination_tag,
    log,
    no_flock,
)
from .spool_format import (
    RECORD,
    _events_between,
    _events_in,
    _next_record,
    _record_at,
    _size_of,
    _torn_record_at,
    _write_all,
)
from .spool_held import _let_go, _retire
from .spool_progress import _close_progress


class Spool(_Adoption):
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int,
                 file_bytes: int = 8 * 1024 * 1024, destination: str = "") -> None:
        #: The spool_dir as configured; ``directory`` is where this process's user spools.
        self.configured = Path(directory)
        #: The collector this spool's batches are for (its URL), as a tag in each file's
        #: name: files of another destination are left for a sink of that one (see
        #: ``destination_tag``). "": files without a tag (adopted by any spool).
        self._tag = destination_tag(destination)
        #: Names of files for another destination already said (said once each).
        self._foreign_said: set[str] = set()
        #: Names of things that are no spool file (a symbolic link...) already said.
        self._not_files_said: set[str] = set()
        self._directories: dict[int, Path] = {}  # by effective uid (a worker may drop root)
        self.max_bytes = max_bytes
        self.file_bytes = file_bytes
        self._files: list[_File] = []  # oldest first; the last one may be our active file
        self._active: _File | None = None  # the file we append to
        # Descriptors opened (and maybe locked) but not in _files yet: a fork meanwhile
        # (another thread adopting or starting a file) gave the child a copy that
        # after_fork must close too, or the child held a dead parent's lock for its life.
        self._opening: set[int] = set()
        #: Files replayed whole that could not be removed: locked until they can be, or
        #: until close (see ``_keep_replayed``).
        self._held: list[_File] = []
        #: Files the disk could not read, held aside until the next scan tries them again
        #: (see ``_read_failed``).
        self._unread: list[_File] = []
        #: The adoption lock's descriptor while this process holds it (see the module's
        #: doc); -1 when it does not.
        self._adoption = -1
        self._adoption_open_said = False  # said once: the adoption lock could not be opened
        self._no_flock_said = False  # said once: it could not be locked (no flock)
        self._used = 0  # bytes in the directory, as last counted plus our own changes
        self._counted_at = -math.inf  # when it was last counted (``_clock``)
        self._count_took = 0.0  # and how long that took
        self._since = 0  # bytes this process appended since
        self._scanned = False
        #: The last scan left spool files it did not try (``ADOPT_MAX``): scan again as
        #: soon as the spool is empty.
        self.orphans_left = False
        #: Bytes skipped as no valid record, and the events counted in them (those whose
        #: batch header line was still readable): lost, reported in the sink's stats.
        self.corrupt_bytes = 0
        self.lost_events = 0
        self._write_failures = 0  # batches the disk refused in a row (see _write_failed)
        #: Why the last batch ``append`` refused was refused: the cap, or the disk's error
        #: (and what to do): the caller's drop reason. A fixed "full or not writable"
        #: sent an operator of a full disk, or of a file system without ``flock``, to
        #: ``spool_max_bytes``.
        self.refusal = ""
        self._size_limit_said = False  # said once: a file size limit (see _file_room)
        self._place_checked = (-1, -math.inf)  # no user's place checked yet (check_place)
        self._place_problem = ""
        self._place_lock = threading.Lock()
        self._adoption_errors = 0  # orphans (or places) a scan failed at (_say_scan_failure)
        #: The batch files last said stranded in the shared directory (``_report_stranded``).
        self._stranded_said: frozenset[str] = frozenset()
        self.directory  # noqa: B018 - chosen now, so a shared directory is logged at start

    # -- writing --------------------------------------------------------------------------
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
        try:
            _write_all(active.fd, record, active.size, written)
            os.fsync(active.fd)
        except OSError as exc:
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

    # -- reading --------------------------------------------------------------------------
    @property
    def empty(self) -> bool:
        return not self._files

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def unread_files(self) -> int:
        """Files held aside because the disk refused to read them (``_read_failed``)."""
        return len(self._unread)

    @property
    def replay_pending(self) -> bool:
        """Whether anything spooled is still to be replayed: files held, orphans a scan
        left for the next one, or files the disk could not read (``_read_failed``)."""
        return bool(self._files or self.orphans_left or self._unread)

    def peek(self) -> bytes | None:
        """The oldest batch body not yet committed, or None when the spool is empty."""
        while self._files:
            head = self._files[0]
            try:
                body = self._head_record(head)
            except OSError as exc:
                self._read_failed(head, exc)
                continue
            if body is not None:
                return body
            self._remove_head()
        return None

    def _head_record(self, head: _File) -> bytes | None:
        """The valid record at ``head``'s read position, past any damaged region (counted);
        None when the file holds no more (marked ``unreadable`` if it held none)."""
        end = head.size
        while True:
            body = _record_at(head.fd, head.read_pos, end)
            if body is not None:
                head.peeked = len(body)
                return body
            if head.read_pos >= end:
                return None
            # From where its reading began, not only from its start: a newer release's
            # file half replayed (its progress file beside it, of the same form) was
            # taken for this release's torn tail and removed.
            untouched = head.read_pos == head.began_at
            # A file of none but its first batch torn (its process killed in that write,
            # a power loss leaving zeros) is this release's own damage: counted and
            # removed, as before, not set aside by the hundred for a crash-looping app.
            # So is one torn just past its progress. (Read before the region is skipped:
            # a read refused after it would leave the file to be removed when tried again.)
            foreign = untouched and not _torn_record_at(head.fd, head.began_at, end)
            self._skip_corrupt(head)
            if head.read_pos < end:
                continue  # a valid record after the corrupt region
            head.unreadable = foreign
            return None

    def _read_failed(self, head: _File, exc: OSError) -> None:
        """The disk refused a read of ``head`` (EIO: a bad block; a network file system
        gone stale). Raised, it stopped the replay for good: the sink's worker logged a
        traceback at every try (20 a second), and every later batch waited behind the
        file, spooled, until the cap dropped them. Nothing of it is known lost, so it is
        neither skipped nor counted: held aside, still locked (no other process tries it
        meanwhile), and tried again at the next scan (``adopt_orphans``); the files after
        it are replayed meanwhile. Said at the 1st, 2nd, 4th, ... failure of each file:
        counted for the process, a file refused after another had been for a while was
        not named until the count reached its next power of two, hours later."""
        self._files.remove(head)
        head.peeked = None
        if head is self._active:
            self._active = None  # no more batches into a file that cannot be read
        self._unread.append(head)
        self._release_adoption()  # others may adopt meanwhile: its own lock keeps it ours
        head.read_failures += 1
        n = head.read_failures
        if worth_saying(n):
            log.error("audit spool %s: cannot read %s (%s): its batches are not replayed "
                      "yet; it is kept and tried again at the next scan, and the spool "
                      "files after it are replayed meanwhile. Check the disk (to give its "
                      "batches up, stop the app and move the file away)%s",
                      self.directory, head.path.name, exc,
                      f" ({n} failures of it so far; said again at {2 * n})" if n > 1 else "")

    def _skip_corrupt(self, head: _File) -> None:
        """Move ``head`` past the region at its read position that is no valid record,
        to the next valid record or the end of the file; count and log what was lost."""
        start, end = head.read_pos, head.size
        found, budget = _next_record(head.fd, start, end, head.scan_budget)
        skip = found - start
        events = _events_between(head.fd, start, found)
        # Spent with the skip only: a read refused before it (the file held aside, see
        # _read_failed) charged each try, until one counted valid records as corrupt.
        head.scan_budget = budget
        self.corrupt_bytes += skip
        self.lost_events += events
        head.read_pos = found
        # A file shorter than its records say (cut by someone else while read): its
        # missing bytes were spooled and are lost, counted with the region.
        missing = min(max(end - _size_of(head.fd, end), 0), skip) if found == end else 0
        log.error("audit spool %s: %d bytes at offset %d of %s are torn or corrupt (a "
                  "crash while spooling, or a damaged disk)%s: lost, with the %d events "
                  "whose batch header could still be read in them; %s (%d corrupt bytes "
                  "so far)", self.directory, skip, start, head.path.name,
                  f", {missing} of them missing: the file was cut short (something else "
                  f"shortened it while it was replayed)"
                  if missing else "", events,
                  "replay goes on at the next valid record" if skip < end - start
                  else "they end the file, the records before them were kept",
                  self.corrupt_bytes)
        # Only once it is logged: killed between the two, the loss is logged (and
        # counted) again by the adopter, never by nobody.
        if found < end:  # else the file is removed now, which says it best
            self._save_progress(head)

    def commit(self) -> None:
        """The record :meth:`peek` returned was acknowledged: move past it."""
        head = self._files[0]
        length, head.peeked = head.peeked, None
        if length is None:
            raise RuntimeError("Spool.commit() without a record from peek()")
        head.read_pos += RECORD.size + length
        if head.read_pos >= head.size:
            self._remove_head()
        else:
            self._save_progress(head)

    def _remove_head(self) -> None:
        head = self._files[0]
        # Counted off before the file leaves the list: a reader without the worker's
        # lock (stats) that sees the spool empty also sees its bytes gone.
        self._used = max(self._used - head.size, 0)
        self._files.pop(0)
        if head is self._active:
            self._active = None
        try:
            _retire(head)
        except FileNotFoundError:
            _let_go(head)  # removed under us, replayed from its descriptor: closed too
        except OSError as exc:
            if head.unreadable:
                self._keep_unreadable(head, exc)
            else:
                self._keep_replayed(head, exc)
        else:
            if head.unreadable:
                self._say_set_aside(head)
            _let_go(head)
        # After the unlink: whoever takes the lock next finds the file gone, not left.
        self._release_adoption()

    # -- closing, forking -----------------------------------------------------------------
    def close(self) -> None:
        """Release our files (they stay on disk for the next process to replay)."""
        for f in self._files + self._held + self._unread:
            _close_progress(f)
            try:
                os.close(f.fd)
            except OSError:
                pass
        self._files = []
        self._held = []
        self._unread = []
        self._active = None
        self._scanned = False
        self._release_adoption()

    def after_fork(self) -> None:
        """In a forked child: the parent keeps its files and their locks. Closing our
        copies of the descriptors leaves the parent's locks in place (those being opened
        at the fork included)."""
        for fd in list(self._opening):
            try:
                os.close(fd)
            except OSError:
                pass
        self._opening.clear()
        self._place_lock = threading.Lock()  # maybe held by another thread at the fork
        self._forget_adoption()  # before close(), which would unlock the parent's lock
        self.close()
        self._used = 0
        self._counted_at = -math.inf  # the parent's count: counted anew at the first append
        self.corrupt_bytes = 0
        self.lost_events = 0
        # The parent's refusals are not the child's: inherited, the child's first was
        # not said (said at the 1st, 2nd, 4th, ... in a row), and it said a recovery
        # from refusals it never had.
        self._write_failures = 0
        self._adoption_errors = 0  # the same: a child's first scan failure is said


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
