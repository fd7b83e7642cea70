"""``verify`` next to a running collector whose seal digest waits for room on a full
disk: still INVALID (a deleted seal looks the same), but the verdict's line says why the
digest may not be there yet, from what the read commands can see without a lock: the
collector's live stats file."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.stats_file import STATS_FILE, StatsFile
from collector.storage.errors import StorageError
from collector.storage.failures import DISK_FULL
from tests.collector.storage_helpers import events, open_store
from tests.integrity.helpers import SMALL, refuse_digests, run_verify


def test_a_seal_waiting_for_room_on_a_full_disk_is_said_in_verify_s_verdict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    refuse_digests(monkeypatch, "seal")  # as a full disk refuses it
    with open_store(data_dir, max_segment_bytes=SMALL) as store:
        store.write(events(3))
        # The rotation's seal meets the full disk: the new segment takes no record
        # until it is written, and the store says why.
        with pytest.raises(StorageError):
            store.write(events(3))
        assert store.stats()["refusal"] == DISK_FULL
        # What serve's stats task writes every few seconds (``_live_stats``).
        StatsFile(data_dir / STATS_FILE).write({"state": "running", "store": store.stats()})
        done = run_verify("-q", str(data_dir))  # the collector's lock is held: live
    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("INVALID")]
    assert "digest missing" in line and "segment-00000001" in line, line
    assert "reports its disk full" in line and "waiting for room" in line, line
    assert "verify again" in line, line


def test_a_missing_seal_is_not_excused_when_the_running_collector_s_disk_has_room(
        tmp_path: Path) -> None:
    """A seal deleted under a collector that writes fine: no word of disk room."""
    data_dir = tmp_path / "data"
    with open_store(data_dir, max_segment_bytes=SMALL) as store:
        for _ in range(3):
            store.write(events(3))
        StatsFile(data_dir / STATS_FILE).write({"state": "running", "store": store.stats()})
        seals = sorted((data_dir / "digests").glob("segment-00000001*"))
        seals[0].unlink()
        done = run_verify("-q", str(data_dir))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "digest missing" in done.stdout and "room" not in done.stdout, done.stdout


def test_a_stats_file_the_full_disk_leaves_unwritten_is_no_reason_to_stay_silent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a disk full to the last byte the stats file cannot be written either: it
    stays stale (or was never written), and the disk itself says it is full."""
    from collector.integrity import disk_room
    from collector.integrity.findings import DIGEST_MISSING
    from tests.integrity.helpers import check

    data_dir = tmp_path / "data"
    refuse_digests(monkeypatch, "seal")
    with open_store(data_dir, max_segment_bytes=SMALL) as store:
        store.write(events(3))
        with pytest.raises(StorageError):
            store.write(events(3))
        monkeypatch.setattr(disk_room, "known_free_bytes", lambda _: 512)  # statvfs's word
        report = check(data_dir, live=True)  # no stats file: none written yet
    (missing,) = [f for r in report.invalid for f in r.findings if f.reason == DIGEST_MISSING]
    assert "512 bytes free" in missing.detail and "waiting for room" in missing.detail, \
        missing.detail


@pytest.mark.parametrize("deleted", ["00000001", "00000003"])
def test_a_deleted_seal_no_rotation_can_be_waiting_on_is_not_excused_by_a_full_disk(
        tmp_path: Path, deleted: str) -> None:
    """Only the seal of the segment before the newest can wait for room, and only while
    the newest holds no record (it takes none until that seal is written). An older
    seal deleted, or that one with records after it, is no digest waiting on a disk that
    merely is full now: before, its 'digest missing' said it may be, for every missing
    seal of the store, and an operator waited for a seal that had been deleted."""
    from collector.integrity.findings import DIGEST_MISSING
    from tests.integrity.helpers import build_store, check

    data_dir = build_store(tmp_path / "data", batches=4)  # 1-3 sealed, 4 with records
    (seal, *_) = sorted((data_dir / "digests").glob(f"segment-{deleted}*"))
    seal.unlink()
    StatsFile(data_dir / STATS_FILE).write({"state": "running",
                                            "store": {"refusal": DISK_FULL}})
    report = check(data_dir, live=True)
    (missing,) = [f for r in report.invalid for f in r.findings
                  if f.reason == DIGEST_MISSING and r.path.startswith(f"segments/segment-{deleted}")]
    assert "room" not in missing.detail and "disk" not in missing.detail, missing.detail


def test_a_fifo_in_place_of_the_stats_file_does_not_hold_a_live_verify(
        tmp_path: Path) -> None:
    """Read for the disk's room, its open waited for a writer: every verify of a live
    store hung for good. Not a regular file, it says nothing, as an unreadable one."""
    import os

    from collector.integrity.verify import Report
    from tests.e2e.harness import outcome_within
    from tests.integrity.helpers import build_store, check

    data_dir = build_store(tmp_path / "data", batches=2)
    os.mkfifo(data_dir / STATS_FILE)
    report = outcome_within(30, lambda: check(data_dir, live=True))
    assert isinstance(report, Report), report
    assert not report.invalid, report.invalid


def test_a_fifo_in_place_of_the_store_lock_does_not_hold_verify(tmp_path: Path) -> None:
    """Asking whether a collector holds the store, verify opened store.lock read-only: a
    FIFO in its place held that open for good. Refused, the directory's lock answers."""
    import os
    import subprocess

    from collector.storage.data_dir_lock import LOCK_FILE
    from tests.e2e.harness import outcome_within
    from tests.integrity.helpers import build_store, run_verify

    data_dir = build_store(tmp_path / "data", batches=2)
    (data_dir / LOCK_FILE).unlink(missing_ok=True)
    os.mkfifo(data_dir / LOCK_FILE)
    done = outcome_within(30, lambda: run_verify(str(data_dir)))
    assert isinstance(done, subprocess.CompletedProcess), done
    assert done.returncode == 0, done.stdout + done.stderr
