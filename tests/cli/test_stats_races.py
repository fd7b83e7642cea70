"""`audit-collector stats` next to a running collector: a file listed, then deleted before
its stat (retention, compression replacing a segment by its .gz, SQLite removing the
index's -wal at a stop, an operator) is left out of the counts, never a crash. The race is
forced: the listing itself sees the file, which is gone before the listing returns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from collector.cli import main
from tests.integrity.helpers import build_store, segment_paths

#: pattern -> a file that exists while the directory is listed and is gone right after
VANISHING = {"segment-*": "segment-00000000-20260101T000000Z.jsonl",
             "index.sqlite*": "index.sqlite-wal"}


def listing_then_deleting(monkeypatch: pytest.MonkeyPatch) -> None:
    real_glob = Path.glob

    def glob(self: Path, pattern: str) -> Iterator[Path]:
        gone = self / VANISHING[pattern] if pattern in VANISHING else None
        if gone is not None:
            assert not gone.exists()  # made up for the race: no real file is touched
            gone.write_bytes(b"x" * 1000)
        found = list(real_glob(self, pattern))
        if gone is not None:
            assert gone in found
            gone.unlink()
        return iter(found)

    monkeypatch.setattr(Path, "glob", glob)


def test_stats_leaves_out_files_deleted_between_the_listing_and_their_stat(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = build_store(tmp_path / "data", batches=4)
    segments = segment_paths(data_dir)
    index_files = sorted(data_dir.glob("index.sqlite*"))
    monkeypatch.delenv("AUDIT_CONFIG", raising=False)
    listing_then_deleting(monkeypatch)
    assert main(["stats", "--data-dir", str(data_dir), "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["segments"] == {"count": len(segments),
                                  "bytes": sum(p.stat().st_size for p in segments),
                                  "compressed": 0, "active": segments[-1].name}
    assert report["index_bytes"] == sum(p.stat().st_size for p in index_files)
