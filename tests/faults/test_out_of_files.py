"""A collector out of files (its file limit lowered under it with ``prlimit``) while an
app delivers: the store cannot open its next segment, keeps appending to the active
one, loses nothing it acknowledged, and says so in a few lines, not one per commit."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from tests.e2e.harness import lower_file_limit
from tests.faults.fleet import App, Collector, Stored, report, wait_for

pytestmark = pytest.mark.e2e


def test_out_of_files_the_store_keeps_writing_and_says_so_sparingly(tmp: Path) -> None:
    """Segments of 64 KiB (a rotation due every few hundred events) and no file left
    to open: each group commit tried the rotation again and logged "cannot rotate" for
    it, dozens of lines a second for as long as the files were short. Now at the 1st,
    2nd, 4th... failure in a row, and once when it rotates again."""
    collector = Collector(tmp / "data", "--max-segment-bytes", "64KiB").start()
    app = App("app", collector.url, tmp / "spool", tmp / "logs", burst=20, pause=0.01)
    try:
        wait_for(lambda: app.acknowledged_count() >= 100, 30, "the app's first events")
        lower_file_limit(collector, above_idle=0)
        during = app.acknowledged_count() + 3000  # a few thousand commits' worth
        wait_for(lambda: app.acknowledged_count() >= during, 60,
                 "events acknowledged while the collector is out of files")
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.prlimit(collector.pid, resource.RLIMIT_NOFILE, (1024, hard))
        segments = collector.data_dir / "segments"
        wait_for(lambda: len(list(segments.glob("segment-*"))) >= 2, 30,
                 "a rotation once files are back")
    finally:
        result = app.finish()
    assert collector.stop() == 0
    output = "".join(collector.output)
    failed = [line for line in output.splitlines() if "cannot rotate" in line]
    stored = Stored.read(collector.data_dir)
    report("out of files while an app delivers (segments of 64 KiB)",
           acknowledged=result["acknowledged"], rotation_failures_logged=len(failed),
           lost=len(stored.missing(app.acknowledged())))
    assert result["delivered"] and stored.missing(app.acknowledged()) == []
    assert stored.twice() == []
    assert 1 <= len(failed) <= 16, f"{len(failed)} lines of 'cannot rotate'"
    assert "Too many open files" in failed[0] and "rotated again after" in output
