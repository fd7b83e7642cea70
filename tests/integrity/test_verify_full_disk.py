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
