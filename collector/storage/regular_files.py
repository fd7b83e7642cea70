"""The data directory's files: read as regular files only, of bounded size; small ones
replaced whole, atomically and durably.

Whoever can write the data directory can put a FIFO, a socket or a link to a device
where a segment, a digest file or a public key belongs. Opened as usual, a FIFO blocks
``open`` and ``read`` for as long as no one writes to it, and ``/dev/zero`` never ends:
``verify`` hung, or ran out of memory, instead of calling the file INVALID. Here the
file is opened without blocking and checked before a byte is read; a link to a regular
file elsewhere is still followed (an operator's choice, not an attack on the reader).

The same someone could put a link where a small file's temporary copy is written
(``replace_file``): that copy is made afresh and never followed.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, Final


class NotRegularFileError(OSError):
    """The path is a FIFO, a socket, a device or a directory, not a file."""

    def __str__(self) -> str:
        # Words that name their file already (``in_the_way``'s, with what to do) are
        # said as they are: OSError's "[Errno 22] <words>: '<path>'" told no one
        # anything by its number, and said the path twice (the collector's log, the
        # forwarder's last_error).
        if self.strerror and self.filename and str(self.filename) in self.strerror:
            return self.strerror
        return super().__str__()


class FileTooLargeError(OSError):
    """The file holds more than its kind ever does (a limit given by the reader)."""


#: What a file is, in the words the store's errors use (``kind_of_mode``).
_KINDS: Final = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                 (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                 (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def kind_of_mode(mode: int, otherwise: str) -> str:
    """What a file of ``mode`` is, in words; ``otherwise`` for a kind not named."""
    return next((name for test, name in _KINDS if test(mode)), otherwise)


def _kind(mode: int) -> str:
    return kind_of_mode(mode, "not a regular file")


def check_regular(path: Path) -> None:
    """``NotRegularFileError`` unless ``path`` (followed, as an open follows it) is a
    regular file, without opening it: for SQLite's files, which this process must never
    open and close itself. Closing any descriptor of a file drops every POSIX lock the
    process holds on it, SQLite's included (sqlite.org, "How To Corrupt An SQLite
    Database File", 2.2), so another process could checkpoint or reset the WAL under
    the collector's writer. ``FileNotFoundError`` when there is none."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(errno.EINVAL, f"{_kind(mode)}, not a regular file", str(path))


def open_regular_fd(path: Path, flags: int = os.O_RDONLY) -> int:
    """A descriptor of a regular file, read-only unless ``flags`` say otherwise
    (``os.O_RDWR``); ``NotRegularFileError`` for anything else, raised before reading
    (a FIFO opened this way does not wait for a writer, nor a terminal for its line)."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
    except IsADirectoryError:  # refused by the open itself, when opened for writing
        raise NotRegularFileError(errno.EINVAL, "a directory, not a regular file",
                                  str(path)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(errno.EINVAL, f"{_kind(mode)}, not a regular file",
                                      str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path: Path) -> BinaryIO:
    """``open(path, "rb")`` for a regular file only (``open_regular_fd``)."""
    return os.fdopen(open_regular_fd(path), "rb")


def read_regular(path: Path, limit: int) -> bytes:
    """The whole of a regular file of at most ``limit`` bytes; ``FileTooLargeError``
    beyond (read no further than one byte past the limit, whatever the file claims)."""
    parts = []
    size = 0
    with open_regular(path) as f:
        # In pieces: read(limit + 1) allocates the whole limit first, for any file.
        while size <= limit and (part := f.read(_PIECE)):
            parts.append(part)
            size += len(part)
    if size > limit:
        raise FileTooLargeError(errno.EFBIG, f"larger than {limit:,} bytes, more than such "
                                f"a file ever holds", str(path))
    return b"".join(parts)


_PIECE = 1 << 20


def replace_file(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` by a file of ``data`` (``mode``), durably: written to a temporary
    file beside it, fsynced, renamed over it, the directory fsynced. The temporary file
    has one name, so one a killed writer left is reused, never piled up; it is made
    afresh and never followed (a link planted under its name would have the write go
    to the link's target). Writers of one ``path`` must not run at once."""
    tmp = path.with_name(f".{path.name}.tmp")
    write_new_file(tmp, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a directory in the way: nothing of it left behind
        raise
    fsync_dir(path.parent)


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` as a new file (``mode``), fsynced: one a killed writer
    left there is removed first; the file is made afresh and never followed (a link
    planted under its name would have the write go to the link's target); a write that
    fails (a full disk takes part of it) leaves no file behind."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    try:
        done = 0
        while done < len(data):
            done += os.write(fd, data[done:])
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (a new, renamed or removed file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
