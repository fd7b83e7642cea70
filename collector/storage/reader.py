"""Reading the records an index row points at: one ``pread`` per record from a plain
segment, one gzip member from a compressed one. Never a scan of a segment file
(except once, to rebuild a missing block map).
"""

from __future__ import annotations

import os
import sqlite3
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson

from .compression import BlockMap, CompressedReader, iter_members
from .errors import IndexOutOfDateError
from .in_the_way import not_a_segment_file
from .regular_files import NotRegularFileError, open_regular_fd
from .segments import segment_seq
from .time_limit import check


class _Plain:
    def __init__(self, path: Path) -> None:
        self.fd = open_regular_fd(path)

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def close(self) -> None:
        os.close(self.fd)


class RecordReader:
    """Keeps a few segment files open for one query connection (one thread)."""

    def __init__(self, segments_dir: Path, con: sqlite3.Connection, keep_open: int = 16) -> None:
        self.segments_dir = segments_dir
        self._con = con
        self._open: OrderedDict[int, _Plain | CompressedReader] = OrderedDict()
        self._keep_open = keep_open

    def records(self, hits: list[tuple[int, int, int, int]],
                segments: dict[int, tuple[str, bool]],
                gone: list[int] | None = None) -> list[dict[str, Any]]:
        """The records of ``hits`` (seq, segment, offset, length), in order. A record
        whose segment retention deleted meanwhile is left out (its seq added to
        ``gone``: a follower says it, rather than skip it without a word)."""
        self._drop_deleted()
        out = []
        for seq, segment, offset, length in hits:
            check()  # a page of 10,000 from compressed segments: a gzip member each
            name, compressed = segments[segment]
            file = self._file(segment, name, compressed)
            if file is None:
                if gone is not None:
                    gone.append(seq)
                continue
            line = file.read(offset, length)
            try:
                record = orjson.loads(line)
                if record.get("seq") != seq:
                    raise ValueError
            except (orjson.JSONDecodeError, ValueError, AttributeError):
                raise IndexOutOfDateError(
                    f"the index points at byte {offset} of {name} for record {seq}, and the "
                    f"record is not there: the segment changed under the index; run "
                    f"`audit-collector reindex` (and `verify`, it may have been tampered with)"
                ) from None
            out.append(record)
        return out

    def _file(self, segment: int, name: str, compressed: bool) -> _Plain | CompressedReader | None:
        file = self._open.get(segment)
        if file is not None:
            self._open.move_to_end(segment)
            return file
        if name.endswith(".gz") or segment_seq(name) != segment:
            # The index is not signed: a row naming another file (an absolute path, one
            # outside segments/, a stray file) made queries answer records from a file
            # verify never reads, while verify called the store valid.
            raise IndexOutOfDateError(
                f"the index names {name!r} as the file of segment {segment}, which is not "
                f"that segment's file name: run `audit-collector reindex` (and `verify`: "
                f"the index may have been tampered with)")
        plain = self.segments_dir / name
        packed = self.segments_dir / (name + ".gz")
        # The snapshot may predate a compression (plain file gone) or the other way
        # round: try the form the index names, then the other one.
        for path, is_gz in ((packed, True), (plain, False)) if compressed else \
                ((plain, False), (packed, True)):
            try:
                file = CompressedReader(path, self._blocks(segment, path)) if is_gz \
                    else _Plain(path)
                break
            except FileNotFoundError:
                continue
            except NotRegularFileError as exc:  # opened without waiting: said, with what to do
                raise not_a_segment_file(exc) from None
        else:
            return None  # deleted by retention since the rows were read
        self._open[segment] = file
        if len(self._open) > self._keep_open:
            self._open.popitem(last=False)[1].close()
        return file

    def _drop_deleted(self) -> None:
        """Close the files retention or compression has deleted since they were opened:
        a long-lived reader (tail -f, the forwarder) kept up to ``keep_open`` of them,
        their disk space held out of reach of retention_bytes."""
        for segment, file in list(self._open.items()):
            try:
                gone = os.fstat(file.fd).st_nlink == 0
            except OSError:
                gone = True
            if gone:
                del self._open[segment]
                file.close()

    def _blocks(self, segment: int, path: Path) -> BlockMap:
        blocks = [(u, c) for u, c in self._con.execute(
            "SELECT uoff, coff FROM gz_blocks WHERE segment=? ORDER BY uoff", (segment,))]
        if not blocks:  # compressed after our snapshot: find the members once
            if not path.exists():
                raise FileNotFoundError(path)
            blocks = [(u, c) for u, c, _ in iter_members(path)]
        return blocks

    def close(self) -> None:
        for file in self._open.values():
            file.close()
        self._open.clear()
