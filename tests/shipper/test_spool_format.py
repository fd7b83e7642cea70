"""Damage in a spool file (``spool_format``): torn tails, corrupt records, garbled regions
and files cut short are skipped to the next valid record, their bytes and events counted,
at a cost in proportion to the file."""

from __future__ import annotations

import os
import random
import re
import zlib
from collections.abc import Iterable
from pathlib import Path

import pytest

from audit_middleware.shipper import spool_format
from audit_middleware.shipper.spool import Spool
from audit_middleware.shipper.spool_files import SUFFIX
from audit_middleware.shipper.spool_format import _RECORD_START as RECORD_START
from audit_middleware.shipper.spool_format import RECORD
from audit_middleware.wire import encode_batch_body
from tests.shipper.spool_helpers import (
    batch_bodies,
    damaged_spool,
    drain,
    records_of,
    spool_file_of,
    spool_files,
)


def test_a_torn_tail_is_counted_and_the_records_before_it_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(b"first")
    spool.append(b"second")
    spool.close()
    (path,) = spool_files(tmp_path)
    with open(path, "ab") as f:
        f.write(RECORD.pack(1000, 0) + b"half a record")  # a crash in the middle of a write
    recovered = Spool(tmp_path, max_bytes=1 << 20)
    assert recovered.adopt_orphans() == 1
    assert drain(recovered) == [b"first", b"second"]
    assert recovered.corrupt_bytes == RECORD.size + len(b"half a record")
    assert spool_files(tmp_path) == []


def test_a_zero_filled_tail_is_corrupt_not_records_of_nothing(tmp_path: Path) -> None:
    """A power loss can leave zeros where the file's size reached the disk before its
    data (XFS, ext4 data=writeback). Eight zero bytes read as a record of length 0 whose
    crc32 (of nothing) matched: 512 empty 'batches', and a negative dropped count."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(b"first")
    spool.close()
    (path,) = spool_files(tmp_path)
    with open(path, "ab") as f:
        f.write(bytes(4096))
    recovered = Spool(tmp_path, max_bytes=1 << 20)
    assert recovered.adopt_orphans() == 1
    assert drain(recovered) == [b"first"]
    assert recovered.corrupt_bytes == 4096


def test_a_corrupt_record_stops_replay_of_that_file_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, file_bytes=30)
    spool.append(b"a" * 20)
    spool.append(b"b" * 20)
    spool.close()
    first, _ = spool_files(tmp_path)
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF  # flip a byte: the checksum no longer matches
    first.write_bytes(bytes(data))
    recovered = Spool(tmp_path, max_bytes=1 << 20)
    recovered.adopt_orphans()
    assert drain(recovered) == [b"b" * 20]
    assert recovered.corrupt_bytes == 20 + RECORD.size


def three_records(tmp_path: Path) -> Path:
    path = spool_file_of(tmp_path, (b"first", b"second", b"third"))
    return path


def test_a_corrupt_record_in_the_middle_loses_only_itself(tmp_path: Path) -> None:
    """A record whose checksum fails made the reader skip the rest of its file: every
    record after it was lost, seen only in ``corrupt_bytes`` (a review helper). The
    reader now finds the next valid record (length, crc32, body) and goes on there."""
    path = three_records(tmp_path)
    (_, _), (second, size), _ = records_of(path)
    data = bytearray(path.read_bytes())
    data[second + RECORD.size + 2] ^= 0xFF  # the second body: its crc32 fails
    path.write_bytes(bytes(data))
    recovered = Spool(tmp_path, max_bytes=1 << 20)
    assert recovered.adopt_orphans() == 1
    assert drain(recovered) == [b"first", b"third"]
    assert recovered.corrupt_bytes == size
    assert spool_files(tmp_path) == []


@pytest.mark.parametrize("damage", ["length", "garbage", "zeros", "random"])
def test_a_garbled_region_is_skipped_to_the_next_valid_record(tmp_path: Path,
                                                                 damage: str) -> None:
    """A torn or garbled region (a wrong length, bytes that are no record, a zeroed
    sector) in the middle of a file: what follows it is still replayed."""
    path = three_records(tmp_path)
    (_, _), (second, size), _ = records_of(path)
    data = bytearray(path.read_bytes())
    if damage == "length":  # a length pointing past the end of the file
        data[second:second + 4] = (1 << 20).to_bytes(4, "big")
        lost = size
    elif damage == "garbage":
        data[second:second] = b"\x00\x00\x00\x03abcdefgh\x00junk"
        lost = 17 + size
        data[second + 17:second + 17 + size] = bytes(size)  # and the record zeroed
    elif damage == "zeros":
        data[second:second + size] = bytes(size)
        lost = size
    else:
        noise = bytes(random.Random(7).getrandbits(8) for _ in range(70_000))
        data[second:second + size] = noise
        lost = len(noise)
    path.write_bytes(bytes(data))
    recovered = Spool(tmp_path, max_bytes=1 << 20)
    assert recovered.adopt_orphans() == 1
    assert drain(recovered) == [b"first", b"third"]
    assert recovered.corrupt_bytes == lost


def test_the_events_of_a_corrupt_region_are_counted_when_their_header_is_readable(
        tmp_path: Path) -> None:
    bodies = [encode_batch_body("app:1:ab", [i * 3 + 1, i * 3 + 2, i * 3 + 3],
                                [b'{"n":%d}\n' % j for j in range(3)]) for i in range(3)]
    path = spool_file_of(tmp_path, bodies)
    (_, _), (second, size), _ = records_of(path)
    data = bytearray(path.read_bytes())
    data[second + size - 3] ^= 0xFF  # an event line of the second record
    path.write_bytes(bytes(data))
    recovered = Spool(tmp_path, max_bytes=1 << 20)
    recovered.adopt_orphans()
    assert drain(recovered) == [bodies[0], bodies[2]]
    assert (recovered.corrupt_bytes, recovered.lost_events) == (size, 3)


class CountedParses:
    """``orjson`` whose ``loads`` counts the bytes it is given."""

    def __init__(self) -> None:
        import orjson

        self.orjson = orjson
        self.bytes = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.orjson, name)

    def loads(self, data: bytes) -> object:
        self.bytes += len(data)
        return self.orjson.loads(data)


@pytest.mark.parametrize("unit", [b'{"source":', b'{"source":"', b'{"source":"a","seqs":['])
def test_counting_the_events_of_a_corrupt_region_is_linear_in_its_size(
        monkeypatch: pytest.MonkeyPatch, unit: bytes) -> None:
    """Each ``{"source":`` of a region was parsed up to the next newline (or the end):
    k of them without a newline cost k x n."""
    region = unit * 20_000
    parses = CountedParses()
    monkeypatch.setattr(spool_format, "orjson", parses)
    assert spool_format._events_in(region) == 0
    assert parses.bytes <= len(region)
    good = batch_bodies(2)  # and the headers that are there are still counted
    odd = encode_batch_body('a "b"\\\n\u00e9', [1, 2], [b"{}\n"] * 2, numbered=7)
    assert spool_format._events_in(region + good[0] + region + good[1] + odd) == 8


class CountedReads:
    """``os.pread`` counting the bytes it returns (the work of a replay)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.largest = 0  # the most read at once
        self.pread = os.pread

    def __call__(self, fd: int, n: int, offset: int) -> bytes:
        data = self.pread(fd, n, offset)
        self.bytes += len(data)
        self.largest = max(self.largest, len(data))
        return data


@pytest.mark.parametrize("damage", ["flipped", "junk"])
def test_many_damaged_records_cost_a_replay_reads_in_proportion_to_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    """Each damaged region re-read the rest of its file to look for the next record:
    k regions in a file of n bytes read k x n/2 bytes (quadratic)."""
    bodies = batch_bodies(400, events=20)
    path = damaged_spool(tmp_path, bodies, set(range(1, 400, 2)) if damage == "flipped"
                         else set())
    if damage == "junk":  # bytes that are no record before every other record: a scan
        data = path.read_bytes()
        parts, last = [], 0
        for i, (offset, _) in enumerate(records_of(path)):
            if i % 2:
                parts += [data[last:offset], b"junk"]
                last = offset
        path.write_bytes(b"".join(parts) + data[last:])
    size = path.stat().st_size
    reads = CountedReads()
    monkeypatch.setattr(os, "pread", reads)
    adopter = Spool(tmp_path, max_bytes=1 << 30)
    adopter.adopt_orphans()
    replayed = drain(adopter)
    assert len(replayed) == (200 if damage == "flipped" else 400)
    assert reads.bytes < 4 * size, (reads.bytes, size)


class CountedChecksums:
    """``zlib`` whose ``crc32`` counts the bytes it checks (the scan's work)."""

    def __init__(self) -> None:
        self.bytes = 0

    def __getattr__(self, name: str) -> object:
        return getattr(zlib, name)

    def crc32(self, data: bytes | memoryview) -> int:
        self.bytes += len(data)
        return zlib.crc32(data)


def test_the_scan_budget_bounds_the_work_of_a_whole_file_not_of_each_region(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget bounding the search for the next record was given anew to each
    damaged region: k regions that each cost half of it cost k/2 budgets. It is the
    file's now; past it the rest of the file is counted as corrupt."""
    # Eight bytes that look like a record's header (4,096 bytes, a wrong crc32), many
    # times over: each one whose claimed end is followed by a NUL costs a crc32.
    unit = b"\x00\x00\x10\x00\xff\xff\xff\xff"
    junk = unit * 600
    bodies = batch_bodies(21)
    path = tmp_path / ("00000000000000000001-99-aa" + SUFFIX)
    records = [RECORD.pack(len(b), zlib.crc32(b)) + b for b in bodies]
    path.write_bytes(records[0] + b"".join(junk + r for r in records[1:]))
    tmp_path.chmod(0o700)
    checksums = CountedChecksums()
    monkeypatch.setattr(spool_format, "zlib", checksums)
    # A region costs about 4.3 MB of budget (1,800 places at 1 KiB each, and the
    # crc32s of the claimed records followed by a NUL): 20 of them, more than twice
    # this file's budget.
    budget = 10_000_000
    monkeypatch.setattr(spool_format, "_SCAN_BUDGET", budget)
    adopter = Spool(tmp_path, max_bytes=1 << 30)
    adopter.adopt_orphans()
    replayed = drain(adopter)
    size = sum(map(len, records)) + 20 * len(junk)
    assert checksums.bytes <= budget + size  # the budget, and the file read once
    assert 1 < len(replayed) < len(bodies)
    assert adopter.corrupt_bytes == size - sum(map(len, records[:len(replayed)]))


def two_files(tmp_path: Path, counts: tuple[int, int]) -> tuple[list[bytes], list[Path]]:
    """Two spool files left by closed processes, of ``counts`` batches each (the first
    one older): their bodies, oldest first, and the files."""
    bodies = batch_bodies(sum(counts), events=5)
    for part in (bodies[:counts[0]], bodies[counts[0]:]):
        spool = Spool(tmp_path, max_bytes=1 << 20)
        for body in part:
            assert spool.append(body)
        spool.close()
    return bodies, spool_files(tmp_path)


#: Where a file is cut: in which of its records, how far into it (negative: from its end).
CUTS = {
    "in the file's first header": (0, 3),
    "in a later record's header": (1, 5),
    "at a header's end": (1, RECORD.size),
    "in a batch header line": (1, RECORD.size + 20),
    "after the batch header line": (1, -4),
}


@pytest.mark.parametrize("cut", list(CUTS))
def test_a_file_cut_short_while_read_is_counted_and_replay_goes_on_to_the_next_file(
        tmp_path: Path, cut: str, caplog: pytest.LogCaptureFixture) -> None:
    """A spool file shorter than its records say (cut by someone else once adopted, or a
    failed write kept by ``_keep_failed`` whose fstat failed too): fewer bytes than a
    record header where one should be raised struct.error from peek(), at every try,
    and the sink's replay was stuck on that file forever; nothing after it was ever
    delivered or counted. Now the missing tail is a damaged region like any other."""
    bodies, (first, _) = two_files(tmp_path, (3, 2))
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 2  # sizes known from here on
    size = first.stat().st_size
    records = records_of(first)
    which, into = CUTS[cut]
    start, length = records[which]
    os.truncate(first, start + (into if into >= 0 else length + into))
    readable = cut == "after the batch header line"  # the cut record's events are known
    assert drain(adopter) == bodies[:which] + bodies[3:]  # the second file is replayed
    assert adopter.corrupt_bytes == size - start
    assert adopter.lost_events == (5 if readable else 0)
    assert "torn or corrupt" in caplog.text
    assert spool_files(tmp_path) == [] and adopter.empty


def test_a_record_cut_short_after_it_was_read_is_committed(tmp_path: Path) -> None:
    """commit() read the record's header again to move past it: a file cut meanwhile
    raised struct.error there, the acknowledged batch was never committed, and replay
    was stuck on it (sent again at every try)."""
    bodies, (first, _) = two_files(tmp_path, (2, 1))
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 2
    assert adopter.peek() == bodies[0]
    size = first.stat().st_size
    os.truncate(first, 3)
    adopter.commit()  # acknowledged: it is not sent again
    assert drain(adopter) == [bodies[2]]
    assert adopter.corrupt_bytes == size - (RECORD.size + len(bodies[0]))


class CountedSearch:
    """``_RECORD_START`` that counts the bytes its searches start over (the regex's
    work: it tries a match at each of them)."""

    def __init__(self) -> None:
        self.bytes = 0

    def finditer(self, data: bytes, pos: int = 0) -> Iterable[re.Match[bytes]]:
        self.bytes += len(data) - pos
        return RECORD_START.finditer(data, pos)


def test_a_long_run_of_zeros_costs_no_search_at_each_byte_nor_its_size_in_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Zeros (what a power loss leaves where a file's size reached the disk before its
    data) hold no record start, yet the search tried one at each of their bytes, about
    30 MB a second outside the scan budget; and the region was read whole to count its
    events: 17 s of the sink's worker (new events waiting) and 539 MiB of memory for a
    512 MiB file."""
    path = spool_file_of(tmp_path, [b"kept"])
    with path.open("ab") as file:
        file.truncate(path.stat().st_size + (32 << 20))
    search, reads = CountedSearch(), CountedReads()
    monkeypatch.setattr(spool_format, "_RECORD_START", search)
    monkeypatch.setattr(os, "pread", reads)
    adopter = Spool(tmp_path, max_bytes=1 << 30)
    adopter.adopt_orphans()
    assert drain(adopter) == [b"kept"]
    assert adopter.corrupt_bytes == 32 << 20
    assert search.bytes < 64 * 1024, search.bytes
    assert reads.largest <= 4 << 20, reads.largest


def test_events_are_counted_in_a_damaged_region_read_a_slice_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read a slice at a time, a region counts the events of every header line in it,
    those across a slice's end included."""
    monkeypatch.setattr(spool_format, "_COUNT_SLICE", 100)
    bodies = batch_bodies(40, events=3)
    path = damaged_spool(tmp_path, bodies, set(range(40)))  # every record's crc fails
    size = path.stat().st_size
    adopter = Spool(tmp_path, max_bytes=1 << 30)
    adopter.adopt_orphans()
    assert drain(adopter) == []
    assert (adopter.lost_events, adopter.corrupt_bytes) == (120, size)
