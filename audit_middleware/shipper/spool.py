"""The local spool: batches the collector could not take yet, on disk, in order.

A spool directory holds append-only files of records (``length, crc32, batch body``),
each appended with one write and fsynced before the events count as spooled. Records are
replayed oldest first; a file is deleted once every record in it was acknowledged.

Several processes may share one directory (pre-forked workers): each writes its own
files and holds an ``flock`` on every file it owns, for as long as it owns it. A file
whose lock can be taken belongs to nobody alive (its process exited or crashed) and is
adopted and replayed by whoever finds it. Files are created under a temporary name and
locked before they get their final name, so nobody adopts a file being born. The size
cap is the directory's, shared by them all (see ``_room_for``).

Orphans are adopted by one process at a time, which holds the destination's adoption
lock (an ``flock`` on ``ADOPTING`` in the directory) while it holds adopted files not
yet replayed: two adopters at once (one took the oldest ``ADOPT_MAX``, the next scan of
another the following ones) replayed a dead process's later batches before its earlier
ones. The kernel releases it with a process that dies; whoever scans next goes on from
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
throughout) is counted so too, but set aside, not removed (see ``UNREADABLE``).

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
at its end (see ``_keep_replayed``).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import os
import re
import secrets
import stat
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import orjson

log = logging.getLogger("audit_middleware")

RECORD = struct.Struct("!II")  # body length, crc32 of body
#: Where a record may start, when looking for the next one past a corrupt region: a
#: length below 16 MiB (its first byte 0) and not 0 (a body is never empty). A batch
#: body is JSON text, which never holds a NUL byte: inside one, nothing matches, and
#: what matches elsewhere is taken only if its crc32 is right.
_RECORD_START = re.compile(rb"\x00(?!\x00\x00\x00)")
#: Bytes of crc32 the search for the next valid record may compute in a file, each place
#: looked at counted as 1 KiB: at most about half a second, whatever the bytes.
_SCAN_BUDGET = 512 * 1024 * 1024
SUFFIX = ".spool"
_PARTIAL = ".spool-new"
#: The progress file of ``<name>.spool`` is ``<name>.spool-read`` (see the module's doc).
PROGRESS = ".spool-read"
_OFFSET = struct.Struct("!QI")  # a progress file: the offset replayed to, its crc32
#: Bytes read at first when looking for the next record past a damaged region, doubled
#: while none is found, up to ``_WINDOW_MAX``: the cost follows the distance to it.
_WINDOW_MIN = 512
_WINDOW_MAX = 1024 * 1024
#: Spool files adopted at most by one scan: each is held open (its lock is its claim), and
#: a backlog of thousands (workers crash-looping through an outage, each leaving a file)
#: took every descriptor the process had: its sockets failed. The rest wait for the next
#: scan (``Spool.orphans_left``).
ADOPT_MAX = 64
#: The adoption lock's file in the spool directory (``.adopting~<tag>`` for a tagged
#: destination): held by the one process replaying orphans (see the module's doc). Made
#: once and kept, empty: removed while another process had it locked, a third one made a
#: new one, and two processes held "the" lock.
ADOPTING = ".adopting"
#: The directory's bytes (``Spool._count_used``) are counted again once the count is
#: older than this many times what it took: counting costs the sink's thread about 1% of
#: its time at most, whatever the number of files (a count of 20,000 files took 105 ms:
#: made at each append, it slowed spooling until the queue overflowed).
RECOUNT_AGE = 100
#: A process appends at most ``max_bytes // RECOUNT_SHARE`` bytes (or one batch) on one
#: count: what each process spooling in the directory may pass the shared cap by.
RECOUNT_SHARE = 128
#: The clock that times the counts (a test's to replace).
_clock = time.monotonic
#: A spool file in which no valid record was found at all is renamed ``<name>`` +
#: ``UNREADABLE``: never replayed nor counted against the cap, and never removed. Removed,
#: a rollback to an older release destroyed the spool a newer one had left (its format
#: unknown here, every byte of it taken for damage).
UNREADABLE = ".spool-unreadable"
#: Seconds a partial file (a creation that never finished) is left alone: between its
#: process's open and its lock, another one could take it for abandoned and delete it.
PARTIAL_GRACE = 60.0


@dataclass
class _File:
    path: Path
    fd: int
    size: int  # bytes written (ours) or found (adopted)
    read_pos: int = 0
    #: Where this process began reading it: its start, or an adopted file's progress.
    #: Nothing valid read from there, the file may be another release's (see ``peek``).
    began_at: int = 0
    progress_fd: int = -1  # its progress file, once opened (see the module's doc)
    progress_exists: bool = False  # made by us or found: removed with the file
    progress_failed: bool = False  # said once: writing progress failed
    adopted: bool = False  # an orphan: the adoption lock is held until it is replayed
    unreadable: bool = False  # no valid record in it at all: set aside, not removed
    #: The body length of the record :meth:`Spool.peek` last returned (at ``read_pos``),
    #: for :meth:`Spool.commit`: read again there, a file cut short meanwhile raised.
    peeked: int | None = None
    #: What is left of ``_SCAN_BUDGET`` for the whole file: k damaged regions cost
    #: at most one budget, not k.
    scan_budget: int = field(default_factory=lambda: _SCAN_BUDGET)


class Spool:
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
        #: The adoption lock's descriptor while this process holds it (see the module's
        #: doc); -1 when it does not.
        self._adoption = -1
        self._adoption_failed = False  # said once: the lock could not be opened
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
            return False
        try:
            active = self._active
            if active is not None and _removed(active):
                self._removed_under_us(active)
                active = None
            if active is None or (active.size and active.size + len(record) > self.file_bytes):
                active = self._new_file()
        except OSError as exc:
            self._write_failed(exc)
            return False
        written = [0]  # bytes of it in the file: its end, when even fstat fails
        try:
            _write_all(active.fd, record, active.size, written)
            os.fsync(active.fd)
        except OSError as exc:
            self._write_failed(exc)
            try:
                os.ftruncate(active.fd, active.size)  # no torn record, no unsynced one
            except OSError as again:
                return self._keep_failed(active, record, again, written[0])
            return False
        active.size += len(record)
        self._used += len(record)
        self._since += len(record)
        self._write_succeeded()
        return True

    def _room_for(self, size: int) -> bool:
        """Whether a record of ``size`` bytes fits under the cap. The cap is the
        directory's, shared by every process spooling there for this collector
        (pre-forked workers), whose files grow and shrink unseen: counted once and then
        only by its own appends, each of N workers filled the cap for itself. Counted
        at each append, a backlog of many files cost more than the fsync (see
        ``RECOUNT_AGE``). So the directory is counted again when the count is old, when
        this process appended its share of the cap since (``RECOUNT_SHARE``: what the
        others may not have seen), and before a refusal resting on its own appends (a
        batch is dropped only on a count with nothing of ours since: the others may
        have replayed meanwhile)."""
        if (self._since + size > self.max_bytes // RECOUNT_SHARE
                or _clock() - self._counted_at > RECOUNT_AGE * self._count_took
                or (self._since > 0 and self._used + size > self.max_bytes)):
            self._recount()
        return self._used + size <= self.max_bytes

    def _recount(self) -> None:
        start = _clock()
        self._used = self._count_used()
        self._counted_at = _clock()
        self._count_took = self._counted_at - start
        self._since = 0

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

    def _write_failed(self, exc: OSError) -> None:
        """A batch the disk refused: said at the 1st, 2nd, 4th, ... in a row. Said at
        each, a full disk logged 20 errors a second through an outage, into logs as
        likely as not on that same disk; the caller counts the batches dropped."""
        self._write_failures += 1
        n = self._write_failures
        if n & (n - 1) == 0:
            log.error("audit spool %s: could not write a batch (%s)%s", self.directory, exc,
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

    @property
    def directory(self) -> Path:
        """Where this process's user spools: the configured directory when it is this
        user's and writable by no one else (or does not exist yet: then it is made so);
        otherwise that user's private subdirectory in it, ``.uid-<euid>``. Whoever else
        can write a spool directory can plant batches that are replayed under this app's
        name; and a shared one is common (a volume mounted 0777, a directory made by a
        server's root master whose workers run as another user), so it is not refused,
        but not trusted either."""
        euid = os.geteuid()
        chosen = self._directories.get(euid)
        if chosen is None:
            chosen = self.configured
            reason = _unsafe(self.configured) if self.configured.exists() else ""
            if reason:
                chosen = self._private
                log.warning("audit spool: %s; spooling in %s instead", reason, chosen)
            self._directories[euid] = chosen
        return chosen

    @property
    def _private(self) -> Path:
        """This user's private subdirectory of the configured one (see ``directory``)."""
        return private_directory(self.configured)

    def _new_file(self) -> _File:
        directory = self.directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
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
            fcntl.flock(fd, fcntl.LOCK_EX)
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
        return max([time.time_ns()] + [_stamp_of(f.path.name) + 1 for f in self._files])

    # -- reading --------------------------------------------------------------------------
    @property
    def empty(self) -> bool:
        return not self._files

    @property
    def used_bytes(self) -> int:
        return self._used

    def peek(self) -> bytes | None:
        """The oldest batch body not yet committed, or None when the spool is empty."""
        while self._files:
            head = self._files[0]
            end = head.size
            body = _record_at(head.fd, head.read_pos, end)
            if body is not None:
                head.peeked = len(body)
                return body
            if head.read_pos < end:
                # From where its reading began, not only from its start: a newer
                # release's file half replayed (its progress file beside it, of the same
                # form) was taken for this release's torn tail and removed.
                untouched = head.read_pos == head.began_at
                self._skip_corrupt(head)
                if head.read_pos < end:
                    continue  # a valid record after the corrupt region
                # A file of none but its first batch torn (its process killed in that
                # write, a power loss leaving zeros) is this release's own damage:
                # counted and removed, as before, not set aside by the hundred for a
                # crash-looping app. So is one torn just past its progress.
                head.unreadable = untouched and not _torn_record_at(head.fd, head.began_at,
                                                                    end)
            self._remove_head()
        return None

    def _skip_corrupt(self, head: _File) -> None:
        """Move ``head`` past the region at its read position that is no valid record,
        to the next valid record or the end of the file; count and log what was lost."""
        start, end = head.read_pos, head.size
        found, head.scan_budget = _next_record(head.fd, start, end, head.scan_budget)
        skip = found - start
        events = _events_between(head.fd, start, found)
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

    def _save_progress(self, f: _File) -> bool:
        """Write how far ``f`` was replayed to its progress file (see the module's doc).
        Not fsynced: the death of the process keeps it (the page cache); a power loss
        may not, and then the last steps are replayed again (the collector drops the
        duplicates by event id) or counted again; an fsync per acknowledged batch, or
        per damaged region, would cost more than that. A failure is logged once per
        file, not raised: it costs only as much if this process dies before finishing
        the file. False when it failed."""
        opened = False
        try:
            if f.progress_fd < 0:
                f.progress_exists = True
                f.progress_fd = _open_progress(_progress_path(f.path),
                                               os.O_RDWR | os.O_CREAT)
                opened = True
            offset = f.read_pos.to_bytes(8, "big")
            _write_all(f.progress_fd, _OFFSET.pack(f.read_pos, zlib.crc32(offset)), 0)
            if opened:
                # Rewritten in place, a damaged one longer than an offset stayed damaged
                # for every later adopter. Cut after the write: a kill before it leaves
                # a file found damaged (replayed from the start), never a wrong offset.
                os.ftruncate(f.progress_fd, _OFFSET.size)
            return True
        except OSError as exc:
            if opened:
                _close_progress(f)  # opened again, and cut, at the next step
            if not f.progress_failed:
                f.progress_failed = True
                log.error("audit spool %s: cannot record how far %s was replayed (%s): if "
                          "this process exits before replaying it whole, the process that "
                          "adopts it sends its acknowledged batches again (the collector "
                          "drops the duplicates) and counts its corrupt bytes again; %s",
                          self.directory, f.path.name, exc,
                          _REMOVE_IT if isinstance(exc, _Planted) else "check the disk")
            return False

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

    def _release_held(self) -> None:
        """Remove the files replayed whole that could not be removed then, if they can be
        now, and close them: held until the process closed its spool, they stayed on
        disk once the directory was writable again, and each was a descriptor less for
        adopting (see ``adopt_orphans``)."""
        held, self._held = self._held, []
        for f in held:
            try:
                _retire(f)
            except FileNotFoundError:
                pass
            except OSError:
                self._held.append(f)
                continue
            if f.unreadable:
                self._say_set_aside(f)
            _let_go(f)

    def _say_set_aside(self, f: _File) -> None:
        log.error("audit spool %s: %s holds no record this release can read (a newer "
                  "release's spool, after a rollback, or a file damaged throughout): set "
                  "aside as %s, never replayed, its %d bytes counted as corrupt. If a newer "
                  "release wrote it, rename it back to %s where that release runs (this "
                  "one would set it aside again); otherwise remove it", self.directory,
                  f.path.name, _unreadable_path(f.path).name, f.size, f.path.name)

    def _keep_unreadable(self, f: _File, error: OSError) -> None:
        """``f`` has no readable record and cannot be renamed (an unwritable directory):
        held, locked, like a file replayed whole that cannot be removed (tried again at
        each scan), never removed."""
        self._held.append(f)
        log.error("audit spool %s: %s holds no record this release can read and cannot be "
                  "set aside as %s (%s): this process keeps it until it can be (never "
                  "removing it). Let this process's user write the spool directory",
                  self.directory, f.path.name, _unreadable_path(f.path).name, error)

    def _keep_replayed(self, head: _File, error: OSError) -> None:
        """``head`` was replayed whole but cannot be removed (a directory made unwritable
        under the app, a read-only remount). Raised, it ended the replay with a
        traceback for each file, and whoever adopted the file later sent its last batch
        again. Its progress is moved to its end (when its progress file can be written:
        then its adopter sends nothing again, and removes it), and its lock kept until
        it can be removed (tried again at each scan: ``_release_held``) or this process
        closes the spool: neither this process's scans nor another's take it for an
        orphan meanwhile."""
        head.read_pos = head.size
        saved = self._save_progress(head)
        _close_progress(head)  # written for good: a descriptor less for each file held
        self._held.append(head)
        log.error("audit spool %s: %s was replayed whole but cannot be removed (%s): once "
                  "it can be, this process removes it (or, once this one has exited, the "
                  "process that adopts it%s). Let this process's user write the spool "
                  "directory", self.directory,
                  head.path.name, error, "" if saved else ", sending its batches again "
                  "first (the collector drops the duplicates)")

    # -- several processes ----------------------------------------------------------------
    def adopt_orphans(self) -> int:
        """Take over spool files no live process holds; returns how many were adopted.
        Where this user spools in the configured directory, its private subdirectory
        is adopted from too (batches from a time the directory was shared); where it
        spools in the private one, batch files left in the shared directory are not
        replayed (anyone could have put them there), and said so."""
        self._scanned = True
        self.orphans_left = False
        self._release_held()
        directory, private = self.directory, self._private
        places = [directory] if directory == private else [directory, private]
        # Files held (replayed, not removable) are open too: not counted, a directory
        # made unwritable had each scan adopt, replay and hold ADOPT_MAX more, until the
        # whole backlog was open. The rest waits until they can be removed.
        room = ADOPT_MAX - len(self._held)
        adopted: list[_File] = []
        for place in places:
            adopted += self._adopt_from(place, room - len(adopted))
        # Left for a scan at once only by one that filled its room: with no room (held
        # files) it adopts nothing again, and the sink listed and counted the whole
        # directory at each tick (``max_delay``) while the directory stayed unwritable.
        self.orphans_left = self.orphans_left and bool(adopted)
        if directory == private:
            _report_stranded(self.configured)
        if adopted:
            # Older files first; ours are newer than anything left by a dead process.
            self._files = sorted(self._files + adopted, key=lambda f: f.path.name)
            log.warning("audit spool %s: replaying %d spool file(s) left by earlier "
                        "processes", directory, len(adopted))
        self._opening.difference_update(f.fd for f in adopted)
        self._release_adoption()  # taken for nothing (every file found was a live one's)
        self._recount()
        return len(adopted)

    def _adopt_from(self, place: Path, room: int) -> list[_File]:
        """The orphans found in ``place``, ``room`` at most (the oldest; said in
        ``orphans_left`` when more are left)."""
        try:
            reason = _unsafe(place, follow=place == self.configured)
            entries = sorted(os.scandir(place), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        except OSError as exc:  # e.g. not ours to read: say so once a scan, not a traceback
            log.error("audit spool: cannot read %s (%s): its batches cannot be replayed; "
                      "give this process's user access, or choose another spool_dir",
                      place, exc)
            return []
        if reason:
            log.error("audit spool: adopting nothing: %s", reason)
            return []
        # Held files too: ours, not to be opened and tried for a lock at each scan.
        owned = {f.path.name for f in self._files + self._held}
        adopted: list[_File] = []
        foreign: list[str] = []
        locked: bool | None = None  # the adoption lock: tried at the first candidate
        for entry in entries:
            if entry.name.endswith(PROGRESS):
                _remove_if_alone(Path(entry.path))
                continue
            if entry.name in owned or not entry.name.endswith((SUFFIX, _PARTIAL)):
                continue
            if entry.name.endswith(SUFFIX) and not self._replays(entry.name):
                foreign.append(entry.name)  # another collector's batches: not ours to send
                continue
            if len(adopted) >= room and entry.name.endswith(SUFFIX):
                self.orphans_left = True  # maybe: a live process's, or one to adopt next
                continue
            if entry.name.endswith(_PARTIAL) and _younger_than(entry, PARTIAL_GRACE):
                continue  # maybe being made: created, not yet locked by its process
            if entry.name.endswith(SUFFIX):
                locked = self._take_adoption() if locked is None else locked
                if not locked:
                    continue  # a live process replays the orphans: one at a time, in order
            try:
                fd = os.open(entry.path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                continue
            self._opening.add(fd)  # until adopt_orphans takes it (see __init__)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._close_opening(fd)  # a live process owns it
                continue
            if os.fstat(fd).st_nlink == 0:
                # Opened just before its owner replayed it whole and unlinked it: the
                # lock came free with the owner's close, but the file is done.
                self._close_opening(fd)
                continue
            if entry.name.endswith(_PARTIAL):  # creation never finished: nothing in it
                _unlink_quietly(Path(entry.path))
                self._close_opening(fd)
                continue
            size = os.fstat(fd).st_size
            path = Path(entry.path)
            read_pos, found, planted = _load_progress(path, size)
            # Something planted at its progress path was said (and what to do): not
            # said again at each file's first progress write that it refuses.
            adopted.append(_File(path, fd, size, read_pos, began_at=read_pos,
                                 progress_exists=found, progress_failed=planted,
                                 adopted=True))
        self._say_foreign(place, foreign)
        return adopted

    def _say_foreign(self, place: Path, names: list[str]) -> None:
        """Said once for each file: batches spooled for another collector (a sink with
        another url spooling in the same directory) wait there for a sink of that url;
        replayed here, they went to the wrong audit log."""
        new = [name for name in names if name not in self._foreign_said]
        if not new:
            return
        self._foreign_said.update(new)
        # Not only files nobody holds: telling those apart takes their lock, which the
        # sink they are for may be trying to take at that moment. Hence "no app".
        log.warning("audit spool %s: %d spool file(s) hold batches for another collector "
                    "than this sink's (a sink with another url spooled them here): left "
                    "for a sink of that url. If that collector has moved and no app ships "
                    "to its old url any more, remove the '%s...' part of their names (e.g. "
                    "%s; and of each one's %s file, or it is replayed from its start) and "
                    "this sink replays them", place, len(new), _TAG_MARK, new[0], PROGRESS)

    def _replays(self, name: str) -> bool:
        """Whether the spool file ``name`` holds batches for this spool's destination
        (its tag, or none: an older version's file)."""
        return name.endswith(SUFFIX) and _tag_of(name) in ("", self._tag)

    def _take_adoption(self) -> bool:
        """Hold the adoption lock (see the module's doc): False when another process
        holds it. One that cannot be opened (a directory made unwritable before it was
        ever made) does not stop replay: said once, and orphans are adopted without it."""
        if self._adoption >= 0:
            return True
        path = self.directory / (ADOPTING + (_TAG_MARK + self._tag if self._tag else ""))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                         | os.O_NONBLOCK | os.O_NOCTTY, 0o600)
        except OSError as exc:
            if not self._adoption_failed:
                self._adoption_failed = True
                log.error("audit spool %s: cannot open the adoption lock %s (%s): files left "
                          "by dead processes are adopted without it, and two processes "
                          "adopting at once may replay them out of order; let this "
                          "process's user write the spool directory",
                          self.directory, path.name, exc)
            return True
        self._opening.add(fd)  # a fork now: the child closes its copy (see __init__)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._close_opening(fd)
            return False
        self._adoption = fd  # before it leaves _opening: a fork closes it either way
        self._opening.discard(fd)
        return True

    def _release_adoption(self) -> None:
        """Let go of the adoption lock once every file adopted under it is replayed.
        Unlocked, not only closed: an ``flock`` is the open file's, and a child forked
        without the at-fork hook (uWSGI) holds a copy of the descriptor until its first
        event; closed only, the lock stayed held by an idle child, and nobody adopted
        again. (A child never unlocks: see ``_forget_adoption``.)"""
        if self._adoption >= 0 and not any(f.adopted for f in self._files):
            try:
                fcntl.flock(self._adoption, fcntl.LOCK_UN)
            except OSError:
                pass  # the close below releases it too, once no child holds a copy
            self._forget_adoption()

    def _forget_adoption(self) -> None:
        """Close our descriptor of the adoption lock without unlocking it: in a forked
        child, the lock is the parent's, which it keeps."""
        fd, self._adoption = self._adoption, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass  # closed already by after_fork (a fork while it was being taken)

    def _close_opening(self, fd: int) -> None:
        self._opening.discard(fd)
        os.close(fd)

    def _count_used(self) -> int:
        """Bytes of batch files where this user spools and adopts (see adopt_orphans),
        for this destination: another collector's files (another app's, sharing the
        directory) are never replayed here; counted, they filled this cap, and this app
        dropped its own batches while its spool held none. Theirs count against the
        cap of a sink of theirs."""
        total = 0
        for place in {self.directory, self._private}:
            try:
                for entry in os.scandir(place):
                    if self._replays(entry.name):
                        try:
                            total += entry.stat().st_size
                        except FileNotFoundError:
                            pass
            except OSError:  # gone, or not ours to read (reported where it matters)
                pass
        return total

    def close(self) -> None:
        """Release our files (they stay on disk for the next process to replay)."""
        for f in self._files + self._held:
            _close_progress(f)
            try:
                os.close(f.fd)
            except OSError:
                pass
        self._files = []
        self._held = []
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


#: Between a spool file's name and its destination tag: ``<time>-<pid>-<rand>~<tag>.spool``.
_TAG_MARK = "~"


def destination_tag(destination: str) -> str:
    """The tag of a collector URL in spool file names: 12 hex digits of its SHA-256
    (the URL itself may hold characters no file name can)."""
    if not destination:
        return ""
    return hashlib.sha256(destination.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def _stamp_of(name: str) -> int:
    """The time stamp a spool file's name starts with (0 for a name without one)."""
    stamp = name.partition("-")[0]
    return int(stamp) if stamp.isascii() and stamp.isdigit() else 0


def _tag_of(name: str) -> str:
    """The destination tag in the spool file name ``name``; "" for a file without one
    (an older version's, or a spool without a destination)."""
    stem = name.removesuffix(SUFFIX)
    _, mark, tag = stem.rpartition(_TAG_MARK)
    return tag if mark else ""


def private_directory(configured: Path) -> Path:
    """This process's user's private subdirectory of a spool directory (``.uid-<euid>``,
    see ``Spool.directory``)."""
    return configured / f".uid-{os.geteuid()}"


def place_problem(spool_dir: Path) -> str | None:
    """Why a spool can never be made at ``spool_dir`` (None: it can, as far as can be
    told without making it). It is made when first needed, which is when the collector
    is away: a place where it cannot be made would drop every event of the outage."""
    private = private_directory(spool_dir)
    if private.is_dir():  # made for this user by an admin (see Spool.directory)
        spool_dir = private
    place = spool_dir
    while not place.exists() and place.parent != place:
        place = place.parent
    effective = os.access in os.supports_effective_ids
    if (not place.is_dir()
            or not os.access(place, os.W_OK | os.X_OK, effective_ids=effective)
            or os.statvfs(place).f_flag & os.ST_RDONLY):  # root passes access() there
        return (f"spool_dir={str(spool_dir)!r} cannot be used: {place} is not a directory "
                f"this process can write to. Give a writable directory (it is made when "
                f"first needed), or spool_dir=None to hold undelivered batches in memory "
                f"only")
    return None


def _torn_record_at(fd: int, pos: int, end: int) -> bool:
    """Whether a file of ``end`` bytes with no valid record from ``pos`` on has this
    format's record cut short there: less than a record header, a header of zeros (a
    power loss), or a header whose length (below 16 MiB, as ``_RECORD_START`` takes)
    runs past the end. Anything else (another release's format) is set aside, not
    removed."""
    header = os.pread(fd, RECORD.size, pos)
    if len(header) < RECORD.size:
        return True
    length, _ = RECORD.unpack(header)
    return header == bytes(RECORD.size) or (header[0] == 0 and length > 0
                                            and pos + RECORD.size + length > end)


def _record_at(fd: int, pos: int, end: int) -> bytes | None:
    """The body of the valid record at ``pos`` of a file of ``end`` bytes, or None."""
    if pos + RECORD.size > end:
        return None
    header = os.pread(fd, RECORD.size, pos)
    if len(header) < RECORD.size:
        return None  # the file was cut short of its known end: a damaged region
    length, crc = RECORD.unpack(header)
    start = pos + RECORD.size
    # A body is never empty (its header line): zeros, which a power loss can leave
    # where the size reached the disk before the data, would otherwise pass as records
    # of length 0 (crc32 of nothing is 0).
    if 0 < length and start + length <= end:
        body = os.pread(fd, length, start)
        if len(body) == length and zlib.crc32(body) == crc:
            return body
    return None


def _next_record(fd: int, start: int, end: int, budget: int) -> tuple[int, int]:
    """Where the first valid record after ``start`` (which holds none) begins in the
    file ``fd`` of ``end`` bytes, ``end`` when none is found; and what is left of
    ``budget``. First where the region's own length says (only its body was damaged:
    this finds a record of any size); else the first place that could start a record
    (``_RECORD_START``) and holds a whole one whose crc32 matches, followed by the end
    of the file or by what could start a record too (a NUL byte, or a header cut short).
    That last check, which random bytes pass once in 256 times, keeps the search
    through 8 MiB of random bytes to about 0.2 s (a byte read apart for each place whose
    record would end past the window read); and ``budget`` (``_SCAN_BUDGET`` for a
    whole file) bounds the work whatever the bytes: past it, the rest of the file is
    counted as corrupt. Not found (counted as corrupt): a record of 16 MiB or more, or
    one directly followed by a second damaged region; never replayed unchecked.

    The file is read in windows from ``start``, doubled while nothing is found: each
    damaged region costs reads as long as the distance to the next record (and the
    candidates it checks), not the rest of the file."""
    own = os.pread(fd, RECORD.size, start)
    length: int = RECORD.unpack(own)[0] if len(own) == RECORD.size else 0
    after = start + RECORD.size + length
    following = os.pread(fd, RECORD.size, after) if 0 < length and after < end else b""
    if len(following) == RECORD.size:
        budget -= min(RECORD.unpack(following)[0], end - after)  # its crc32, at most
        if budget >= 0 and _record_at(fd, after, end) is not None:
            return after, budget
    base, window, first = start, _WINDOW_MIN, 1
    while base < end:
        # RECORD.size bytes more than the window: a header at its last place is whole,
        # and _RECORD_START's look-ahead sees what follows, as in one read of the rest.
        data = os.pread(fd, min(window + RECORD.size, end - base), base)
        places = min(window, len(data))
        # Zeros (a power loss leaves them) start no record, yet the search tries one at
        # each, outside the budget: a run of them is passed at C speed, to 3 bytes
        # before the first other byte (a record's first byte is 0, and one of its next
        # three is not).
        first = max(first, len(data) - len(data.lstrip(b"\x00")) - 3)
        for match in _RECORD_START.finditer(data, first):
            if match.start() >= places:
                break
            pos = base + match.start()
            budget -= 1024  # what a place costs to look at, counted as bytes of crc32
            if pos + RECORD.size > end or budget < 0:
                return end, max(budget, 0)
            if match.start() + RECORD.size > len(data):
                break  # the file was cut short under us, inside this header
            length, crc = RECORD.unpack_from(data, match.start())
            stop = pos + RECORD.size + length
            if stop > end or not (stop == end or end - stop < RECORD.size
                                  or _byte_at(fd, data, base, stop) == 0):
                continue
            budget -= length
            if budget < 0:
                return end, 0
            if stop - base <= len(data):
                body: bytes | memoryview = memoryview(data)[match.start() + RECORD.size:
                                                            stop - base]
            else:
                body = os.pread(fd, length, pos + RECORD.size)
            if len(body) == length and zlib.crc32(body) == crc:
                return pos, budget
        if len(data) < min(window + RECORD.size, end - base):
            break  # the file was cut short under us
        base += places
        window, first = min(window * 2, _WINDOW_MAX), 0
    return end, budget


def _size_of(fd: int, default: int) -> int:
    """The file's size now, or ``default`` when even that cannot be known."""
    try:
        return os.fstat(fd).st_size
    except OSError:
        return default


def _removed(f: _File) -> bool:
    """Whether ``f`` is no longer at its path: removed, or another file put there (False
    when unknown). By its path, not its link count: a second link to it (a hard-link
    backup of the spool; the ``.nfsXXXX`` name an NFS client gives a file removed while
    open) kept the count at 1 when its spool name was gone."""
    try:
        there = os.stat(f.path, follow_symlinks=False)
        here = os.fstat(f.fd)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return (there.st_dev, there.st_ino) != (here.st_dev, here.st_ino)


def _let_go(f: _File) -> None:
    """Close a spool file removed (or found gone): its progress file goes after it
    (killed in between, that stays alone and the next scan removes it, never the spool
    file without its progress), and its lock with its descriptor, after the unlink:
    nobody adopts a dead file."""
    if f.progress_exists:
        _unlink_quietly(_progress_path(f.path))
    _close_progress(f)
    os.close(f.fd)


def _retire(f: _File) -> None:
    """Take a spool file replayed whole off the spool: removed, or, with no readable
    record in it, renamed (``UNREADABLE``)."""
    if f.unreadable:
        os.rename(f.path, _unreadable_path(f.path))
    else:
        os.unlink(f.path)


def _unreadable_path(path: Path) -> Path:
    return path.with_name(path.name[:-len(SUFFIX)] + UNREADABLE)


def _byte_at(fd: int, data: bytes, base: int, pos: int) -> int:
    """The byte at ``pos`` of the file, from ``data`` (read at ``base``) if it holds it."""
    if pos - base < len(data):
        return data[pos - base]
    byte = os.pread(fd, 1, pos)
    return byte[0] if byte else -1


#: A batch header line as ``wire.encode_batch_body`` writes it (orjson: no spaces, its
#: keys in this order, newlines in the source escaped), up to its newline or the end of
#: the region. No part of it can start another one (a ``{`` inside the string is
#: followed by a quote that ends it), so finding them all reads the region about once.
_HEADER = re.compile(rb'\{"source":"(?:[^"\\\n]|\\.)*","seqs":\[[0-9,]*\]'
                     rb'(?:,"numbered":[0-9]+)?\}(?=\n|\Z)')


def _events_in(region: bytes) -> int:
    """The events of the batches whose header line (``{"source": ..., "seqs": [...]}``)
    can still be read in a corrupt region: those known lost. A header lost with the
    rest hides its events, as ``corrupt_bytes`` then says. Only what has a header's
    shape is parsed: each ``{"source":`` parsed to the next newline cost k x n bytes
    for k of them in a region of n bytes without one."""
    count = 0
    for match in _HEADER.finditer(region):
        try:
            header = orjson.loads(match[0])
        except orjson.JSONDecodeError:
            continue  # damaged (an escape, a number) in a way the shape does not see
        if type(header) is dict and type(header.get("source")) is str and type(
                header.get("seqs")) is list:
            count += len(header["seqs"])
    return count


#: Bytes of a damaged region read at a time to count its events (``_events_between``).
_COUNT_SLICE = 4 * 1024 * 1024


def _events_between(fd: int, start: int, stop: int) -> int:
    """``_events_in`` the bytes from ``start`` to ``stop`` of the file ``fd``, read a
    slice at a time: read whole, a region as large as a huge file (zeroed by a power
    loss) took as much memory. A slice is counted up to its last newline, which no
    header line crosses; the rest goes on with the next slice (its last ``_COUNT_SLICE``
    bytes: a longer line is no header a reader could count)."""
    count, rest, pos = 0, b"", start
    while pos < stop:
        data = os.pread(fd, min(_COUNT_SLICE, stop - pos), pos)
        if not data:
            break  # the file was cut short under us
        pos += len(data)
        data = rest + data
        cut = len(data) if pos >= stop else data.rfind(b"\n") + 1
        count += _events_in(data[:cut])
        rest = data[cut:][-_COUNT_SLICE:]
    return count + _events_in(rest)


def _progress_path(path: Path) -> Path:
    return path.with_name(path.name[:-len(SUFFIX)] + PROGRESS)


class _Planted(OSError):
    """Something other than a regular file at a progress file's path (see
    ``_open_progress``): a mistake or a leftover to remove, not a failing disk."""


#: What to do about something planted at a progress file's path.
_REMOVE_IT = ("remove it: the spool writes its progress file there, and nothing of the "
              "spool is in what is there now")


def _open_progress(path: Path, flags: int) -> int:
    """Open the progress file ``path`` with ``flags``: a regular file, or none when
    ``flags`` creates one. Non-blocking: a FIFO there held a read-only ``open`` until a
    process opened it to write, which none does (the sink's worker stuck for good). A
    symbolic link is not followed; it, a directory, a FIFO, a socket or a device raises
    ``_Planted`` naming what is there (FileNotFoundError: nothing is)."""
    # O_NOCTTY: a terminal device planted there must not become the process's
    # controlling terminal by being opened before fstat refuses it.
    flags |= os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:  # ELOOP (a link), EISDIR (a directory opened to write), ...
        kind = _kind_at(path)
        if kind:
            raise _Planted(f"{path} is {kind}, not a replay progress file") from exc
        raise
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _Planted(f"{path} is {_kind(mode)}, not a replay progress file")
    return fd


def _kind_at(path: Path) -> str:
    """What is at ``path`` when it is no regular file ("" when it is one, or nothing)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return ""
    return "" if stat.S_ISREG(mode) else _kind(mode)


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return kind
    return "something other than a regular file"


def _load_progress(path: Path, size: int) -> tuple[int, bool, bool]:
    """Where replay of the adopted spool file ``path`` (of ``size`` bytes) goes on: the
    offset its progress file holds, or 0 (its start) when there is none; whether there
    is one; and whether something other than a file is at its path (said here, with
    what to do). A damaged one is said, and the file replayed from its start: its
    acknowledged batches are sent again (the collector drops the duplicates), never
    skipped unsent."""
    try:
        fd = _open_progress(_progress_path(path), os.O_RDONLY)
    except FileNotFoundError:
        return 0, False, False
    except _Planted as exc:
        log.error("audit spool: %s: %s; until then %s is replayed from its start when "
                  "adopted, and how far it was replayed is not kept (batches already "
                  "acknowledged are sent again, the collector drops the duplicates; its "
                  "corrupt regions are counted again)", exc, _REMOVE_IT, path.name)
        return 0, True, True
    except OSError as exc:
        data, problem = b"", f"cannot be read ({exc})"
    else:
        try:
            data, problem = os.pread(fd, _OFFSET.size + 1, 0), ""
        except OSError as exc:
            data, problem = b"", f"cannot be read ({exc})"
        finally:
            os.close(fd)
    if not problem:
        if not data:
            return 0, True, False  # made, not yet written when its process died
        if len(data) != _OFFSET.size:
            # (data holds one byte more than an offset at most: a longer file)
            problem = (f"is longer than {_OFFSET.size} bytes" if len(data) > _OFFSET.size
                       else f"is {len(data)} bytes, not {_OFFSET.size}")
        else:
            offset, crc = _OFFSET.unpack(data)
            if zlib.crc32(data[:8]) != crc:
                problem = "fails its checksum"
            elif offset > size:
                problem = f"says {offset} bytes, past the file's {size}"
            else:
                return offset, True, False
    log.error("audit spool: the replay progress of %s %s: the file is replayed from its "
              "start, nothing in it is lost (batches already acknowledged are sent again, "
              "the collector drops the duplicates; its corrupt regions are counted "
              "again); if this recurs, check the disk", path.name, problem)
    return 0, True, False


def _remove_if_alone(progress: Path) -> None:
    """A progress file whose spool file is gone (its process was killed between the
    two unlinks): removed. Spool names are never reused, so its file cannot return."""
    if not progress.with_name(progress.name[:-len(PROGRESS)] + SUFFIX).exists():
        _unlink_quietly(progress)


def _close_progress(f: _File) -> None:
    if f.progress_fd >= 0:
        try:
            os.close(f.progress_fd)
        except OSError:
            pass
        f.progress_fd = -1


def _write_all(fd: int, data: bytes, offset: int, written: list[int] | None = None) -> None:
    """Write all of ``data`` at ``offset``; ``written[0]`` counts the bytes written,
    for a caller whose write failed part way."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
        if written is not None:
            written[0] += n


def _report_stranded(configured: Path) -> None:
    """Batch files in a spool directory that is not this user's alone are not replayed
    (anyone could have put them there): never silently."""
    try:
        stranded = [e.name for e in os.scandir(configured) if e.name.endswith(SUFFIX)]
    except OSError:
        return
    if stranded:
        log.error("audit spool: %d batch file(s) in %s are not replayed while others can "
                  "write the directory (anyone could have put them there): make it this "
                  "user's alone (chmod go-w; chown) to replay them", len(stranded),
                  configured)


def _younger_than(entry: os.DirEntry[str], seconds: float) -> bool:
    try:
        return time.time() - entry.stat().st_mtime < seconds
    except FileNotFoundError:
        return True  # gone meanwhile: nothing to do


def _unsafe(directory: Path, *, follow: bool = True) -> str:
    """Why ``directory`` may not hold a spool ("" when it may): whoever else can write
    there can plant files that are then replayed to the collector under this app's
    name (or remove this app's batches), so it must be this user's and writable by no
    one else. ``follow=False`` for the private subdirectory, which sits in a directory
    others can write: a symbolic link planted there is refused, not followed."""
    st = os.stat(directory) if follow else os.lstat(directory)
    if stat.S_ISLNK(st.st_mode):
        return (f"spool directory {directory} is a symbolic link in a directory others "
                f"can write: another user could point it anywhere")
    if st.st_uid != os.geteuid():
        return (f"spool directory {directory} belongs to uid {st.st_uid}, not to this "
                f"process's user ({os.geteuid()}): another user could plant batches to be "
                f"replayed under this app's name")
    if st.st_mode & 0o022:
        return (f"spool directory {directory} is writable by group or others "
                f"({stat.filemode(st.st_mode)}): another user could plant batches to be "
                f"replayed under this app's name")
    return ""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
