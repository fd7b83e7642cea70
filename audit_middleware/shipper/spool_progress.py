"""Progress files: how far each spool file was replayed (acknowledged, or skipped and
counted as corrupt), kept beside it so that whoever adopts it goes on from there (see
``spool``'s module doc); and what is done about anything but a regular file found at a
progress file's path."""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

from .spool_files import SUFFIX, _File, _SpoolFiles, _unlink_quietly, log
from .spool_format import _write_all

#: The progress file of ``<name>.spool`` is ``<name>.spool-read`` (see ``spool``'s module doc).
PROGRESS = ".spool-read"
_OFFSET = struct.Struct("!QI")  # a progress file: the offset replayed to, its crc32


class _Progress(_SpoolFiles):
    """``Spool``'s writing of progress files."""

    def _save_progress(self, f: _File) -> bool:
        """Write how far ``f`` was replayed to its progress file (see ``spool``'s module doc).
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
