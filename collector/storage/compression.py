"""Compressed sealed segments that a query can still read one record of.

A compressed segment is an ordinary gzip file (``gzip -dc`` and ``zcat`` read it), made
of independent gzip members of about 64 KiB of whole lines each (the BGZF idea from
bioinformatics). The index keeps each member's (uncompressed, compressed) offset, so
reading a record decompresses one member instead of the segment up to it.
"""

from __future__ import annotations

import bisect
import gzip
import os
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Final

from .errors import CorruptSegmentError
from .regular_files import open_regular, open_regular_fd
from .segments import FILE_MODE, _pwrite_all

BLOCK_BYTES: Final = 64 * 1024
LEVEL: Final = 6
_READ_CHUNK: Final = 1 << 20

#: (uncompressed offset, compressed offset) of each gzip member, in order.
BlockMap = list[tuple[int, int]]

#: How every member ``compress`` writes starts: gzip, deflate, no flags. A flag would
#: allow an extra field, a name or a comment, which ``zcat`` skips: bytes that can hold
#: a whole forged member, found by a block map pointing into them and by no reader of
#: the file itself (verify refuses such a member; so does ``CompressedReader``).
MEMBER_START: Final = b"\x1f\x8b\x08\x00"


def gzip_chunks(raw: BinaryIO, name: str, size: int) -> Iterator[tuple[bytes, int]]:
    """The uncompressed bytes of a compressed segment read from ``raw``, in chunks of at
    most ``size`` bytes (also for a member that inflates far beyond its size), each with
    how many bytes of the file have been read so far. ``CorruptSegmentError`` for a
    member that does not start with ``MEMBER_START``, is damaged or is cut short."""
    for data, at, _ in _inflate(raw, name, size):
        if data:
            yield data, at


def iter_members(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(uncompressed offset, compressed offset, data) of each gzip member; refused as by
    ``gzip_chunks`` (verify), so a reindex never maps a member verify and
    ``CompressedReader`` refuse."""
    with open_regular(path) as raw:
        parts: list[bytes] = []
        uoff = coff = 0
        for data, at, member_ended in _inflate(raw, path.name, _READ_CHUNK):
            parts.append(data)
            if member_ended:
                member = b"".join(parts)
                parts.clear()
                yield uoff, coff, member
                uoff += len(member)
                coff = at


def _inflate(raw: BinaryIO, name: str, size: int) -> Iterator[tuple[bytes, int, bool]]:
    """The one walk of a compressed segment's members: (at most ``size`` uncompressed
    bytes, the file offset inflated up to, whether that ends a member)."""
    # Read in members' size, not ``size``: each member's end copies what follows it
    # in the buffer (unused_data), which over a 4 MiB read of 64 KiB members made
    # verify of a compressed segment three times slower than gzip's own reader.
    piece = min(size, BLOCK_BYTES)
    pending = b""  # compressed bytes read and not yet inflated
    at = 0  # the file offset of pending[0]
    member = 0  # the file offset of the current member's start
    inflater: Any = None  # None: at the start of a member
    while True:
        if len(pending) < len(MEMBER_START):
            more = raw.read(piece)
            if more:
                pending += more
                continue
            if not pending and inflater is None:
                return
            if inflater is None:
                raise CorruptSegmentError(f"{name}: the gzip member at byte {at} is no gzip "
                                          f"member")
            if not pending:
                raise CorruptSegmentError(f"{name}: the gzip member at byte {member} is cut "
                                          f"short")
        if inflater is None:
            member = at
            if pending[:len(MEMBER_START)] != MEMBER_START:
                raise CorruptSegmentError(
                    f"{name}: the gzip member at byte {at} does not start as the collector "
                    f"writes one (header flags {pending[3:4].hex() or 'missing'}: an extra "
                    f"field, name or comment, which zcat skips, can hide other records)")
            inflater = zlib.decompressobj(31)
        try:
            data = inflater.decompress(pending, size)
        except zlib.error as exc:
            raise CorruptSegmentError(
                f"{name}: the gzip member at byte {member} is damaged ({exc})") from None
        rest = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
        at += len(pending) - len(rest)
        pending = rest
        ended = inflater.eof
        if ended:
            inflater = None
        if data or ended:
            yield data, at, ended


def compress(source: Path, level: int = LEVEL) -> tuple[Path, BlockMap]:
    """Write ``source`` as ``<name>.gz.tmp`` beside it, fsynced; the caller renames it
    into place. Returns the temporary path and the block map."""
    tmp = source.with_name(source.name + ".gz.tmp")
    blocks: BlockMap = []
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        uoff = coff = 0
        with open_regular(source) as f:
            for block in _line_blocks(f):
                member = gzip.compress(block, compresslevel=level, mtime=0)
                _pwrite_all(fd, member, coff)
                blocks.append((uoff, coff))
                uoff += len(block)
                coff += len(member)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp, blocks


def _line_blocks(f: object) -> Iterator[bytes]:
    """Runs of whole lines of at least BLOCK_BYTES (the last one may be shorter)."""
    pending = b""
    while True:
        chunk = f.read(_READ_CHUNK)  # type: ignore[attr-defined]
        data = pending + chunk
        if not chunk:
            if data:
                yield data
            return
        pos = 0
        while len(data) - pos >= BLOCK_BYTES:
            cut = data.find(b"\n", pos + BLOCK_BYTES - 1)
            if cut < 0:
                break
            yield data[pos:cut + 1]
            pos = cut + 1
        pending = data[pos:]


def iter_lines_and_blocks(path: Path, blocks: BlockMap) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of each line of a compressed segment, in uncompressed offsets;
    fills ``blocks`` with the block map as it goes."""
    rest = b""
    rest_off = 0
    for uoff, coff, data in iter_members(path):
        blocks.append((uoff, coff))
        if rest:
            data = rest + data
            uoff = rest_off
        pos = 0
        while True:
            end = data.find(b"\n", pos)
            if end < 0:
                break
            yield uoff + pos, data[pos:end + 1]
            pos = end + 1
        rest = data[pos:]
        rest_off = uoff + pos


class CompressedReader:
    """Random access to the records of one compressed segment."""

    def __init__(self, path: Path, blocks: BlockMap, cache_blocks: int = 8) -> None:
        if not blocks:
            raise CorruptSegmentError(f"{path.name}: no block map: run reindex")
        self.fd = open_regular_fd(path)
        self._uoffs = [u for u, _ in blocks]
        self._coffs = [c for _, c in blocks] + [os.fstat(self.fd).st_size]
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_blocks = cache_blocks
        self._name = path.name

    def read(self, offset: int, length: int) -> bytes:
        i = bisect.bisect_right(self._uoffs, offset) - 1
        out = b""
        while len(out) < length and 0 <= i < len(self._uoffs):
            data = self._block(i)
            start = offset + len(out) - self._uoffs[i]
            out += data[start:start + length - len(out)]
            i += 1
        return out

    def _block(self, i: int) -> bytes:
        data = self._cache.get(i)
        if data is not None:
            self._cache.move_to_end(i)
            return data
        start, end = self._coffs[i], self._coffs[i + 1]
        raw = os.pread(self.fd, end - start, start)
        # Exactly one member the collector wrote, from start to end: a block map that
        # points elsewhere (into a member's extra field) reads bytes verify never saw.
        inflater = zlib.decompressobj(31)
        try:
            if not raw.startswith(MEMBER_START):
                raise zlib.error("not a member as the collector writes them")
            data = inflater.decompress(raw)
            if not inflater.eof or inflater.unused_data:
                raise zlib.error("the member does not end where the next block starts")
        except zlib.error as exc:
            raise CorruptSegmentError(
                f"{self._name}: gzip member at byte {start} is damaged ({exc}), or the "
                f"index's block map is stale: run reindex"
            ) from None
        self._cache[i] = data
        if len(self._cache) > self._cache_blocks:
            self._cache.popitem(last=False)
        return data

    def close(self) -> None:
        os.close(self.fd)
