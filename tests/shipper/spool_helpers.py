"""What the spool's tests share: draining a ``Spool``, listing and making spool files,
batch bodies, damaged files, progress paths, orphans left by dead processes, and a disk
that refuses to read a file or an entry's type (EIO)."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from audit_middleware.shipper import spool_adoption, spool_progress
from audit_middleware.shipper.spool import Spool
from audit_middleware.shipper.spool_files import SUFFIX
from audit_middleware.shipper.spool_format import RECORD
from audit_middleware.wire import encode_batch_body


def drain(spool: Spool) -> list[bytes]:
    out = []
    while (body := spool.peek()) is not None:
        out.append(body)
        spool.commit()
    return out


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*" + SUFFIX))


def leftovers(directory: Path) -> list[str]:
    """What is in a spool directory but its adoption lock (made once, and kept: see
    ``spool.ADOPTING``)."""
    return sorted(p.name for p in directory.iterdir()
                  if not p.name.startswith(spool_adoption.ADOPTING))


def spool_file_of(directory: Path, bodies: Iterable[bytes], **options: int) -> Path:
    """The one spool file a closed ``Spool`` in ``directory`` wrote ``bodies`` to."""
    spool = Spool(directory, **{"max_bytes": 1 << 20, **options})
    for body in bodies:
        assert spool.append(body)
    spool.close()
    (path,) = spool_files(directory)
    return path


def records_of(path: Path) -> list[tuple[int, int]]:
    """(offset, length in all) of each record of a spool file, as written."""
    data, out, pos = path.read_bytes(), [], 0
    while pos < len(data):
        length, _ = RECORD.unpack_from(data, pos)
        out.append((pos, RECORD.size + length))
        pos += RECORD.size + length
    return out


def batch_bodies(count: int, events: int = 3) -> list[bytes]:
    return [encode_batch_body("app:1:ab", [i * events + j + 1 for j in range(events)],
                              [b'{"n":%d}\n' % j for j in range(events)])
            for i in range(count)]


def damaged_spool(tmp_path: Path, bodies: list[bytes], damaged: set[int]) -> Path:
    """One spool file of ``bodies``, the records numbered in ``damaged`` with a byte of
    their last event line flipped (their crc32 fails; their header stays readable)."""
    path = spool_file_of(tmp_path, bodies, max_bytes=1 << 30,
                         file_bytes=1 << 30)
    data = bytearray(path.read_bytes())
    for i, (offset, size) in enumerate(records_of(path)):
        if i in damaged:
            data[offset + size - 3] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def progress_path_of(path: Path) -> Path:
    return path.with_name(path.name[:-len(SUFFIX)] + spool_progress.PROGRESS)


def orphans(directory: Path, count: int) -> list[bytes]:
    """``count`` spool files left by processes that died, one batch each; the batches."""
    bodies = [b"orphan %d" % i for i in range(count)]
    for body in bodies:
        spool = Spool(directory, max_bytes=1 << 30)
        assert spool.append(body)
        spool.close()
    return bodies


class FcntlWithoutFlock:
    """The ``fcntl`` module of a file system without ``flock`` (an NFS mount without
    its lock manager: ENOLCK; some FUSE or SMB mounts: EOPNOTSUPP), for a spool
    module's ``fcntl`` (monkeypatched)."""

    def __init__(self, error: int) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Any:
        return getattr(fcntl, name)

    def flock(self, fd: int, operation: int) -> None:
        raise OSError(self.error, os.strerror(self.error))


def reads_refused(path: Path) -> Callable[[int, int, int], bytes]:
    """An ``os.pread`` (monkeypatched) for which the disk refuses every read of the file
    at ``path`` (EIO: a bad block), by its device and inode, whatever descriptor or
    process opened it; others are read."""
    found, real_pread = path.stat(), os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (found.st_dev, found.st_ino):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_pread(fd, n, offset)

    return pread


class _TypeUnread:
    """A directory entry whose type the disk refuses to read (EIO): where the directory
    does not give it, telling a file from a link takes an ``lstat``."""

    def __init__(self, entry: os.DirEntry[str]) -> None:
        self.name, self.path = entry.name, entry.path

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        raise OSError(errno.EIO, os.strerror(errno.EIO), self.path)

    stat = is_symlink = is_dir = is_file


def types_unread(unread: Callable[[str, str], bool]) -> Callable[..., list[Any]]:
    """An ``os.scandir`` (monkeypatched) listing as the real one does, but for the
    entries ``unread(directory, name)`` picks, whose type the disk cannot read."""
    listed = os.scandir

    def scandir(path: str | os.PathLike[str]) -> list[Any]:
        return [_TypeUnread(e) if unread(os.fspath(path), e.name) else e
                for e in listed(path)]

    return scandir
