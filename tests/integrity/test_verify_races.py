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
