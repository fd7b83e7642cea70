"""Segment files, compressed segments, source ranges and retention decisions: the
storage engine's parts, each on its own."""

from __future__ import annotations

import errno
import gzip
import io
import os
import random
import re
from pathlib import Path

import orjson
import pytest

from audit_middleware.event import FIELDS
from collector.storage import retention, sources
from collector.storage.compression import (
    CompressedReader,
    compress,
    gzip_chunks,
    iter_lines_and_blocks,
    iter_members,
)
from collector.storage.errors import CorruptSegmentError, StorageError
from collector.storage.records import (
    created_micros,
    encode_events,
    id_key,
    ip_key,
    record_lines,
)
from collector.storage.regular_files import NotRegularFileError
from collector.storage.segments import (
    ActiveSegment,
    SegmentHeader,
    iter_lines,
    list_segment_files,
    read_header,
    repair_tail,
    seal,
    segment_name,
)
from tests.collector.storage_helpers import event


@pytest.fixture
def segdir(tmp_path: Path) -> Path:
    d = tmp_path / "segments"
    d.mkdir()
    return d


def lines_for(records: list[dict], first_seq: int = 1, offset: int = 0) -> list[bytes]:
    return record_lines(encode_events(records), first_seq, "src", None, offset)[0]


# -- records ------------------------------------------------------------------------------
def test_a_record_is_the_schema_fields_in_order_then_peer_ip_then_storage_fields() -> None:
    e = event(peer_ip="10.0.0.1")
    [line] = record_lines(encode_events([e]), 7, "shipper-1", [42], 0)[0]
    record = orjson.loads(line)
    assert list(record) == [*FIELDS, "peer_ip", "seq", "source", "source_seq"]
    assert (record["seq"], record["source"], record["source_seq"]) == (7, "shipper-1", 42)
    assert line.endswith(b"\n") and line.count(b"\n") == 1


def test_an_empty_peer_ip_is_left_out_and_unknown_keys_are_dropped() -> None:
    e = event()
    e["peer_ip"] = ""
    e["seq"] = 999  # a sender cannot inject storage fields
    [line] = lines_for([e])
    record = orjson.loads(line)
    assert "peer_ip" not in record
    assert record["seq"] == 1 and list(record).count("seq") == 1


def test_fields_in_another_order_are_stored_in_schema_order() -> None:
    e = event()
    shuffled = dict(reversed(list(e.items())))
    assert orjson.loads(lines_for([shuffled])[0]) == orjson.loads(lines_for([e])[0])


def test_unicode_line_breaks_are_escaped_so_a_record_stays_one_line() -> None:
    e = event(target="a\u2028b\u2029c\u0085d\ne\x9b2J")
    [line] = record_lines(encode_events([e]), 1, "src\u2028x", None, 0)[0]
    assert len(line.decode().splitlines()) == 1
    assert b"\xc2\x9b" not in line and b"\\u009b" in line  # no raw C1 control stored
    assert orjson.loads(line)["target"] == "a\u2028b\u2029c\u0085d\ne\x9b2J"
    assert orjson.loads(line)["source"] == "src\u2028x"


def test_an_event_without_a_schema_field_is_refused_by_name() -> None:
    e = event()
    del e["org_id"]
    with pytest.raises(StorageError, match="event 0 has no 'org_id' field"):
        encode_events([e])


@pytest.mark.parametrize("created", ["yesterday", "", 17, None, "2026-13-40T00:00:00Z"])
def test_a_created_that_is_not_a_time_is_refused(created: object) -> None:
    with pytest.raises(StorageError, match="RFC 3339"):
        encode_events([event(created=created)])


@pytest.mark.parametrize("created, micros", [
    ("1970-01-01T00:00:01.000002Z", 1_000_002),
    ("2026-11-26T01:07:10.123456Z", 1_795_655_230_123_456),
    ("2026-11-26T02:07:10.123456+01:00", 1_795_655_230_123_456),
    ("2026-11-26T01:07:10Z", 1_795_655_230_000_000),
    ("2026-11-26T01:07:10.123456", 1_795_655_230_123_456),
])
def test_created_becomes_utc_microseconds(created: str, micros: int) -> None:
    assert created_micros(created) == micros


def test_a_uuid_id_is_keyed_by_its_16_bytes_and_any_other_id_by_its_text() -> None:
    uuid = "0190c5a0-1234-7abc-8def-0123456789ab"
    assert id_key(uuid) == bytes.fromhex(uuid.replace("-", ""))
    assert id_key(uuid.upper()) == id_key(uuid)  # one UUID, one key
    for other in ("evt-1", "0190c5a0-1234-7abc-8def-0123456789a ",
                  "0190c5a0x1234-7abc-8def-0123456789ab", "0190c5a0-1234-7abc-8def-0123456789zz"):
        assert id_key(other) == other


def test_ip_keys_sort_like_addresses_and_mapped_ipv4_is_ipv4() -> None:
    assert ip_key("10.0.0.1") == ip_key("::ffff:10.0.0.1") == bytes([10, 0, 0, 1])
    assert ip_key("10.0.0.1") < ip_key("10.0.0.2") < ip_key("11.0.0.0")  # type: ignore[operator]
    assert len(ip_key("2001:db8::1") or b"") == 16
    assert ip_key("") is None and ip_key("not an ip") is None


# -- segment files --------------------------------------------------------------------------
def test_a_segment_is_named_by_seq_and_utc_creation_time() -> None:
    assert segment_name(7, 1_795_655_230_123_456_789) == "segment-00000007-20261126T010710Z.jsonl"


def test_a_new_segment_starts_with_a_header_linking_the_previous_one(segdir: Path) -> None:
    first = ActiveSegment.create(segdir, 1, "")
    second = ActiveSegment.create(segdir, 2, first.header.id)
    header = orjson.loads(second.path.read_bytes().splitlines()[0])["segment"]
    assert list(header) == ["id", "seq", "previous", "schema", "created"]
    assert header["previous"] == first.header.id and header["seq"] == 2
    assert header["schema"] == 1 and re.fullmatch(r"[0-9a-f]{32}", header["id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", header["created"])
    assert read_header(first.path).previous == ""
    # file shippers fingerprint the first 1024 bytes: two segments never share them
    assert first.path.read_bytes()[:1024] != second.path.read_bytes()[:1024]
    first.close(), second.close()


def test_segment_files_are_created_0640(segdir: Path) -> None:
    segment = ActiveSegment.create(segdir, 1, "")
    assert segment.path.stat().st_mode & 0o777 == 0o640
    assert not list(segdir.glob("*.tmp"))
    segment.close()


def test_append_returns_offsets_and_seal_closes_the_file(segdir: Path) -> None:
    segment = ActiveSegment.create(segdir, 1, "")
    header_size = segment.size
    data = b"".join(lines_for([event(), event()]))
    assert segment.append(data) == header_size
    assert segment.size == header_size + len(data)
    path = seal(segment)
    assert segment.fd == -1 and path.stat().st_size == header_size + len(data)


def test_a_failed_append_leaves_nothing_of_itself_in_the_segment(
        segdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    segment = ActiveSegment.create(segdir, 1, "")
    segment.append(lines_for([event()])[0])
    before = segment.path.read_bytes()
    real_pwrite = os.pwrite
    calls = []

    def disk_fills_up(fd: int, data: bytes, offset: int) -> int:
        calls.append(1)
        if len(calls) == 1:
            return real_pwrite(fd, bytes(data)[:100], offset)  # a partial write...
        raise OSError(errno.ENOSPC, "No space left on device")  # ...then a full disk

    monkeypatch.setattr(os, "pwrite", disk_fills_up)
    with pytest.raises(OSError, match="No space"):
        segment.append(b"".join(lines_for([event(), event()])))
    monkeypatch.undo()
    assert segment.path.read_bytes() == before and segment.size == len(before)
    segment.append(lines_for([event()])[0])  # space came back: appending works again
    assert segment.path.read_bytes().count(b"\n") == 3
    segment.close()


def test_iter_lines_yields_complete_lines_with_their_offsets(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"ab\ncde\nf\ntorn")
    with open(path, "rb") as f:
        assert list(iter_lines(f)) == [(0, b"ab\n"), (3, b"cde\n"), (7, b"f\n")]


def test_segments_are_listed_by_seq(segdir: Path) -> None:
    for seq in (3, 1, 2):
        ActiveSegment.create(segdir, seq, "").close()
    (segdir / "notes.txt").write_text("not a segment")
    assert [f.seq for f in list_segment_files(segdir)] == [1, 2, 3]


@pytest.mark.parametrize("kind", ["a directory", "a FIFO"])
def test_reopening_something_else_in_the_active_segments_place_is_refused_by_kind(
        segdir: Path, kind: str) -> None:
    """Put there after recovery read the segment: a directory was "[Errno 21] Is a
    directory" (serve's start said only that), and the open for writing waited, as a
    FIFO's or a terminal's may, where one opened without blocking does not."""
    segment = ActiveSegment.create(segdir, 1, "")
    segment.close()
    segment.path.unlink()
    if kind == "a FIFO":
        os.mkfifo(segment.path)
    else:
        segment.path.mkdir()
    with pytest.raises(NotRegularFileError) as raised:
        ActiveSegment.reopen(segment.path, 0)
    assert raised.value.strerror == f"{kind}, not a regular file"
    assert raised.value.filename == str(segment.path)


# -- torn tails -----------------------------------------------------------------------------
def test_a_torn_last_line_goes_to_quarantine_and_complete_records_stay(
        segdir: Path, tmp_path: Path) -> None:
    quarantine = tmp_path / "quarantine"
    quarantine.mkdir()
    segment = ActiveSegment.create(segdir, 1, "")
    complete = lines_for([event(), event()])
    torn = lines_for([event()], first_seq=3)[0][:57]  # killed mid-record
    segment.append(b"".join(complete) + torn)
    segment.close()
    cut = repair_tail(segment.path, quarantine)
    assert cut is not None and cut.size == len(torn)
    assert cut.quarantine.read_bytes() == torn
    assert cut.quarantine.name.startswith(segment.path.name)
    assert segment.path.read_bytes().splitlines(keepends=True)[1:] == complete


def test_a_repair_killed_between_copy_and_cut_is_finished_by_the_next_start(
        segdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the torn bytes were copied to quarantine, before the segment was cut,
    and restarted within the same second: start-up failed (FileExistsError), and a
    later one copied the bytes twice. The copy is recognised; only the cut is left."""
    import os

    quarantine = tmp_path / "quarantine"
    quarantine.mkdir()
    segment = ActiveSegment.create(segdir, 1, "")
    complete = lines_for([event()])
    torn = lines_for([event()], first_seq=2)[0][:57]
    segment.append(b"".join(complete) + torn)
    segment.close()

    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(os, "ftruncate", killed)
        with pytest.raises(KeyboardInterrupt):
            repair_tail(segment.path, quarantine)
    cut = repair_tail(segment.path, quarantine)
    assert cut is not None and cut.quarantine.read_bytes() == torn
    assert len(list(quarantine.iterdir())) == 1
    assert segment.path.read_bytes().splitlines(keepends=True)[1:] == complete


def test_garbage_after_the_last_record_is_cut_as_well(segdir: Path, tmp_path: Path) -> None:
    segment = ActiveSegment.create(segdir, 1, "")
    good = lines_for([event()])[0]
    segment.append(good + b"\x00" * 300 + b"\n" + b"{not json\n")
    segment.close()
    cut = repair_tail(segment.path, tmp_path)
    assert cut is not None and cut.size == 300 + 1 + 10
    assert segment.path.read_bytes().endswith(good)


def test_an_intact_segment_is_not_touched(segdir: Path, tmp_path: Path) -> None:
    segment = ActiveSegment.create(segdir, 1, "")
    segment.append(b"".join(lines_for([event()])))
    segment.close()
    before = segment.path.read_bytes()
    assert repair_tail(segment.path, tmp_path) is None
    assert segment.path.read_bytes() == before and not list(tmp_path.glob("*.torn"))


def test_a_file_without_a_header_is_not_taken_for_a_segment(segdir: Path, tmp_path: Path) -> None:
    path = segdir / "segment-00000001-20261126T010710Z.jsonl"
    path.write_bytes(b'{"v":1}\n')
    with pytest.raises(CorruptSegmentError, match="segment header"):
        repair_tail(path, tmp_path)
    with pytest.raises(CorruptSegmentError):
        SegmentHeader.parse(b"garbage\n", path.name)


# -- compression ----------------------------------------------------------------------------
def test_a_compressed_segment_is_plain_gzip_made_of_line_aligned_members(
        segdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("collector.storage.compression.BLOCK_BYTES", 2048)
    segment = ActiveSegment.create(segdir, 1, "")
    segment.append(b"".join(lines_for([event() for _ in range(60)])))
    plain = seal(segment)
    tmp, blocks = compress(plain)
    assert gzip.decompress(tmp.read_bytes()) == plain.read_bytes()  # zcat reads it
    assert len(blocks) > 3
    members = list(iter_members(tmp))
    assert [(u, c) for u, c, _ in members] == blocks
    assert all(data.endswith(b"\n") for _, _, data in members)  # no line is split


def test_a_record_of_a_compressed_segment_is_read_by_its_uncompressed_offset(
        segdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("collector.storage.compression.BLOCK_BYTES", 1024)
    segment = ActiveSegment.create(segdir, 1, "")
    segment.append(b"".join(lines_for([event() for _ in range(40)])))
    plain = seal(segment)
    with open(plain, "rb") as f:
        expected = list(iter_lines(f))
    tmp, blocks = compress(plain)
    found: list[tuple[int, int]] = []
    assert list(iter_lines_and_blocks(tmp, found)) == expected and found == blocks
    reader = CompressedReader(tmp, blocks)
    for offset, line in expected[::7]:
        assert reader.read(offset, len(line)) == line
    reader.close()


def _named_member(data: bytes) -> bytes:
    """``data`` as a gzip member with a file name in its header (FNAME), as gzip itself
    writes one: zcat reads it, the collector never writes one."""
    out = io.BytesIO()
    with gzip.GzipFile("forged", "wb", fileobj=out, mtime=0) as f:
        f.write(data)
    return out.getvalue()


_SPOIL = {
    "named": lambda member: _named_member(gzip.decompress(member)),
    "damaged": lambda member: member[:12] + bytes(b ^ 0x55 for b in member[12:40])
    + member[40:],
    "cut short": lambda member: member[:-5],
}


@pytest.mark.parametrize("spoil", sorted(_SPOIL))
def test_a_reindex_refuses_the_members_verify_refuses(
        segdir: Path, monkeypatch: pytest.MonkeyPatch, spoil: str) -> None:
    """The reindex's walk of the members (its block map) and verify's are one: the
    reindex mapped a member with a name, which zcat skips and verify refuses, and every
    query of its records then failed, saying to run a reindex."""
    monkeypatch.setattr("collector.storage.compression.BLOCK_BYTES", 1024)
    segment = ActiveSegment.create(segdir, 1, "")
    segment.append(b"".join(lines_for([event() for _ in range(20)])))
    tmp, blocks = compress(seal(segment))
    raw = tmp.read_bytes()
    last = blocks[-1][1]
    tmp.write_bytes(raw[:last] + _SPOIL[spoil](raw[last:]))
    with pytest.raises(CorruptSegmentError, match=f"member at byte {last} "):
        list(iter_lines_and_blocks(tmp, []))
    with tmp.open("rb") as f, pytest.raises(CorruptSegmentError, match=f"member at byte {last} "):
        list(gzip_chunks(f, tmp.name, 1 << 20))


# -- source ranges --------------------------------------------------------------------------
def test_source_ranges_merge_and_report_the_gaps_between_them() -> None:
    ranges = sources.add([], range(1, 501))
    ranges = sources.add(ranges, range(503, 1001))
    assert sources.report(ranges) == {
        "received": 998, "ranges": [[1, 500], [503, 1000]], "gaps": [[501, 502]],
        "folded_gap_events": 0, "numbered": 0, "unreceived_tail": [], "last_seen": None,
        "acknowledged_through": 0}
    ranges = sources.add(ranges, [501, 502, 502, 1002])
    assert sources.report(ranges, numbered=1010, seen_ns=1_795_000_000_123_456_789) == {
        "received": 1001, "ranges": [[1, 1000], [1002, 1002]], "gaps": [[1001, 1001]],
        "folded_gap_events": 0, "numbered": 1010, "unreceived_tail": [1003, 1010],
        "last_seen": "2026-11-18T11:06:40.123456Z", "acknowledged_through": 0}


def test_numbers_given_out_after_the_last_stored_one_are_the_unreceived_tail() -> None:
    ranges = sources.add([], range(1, 101))
    assert sources.unreceived_tail(ranges, 100) == []  # all that was numbered arrived
    assert sources.unreceived_tail(ranges, 99) == []  # an older batch's header
    assert sources.unreceived_tail(ranges, 0) == []  # a shipper that does not say
    assert sources.unreceived_tail(ranges, 130) == [101, 130]
    assert sources.unreceived_tail([], 5) == [1, 5]


def test_unnumbered_events_do_not_make_ranges() -> None:
    assert sources.add([], [0, 0]) == []


def test_a_source_that_starts_late_has_no_gap_before_its_first_number() -> None:
    assert sources.gaps(sources.add([], [40, 41])) == []


def _runs(numbers: set[int]) -> list[list[int]]:
    """The ranges of ``numbers`` the slow, obvious way: the model ``add`` must match."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return runs


def _shuffled_batches(rng: random.Random, top: int) -> list[list[int]]:
    """Numbers 1..top with about a third dropped, in batches; some batches arrive late
    (a spool replay), some numbers twice."""
    kept = [n for n in range(1, top + 1) if rng.random() > 0.35]
    batches = [kept[i:i + rng.randint(1, 9)] for i in range(0, len(kept), 9)]
    for _ in range(len(batches) // 5):
        i, j = rng.randrange(len(batches)), rng.randrange(len(batches))
        batches[i], batches[j] = batches[j], batches[i]
    return batches + [kept[::17]]


@pytest.mark.parametrize("seed", range(20))
def test_ranges_built_batch_by_batch_are_the_ranges_of_every_number_received(
        seed: int) -> None:
    rng = random.Random(seed)
    ranges: sources.Ranges = []
    received: set[int] = set()
    for batch in _shuffled_batches(rng, 400):
        before = [list(r) for r in ranges]
        grown = sources.add(ranges, batch)
        assert ranges == before  # a new list: the writer's copy is only replaced on commit
        ranges = grown
        received |= set(batch)
        assert ranges == _runs(received)


def test_a_fragmented_source_keeps_max_ranges_in_detail_and_exact_totals(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Sustained overload drops events between exports: one range per export. Past
    MAX_RANGES the oldest fold into one range that counts what it is missing."""
    monkeypatch.setattr(sources, "MAX_RANGES", 10)
    ranges: sources.Ranges = []
    for export in range(50):  # 50 exports of 6 numbers, then 4 dropped
        ranges = sources.add(ranges, range(export * 10 + 1, export * 10 + 7))
        assert len(ranges) <= 10
    report = sources.report(ranges, numbered=500)
    assert report["ranges"][0] == [1, 406, 40 * 4]  # 41 exports folded: 40 gaps of 4
    assert report["ranges"][1:] == [[n * 10 + 1, n * 10 + 6] for n in range(41, 50)]
    assert report["gaps"] == [[n * 10 + 7, n * 10 + 10] for n in range(40, 49)]
    assert (report["received"], report["folded_gap_events"]) == (300, 160)
    assert report["unreceived_tail"] == [497, 500]
    known = sources.overview({"s": ranges}, {"s": 500}, {})
    assert (known.gap_events, known.unreceived_tail_events) == (160 + 9 * 4, 4)
    assert known.reports == {"s": report}


def test_stats_report_the_sources_missing_numbers_first_and_count_every_source() -> None:
    """Every app process is a source: a year of restarts makes many thousands. stats
    reports MAX_REPORTED of them (those missing numbers, then the most recently seen)
    and totals over all."""
    complete = {f"ok-{i}": [[1, 10]] for i in range(50)}
    ranges = {**complete, "gap": [[1, 4], [7, 9]], "tail": [[1, 3]], "folded": [[1, 20, 5]],
              "never-stored": []}
    numbered = {"tail": 8, "never-stored": 2, "ok-0": 10}
    seen = {f"ok-{i}": 1000 + i for i in range(50)}  # ok-49 the most recently seen
    known = sources.overview(ranges, numbered, seen, limit=6)
    assert sorted(known.reports) == ["folded", "gap", "never-stored", "ok-48", "ok-49",
                                     "tail"]
    assert (known.total, known.omitted) == (54, 48)
    assert (known.gap_events, known.unreceived_tail_events) == (2 + 5, 5 + 2)
    assert known.reports["tail"] == sources.report([[1, 3]], 8, None)
    everything = sources.overview(ranges, numbered, seen)
    assert (len(everything.reports), everything.omitted) == (54, 0)
    assert everything.reports["ok-7"] == sources.report([[1, 10]], 0, 1007)


def test_folding_never_hides_a_loss_however_the_numbers_arrive(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "MAX_RANGES", 4)
    for seed in range(30):
        rng = random.Random(seed)
        ranges: sources.Ranges = []
        received: set[int] = set()
        for batch in _shuffled_batches(rng, 300):
            ranges = sources.add(ranges, batch)
            received |= set(batch)
            assert len(ranges) <= 4
            report = sources.report(ranges)
            span = ranges[-1][1] - ranges[0][0] + 1
            # Every number between the first and the last is received or missing...
            assert (report["received"] + report["folded_gap_events"]
                    + sources.count(report["gaps"])) == span
            # ...and a late number inside the folded range stays counted as missing
            # (conservative): never more received than were, never fewer missing.
            assert report["received"] <= len(received)
            assert span - report["received"] >= span - len(received & set(
                range(ranges[0][0], ranges[-1][1] + 1)))
            assert ranges[-3:] == _runs(received)[-3:]  # the newest stay in detail


# -- retention decisions --------------------------------------------------------------------
DAY = 86_400 * 10**9


def sealed(seq: int, size: int, age_days: float) -> retention.SealedInfo:
    return retention.SealedInfo(seq, size, int(100 * DAY - age_days * DAY))


def test_retention_deletes_sealed_segments_older_than_the_retention_days() -> None:
    infos = [sealed(1, 10, 40), sealed(2, 10, 31), sealed(3, 10, 5)]
    assert retention.expired(infos, now_ns=100 * DAY, retention_days=30,
                             retention_bytes=None, keep_newest=False) == [1, 2]


def test_retention_by_size_deletes_the_oldest_first_until_under_the_cap() -> None:
    infos = [sealed(1, 100, 3), sealed(2, 100, 2), sealed(3, 100, 1)]
    assert retention.expired(infos, now_ns=100 * DAY, retention_days=365,
                             retention_bytes=150, keep_newest=False) == [1, 2]


def test_retention_can_keep_the_newest_sealed_segment() -> None:
    infos = [sealed(1, 100, 400), sealed(2, 100, 400)]
    assert retention.expired(infos, now_ns=100 * DAY, retention_days=30,
                             retention_bytes=0, keep_newest=True) == [1]


def test_retention_by_age_deletes_no_segment_around_an_older_one_a_clock_dated_ahead() \
        -> None:
    """Segment 2 sealed by a clock a year ahead, since set back: judged by its own seal
    time it read younger than 3 and 4, which went around it (a hole under a retention
    digest saying all below 5 went), and it stayed until the wall clock caught up with
    its future date. A segment is at least as old as any later one."""
    infos = [sealed(1, 10, 40), sealed(2, 10, -365), sealed(3, 10, 35), sealed(4, 10, 2)]
    assert retention.expired(infos, now_ns=100 * DAY, retention_days=30,
                             retention_bytes=None, keep_newest=False) == [1, 2, 3]


def test_retention_by_age_deletes_nothing_early_for_a_segment_a_clock_dated_behind() \
        -> None:
    """Segment 3 sealed by a clock a year behind, since corrected: it read a year old,
    and taking each segment's age as the youngest seal time at or after it deleted 1
    and 2 (10 and 5 days old) with it. Records arrive in seq order, so 3 was sealed
    after 2: it stays as long as 2, and 1 and 2 by their own seal times."""
    infos = [sealed(1, 10, 10), sealed(2, 10, 5), sealed(3, 10, 365), sealed(4, 10, 1)]
    assert retention.expired(infos, now_ns=100 * DAY, retention_days=30,
                             retention_bytes=None, keep_newest=False) == []
    assert retention.expired(infos, now_ns=106 * DAY, retention_days=30,
                             retention_bytes=None, keep_newest=False) == []
    assert retention.expired(infos, now_ns=122 * DAY, retention_days=30,
                             retention_bytes=None, keep_newest=False) == [1]
    assert retention.expired(infos, now_ns=128 * DAY, retention_days=30,
                             retention_bytes=None, keep_newest=False) == [1, 2, 3]
