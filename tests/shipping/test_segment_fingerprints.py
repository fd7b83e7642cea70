"""File shippers (Vector, Fluent Bit, Filebeat, the OpenTelemetry Collector's filelog
receiver) recognise a file by a fingerprint of its first bytes. Rotation by new file with
a unique header means two segments never share their first 1,024 bytes, nor even their
first line: no shipper can take a new segment for one it has read already."""

from __future__ import annotations

import itertools
from pathlib import Path

from collector.store import StorageSettings, Store
from tests.collector.storage_helpers import event

FINGERPRINT = 1024  # Filebeat's default fingerprint length, the filelog receiver's 1 KiB


def segment_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "segments").glob("segment-*.jsonl"))


def fill(data_dir: Path, count: int) -> list[Path]:
    with Store(StorageSettings(data_dir=data_dir, max_segment_bytes=2048)) as store:
        for n in range(count):
            # Identical event content in every segment: only the header can differ.
            store.write([event(1, id=f"019ac3f2-5e1a-7c3d-9a41-{n:012x}", target="same")])
    return segment_files(data_dir)


def test_no_two_segments_share_their_first_1024_bytes(tmp_path: Path) -> None:
    files = fill(tmp_path / "a", 80) + fill(tmp_path / "b", 30)  # two collectors too
    assert len(files) >= 20
    heads = [f.read_bytes()[:FINGERPRINT] for f in files]
    assert len(set(heads)) == len(heads)
    assert min(len(h) for h in heads) == FINGERPRINT  # full-size fingerprints were compared


def test_they_differ_within_the_first_line_and_the_first_64_bytes(tmp_path: Path) -> None:
    files = fill(tmp_path / "data", 40)
    first_lines = [f.read_bytes().split(b"\n", 1)[0] for f in files]
    assert len(set(first_lines)) == len(files)  # Vector's default: checksum of line 1
    assert len({line[:64] for line in first_lines}) == len(files)  # Filebeat's minimum
    for a, b in itertools.combinations(first_lines, 2):
        assert a[:64] != b[:64]


def test_segments_holding_only_their_header_are_already_unique(tmp_path: Path) -> None:
    # A shipper may fingerprint a file shorter than 1 KiB by what it has: a fresh
    # segment is only its header line, and that is unique.
    heads = []
    for n in range(5):
        with Store(StorageSettings(data_dir=tmp_path / str(n))):
            (only,) = segment_files(tmp_path / str(n))
            heads.append(only.read_bytes())
    assert all(h.startswith(b'{"segment":{"id":"') and h.count(b"\n") == 1 for h in heads)
    assert len(set(heads)) == 5
