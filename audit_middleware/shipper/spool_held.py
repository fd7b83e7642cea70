"""Spool files this process holds though it is done with them: replayed whole but not
removable (a directory made unwritable), or holding no record this release can read
(``UNREADABLE``: set aside, never removed). Held locked until they can be removed or
set aside, so that no scan takes them for orphans meanwhile."""

from __future__ import annotations

import os
from pathlib import Path

from .spool_files import SUFFIX, _File, _unlink_quietly, log
from .spool_progress import _close_progress, _Progress, _progress_path

#: A spool file in which no valid record was found at all is renamed ``<name>`` +
#: ``UNREADABLE``: never replayed nor counted against the cap, and never removed. Removed,
#: a rollback to an older release destroyed the spool a newer one had left (its format
#: unknown here, every byte of it taken for damage).
UNREADABLE = ".spool-unreadable"


class _HeldFiles(_Progress):
    """``Spool``'s files held once done with (see this module's doc)."""

    #: Set, and said, in ``Spool.__init__``.
    _held: list[_File]

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
