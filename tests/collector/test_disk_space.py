"""The disk space reserve retention signs its digests in on a full disk
(``collector.storage.disk_space``): released a slice at a time, made whole again out of
what deletions free. A full disk for real: ``tests/faults/test_disk_full_reserve.py``."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from collector.storage import disk_space
from collector.storage.disk_space import RESERVE_BYTES, Reserve

FULL = OSError(errno.ENOSPC, "No space left on device")
SLICE = 64 * 1024  # disk_space.SLICE, asserted below


def still_full() -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def whole_reserve(data_dir: Path) -> Reserve:
    reserve = Reserve(data_dir)
    reserve.ensure()
    assert reserve.path.stat().st_size == RESERVE_BYTES
    return reserve


def test_a_digest_takes_one_slice_of_the_reserve_and_the_rest_stays(tmp_path: Path) -> None:
    """The whole reserve went for one ~600-byte digest: a pass whose deletions could not
    make it again (another writer took the room) left the next pass nothing to sign in,
    and retention stalled for good."""
    reserve = whole_reserve(tmp_path)
    calls: list[int] = []
    reserve.spend(lambda: calls.append(reserve.size()), FULL)
    assert calls == [RESERVE_BYTES - SLICE]
    assert reserve.size() == RESERVE_BYTES - SLICE


def test_a_digest_that_needs_more_takes_slice_after_slice(tmp_path: Path) -> None:
    reserve = whole_reserve(tmp_path)
    tries: list[int] = []

    def write() -> None:
        tries.append(reserve.size())
        if len(tries) < 3:
            raise OSError(errno.ENOSPC, "No space left on device")

    reserve.spend(write, FULL)
    assert tries == [RESERVE_BYTES - SLICE, RESERVE_BYTES - 2 * SLICE,
                     RESERVE_BYTES - 3 * SLICE]


def test_a_digest_the_whole_reserve_does_not_help_raises_its_own_error(
        tmp_path: Path) -> None:
    """Full metadata, no inode left: the digest fails whatever is released."""
    reserve = whole_reserve(tmp_path)
    refused = OSError(errno.ENOSPC, "no inode left")

    def write() -> None:
        raise refused

    with pytest.raises(OSError) as raised:
        reserve.spend(write, FULL)
    assert raised.value is refused
    assert not reserve.path.exists()


def test_without_a_reserve_the_full_disk_is_raised(tmp_path: Path) -> None:
    reserve = Reserve(tmp_path)
    with pytest.raises(OSError) as raised:
        reserve.spend(lambda: None, FULL)
    assert raised.value is FULL


def test_after_deletions_the_reserve_is_made_whole_without_room_to_spare(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It was made again only with RESERVE_ROOM (the reserve and 64 KiB) free: deletions
    that freed less than 64 KiB over what the reserve's release had freed left it
    unmade, and the room went to the next writer."""
    reserve = whole_reserve(tmp_path)
    reserve.path.unlink()  # spent, to its last slice
    monkeypatch.setattr(disk_space, "free_bytes", lambda _: RESERVE_BYTES)
    reserve.ensure()  # not otherwise: the batches get the last free bytes
    assert not reserve.path.exists()
    reserve.ensure(after_deletions=True)
    assert reserve.path.stat().st_size == RESERVE_BYTES


def test_the_slice_is_what_the_tests_take_it_for() -> None:
    assert disk_space.SLICE == SLICE


def test_after_deletions_that_freed_less_than_it_lacks_the_reserve_takes_what_they_freed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reserve = whole_reserve(tmp_path)
    reserve.spend(lambda: None, FULL)
    monkeypatch.setattr(disk_space, "free_bytes", lambda _: 12 * 1024)
    reserve.ensure(after_deletions=True)
    assert reserve.size() == RESERVE_BYTES - SLICE + 12 * 1024


def test_a_reserve_spent_whole_is_made_again_after_deletions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spent to its last slice (a start-up that needed all of it to open): made again
    out of what retention's first deletions free, however little."""
    reserve = whole_reserve(tmp_path)
    with pytest.raises(OSError):
        reserve.spend(still_full, FULL, "the store can open")
    assert not reserve.path.exists()
    monkeypatch.setattr(disk_space, "free_bytes", lambda _: 100 * 1024)
    reserve.ensure(after_deletions=True)
    assert reserve.size() == 100 * 1024


def test_a_reserve_that_cannot_be_made_is_tried_once_a_pass_not_once_a_deletion(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Made again after each deleted segment: a write the disk refuses for another
    reason than room (a full quota: EDQUOT, statvfs showing room) is not tried again
    for each segment the same pass deletes."""
    from collector.storage.segment_set import SegmentSet
    from tests.collector.storage_helpers import events, open_store, segment_files, wait_until

    tried: list[Path] = []

    def write_new_file(path: Path, data: bytes, mode: int) -> None:
        tried.append(path)
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    passes: list[int] = []
    real_apply = SegmentSet.apply_retention

    def apply_retention(self: SegmentSet) -> Any:
        done = real_apply(self)
        if done.deleted:
            passes.append(len(done.deleted))
        return done

    monkeypatch.setattr(disk_space, "write_new_file", write_new_file)
    monkeypatch.setattr(SegmentSet, "apply_retention", apply_retention)
    data_dir = tmp_path / "data"
    with open_store(data_dir, max_segment_bytes=2048, retention_bytes=2 * 2048) as store:
        for _ in range(30):  # a segment each, faster than a pass (every 0.5 s)
            store.write(events(3))
        wait_until(lambda: len(segment_files(data_dir)) <= 4)
    assert max(passes) > 1, passes  # some pass deleted several: this test shows something
    assert len(tried) <= 1 + len(passes), (tried, passes)  # at the open, then once a pass


def test_a_digest_that_cannot_be_written_is_said_at_1_2_4_passes_then_its_recovery(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A pass comes every half second: while the disk stayed full, each one logged the
    same error (102 lines in one test run). Said at the 1st, 2nd, 4th... pass in a row,
    and once when a digest is written again."""
    import logging

    from collector.storage.segment_set import SegmentSet
    from tests.collector.storage_helpers import events, open_store, segment_files, wait_until

    refused = [0]
    real_sign = SegmentSet._sign_retention

    def sign_retention(self: SegmentSet, deleted_below: int) -> None:
        if refused[0] < 9:
            refused[0] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real_sign(self, deleted_below)

    monkeypatch.setattr(SegmentSet, "_sign_retention", sign_retention)
    data_dir = tmp_path / "data"
    with caplog.at_level(logging.WARNING, "collector"), \
            open_store(data_dir, max_segment_bytes=2048, retention_bytes=2 * 2048) as store:
        for _ in range(10):
            store.write(events(3))
        wait_until(lambda: refused[0] == 9 and len(segment_files(data_dir)) <= 4,
                   timeout=30)
        # Said in the stats while it failed, not for good.
        assert store.stats()["last_error"] is None
    said = [r.getMessage() for r in caplog.records
            if "nothing deleted in this pass" in r.getMessage()]
    assert [m.rsplit("(", 1)[1] for m in said] == [
        "1 passes in a row)", "2 passes in a row)", "4 passes in a row)",
        "8 passes in a row)"], said
    assert "its digest written after 9 pass(es)" in caplog.text


def test_an_empty_reserve_is_no_release(tmp_path: Path) -> None:
    """An empty reserve file (made on a disk with no room for a byte of it) freed
    nothing, yet counted as released: the store's start-up then said its disk was full
    "even with the reserve released". It is removed, and the full disk raised as it is."""
    reserve = Reserve(tmp_path)
    reserve.path.write_bytes(b"")
    with pytest.raises(OSError) as raised:
        reserve.spend(lambda: None, FULL, "the store can open")
    assert raised.value is FULL
    assert not reserve.path.exists()



def test_a_reserve_made_afresh_has_its_name_made_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the file was fsynced, not the directory: a power loss could drop the new
    entry, and the next start on a full disk found no reserve to open in."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    reserve = Reserve(tmp_path)
    assert reserve.ensure()
    assert reserve.size() == RESERVE_BYTES
    assert synced.index(str(tmp_path)) > synced.index(str(reserve.path)), synced
