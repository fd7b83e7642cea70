"""Where a spool's files are, what they are named, and what the spool keeps of each one
it holds open: the spool directory (this user's and writable by no one else, or this
user's private subdirectory of it), spool file names (time stamp, destination tag),
``_File``, and ``_SpoolFiles``, the state every part of ``Spool`` shares. See
``spool``'s module doc."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import spool_format

log = logging.getLogger("audit_middleware")

SUFFIX = ".spool"
_PARTIAL = ".spool-new"
#: Between a spool file's name and its destination tag: ``<time>-<pid>-<rand>~<tag>.spool``.
_TAG_MARK = "~"
#: Seconds between checks of a spool place found unusable (see
#: ``_SpoolFiles.check_place``): one made usable (chown, chmod) is seen, and said, that soon.
PLACE_RECHECK = 10.0


@dataclass
class _File:
    path: Path
    fd: int
    size: int  # bytes written (ours) or found (adopted)
    read_pos: int = 0
    #: Where this process began reading it: its start, or an adopted file's progress.
    #: Nothing valid read from there, the file may be another release's (see ``peek``).
    began_at: int = 0
    progress_fd: int = -1  # its progress file, once opened (see ``spool``'s module doc)
    progress_exists: bool = False  # made by us or found: removed with the file
    progress_failed: bool = False  # said once: writing progress failed
    #: An orphan: the adoption lock is held until it is replayed, or held aside unread
    #: (``_Adoption._release_adoption``).
    adopted: bool = False
    unreadable: bool = False  # no valid record in it at all: set aside, not removed
    read_failures: int = 0  # reads of it the disk refused (see Spool._read_failed)
    #: The body length of the record :meth:`Spool.peek` last returned (at ``read_pos``),
    #: for :meth:`Spool.commit`: read again there, a file cut short meanwhile raised.
    peeked: int | None = None
    #: What is left of ``_SCAN_BUDGET`` for the whole file: k damaged regions cost
    #: at most one budget, not k.
    scan_budget: int = field(default_factory=lambda: spool_format._SCAN_BUDGET)


class _SpoolFiles:
    """What every part of ``Spool`` shares (each attribute is set, and said, in
    ``Spool.__init__``): where it spools, for which destination, and its files."""

    configured: Path
    _tag: str
    _directories: dict[int, Path]
    _files: list[_File]
    _active: _File | None  # the file appended to (see ``spool_append``)
    _opening: set[int]
    #: The effective user whose spool place was last checked, and when (``check_place``).
    _place_checked: tuple[int, float]
    _place_problem: str  # what that check found ("": none)
    _place_lock: threading.Lock

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

    def check_place(self) -> str:
        """Why this process's user cannot spool (see ``place_problem``; "" when it can).
        Checked again whenever the effective user changes: a server started as root
        makes the app (and this spool) in its master, and its workers drop to another
        user after the fork (gunicorn --user); one that could not make its spool there
        found out only when the collector went away, as every batch of the outage
        dropped. The sink calls this at each cycle of its worker thread and in stats():
        found at a worker's first cycle, said with what to do, shown in stats. A place
        found unusable is checked again every ``PLACE_RECHECK`` seconds, and said once
        it can be used."""
        euid = os.geteuid()
        with self._place_lock:
            checked_for, checked_at = self._place_checked
            now = time.monotonic()
            if euid == checked_for and (not self._place_problem
                                        or now - checked_at < PLACE_RECHECK):
                return self._place_problem
            problem = place_problem(self.configured) or ""
            if problem and problem != self._place_problem:
                log.error("audit spool: %s; events that cannot be delivered will be "
                          "dropped", problem)
            elif self._place_problem and not problem:
                log.warning("audit spool: %s can be used by this process's user (uid %d) "
                            "now", self.configured, euid)
            self._place_checked, self._place_problem = (euid, now), problem
            return problem

    @property
    def _private(self) -> Path:
        """This user's private subdirectory of the configured one (see ``directory``)."""
        return private_directory(self.configured)

    def _replays(self, name: str) -> bool:
        """Whether the spool file ``name`` holds batches for this spool's destination
        (its tag, or none: an older version's file)."""
        return name.endswith(SUFFIX) and _tag_of(name) in ("", self._tag)

    def _close_opening(self, fd: int) -> None:
        # Forgotten first: a close that fails has freed the number all the same.
        self._opening.discard(fd)
        os.close(fd)


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
    """Why this process's user can never spool at ``spool_dir`` (None: it can, as far as
    can be told without making it). It is made when first needed, which is when the
    collector is away: a place where it cannot be made would drop every event of the
    outage. For the effective user of now: a worker that drops root after the fork is
    checked again (see ``_SpoolFiles.check_place``)."""
    configured = place = spool_dir
    try:
        if spool_dir.exists() and _unsafe(spool_dir):  # this user spools in its private one
            private = private_directory(spool_dir)
            if os.path.lexists(private):  # made by an admin, or by this user's spool
                refused = _taken_first(private)
                if refused:
                    return refused
                spool_dir = place = private
        while not place.exists() and place.parent != place:
            place = place.parent
        if _writable_directory(place):
            return None
    except OSError:  # not even searchable by this user (EACCES): no spool there either
        pass
    hint = _owner_hint(place, configured)
    return (f"spool_dir={str(spool_dir)!r} cannot be used: {place} is not a directory "
            f"this process can write to.{hint} Give a writable directory (it is made when "
            f"first needed), or spool_dir=None to hold undelivered batches in memory only")


def _taken_first(private: Path) -> str:
    """Why the private subdirectory ``private`` that exists already cannot be spooled in
    ("" when it can). In a spool directory others can write (1733), another user may
    make it first: a directory of theirs, or a symbolic link. ``Spool._new_file``
    refuses it, which was found only when the collector went away and every batch of
    the outage dropped; said now, with what to do."""
    reason = _unsafe(private, follow=False)
    if not reason:
        return ""
    return (f"spool_dir={str(private.parent)!r} cannot be used: {reason}. Another user "
            f"may have made it first, as anyone may make entries in {private.parent}: "
            f"remove {private} (as root), or give a spool_dir of this user's alone, or "
            f"spool_dir=None to hold undelivered batches in memory only")


def _writable_directory(place: Path) -> bool:
    effective = os.access in os.supports_effective_ids
    return (place.is_dir()
            and os.access(place, os.W_OK | os.X_OK, effective_ids=effective)
            and not os.statvfs(place).f_flag & os.ST_RDONLY)  # root passes access() there


def _owner_hint(place: Path, configured: Path) -> str:
    """What to do when ``place`` is another user's: most often a server that starts as
    root, makes the app (and maybe its spool) there, then runs its workers as another
    user, who cannot make its spool in a directory of root's."""
    try:
        owner = os.stat(place).st_uid
    except OSError:
        return ""
    euid = os.geteuid()
    if owner == euid:
        return ""
    return (f" It belongs to uid {owner}, and this process runs as uid {euid} (as the "
            f"workers of a server started as root do, under gunicorn --user or uWSGI "
            f"uid=). Make the spool directory that user's (install -d -o USER -m 0700 "
            f"{configured}), or root's with mode 1733 (install -d -m 1733 {configured}: "
            f"each user then spools in its own .uid-<uid> subdirectory of it, which no "
            f"other user can read or remove).")


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


#: What a file system without ``flock`` answers it: an NFS mount without its lock
#: manager (ENOLCK), some FUSE or SMB mounts (EOPNOTSUPP, which is ENOTSUP on Linux).
NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP})
#: What to do about it (the spool cannot do without: see ``spool``'s module doc).
NO_FLOCK_ADVICE = ("Give a spool_dir on a local file system, or spool_dir=None to hold "
                   "undelivered batches in memory only")


def no_flock(directory: Path) -> str:
    """What an error of ``NO_FLOCK`` means, where the spool is ``directory``."""
    return (f"the file system of {directory} does not support flock (an NFS mount "
            f"without its lock manager, some FUSE or SMB mounts), which the spool needs "
            f"(a process's lock on each of its files is its claim on it)")


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
