"""``python -m collector`` on a hung data disk at the reads and at the stop: while the
file named by ``HUNG_READS_WHILE`` exists, the API's lookups of an event
(``Reader.find``) hang, each first making ``find_hung(gate, n)``; while the file named
by ``HUNG_UNLINK_WHILE`` exists, the removal of a unix socket's file hangs, first making
``unlink_hung(gate)``; while the file named by ``HUNG_SEGMENT_READS_WHILE`` exists, a
record's read from a plain segment (``pread``, the read commands' too) hangs, from the
read after the first ``HUNG_SEGMENT_READS_AFTER`` (default 0), first making
``segment_read_hung(gate)``; while the file named by ``HUNG_AT_WHILE`` exists, the one
read ``HUNG_AT`` names (``READS_AT``: stats' index count, its segments' listing, its
read of the stats file, verify's read of a segment, the read commands' check of
``segments/``, a stat on a hung mount) hangs, first making
``read_hung_at(gate)``. No test can make a real disk hang; removing a file lets
what is under way complete. The API's waits are its own, not shortened here: 10 s for a
query thread (``collector.api.queries.THREAD_WAIT``), and a lookup held in its read is
answered 503 that long past ``query_timeout`` (``--query-timeout``; 30 s by default).
Run with a command (``query``, ``tail``...) instead of ``serve``, it is the read
commands on that disk."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any, Final

from collector import index, read_arguments, read_stats
from collector.cli import main
from collector.integrity import scan
from collector.query import Reader
from collector.storage import reader as segment_reader

READS_GATE: Final = "HUNG_READS_WHILE"
UNLINK_GATE: Final = "HUNG_UNLINK_WHILE"
SEGMENT_READS_GATE: Final = "HUNG_SEGMENT_READS_WHILE"
SEGMENT_READS_AFTER: Final = "HUNG_SEGMENT_READS_AFTER"
AT_GATE: Final = "HUNG_AT_WHILE"
AT: Final = "HUNG_AT"
READS_AT: Final = ("index_count", "segment_listing", "stats_file", "verify_segment_read",
                   "segments_check")

find = Reader.find
unlink = os.unlink
segment_read = segment_reader._Plain.read
count_rows = index.count_rows
listdir = os.listdir
read_regular = read_stats.read_regular
chunks = scan.chunks
segments_check = read_arguments.refuse_other_than_a_dir
_finds = itertools.count(1)
_segment_reads = itertools.count(1)


def find_hung(gate: Path, n: int) -> Path:
    return gate.with_name(f"{gate.name}.find-{n}")


def unlink_hung(gate: Path) -> Path:
    return gate.with_name(gate.name + ".unlink-hung")


def segment_read_hung(gate: Path) -> Path:
    return gate.with_name(gate.name + ".segment-read-hung")


def read_hung_at(gate: Path) -> Path:
    return gate.with_name(gate.name + ".read-hung")


def _wait_while(gate: Path) -> None:
    while gate.exists():
        time.sleep(0.01)


def hung_find(reader: Reader, event_id: str) -> Any:
    gate = Path(os.environ[READS_GATE])
    if gate.exists():
        find_hung(gate, next(_finds)).touch()
        _wait_while(gate)
    return find(reader, event_id)


def hung_unlink(path: Any, *args: Any, **kwargs: Any) -> None:
    gate = Path(os.environ[UNLINK_GATE])
    if os.fspath(path).endswith(".sock") and gate.exists():
        unlink_hung(gate).touch()
        _wait_while(gate)
    unlink(path, *args, **kwargs)


def hung_segment_read(plain: Any, offset: int, length: int) -> bytes:
    gate = Path(os.environ[SEGMENT_READS_GATE])
    after = int(os.environ.get(SEGMENT_READS_AFTER, "0"))
    if next(_segment_reads) > after and gate.exists():
        segment_read_hung(gate).touch()
        _wait_while(gate)
    return segment_read(plain, offset, length)


def _hang_here() -> None:
    gate = Path(os.environ[AT_GATE])
    if gate.exists():
        read_hung_at(gate).touch()
        _wait_while(gate)


def hung_count_rows(con: Any) -> int:
    _hang_here()
    return count_rows(con)


def hung_listdir(path: Any = ".") -> Any:
    if os.path.basename(os.fspath(path).rstrip("/")) == "segments":
        _hang_here()
    return listdir(path)


def hung_read_regular(path: Path, limit: int) -> bytes:
    _hang_here()
    return read_regular(path, limit)


def hung_chunks(file: Any) -> Any:
    _hang_here()  # before the segment's first read
    yield from chunks(file)


def hung_segments_check(*args: Any) -> None:
    _hang_here()
    segments_check(*args)


def _hang_at(read: str) -> None:
    if read == "index_count":
        index.count_rows = hung_count_rows  # read_stats imports it from index when run
    elif read == "segment_listing":
        os.listdir = hung_listdir  # what stats lists segments/ with
    elif read == "stats_file":
        read_stats.read_regular = hung_read_regular
    elif read == "verify_segment_read":
        scan.chunks = hung_chunks
    elif read == "segments_check":
        read_arguments.refuse_other_than_a_dir = hung_segments_check
    else:
        raise SystemExit(f"{AT}={read!r}: one of {', '.join(READS_AT)}")


if __name__ == "__main__":
    # Each only where its gate is named: a test of another read leaves the rest alone.
    if READS_GATE in os.environ:
        Reader.find = hung_find  # type: ignore[method-assign,assignment]
    if UNLINK_GATE in os.environ:
        os.unlink = hung_unlink
    if SEGMENT_READS_GATE in os.environ:
        segment_reader._Plain.read = hung_segment_read  # type: ignore[method-assign]
    if AT_GATE in os.environ:
        _hang_at(os.environ[AT])
    raise SystemExit(main())
