"""verify next to a running collector: a segment compressed or deleted after verify listed
it is checked as it now is (or reported gone), never a crash. Each race is forced: the
file is replaced or removed at the exact point a collector (or an operator) could."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.integrity import segment_listing
from collector.integrity import verify as verify_module
from collector.integrity.findings import SEGMENT_MISSING
from collector.storage.compression import compress
from collector.storage.segments import SegmentFile, SegmentHeader
from tests.collector.storage_helpers import events, open_store, wait_until
from tests.integrity.helpers import SMALL, build_store, check, reasons, segment_paths


def compress_in_place(path: Path) -> Path:
    """What the store's compressor does: the .gz renamed into place, the plain removed."""
    tmp, _ = compress(path)
    packed = path.with_name(path.name + ".gz")
    os.rename(tmp, packed)
    path.unlink()
    return packed


def test_a_segment_compressed_while_verify_reads_it_is_checked_compressed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = build_store(tmp_path / "data", batches=4)
    oldest = segment_paths(data_dir)[0]
    real_scan = verify_module.scan

    def scan_after_compression(f: SegmentFile, **kwargs: Any) -> Any:
        if f.path == oldest:  # listed and counted plain, compressed before its read
            compress_in_place(oldest)
        return real_scan(f, **kwargs)

    monkeypatch.setattr(verify_module, "scan", scan_after_compression)
    report = check(data_dir)
    assert report.valid, reasons(report)
    [result] = [r for r in report.files if r.path == f"segments/{oldest.name}"]
    assert result.records == 3
    assert result.notes == [f"compressed while verify ran: checked {oldest.name}.gz"]


def test_a_segment_deleted_after_the_listing_is_reported_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = build_store(tmp_path / "data", batches=4)
    oldest = segment_paths(data_dir)[0]
    real_header_of = segment_listing.header_of

    def header_then_deleted(f: SegmentFile) -> SegmentHeader:
        header = real_header_of(f)
        if f.path == oldest:  # listed and its header read, deleted before its size
            oldest.unlink()
        return header

    monkeypatch.setattr(segment_listing, "header_of", header_then_deleted)
    report = check(data_dir)
    assert reasons(report) == {f"segments/{oldest.name}": [SEGMENT_MISSING]}
    [result] = report.invalid
    assert [f.detail for f in result.findings] == ["removed while verify was reading it"]


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_rotation_while_verify_reads_the_digests_is_no_finding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """A running collector seals a segment and starts the next one while verify reads
    the digests: neither the segment sealed meanwhile nor the new one is a finding."""
    from collector.integrity.digest_chain import DigestChain

    data_dir = tmp_path / "data"
    with open_store(data_dir, max_segment_bytes=SMALL) as store:
        for _ in range(4):
            store.write(events(3))
        real_check = DigestChain.check
        before = len(segment_paths(data_dir))

        def rotating_check(self: DigestChain) -> None:
            if when == "after":
                real_check(self)
            store.write(events(3))  # fills the active segment: sealed, a new one begun
            assert len(segment_paths(data_dir)) > before
            if when == "before":
                real_check(self)

        monkeypatch.setattr(DigestChain, "check", rotating_check)
        report = check(data_dir, live=True)
        monkeypatch.undo()
        assert report.valid, reasons(report)


@contextlib.contextmanager
def store_past_retention(data_dir: Path, retention_bytes: int) -> Iterator[Any]:
    """A running store of small segments that retention has deleted from already."""
    with open_store(data_dir, max_segment_bytes=SMALL,
                    retention_bytes=retention_bytes) as store:
        for _ in range(8):
            store.write(events(3))
        wait_until(lambda: store.stats()["retention_deleted"] >= 1)
        yield store


def more_retention(store: Any, batches: int, deletions: int) -> None:
    """Write ``batches`` more batches; wait until retention deleted ``deletions`` more
    segments."""
    deleted = store.stats()["retention_deleted"]
    for _ in range(batches):
        store.write(events(3))
    wait_until(lambda: store.stats()["retention_deleted"] >= deleted + deletions)


def test_retention_while_verify_runs_is_no_finding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.integrity.digest_chain import DigestChain

    with store_past_retention(tmp_path / "data", 4000) as store:
        real_check = DigestChain.check

        def check_then_retention(self: DigestChain) -> None:
            real_check(self)
            more_retention(store, batches=3, deletions=1)

        monkeypatch.setattr(DigestChain, "check", check_then_retention)
        report = check(tmp_path / "data", live=True)
        monkeypatch.undo()
    assert report.valid, reasons(report)
    notes = [n for r in report.files for n in r.notes]
    assert "deleted by retention while verify ran" in notes


def test_a_segment_compressed_before_its_header_is_read_is_checked_compressed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = build_store(tmp_path / "data", batches=4)
    oldest = segment_paths(data_dir)[0]
    real_header_of = segment_listing.header_of

    def compressed_first(f: SegmentFile) -> SegmentHeader:
        if f.path == oldest and oldest.exists():  # listed plain, compressed before read
            compress_in_place(oldest)
        return real_header_of(f)

    monkeypatch.setattr(segment_listing, "header_of", compressed_first)
    report = check(data_dir)
    assert report.valid, reasons(report)
    [result] = [r for r in report.files if r.path == f"segments/{oldest.name}.gz"]
    assert result.records == 3


def test_a_segment_deleted_before_its_header_is_read_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = build_store(tmp_path / "data", batches=4)
    middle = segment_paths(data_dir)[1]
    real_header_of = segment_listing.header_of

    def deleted_first(f: SegmentFile) -> SegmentHeader:
        if f.path == middle:
            middle.unlink(missing_ok=True)
        return real_header_of(f)

    monkeypatch.setattr(segment_listing, "header_of", deleted_first)
    report = check(data_dir)
    found = reasons(report)
    assert found[f"segments/{middle.name}"] == [SEGMENT_MISSING]


def test_a_collector_started_while_verify_runs_is_no_finding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verify reads the digests of a stopped store (the newest is its stop checkpoint);
    the collector then starts and writes before verify reaches the active segment. The
    records after the stop are the new run's, signed by nothing yet: not tamper."""
    import contextlib

    from collector.integrity.digest_chain import DigestChain

    data_dir = build_store(tmp_path / "data", batches=3)
    real_check = DigestChain.check
    with contextlib.ExitStack() as running:

        def check_then_start(self: DigestChain) -> None:
            real_check(self)
            store = running.enter_context(open_store(data_dir, max_segment_bytes=SMALL))
            store.write(events(1))

        monkeypatch.setattr(DigestChain, "check", check_then_start)
        report = check(data_dir, live=True)
        monkeypatch.undo()
    assert report.valid, reasons(report)


def test_a_seal_written_late_is_waited_for_next_to_a_running_collector(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotation creates the new segment, then signs the old one's seal: next to a
    running collector verify waits a moment for it rather than call it missing."""
    import threading
    import time

    from collector.integrity.ledger import Ledger

    real_sealed = Ledger.sealed

    def slow_seal(self: Ledger, *args: Any) -> None:
        time.sleep(0.5)
        real_sealed(self, *args)

    data_dir = tmp_path / "data"
    with open_store(data_dir, max_segment_bytes=SMALL) as store:
        store.write(events(3))
        before = len(segment_paths(data_dir))
        monkeypatch.setattr(Ledger, "sealed", slow_seal)
        writer = threading.Thread(target=store.write, args=(events(3),))
        writer.start()
        deadline = time.monotonic() + 10
        while len(segment_paths(data_dir)) == before:  # the new segment is there...
            assert time.monotonic() < deadline
            time.sleep(0.005)
        report = check(data_dir, live=True)  # ...its predecessor's seal not yet
        writer.join(10)
        monkeypatch.undo()
    assert report.valid, reasons(report)


def test_a_digest_file_deleted_by_retention_while_verify_reads_is_no_finding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.integrity import digests

    with store_past_retention(tmp_path / "data", 6000) as store:
        real_read = digests.read_file
        done = {"retention": False}

        def read_then_retention(path: Path) -> Any:
            found = real_read(path)
            if not done["retention"]:  # listed, one read: retention deletes the next ones
                done["retention"] = True
                more_retention(store, batches=4, deletions=2)
            return found

        monkeypatch.setattr(digests, "read_file", read_then_retention)
        report = check(tmp_path / "data", live=True)
        monkeypatch.undo()
    assert done["retention"]
    assert report.valid, reasons(report)


def test_many_missing_segments_read_the_digests_a_bounded_number_of_times(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each missing segment asks whether retention deleted it; the digest files are not
    read again for each (600 missing segments took 6 s, growing with the square)."""
    from collector.integrity import digests

    data_dir = build_store(tmp_path / "data", batches=60, per_batch=1)
    for path in segment_paths(data_dir):
        path.unlink()
    reads = {"n": 0}
    real_read = digests.read_file

    def counted(path: Path) -> Any:
        reads["n"] += 1
        return real_read(path)

    monkeypatch.setattr(digests, "read_file", counted)
    report = check(data_dir)
    assert not report.valid
    assert reads["n"] <= 3 * 60, reads["n"]


def test_an_empty_newest_digest_file_is_a_note_only_next_to_a_running_collector(
        tmp_path: Path) -> None:
    """A running collector creates a digest file, then writes its first line: verify may
    find it empty. A stopped one never leaves it so: there it is digests removed."""
    from collector.integrity.findings import DIGEST_MISSING
    from tests.integrity.helpers import digest_paths

    data_dir = build_store(tmp_path / "data", batches=3)
    newest = digest_paths(data_dir)[-1]
    newest.write_bytes(b"")
    live = check(data_dir, live=True)
    assert f"digests/{newest.name}" not in reasons(live)
    assert any("its first digest was being written" in n for r in live.files for n in r.notes)
    assert DIGEST_MISSING in reasons(check(data_dir))[f"digests/{newest.name}"]
