"""``python -m collector`` on a hung data disk at the reads and at the stop: while the
file named by ``HUNG_READS_WHILE`` exists, the API's lookups of an event
(``Reader.find``) hang, each first making ``find_hung(gate, n)``; while the file named
by ``HUNG_UNLINK_WHILE`` exists, the removal of a unix socket's file hangs, first making
``unlink_hung(gate)``; while the file named by ``HUNG_SEGMENT_READS_WHILE`` exists, a
record's read from a plain segment (``pread``, the read commands' too) hangs, from the
read after the first ``HUNG_SEGMENT_READS_AFTER`` (default 0), first making
``segment_read_hung(gate)``; while the file named by ``HUNG_DIR_CHECK_WHILE`` exists, the
read commands' check of ``segments/`` (``data_dir_of``'s stat, a hung mount's) hangs,
first making ``dir_check_hung(gate)``. No test can make a real disk hang; removing a file lets
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

from collector import read_arguments
from collector.cli import main
from collector.query import Reader
from collector.storage import reader as segment_reader

READS_GATE: Final = "HUNG_READS_WHILE"
UNLINK_GATE: Final = "HUNG_UNLINK_WHILE"
SEGMENT_READS_GATE: Final = "HUNG_SEGMENT_READS_WHILE"
SEGMENT_READS_AFTER: Final = "HUNG_SEGMENT_READS_AFTER"
DIR_CHECK_GATE: Final = "HUNG_DIR_CHECK_WHILE"

find = Reader.find
unlink = os.unlink
segment_read = segment_reader._Plain.read
dir_check = read_arguments.refuse_other_than_a_dir
_finds = itertools.count(1)
_segment_reads = itertools.count(1)


def find_hung(gate: Path, n: int) -> Path:
    return gate.with_name(f"{gate.name}.find-{n}")


def unlink_hung(gate: Path) -> Path:
    return gate.with_name(gate.name + ".unlink-hung")


def segment_read_hung(gate: Path) -> Path:
    return gate.with_name(gate.name + ".segment-read-hung")


def dir_check_hung(gate: Path) -> Path:
    return gate.with_name(gate.name + ".dir-check-hung")


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


def hung_dir_check(*args: Any) -> None:
    gate = Path(os.environ[DIR_CHECK_GATE])
    if gate.exists():
        dir_check_hung(gate).touch()
        _wait_while(gate)
    dir_check(*args)


if __name__ == "__main__":
    # Each only where its gate is named: a test of another read leaves the rest alone.
    if READS_GATE in os.environ:
        Reader.find = hung_find  # type: ignore[method-assign,assignment]
    if UNLINK_GATE in os.environ:
        os.unlink = hung_unlink
    if SEGMENT_READS_GATE in os.environ:
        segment_reader._Plain.read = hung_segment_read  # type: ignore[method-assign]
    if DIR_CHECK_GATE in os.environ:
        read_arguments.refuse_other_than_a_dir = hung_dir_check
    raise SystemExit(main())
