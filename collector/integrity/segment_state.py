"""What a digest says of a segment file, computed from the file's bytes: its header's
numbers, its records' count, first and last, its size, SHA-256 and last chain value (the
``Ledger`` follows the active segment from it, and signs a segment found unsealed).
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from collector.storage.regular_files import open_regular
from collector.storage.segments import SegmentFile, SegmentHeader, iter_lines

from . import chain as chains
from . import digests as d
from .errors import DigestFormatError

Hash = Any  # hashlib's sha256 object


def _read_header(path: Path) -> SegmentHeader:
    with open_regular(path) as f:
        return SegmentHeader.parse(f.readline(64 * 1024), path.name)


def scan_segment(file: SegmentFile) -> tuple[d.SegmentState, Hash]:
    """What a digest of ``file`` says, computed from its bytes (complete lines only),
    and the running hash of those bytes."""
    running = hashlib.sha256()
    state: d.SegmentState | None = None
    first = last = b""
    records = 0
    size = 0
    for offset, line in _lines(file):
        running.update(line)
        size = offset + len(line)
        if state is None:
            header = SegmentHeader.parse(line, file.path.name)
            state = d.SegmentState(file.name, header.id, header.seq, header.chain,
                                   last_chain=header.chain)
            continue
        records += 1
        if not first:
            first = line
        last = line
    if state is None:
        raise DigestFormatError(f"{file.path.name} has no header line")
    state.size, state.records, state.sha256 = size, records, running.hexdigest()
    for line, end in ((first, "first"), (last, "last")):
        if not line:
            continue
        try:
            record = orjson.loads(line)
            setattr(state, f"{end}_seq", int(record["seq"]))
            setattr(state, f"{end}_id", str(record["id"]))
            setattr(state, f"{end}_time", str(record["created"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            pass  # not a record: verify reports it; the digest says what is there
    if last:
        value = chains.chain_of(last)
        state.last_chain = value.decode() if value else ""
    return state, running


def _lines(file: SegmentFile) -> Iterator[tuple[int, bytes]]:
    with open_regular(file.path) as raw:
        if file.compressed:
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                yield from iter_lines(f)
        else:
            yield from iter_lines(raw)

