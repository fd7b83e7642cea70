"""The read commands on a hung data disk (``hung_reads``: a record's read from a segment
blocks): ``--timeout`` is checked inside SQLite and between records, which a read()
that never returns never reaches. ``query --timeout`` hung for good there, without a
word, and so did a ``tail -f`` poll; now the query ends at about its limit (exit
status 2, saying what it printed is incomplete) and the follower says so and goes on
once the read returns."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.query import MAX_LIMIT
from collector.read_deadline import GRACE
from tests.collector.storage_helpers import event, events, open_store
from tests.e2e.harness import ROOT
from tests.faults.fleet import wait_for
from tests.faults.hung_reads import (
    AT,
    AT_GATE,
    SEGMENT_READS_AFTER,
    SEGMENT_READS_GATE,
    read_hung_at,
    segment_read_hung,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

#: Seconds a test waits for what must come: a bound on a failure, not a timing.
BOUND = 30
HUNG = "a read of the data directory did not return (a hung disk"


@contextlib.contextmanager
def command(tmp: Path, *args: str, after: int = 0, piped: bool = False,
            at: str | None = None,
            ) -> Iterator[tuple[subprocess.Popen[Any], Path, Path, Path]]:
    """``audit-collector ARGS`` on ``tmp/data``, its segment reads hanging while the gate
    exists (made here; removed at the end) after the first ``after`` (``at``: instead,
    the one read of ``hung_reads.READS_AT`` it names): the process, the gate, and the
    files its stdout and stderr go to (``piped``: stdout is the process's ``stdout``
    pipe, read by nobody until the test does, as a pager that does not page on)."""
    gate, out, err = tmp / "disk-hangs", tmp / "stdout", tmp / "stderr"
    gate.touch()
    hanging = ({SEGMENT_READS_GATE: str(gate), SEGMENT_READS_AFTER: str(after)}
               if at is None else {AT_GATE: str(gate), AT: at})
    env = {**os.environ, "AUDIT_CONFIG": "", **hanging}
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "tests.faults.hung_reads", *args,
                                 "--data-dir", str(tmp / "data")], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE if piped else stdout, stderr=stderr)
    try:
        yield proc, gate, out, err
    finally:
        gate.unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()
        proc.wait(BOUND)


def ended(proc: subprocess.Popen[Any]) -> int:
    try:
        return proc.wait(BOUND)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {BOUND}s on: hung in the read") from None


def test_query_timeout_ends_a_query_stuck_in_a_segment_read(tmp: Path) -> None:
    with open_store(tmp / "data") as store:
        store.write(events(5))
    with command(tmp, "query", "--timeout", "1s") as (proc, gate, out, err):
        wait_for(segment_read_hung(gate).exists, BOUND, "the query's read to hang")
        code = ended(proc)  # the disk still hangs
        assert code == 2, err.read_text()
    assert out.read_text() == ""  # a page is printed whole or not at all
    message = err.read_text()
    assert ("audit-collector query: the query ran longer than 1 s (--timeout) and was "
            f"stopped: {HUNG}") in message, message
    assert "Traceback" not in message and "incomplete" not in message


def test_query_all_stuck_after_some_records_says_they_are_incomplete(tmp: Path) -> None:
    with open_store(tmp / "data") as store:
        store.write(events(1500))
    # --all reads pages of 1,000 and prints them 500 at a time: the second page hangs.
    with command(tmp, "query", "--all", "--format", "jsonl", "--timeout", "2s",
                 after=1000) as (proc, gate, out, err):
        wait_for(segment_read_hung(gate).exists, BOUND, "the second page's read to hang")
        code = ended(proc)
        assert code == 2, err.read_text()
    assert len(out.read_text().splitlines()) == 1000
    message = err.read_text()
    assert HUNG in message, message
    assert message.rstrip().endswith(
        "; the 1000 record(s) printed before it are an incomplete answer"), message


def test_a_query_whose_output_is_not_read_on_is_not_taken_for_a_hung_disk(
        tmp: Path) -> None:
    """``query --all --timeout 1s | less``, the pager not paging on: the records were
    written by the reading thread, which blocked in that write, was taken for a read the
    disk does not answer 1 s past the limit and left behind: the command blamed the disk
    and exited, and did not say that the records already in the pipe were an incomplete
    answer. The command's own thread writes now, waiting for its reader as any command
    does; the query is then stopped at its limit, said as such, what it printed counted."""
    with open_store(tmp / "data") as store:
        store.write(events(3000))  # far more than a pipe holds
    # The disk answers every read (the gate opens after more reads than are made).
    with command(tmp, "query", "--all", "--format", "jsonl", "--timeout", "1s",
                 after=10**9, piped=True) as (proc, _, _, err):
        assert proc.stdout is not None
        # No event says "a write is waiting for its reader": the bug's exit comes at
        # about 2 s (the limit and GRACE); this waits past it, then reads.
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(1 + GRACE + 3)
        printed = proc.stdout.read().decode().splitlines()
        code = ended(proc)
        assert code == 2, err.read_text()
    message = err.read_text()
    assert HUNG not in message, message
    assert "the query ran longer than 1 s (--timeout)" in message, message
    assert printed and all(line.endswith("}") for line in printed)
    assert message.rstrip().endswith(
        f"; the {len(printed)} record(s) printed before it are an incomplete answer"), message


def test_tail_timeout_ends_a_read_of_the_last_records_stuck_in_a_segment_read(
        tmp: Path) -> None:
    with open_store(tmp / "data") as store:
        store.write(events(3))
    with command(tmp, "tail", "-f", "--timeout", "1s") as (proc, gate, out, err):
        wait_for(segment_read_hung(gate).exists, BOUND, "the last records' read to hang")
        code = ended(proc)  # a follower's start ends it, as bad filters do
        assert code == 2, err.read_text()
    assert out.read_text() == ""
    assert "audit-collector tail: the query ran longer than 1 s (--timeout)" in \
        err.read_text()


def test_tail_timeout_ends_a_check_of_segments_on_a_hung_mount(tmp: Path) -> None:
    """tail checked the data directory (a stat of segments/) before its --timeout began,
    as query does not: segments/ on a hung mount held it there for good."""
    with open_store(tmp / "data") as store:
        store.write(events(3))
    with command(tmp, "tail", "--timeout", "1s", at="segments_check") as (
            proc, gate, out, err):
        wait_for(read_hung_at(gate).exists, BOUND, "the check of segments/ to hang")
        code = ended(proc)
        assert code == 2, err.read_text()
    assert out.read_text() == ""
    assert "audit-collector tail: the query ran longer than 1 s (--timeout)" in \
        err.read_text()


def test_tail_stuck_after_a_page_of_its_last_records_says_they_are_incomplete(
        tmp: Path) -> None:
    """``tail -n`` past a page (10,000 records) prints a page at a time: stopped by a
    hung disk after one, it said only that the query was stopped, and the 10,000
    lines it had printed read as the last records. Now it counts them, as query does."""
    with open_store(tmp / "data") as store:
        store.write(events(MAX_LIMIT + 5))
    # The newest 10,000 read, then the 5 before them (where the last N start), then the
    # first page printed: the second page's first read hangs.
    with command(tmp, "tail", "-n", str(MAX_LIMIT + 5), "--timeout", "5s",
                 after=2 * MAX_LIMIT + 5) as (proc, gate, out, err):
        wait_for(segment_read_hung(gate).exists, BOUND, "the second page's read to hang")
        code = ended(proc)
        assert code == 2, err.read_text()
    assert len(out.read_text().splitlines()) == MAX_LIMIT
    message = err.read_text()
    assert f"audit-collector tail: the query ran longer than 5 s (--timeout) and was " \
        f"stopped: {HUNG}" in message, message
    assert message.rstrip().endswith(
        f"; the {MAX_LIMIT} record(s) printed before it are an incomplete answer"), message


def test_a_tail_follow_poll_stuck_in_a_read_is_said_and_followed_once_it_returns(
        tmp: Path) -> None:
    with open_store(tmp / "data") as store:
        store.write([event(target="before")])
    # The one record of the start is read; the next read, a poll's, hangs.
    with command(tmp, "tail", "-f", "-n", "1", "--timeout", "1s",
                 after=1) as (proc, gate, out, err):
        wait_for(lambda: out.read_text().count("\n") == 1, BOUND, "the last record")
        with open_store(tmp / "data") as store:
            store.write([event(target="while the disk hangs")])
        wait_for(lambda: "has not returned" in err.read_text(), BOUND,
                 "the follower to say its read has not returned")
        assert proc.poll() is None  # it waits for the read: a follower has no end
        gate.unlink()  # the disk answers again
        wait_for(lambda: out.read_text().count("\n") == 2, BOUND, "the new record")
        wait_for(lambda: "tail: reading again" in err.read_text(), BOUND, "the all-clear")
        assert proc.poll() is None
    targets = [orjson.loads(line)["target"] for line in out.read_text().splitlines()]
    assert targets == ["before", "while the disk hangs"]
    said = err.read_text()
    assert said.count("has not returned") == 1, said  # once, not a line a poll
    assert (f"tail: a read of {tmp / 'data'} has not returned for 2s (a hung disk, a "
            f"frozen network file system?); waiting for it: new records are printed once "
            f"it returns") in said, said
