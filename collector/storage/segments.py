"""Segment files: naming, the header record, the append-only active segment, sealing,
and repairing a torn tail.

A segment is ``segments/segment-<seq:08d>-<UTC YYYYmmddTHHMMSSZ>.jsonl``. Its first line
is a header record that makes its first bytes unique (file shippers fingerprint on
them); every other line is one record. The highest seq is the active segment, the only
file the store ever appends to; every other segment is sealed and never changes again
(except being replaced, atomically, by its compressed copy).
"""

from __future__ import annotations

import itertools
import os
import re
import stat
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from audit_middleware.event import SCHEMA_VERSION, format_created

from .errors import CorruptSegmentError, StorageError
from .lines import LineSplitter
from .records import created_micros
from .regular_files import fsync_dir, open_regular, open_regular_fd

FILE_MODE: Final = 0o640
DIR_MODE: Final = 0o750
# ASCII digits only (``\d`` takes any Unicode digit, int() reads most of them): a
# file named with other digits must not pass for a segment of that number.
_NAME = re.compile(r"segment-(\d{8,})-(\d{8}T\d{6}Z)\.jsonl(\.gz)?", re.ASCII)
_READ_CHUNK: Final = 1 << 20


def segment_name(seq: int, created_ns: int) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(created_ns // 1_000_000_000))
    return f"segment-{seq:08d}-{stamp}.jsonl"


def segment_seq(name: str) -> int | None:
    """The seq in a segment file name (plain or compressed), or None for another name."""
    match = _NAME.fullmatch(name)
    return int(match[1]) if match else None


@dataclass(frozen=True)
class SegmentFile:
    """A segment file found on disk."""

    seq: int
    path: Path
    compressed: bool

    @property
    def name(self) -> str:
        """The uncompressed name: what the index and the digests call the segment."""
        return self.path.name.removesuffix(".gz")


def list_segment_files(directory: Path) -> list[SegmentFile]:
    """Every segment file, by seq (a plain and a compressed copy of one seq both show)."""
    found = []
    for path in directory.iterdir():
        match = _NAME.fullmatch(path.name)
        if match:
            found.append(SegmentFile(int(match[1]), path, bool(match[3])))
    return sorted(found, key=lambda f: (f.seq, f.compressed))


def file_sizes(paths: Iterable[Path], *, raise_refused: bool = False) -> dict[Path, int]:
    """The size of each of ``paths`` that is a regular file, in their order, leaving out
    those gone by the time of their stat: next to a running collector, retention deletes
    sealed segments, compression replaces them by their ``.gz`` and SQLite removes the
    index's ``-wal`` at a stop (an operator may delete files too), between any listing
    of a directory and the stat of what it listed. One that cannot be stat'ed at all (a
    link loop) is left out too: not a regular file, for whoever reads it to report.
    ``raise_refused``: a stat refused (``PermissionError``: a directory this user may
    list but not search) is raised; left out, every file was, and `stats` said "0
    segments" of a full store. (The collector's own figures leave it out: a stats task
    that raised died of it.)"""
    sizes: dict[Path, int] = {}
    for path in paths:
        try:
            st = path.stat()
        except PermissionError:
            if raise_refused:
                raise
            continue
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            sizes[path] = st.st_size
    return sizes


def leftover_temp_files(directory: Path) -> list[Path]:
    """Files an interrupted segment creation or compression left behind."""
    return sorted(p for p in directory.iterdir() if p.name.endswith(".tmp"))


@dataclass(frozen=True)
class SegmentHeader:
    id: str
    seq: int
    previous: str
    schema: int
    created: str
    #: The chain value of the record before this segment's first one: the link that
    #: carries the record hash chain across segments (empty when chaining is off).
    chain: str = ""

    def to_line(self) -> bytes:
        body: dict[str, object] = {"id": self.id, "seq": self.seq, "previous": self.previous,
                                   "schema": self.schema, "created": self.created}
        if self.chain:
            body["chain"] = self.chain
        return orjson.dumps({"segment": body}, option=orjson.OPT_APPEND_NEWLINE)

    @classmethod
    def parse(cls, line: bytes, where: object) -> SegmentHeader:
        try:
            body = orjson.loads(line)["segment"]
            header = cls(str(body["id"]), int(body["seq"]), str(body["previous"]),
                         int(body["schema"]), str(body["created"]), str(body.get("chain", "")))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise CorruptSegmentError(
                f"{where} does not start with a segment header line "
                f'({{"segment":{{"id",...}}}}): it is not a segment this store wrote; '
                f"move it out of the segments directory"
            ) from None
        return header


class ActiveSegment:
    """The segment being appended to. One writer (the store's commit thread)."""

    def __init__(self, path: Path, header: SegmentHeader, fd: int, size: int,
                 records: int, created_ns: int) -> None:
        self.path = path
        self.header = header
        self.fd = fd
        self.size = size
        self.records = records
        self.created_ns = created_ns
        self.needs_cut = False  # a failed write could not be cut back yet

    @classmethod
    def create(cls, directory: Path, seq: int, previous: str,
               now_ns: int | None = None, chain: str = "") -> ActiveSegment:
        """Write the header to a temporary file, fsync, rename into place: a segment
        file never exists without its complete header. ``chain``: the chain value of
        the last record before this segment (see ``SegmentHeader.chain``)."""
        created_ns = time.time_ns() if now_ns is None else now_ns
        header = SegmentHeader(uuid.uuid4().hex, seq, previous, SCHEMA_VERSION,
                               format_created(created_ns), chain)
        path = directory / segment_name(seq, created_ns)
        tmp = path.with_name(path.name + ".tmp")
        data = header.to_line()
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        placed = tmp  # where the file is, for the cleanup
        try:
            _pwrite_all(fd, data, 0)
            os.fsync(fd)
            os.rename(tmp, path)
            placed = path
            fsync_dir(directory)
        except BaseException:
            os.close(fd)
            # Renamed already when the directory's fsync fails (out of files, it needs
            # a second one): the caller goes on with the previous segment, so this one
            # must go too. Left, each rotation tried again added another segment of this
            # seq, and readers took the first, a header only, for the seq's records.
            placed.unlink(missing_ok=True)
            raise
        return cls(path, header, fd, len(data), 0, created_ns)

    @classmethod
    def reopen(cls, path: Path, records: int) -> ActiveSegment:
        """Continue appending to an existing segment (after its tail was repaired)."""
        # Checked before anything is written, and without waiting: something else put in
        # its place since recovery read it (a FIFO, a device) must not hang the start.
        fd = open_regular_fd(path, os.O_RDWR)
        try:
            header = read_header(path)
            size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        return cls(path, header, fd, size, records, _created_ns(header, path))

    def append(self, data: bytes) -> int:
        """Write ``data`` at the end; returns its offset. On an OSError nothing of it
        stays in the file (the file is cut back, then the error propagates)."""
        start = self.size
        if self.needs_cut:
            self.cut(start)  # still failing: the OSError propagates, nothing is written
        try:
            _pwrite_all(self.fd, data, start)
        except OSError:
            try:
                self.cut(start)
            except OSError:
                self.needs_cut = True
            raise
        self.size = start + len(data)
        return start

    def cut(self, size: int) -> None:
        """Truncate back to ``size`` (the end of the last complete record)."""
        os.ftruncate(self.fd, size)
        os.fsync(self.fd)
        self.size = size
        self.needs_cut = False

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1  # never closed twice: the number may be reused
            os.close(fd)


def seal(segment: ActiveSegment) -> Path:
    """Make ``segment`` sealed: flushed, closed, never written again. The one place a
    segment becomes sealed; the store calls it after the next segment exists, so the
    sealed file is no longer the highest seq (``SegmentSet.rotate`` then has the
    ledger write the segment's signed seal digest)."""
    os.fsync(segment.fd)
    segment.close()
    return segment.path


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _created_ns(header: SegmentHeader, where: object) -> int:
    try:
        return created_micros(header.created) * 1000
    except StorageError:
        raise CorruptSegmentError(f"{where}: header 'created' is not a time") from None


def read_header(path: Path) -> SegmentHeader:
    return _read_header_line(path)[0]


def _read_header_line(path: Path) -> tuple[SegmentHeader, int]:
    """The header and the length of its line."""
    with open_regular(path) as f:
        line = f.readline(64 * 1024)
    if not line.endswith(b"\n"):
        raise CorruptSegmentError(
            f"{path.name} has no complete header line: it is not a segment this store "
            f"wrote; move it out of the segments directory"
        )
    return SegmentHeader.parse(line, path.name), len(line)


def header_created_ns(path: Path) -> int:
    return _created_ns(read_header(path), path.name)


def first_line(file: SegmentFile) -> bytes:
    """The header line of a plain or compressed segment."""
    if file.compressed:
        import gzip

        with open_regular(file.path) as raw, gzip.GzipFile(fileobj=raw, mode="rb") as f:
            return bytes(f.readline(64 * 1024))
    with open_regular(file.path) as f:
        return f.readline(64 * 1024)


def header_of(file: SegmentFile) -> SegmentHeader:
    line = first_line(file)
    if not line.endswith(b"\n"):
        raise CorruptSegmentError(f"{file.path.name} has no complete header line")
    return SegmentHeader.parse(line, file.path.name)


def iter_lines(f: Any, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset, line including its ``\\n``) of each complete line of a binary stream
    from ``start`` on; an unterminated last line (a torn tail) is not yielded."""
    offset = start
    split = LineSplitter()  # linear in a long line (a torn tail of any size), lines whole
    while chunk := f.read(_READ_CHUNK):
        for line in split.feed(chunk):
            line += b"\n"
            yield offset, line
            offset += len(line)


def is_record(line: bytes) -> bool:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and type(value.get("seq")) is int


@dataclass(frozen=True)
class TornTail:
    segment: str
    offset: int  # where the segment now ends
    size: int  # bytes moved to quarantine
    quarantine: Path


def repair_tail(path: Path, quarantine_dir: Path) -> TornTail | None:
    """Cut everything after the last complete record of an uncompressed segment (a
    record cut mid-line by a kill, garbage a power loss left) into a quarantine file
    named after the segment, then truncate the segment there. Complete records are
    never removed."""
    size = path.stat().st_size
    header_end = _read_header_line(path)[1]
    end = _last_record_end(path, size, header_end)
    if end == size:
        return None
    with open_regular(path) as f:
        f.seek(end)
        torn = f.read()
    target = quarantine_torn(path, end, torn, quarantine_dir)
    fd = open_regular_fd(path, os.O_RDWR)  # as ``ActiveSegment.reopen``'s
    try:
        os.ftruncate(fd, end)
        os.fsync(fd)
    finally:
        os.close(fd)
    return TornTail(path.name, end, len(torn), target)


def quarantine_torn(path: Path, end: int, torn: bytes, quarantine_dir: Path) -> Path:
    """A durable copy in ``quarantine_dir`` of the bytes ``torn`` found at ``end`` of
    ``path``, before the caller cuts them off: the copy an earlier, killed repair made
    of them, or a new file (numbered when the second and offset repeat)."""
    target = _quarantined_copy(path, end, torn, quarantine_dir)
    if target is not None:
        return target
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = quarantine_dir / f"{path.name}.{stamp}.{end}.torn"
    for n in itertools.count(2):
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         FILE_MODE)
            break
        except FileExistsError:  # the same second and offset, other bytes
            target = quarantine_dir / f"{path.name}.{stamp}.{end}.{n}.torn"
    try:
        _pwrite_all(fd, torn, 0)
        os.fsync(fd)
    except BaseException:
        # A partial copy goes: a full disk took part of it, and the start tried again
        # in the room of a slice of the reserve (``Store._open_in_reserve``) found that
        # room held by it, each try leaving one more, the reserve spent on them all.
        os.close(fd)
        target.unlink(missing_ok=True)
        raise
    os.close(fd)
    fsync_dir(quarantine_dir)
    return target


def _quarantined_copy(path: Path, end: int, torn: bytes, quarantine_dir: Path) -> Path | None:
    """A quarantine file that already holds exactly these bytes from this segment and
    offset: a kill after the copy, before the cut. The restart only cuts (it failed to
    start within the same second, FileExistsError, and copied twice a second later)."""
    for candidate in quarantine_dir.glob(f"{path.name}.*.{end}*.torn"):
        try:
            if candidate.stat().st_size == len(torn) and candidate.read_bytes() == torn:
                # Its fsync may not have happened before the kill: done now, before the
                # cut removes the only other copy.
                fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                fsync_dir(quarantine_dir)
                return candidate
        except OSError:
            continue
    return None


def _last_record_end(path: Path, size: int, header_end: int) -> int:
    """Offset just after the last line (scanning back) that is a complete record."""
    with open_regular(path) as f:
        newline = _rfind_newline(f, header_end, size)
        end = newline + 1 if newline >= 0 else header_end
        while end > header_end:
            previous = _rfind_newline(f, header_end, end - 1)
            start = previous + 1 if previous >= 0 else header_end
            f.seek(start)
            if is_record(f.read(end - start)):
                return end
            end = start
    return header_end


def _rfind_newline(f: Any, low: int, high: int) -> int:
    """Offset of the last ``\\n`` in ``[low, high)`` of a file, or -1."""
    pos = high
    while pos > low:
        n = min(pos - low, 64 * 1024)
        f.seek(pos - n)
        i: int = f.read(n).rfind(b"\n")
        if i >= 0:
            return pos - n + i
        pos -= n
    return -1
