"""A digest the disk refuses (full, EIO) must leave neither a false tamper alarm nor a
deletion no signed digest explains (a crash-safety review, 2026-11-26)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest

from collector.integrity import digests
from tests.collector.storage_helpers import events, open_store, wait_until
from tests.integrity.helpers import check, digest_paths, reasons, refuse_digests, segment_paths


class _FullDisk:
    """``os`` for the digests module whose ``write`` finds the disk full once armed (a
    file can still be created: a full tmpfs has inodes left). ``mid_line``: its first
    write armed takes part of the line, the next one fails, and the disk has room again
    after that: what a file system filling under a write does."""

    def __init__(self, mid_line: bool = False) -> None:
        self.mid_line = mid_line
        self.armed = False
        self.partial = 0
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: bytes) -> int:
        if not self.armed:
            return os.write(fd, data)
        if self.mid_line and not self.partial:
            self.partial = os.write(fd, bytes(data[:len(data) // 2]))
            return self.partial
        self.armed = not self.mid_line
        self.refused += 1
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_digest_cut_short_by_a_full_disk_is_written_whole_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The part the disk took stayed in the file; the retry appended the whole line
    after it: 'signature invalid' and 'digest missing' for good, after a mere ENOSPC."""
    data_dir = tmp_path / "data"
    fake = _FullDisk(mid_line=True)
    monkeypatch.setattr(digests, "os", fake)
    with open_store(data_dir) as store:
        store.write(events(3))
        fake.armed = True  # the stop checkpoint meets the full disk, then is retried
    assert fake.partial and not fake.armed, "the failure was never injected"
    found = [digests.read_file(p) for p in digest_paths(data_dir)]
    assert not any(f.problems for f in found), [f.problems for f in found]
    report = check(data_dir)
    assert report.valid, reasons(report)


def test_retention_deletes_nothing_while_its_digest_cannot_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The retention digest was only queued on ENOSPC and the segments deleted anyway:
    a kill before the queue was written left deletions no signed digest explains
    ('digest missing', as if stolen)."""
    data_dir = tmp_path / "data"
    full = refuse_digests(monkeypatch, "retention")
    with open_store(data_dir, max_segment_bytes=2048, retention_bytes=3 * 2048) as store:
        for _ in range(6):
            store.write(events(3))
        wait_until(lambda: store.stats()["integrity"]["last_error"], timeout=10)
        time.sleep(2)  # several retention passes (every 0.5 s) while the disk is full
        # What a kill now leaves: every segment still there, its deletion unsigned.
        assert len(segment_paths(data_dir)) == 6, \
            "segments deleted under a retention digest that was not written"
        # One retention digest waits, not one signed at every pass (a review: 7,200 an
        # hour of a full disk, all written once it had room).
        assert store.stats()["integrity"]["pending_digests"] == 1
        full["on"] = False
        wait_until(lambda: len(segment_paths(data_dir)) < 6, timeout=10)
    report = check(data_dir)
    assert report.valid, reasons(report)


def test_a_start_killed_while_moving_a_torn_digest_line_is_finished_by_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The repair copies the torn line to quarantine/, then cuts it. Killed in between
    and started again within the same second, the next start failed (FileExistsError:
    the copy's name repeats); a second later it made a second copy."""
    import time

    monkeypatch.setattr(time, "strftime", lambda *_: "20261126T000000Z")
    data_dir = tmp_path / "data"
    with open_store(data_dir) as store:
        store.write(events(3))
    newest = digest_paths(data_dir)[-1]
    whole = newest.read_bytes()
    torn = b'{"digest":1,"n":9'
    newest.write_bytes(whole + torn)
    # What the killed start left: its copy made, the cut not yet.
    quarantine = data_dir / "quarantine"
    (quarantine / f"{newest.name}.20261126T000000Z.{len(whole)}.torn").write_bytes(torn)
    with open_store(data_dir) as store:
        store.write(events(1))
    assert newest.read_bytes().startswith(whole) and torn not in newest.read_bytes()
    copies = [p for p in quarantine.iterdir() if p.name.startswith(newest.name)]
    assert [p.read_bytes() for p in copies] == [torn]
    report = check(data_dir)
    assert report.valid, reasons(report)


def test_a_reserve_that_does_not_help_is_not_made_and_released_at_every_pass(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A retention digest the disk refuses even once the reserve is released (full
    metadata, no inode left: statvfs still shows room): each pass (every 0.5 s) made
    the 256 KiB reserve again, fsynced, on the commit thread, and released it with a
    'disk is full' warning. Once released, it waits RESERVE_RETRY or a deletion."""
    import logging

    from collector.storage import disk_space

    made: list[Path] = []
    real_write = disk_space.write_new_file

    def write_new_file(path: Path, data: bytes, mode: int) -> None:
        made.append(path)
        real_write(path, data, mode)

    monkeypatch.setattr(disk_space, "write_new_file", write_new_file)
    data_dir = tmp_path / "data"
    full = refuse_digests(monkeypatch, "retention")
    with caplog.at_level(logging.WARNING, "collector.store"), \
            open_store(data_dir, max_segment_bytes=2048, retention_bytes=3 * 2048) as store:
        for _ in range(6):
            store.write(events(3))
        wait_until(lambda: store.stats()["integrity"]["last_error"], timeout=10)
        time.sleep(3)  # six passes
        assert len(made) == 1, f"the reserve was made {len(made)} times"
        assert caplog.text.count("released the") == 1, caplog.text
        assert len(segment_paths(data_dir)) == 6
        full["on"] = False
        wait_until(lambda: len(segment_paths(data_dir)) < 6, timeout=10)
        # Made again out of what the deletions freed.
        wait_until((data_dir / disk_space.RESERVE_NAME).exists, timeout=10)
    assert check(data_dir).valid


def test_a_reserve_that_cannot_be_made_is_not_tried_at_every_pass(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A disk whose free space statvfs shows but the writer may not have (a full user
    quota: EDQUOT): a 256 KiB write tried, and a warning, every 0.5 s."""
    import logging

    from collector.storage import disk_space

    tried: list[Path] = []

    def write_new_file(path: Path, data: bytes, mode: int) -> None:
        tried.append(path)
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(disk_space, "write_new_file", write_new_file)
    with caplog.at_level(logging.WARNING, "collector.store"), \
            open_store(tmp_path / "data", retention_bytes=1 << 30) as store:
        store.write(events(3))
        time.sleep(3)  # six passes
    assert len(tried) == 1, f"tried {len(tried)} times"
    assert caplog.text.count("could not make the disk space reserve") == 1, caplog.text


def test_a_reserve_left_short_by_a_kill_is_made_whole(tmp_path: Path) -> None:
    """A kill while the reserve was written leaves it short or empty; it was taken for
    the reserve for good, and its release freed nothing for the retention digest."""
    from collector.storage import disk_space

    data_dir = tmp_path / "data"
    with open_store(data_dir) as store:
        store.write(events(1))
    reserve = data_dir / disk_space.RESERVE_NAME
    assert reserve.stat().st_size == disk_space.RESERVE_BYTES
    reserve.write_bytes(b"")  # what a kill right after its creation leaves
    with open_store(data_dir) as store:
        store.write(events(1))
        wait_until(lambda: reserve.stat().st_size == disk_space.RESERVE_BYTES, timeout=5)


def test_a_digest_file_the_disk_refuses_its_first_line_is_not_left_empty(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk full between a new digest file's creation and its first line, and the
    collector stopped before space came back (a CI run, 2026-11-27): the empty file
    stayed, and verify read it as 'its digests were removed', INVALID. A file created
    for a line the disk refuses goes with the failure; the segment's records are then
    unsigned (said as such), not a tamper alarm."""
    data_dir = tmp_path / "data"
    fake = _FullDisk()
    monkeypatch.setattr(digests, "os", fake)
    with open_store(data_dir, max_segment_bytes=2048) as store:
        for _ in range(3):
            store.write(events(3))
        wait_until(lambda: len(segment_paths(data_dir)) >= 2)
        newest = segment_paths(data_dir)[-1].name
        assert not (data_dir / "digests" / digests.file_name(newest)).exists()
        fake.armed = True  # the stop checkpoint's digest of the active segment: refused
    assert fake.refused, "the failure was never injected"
    assert not (data_dir / "digests" / digests.file_name(newest)).exists()
    assert all(p.stat().st_size for p in digest_paths(data_dir))
    report = check(data_dir)
    assert report.valid, reasons(report)
