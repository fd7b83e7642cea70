"""Retention on a disk full to the last byte, pass after pass: the reserve it signs its
digests in (``collector.storage.disk_space``) is there again for the next pass, however
little a pass frees and whatever takes the room after it.

In-process stores on a small tmpfs (``full_disk``'s helpers); the ballast file is
another process on the same disk, filling it to the last byte after each retention pass.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from collector.storage import disk_space
from collector.storage.segment_set import SegmentSet
from tests.collector.storage_helpers import events, open_store, wait_until
from tests.faults.fleet import scaled
from tests.faults.full_disk import IN_NAMESPACE, fill, rerun_in_a_user_namespace, tmpfs
from tests.integrity.helpers import check, reasons, segment_paths

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(scaled(300, 3600))]

#: Records older than this (seconds) go.
RETENTION = 8.0


def test_retention_goes_on_when_each_pass_frees_less_than_the_reserve_and_the_room_is_taken(
        tmp: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Seen once in ``test_disk_full``: the reserve released, not made again, and every
    later pass "nothing deleted in this pass, its digest could not be written" until the
    test ended, the disk full of expired segments. By construction: a pass that released
    the reserve made it again only with ``RESERVE_ROOM`` (320 KiB) free, and deletions
    freeing less than the 64 KiB over the reserve's own room left it unmade; the room
    went to the next writer (the index, the commits, another process), and no later
    digest could be written, so nothing was ever deleted again. Here each pass frees a
    few small segments (a few KiB each) and the ballast takes whatever is free after
    it: every expired segment must go, by retention alone."""
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return
    armed = {"on": False}
    passes: list[int] = []
    real_apply = SegmentSet.apply_retention

    def apply_retention(self: SegmentSet) -> Any:
        done = real_apply(self)
        if armed["on"]:
            passes.append(len(done.deleted))
            fill(ballast)  # another process takes whatever this pass left free
        return done

    monkeypatch.setattr(SegmentSet, "apply_retention", apply_retention)
    with tmpfs(tmp / "disk", "16m") as disk:
        data = disk / "data"
        ballast = disk / "ballast"
        reserve = data / disk_space.RESERVE_NAME
        with caplog.at_level(logging.WARNING, "collector"), \
                open_store(data, max_segment_bytes=2048,
                           retention_days=RETENTION / 86_400) as store:
            wait_until(reserve.exists)
            # Sealed segments of every age up to retention's: they expire one or two a
            # pass (every 0.5 s) over the next RETENTION seconds.
            end = time.monotonic() + RETENTION
            while time.monotonic() < end:
                store.write(events(3))  # a segment of 2 KiB each second write
                time.sleep(0.25)
            written = len(segment_paths(data))
            fill(ballast)
            armed["on"] = True
            try:
                # Each one expired by then; the newest sealed one is kept while the
                # active segment holds no record.
                wait_until(lambda: len(segment_paths(data)) <= 2, timeout=RETENTION + 20)
            except AssertionError:
                stalled = caplog.text.count("nothing deleted in this pass")
                raise AssertionError(
                    f"{len(segment_paths(data))} of {written} segments left; passes "
                    f"deleted {passes}; {stalled} passes could not write their digest; "
                    f"reserve there: {reserve.exists()}") from None
            finally:
                armed["on"] = False
            assert reserve.exists()
            released = caplog.text.count("released")
        ballast.unlink()  # room for verify's own files
        report = check(data)
    assert released, "the disk never came to need the reserve: this test shows nothing"
    assert written > 10, written
    assert report.valid, reasons(report)


def test_a_reserve_made_afresh_keeps_what_the_disk_took_when_another_writer_took_the_rest(
        tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Made afresh (none left: released whole at start-up, or its last slice spent)
    after deletions, out of the room they freed: its first slice was written all or
    nothing, so when another writer (the indexer's checkpoint, the compressor, another
    process; or a full quota, which the free space the disk reports does not show) took
    part of that room between the look and the write, the part written was deleted
    again and no reserve was left at all: the next pass on a full disk had nothing to
    sign in, and retention stalled until space was freed by hand. What the disk took
    stays, as when a reserve that is there is grown."""
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return
    with tmpfs(tmp / "disk", "4m") as disk:
        data = disk / "data"
        data.mkdir()
        ballast = disk / "ballast"
        os.truncate(ballast, fill(ballast) - 96 * 1024)  # 96 KiB free: what deletions freed
        real_free_bytes = disk_space.free_bytes

        def free_then_taken(directory: Path) -> int:
            free = real_free_bytes(directory)
            (disk / "other").write_bytes(os.urandom(64 * 1024))  # right after the look
            return free

        monkeypatch.setattr(disk_space, "free_bytes", free_then_taken)
        reserve = disk_space.Reserve(data)
        reserve.ensure(after_deletions=True)
        assert reserve.size() == 32 * 1024  # all the other writer left


def test_a_digest_written_in_the_reserve_is_signed_once(
        tmp: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The retention digest that met the full disk stays queued; written again in the
    reserve's room, the queued one was written and then a second one signed and written
    after it, the same deletions said twice: twice the reserve each such pass, and two
    digests counted in ``stats`` for one. Here the disk fills right before a pass signs,
    the new active segment's digest file not made yet (its first line needs a page)."""
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return
    armed = {"on": False, "signed": 0}
    real_sign = SegmentSet._sign_retention

    def sign_retention(self: SegmentSet, deleted_below: int) -> None:
        if armed["on"]:
            armed["on"] = False
            fill(ballast)  # another process takes the last byte right before it signs
            real_sign(self, deleted_below)
            armed["signed"] = deleted_below
            return
        real_sign(self, deleted_below)

    monkeypatch.setattr(SegmentSet, "_sign_retention", sign_retention)
    with tmpfs(tmp / "disk", "16m") as disk:
        data = disk / "data"
        ballast = disk / "ballast"
        with caplog.at_level(logging.WARNING, "collector"), \
                open_store(data, max_segment_bytes=2048, retention_bytes=2 * 2048,
                           compress_sealed=False,
                           digest_interval=3600) as store:
            wait_until((data / disk_space.RESERVE_NAME).exists)
            for _ in range(6):  # a segment each; retention keeps two sealed
                store.write(events(3))
            wait_until(lambda: len(segment_paths(data)) <= 3)
            armed["on"] = True
            store.write(events(3))  # a new segment: the next pass deletes the oldest
            wait_until(lambda: armed["signed"])
            active = store.stats()["active_segment"]["name"]
            lines = (data / "digests" / active.replace(".jsonl", ".digests.jsonl")
                     ).read_bytes().splitlines()
            ballast.unlink()
        assert "released the" in caplog.text, "the reserve was not needed: shows nothing"
        retention = [json.loads(line) for line in lines
                     if json.loads(line)["kind"] == "retention"]
        assert [g["deleted_below"] for g in retention] == [armed["signed"]]
        report = check(data)
    assert report.valid, reasons(report)
