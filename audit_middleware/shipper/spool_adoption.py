"""Adoption of orphans: spool files no live process holds (their process exited or
crashed), taken over and replayed by whoever finds them, one process at a time under
the adoption lock (``ADOPTING``); files of another destination are left for a sink of
that one. See ``spool``'s module doc."""

from __future__ import annotations

import fcntl
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from .._counter import worth_saying
from .spool_cap import _SharedCap
from .spool_files import (
    _PARTIAL,
    _TAG_MARK,
    NO_FLOCK,
    NO_FLOCK_ADVICE,
    SUFFIX,
    _File,
    _unlink_quietly,
    _unsafe,
    log,
    no_flock,
)
from .spool_held import _HeldFiles
from .spool_progress import PROGRESS, _load_progress, _remove_if_alone

#: Spool files adopted at most by one scan: each is held open (its lock is its claim), and
#: a backlog of thousands (workers crash-looping through an outage, each leaving a file)
#: took every descriptor the process had: its sockets failed. The rest wait for the next
#: scan (``Spool.orphans_left``).
ADOPT_MAX = 64
#: The adoption lock's file in the spool directory (``.adopting~<tag>`` for a tagged
#: destination): held by the one process replaying orphans (see ``spool``'s module doc). Made
#: once and kept, empty: removed while another process had it locked, a third one made a
#: new one, and two processes held "the" lock.
ADOPTING = ".adopting"
#: Seconds a partial file (a creation that never finished) is left alone: between its
#: process's open and its lock, another one could take it for abandoned and delete it.
PARTIAL_GRACE = 60.0


class _Adoption(_HeldFiles, _SharedCap):
    """``Spool``'s adoption of orphans, and the adoption lock."""

    #: Set, and said, in ``Spool.__init__``.
    _foreign_said: set[str]
    _not_files_said: set[str]
    _adoption: int
    _adoption_open_said: bool
    _no_flock_said: bool
    _scanned: bool
    orphans_left: bool
    _adoption_errors: int
    _stranded_said: frozenset[str]
    _unread: list[_File]

    def adopt_orphans(self) -> int:
        """Take over spool files no live process holds, and take back those the disk
        could not read (``Spool._read_failed``) to try them again; returns how many.
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
        retried = self._unread  # taken back at the end of the scan, which leaves them be
        room = ADOPT_MAX - len(self._held) - len(retried)
        adopted: list[_File] = []
        for place in places:
            adopted += self._adopt_from(place, room - len(adopted))
        self._unread = []
        # Left for a scan at once only by one that filled its room: with no room (held
        # files) it adopts nothing again, and the sink listed and counted the whole
        # directory at each tick (``max_delay``) while the directory stayed unwritable.
        self.orphans_left = self.orphans_left and bool(adopted)
        if directory == private:
            self._stranded_said = _report_stranded(self.configured, self._stranded_said,
                                                   self._replays)
        if adopted or retried:
            # Older files first; ours are newer than anything left by a dead process.
            self._files = sorted(self._files + adopted + retried, key=lambda f: f.path.name)
        if adopted:
            log.warning("audit spool %s: replaying %d spool file(s) left by earlier "
                        "processes", directory, len(adopted))
        self._opening.difference_update(f.fd for f in adopted)
        self._release_adoption()  # taken for nothing (every file found was a live one's)
        self._recount()
        return len(adopted) + len(retried)

    def _adopt_from(self, place: Path, room: int) -> list[_File]:
        """The orphans found in ``place``, ``room`` at most (the oldest; said in
        ``orphans_left`` when more are left)."""
        try:
            reason = _unsafe(place, follow=place == self.configured)
            entries = sorted(os.scandir(place), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        except OSError as exc:  # e.g. not ours to read: said, not a traceback
            self._say_scan_failure(f"cannot read {place}", exc, "its batches cannot be "
                                   "replayed; give this process's user access, or choose "
                                   "another spool_dir")
            return []
        if reason:
            log.error("audit spool: adopting nothing: %s", reason)
            return []
        # Held and unread files too: ours, not to be opened and tried for a lock at each
        # scan.
        owned = {f.path.name for f in self._files + self._held + self._unread}
        adopted: list[_File] = []
        foreign: list[str] = []
        locked: bool | None = None  # the adoption lock: tried at the first candidate
        for entry in entries:
            if entry.name.endswith(PROGRESS):
                try:
                    _remove_if_alone(Path(entry.path))
                except OSError as exc:  # escaping, it ended the scan as a claim's did
                    self._say_left(entry, exc)
                continue
            if entry.name in owned or not entry.name.endswith((SUFFIX, _PARTIAL)):
                continue
            if entry.name.endswith(SUFFIX) and not self._replays(entry.name):
                foreign.append(entry.name)  # another collector's batches: not ours to send
                continue
            try:
                kind = _not_a_file(entry)
            except OSError as exc:  # its type unread (EIO): escaping, it ended the scan
                self._say_left(entry, exc)
                continue
            if kind:
                self._say_not_a_file(entry, kind)
                continue
            if len(adopted) >= room and entry.name.endswith(SUFFIX):
                self.orphans_left = True  # maybe: a live process's, or one to adopt next
                continue
            if entry.name.endswith(SUFFIX):
                locked = self._take_adoption() if locked is None else locked
                if not locked:
                    continue  # a live process replays the orphans: one at a time, in order
            try:
                claimed = self._claim(entry)
            except OSError as exc:
                # Escaping, it ended the scan, and the files it had claimed stayed open
                # and locked for the process's life, replayed by nobody.
                self._say_left(entry, exc)
                continue
            if claimed is not None:
                adopted.append(claimed)
        self._say_foreign(place, foreign)
        return adopted

    def _claim(self, entry: os.DirEntry[str]) -> _File | None:
        """The orphan ``entry`` opened and locked, or None when it is none to replay (a
        live process's, one maybe being made, one replayed meanwhile, an abandoned
        partial one: removed). An OSError leaves nothing of it open (nor locked)."""
        if entry.name.endswith(_PARTIAL) and _younger_than(entry, PARTIAL_GRACE):
            return None  # maybe being made: created, not yet locked by its process
        try:
            fd = os.open(entry.path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None  # replayed and removed by its process meanwhile
        self._opening.add(fd)  # until adopt_orphans takes it (see Spool.__init__)
        try:
            return self._claim_open(entry, fd)
        except BaseException:
            # Unless closed already: a close that failed (EIO) freed it all the same, and
            # closed again, the number may be another thread's by now.
            if fd in self._opening:
                self._close_opening(fd)
            raise

    def _claim_open(self, entry: os.DirEntry[str], fd: int) -> _File | None:
        """``_claim`` of the orphan ``entry`` opened as ``fd``; ``fd`` is closed here
        unless it is claimed, or an error is raised."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._close_opening(fd)  # a live process owns it
            return None
        st = os.fstat(fd)
        if st.st_nlink == 0:
            # Opened just before its owner replayed it whole and unlinked it: the
            # lock came free with the owner's close, but the file is done.
            self._close_opening(fd)
            return None
        if entry.name.endswith(_PARTIAL):  # creation never finished: nothing in it
            _unlink_quietly(Path(entry.path))
            self._close_opening(fd)
            return None
        path = Path(entry.path)
        read_pos, found, planted = _load_progress(path, st.st_size)
        # Something planted at its progress path was said (and what to do): not
        # said again at each file's first progress write that it refuses.
        return _File(path, fd, st.st_size, read_pos, began_at=read_pos,
                     progress_exists=found, progress_failed=planted, adopted=True)

    def _say_scan_failure(self, what: str, exc: OSError, then: str) -> None:
        """A spool file (or a place) that a scan could not take: said at the 1st, 2nd,
        4th, ... such failure of this process; said at each, a failing disk or a place
        this user cannot read logged an error at every scan (every 10 s)."""
        self._adoption_errors += 1
        n = self._adoption_errors
        if worth_saying(n):
            log.error("audit spool: %s (%s): %s%s", what, exc, then,
                      f" ({n} such failures so far; said again at {2 * n})" if n > 1 else "")

    def _say_left(self, entry: os.DirEntry[str], exc: OSError) -> None:
        """An entry of a scanned place that could not be handled: left for a later scan."""
        self._say_scan_failure(f"cannot adopt {entry.path}", exc, "left as it is, tried "
                               "again at the next scan; check the disk")

    def _say_not_a_file(self, entry: os.DirEntry[str], kind: str) -> None:
        """Said once for each name: something named like a spool file that is none (a
        symbolic link left by a backup tool or by hand where a spool file was, a
        directory). Opened, it failed (a link is never followed) and was said as a
        scan failure, "check the disk" (at the 1st, 2nd, 4th, ... scan): a disk that
        was fine."""
        if entry.name in self._not_files_said:
            return
        self._not_files_said.add(entry.name)
        if kind != _SYMLINK:
            log.error("audit spool %s: %s is %s, not a spool file: left as it is, neither "
                      "replayed nor counted against the cap. Remove it, or move it out of "
                      "the spool directory", Path(entry.path).parent, entry.name, kind)
            return
        try:
            target = os.path.join(Path(entry.path).parent, os.readlink(entry.path))
        except OSError:
            target = "the file it points at"
        log.error("audit spool %s: %s is a symbolic link (to %s), not a spool file: never "
                  "followed (whoever can point it elsewhere could have batches replayed "
                  "under this app's name), so neither replayed nor counted against the "
                  "cap. If it stands for a spool file moved away (by hand, by a backup "
                  "tool), stop the app and move %s here in place of the link; otherwise "
                  "remove the link", Path(entry.path).parent, entry.name, target, target)

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

    def _take_adoption(self) -> bool:
        """Hold the adoption lock (see ``spool``'s module doc): False when another process
        holds it. One that cannot be opened (a directory made unwritable before it was
        ever made) does not stop replay: said once, and orphans are adopted without it."""
        if self._adoption >= 0:
            return True
        path = self.directory / (ADOPTING + (_TAG_MARK + self._tag if self._tag else ""))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                         | os.O_NONBLOCK | os.O_NOCTTY, 0o600)
        except OSError as exc:
            if not self._adoption_open_said:
                self._adoption_open_said = True
                log.error("audit spool %s: cannot open the adoption lock %s (%s): files left "
                          "by dead processes are adopted without it, and two processes "
                          "adopting at once may replay them out of order; let this "
                          "process's user write the spool directory",
                          self.directory, path.name, exc)
            return True
        self._opening.add(fd)  # a fork now: the child closes its copy (see __init__)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._close_opening(fd)
            if exc.errno in NO_FLOCK:
                self._say_no_flock(exc)
            return False
        self._adoption = fd  # before it leaves _opening: a fork closes it either way
        self._opening.discard(fd)
        return True

    def _say_no_flock(self, exc: OSError) -> None:
        """The adoption lock refused for want of ``flock``: taken for "another process
        adopts", nothing was ever adopted there, and nothing said why. Said once, on a
        flag of its own: shared with "cannot open the adoption lock", a lock that could
        not be opened once (a directory unwritable for a while) kept this cause unsaid
        for the process's life."""
        if not self._no_flock_said:
            self._no_flock_said = True
            log.error("audit spool %s: cannot lock the adoption lock (%s): %s: spool files "
                      "left by earlier processes are not replayed. %s", self.directory,
                      exc, no_flock(self.directory), NO_FLOCK_ADVICE)

    def _release_adoption(self) -> None:
        """Let go of the adoption lock once every file adopted under it is replayed, or
        held aside because the disk cannot read it (``Spool._read_failed``): such a
        file stays locked by its own ``flock`` (no other process adopts it), but kept
        under the adoption lock, it stopped every other process adopting any orphan for
        as long as the disk refused it (its batches come after later ones anyway).
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


def _report_stranded(configured: Path, said: frozenset[str],
                     replays: Callable[[str], bool]) -> frozenset[str]:
    """Batch files in a spool directory that is not this user's alone are not replayed
    (anyone could have put them there): never silently, but said once, and again when
    they change, not at every scan (every 10 s) while the directory stays shared.
    Returns the names said (``said``: those said before). Regular files only are
    counted: a symbolic link named like a spool file (anyone's, in a shared directory)
    is no batch file of this app's, is never followed, and is named for what it is.
    Only files this sink would adopt (``replays``: adoption's own test) are counted:
    another collector's (a sink with another url sharing the directory) would not be
    replayed here even once the directory is private again, and counted, they sent an
    operator looking for this sink's batches that were never stranded."""
    try:
        named = [e for e in os.scandir(configured) if replays(e.name)]
        # In the try too: an entry's type may take an lstat, which a failing disk
        # refuses (EIO); escaping, it failed the scan (and the sink's construction).
        others = {e.name: kind for e in named if (kind := _not_a_file(e))}
    except OSError:
        return said
    count = len(named) - len(others)
    if not count:
        return frozenset()  # nothing stranded: whatever is stranded next is said
    stranded = frozenset(e.name for e in named)
    if stranded != said:
        log.error("audit spool: %d batch file(s) in %s are not replayed while others can "
                  "write the directory (anyone could have put them there): make it this "
                  "user's alone (chmod go-w; chown) to replay them%s", count, configured,
                  _besides(others))
    return stranded


def _besides(others: dict[str, str]) -> str:
    """What ``_report_stranded`` says of the things named like spool files that are none."""
    if not others:
        return ""
    name = min(others)
    # !r: anyone may name things in a shared directory; a line break in a name, raw,
    # forged a line of this log.
    return (f" ({len(others)} more named like spool files are no batch files, not counted, "
            f"never followed nor replayed: {name!r} is {others[name]})")


#: What ``_not_a_file`` calls a symbolic link (said with what to do: see ``_say_not_a_file``).
_SYMLINK = "a symbolic link"


def _not_a_file(entry: os.DirEntry[str]) -> str:
    """What ``entry`` is when it is not a regular file ("a symbolic link", "a
    directory", ...); "" for a regular file, or one gone meanwhile (replayed and
    removed by its process: nothing to say)."""
    if entry.is_file(follow_symlinks=False):  # the directory's entry type: no system call
        return ""
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except FileNotFoundError:
        return ""
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISLNK(mode):
        return _SYMLINK
    if stat.S_ISDIR(mode):
        return "a directory"
    return f"no regular file ({stat.filemode(mode)})"


def _younger_than(entry: os.DirEntry[str], seconds: float) -> bool:
    try:
        return time.time() - entry.stat().st_mtime < seconds
    except FileNotFoundError:
        return True  # gone meanwhile: nothing to do
