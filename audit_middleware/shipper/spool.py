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
ones. The kernel releases the adoption lock with a process that dies; whoever scans
next goes on from the progress files. Process ids are not used (containers sharing a
volume repeat them). An adopted file the disk cannot read, held aside
(``_read_failed``), keeps its own lock but not the adoption lock: others adopt
meanwhile (its batches may then reach the collector after later ones).

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

``Spool`` (here: its state, closing, forking) is made of one part per concern, each in a
sibling module: ``spool_append`` (writing batches, new files, refused writes, the file
size limit), ``spool_replay`` (reading them back, past damaged regions, and files the
disk cannot read), ``spool_format`` (the record format, the search past a damaged
region, the events counted lost in it), ``spool_files`` (the directory, file names, the
state the parts share), ``spool_progress`` (progress files), ``spool_held`` (files held
once done with, and ``UNREADABLE``), ``spool_cap`` (the shared cap's counting) and
``spool_adoption`` (orphans and the adoption lock).
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

from .spool_append import _Appending
from .spool_files import _File, destination_tag
from .spool_progress import _close_progress
from .spool_replay import _Replay


class Spool(_Appending, _Replay):
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
        #: True while the record being appended is whole in its file, not yet fsynced:
        #: a process that exits now leaves it there, adopted and replayed by the next
        #: start (a close that gives up counts it spooled, see ``sink_exit``).
        self.written_unsynced = False
        #: Set by ``claim_unsynced`` (a close that counted that record spooled): an
        #: fsync that then fails leaves it in the file, not truncated (``_write``).
        self._unsynced_claimed = False
        #: Orders the worker's end of an fsync against a close's claim: a claim seen
        #: too late to keep the record would count spooled a record truncated away.
        self._unsynced_lock = threading.Lock()
        self._size_limit_said = False  # said once: a file size limit (see _file_room)
        self._place_checked = (-1, -math.inf)  # no user's place checked yet (check_place)
        self._place_problem = ""
        self._place_lock = threading.Lock()
        self._adoption_errors = 0  # orphans (or places) a scan failed at (_say_scan_failure)
        #: The batch files last said stranded in the shared directory (``_report_stranded``).
        self._stranded_said: frozenset[str] = frozenset()
        self.directory  # noqa: B018 - chosen now, so a shared directory is logged at start

    # -- writing --------------------------------------------------------------------------
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
        self.written_unsynced = False  # the parent's write under way is not the child's
        self._unsynced_claimed = False
        self._unsynced_lock = threading.Lock()  # held by the parent's worker, maybe
        self._adoption_errors = 0  # the same: a child's first scan failure is said
