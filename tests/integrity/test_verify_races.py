"""verify next to a running collector: a segment compressed or deleted after verify listed
it is checked as it now is (or reported gone), never a crash. Each race is forced: the
file is replaced or removed at the exact point a collector (or an operator) could."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from collector.integrity import verify as verify_module
from collector.integrity.findings import SEGMENT_MISSING
from collector.storage.compression import compress
from collector.storage.segments import SegmentFile, SegmentHeader
from tests.integrity.helpers import build_store, check, reasons, segment_paths


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
    real_header_of = verify_module.header_of

    def header_then_deleted(f: SegmentFile) -> SegmentHeader:
        header = real_header_of(f)
        if f.path == oldest:  # listed and its header read, deleted before its size
            oldest.unlink()
        return header

    monkeypatch.setattr(verify_module, "header_of", header_then_deleted)
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
    from tests.collector.storage_helpers import events, open_store
    from tests.integrity.helpers import SMALL

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


def test_retention_while_verify_runs_is_no_finding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.integrity.digest_chain import DigestChain
    from tests.collector.storage_helpers import events, open_store, wait_until
    from tests.integrity.helpers import SMALL

    data_dir = tmp_path / "data"
    with open_store(data_dir, max_segment_bytes=SMALL, retention_bytes=4000) as store:
        for _ in range(8):
            store.write(events(3))
        wait_until(lambda: store.stats()["retention_deleted"] >= 1)
        real_check = DigestChain.check

        def check_then_retention(self: DigestChain) -> None:
            real_check(self)
            deleted = store.stats()["retention_deleted"]
            for _ in range(3):
                store.write(events(3))
            wait_until(lambda: store.stats()["retention_deleted"] > deleted)

        monkeypatch.setattr(DigestChain, "check", check_then_retention)
        report = check(data_dir, live=True)
        monkeypatch.undo()
    assert report.valid, reasons(report)
    notes = [n for r in report.files for n in r.notes]
    assert "deleted by retention while verify ran" in notes


def test_a_segment_compressed_before_its_header_is_read_is_checked_compressed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = build_store(tmp_path / "data", batches=4)
    oldest = segment_paths(data_dir)[0]
    real_header_of = verify_module.header_of

    def compressed_first(f: SegmentFile) -> SegmentHeader:
        if f.path == oldest and oldest.exists():  # listed plain, compressed before read
            compress_in_place(oldest)
        return real_header_of(f)

    monkeypatch.setattr(verify_module, "header_of", compressed_first)
    report = check(data_dir)
    assert report.valid, reasons(report)
    [result] = [r for r in report.files if r.path == f"segments/{oldest.name}.gz"]
    assert result.records == 3


def test_a_segment_deleted_before_its_header_is_read_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = build_store(tmp_path / "data", batches=4)
    middle = segment_paths(data_dir)[1]
    real_header_of = verify_module.header_of

    def deleted_first(f: SegmentFile) -> SegmentHeader:
        if f.path == middle:
            middle.unlink(missing_ok=True)
        return real_header_of(f)

    monkeypatch.setattr(verify_module, "header_of", deleted_first)
    report = check(data_dir)
    found = reasons(report)
    assert found[f"segments/{middle.name}"] == [SEGMENT_MISSING]
