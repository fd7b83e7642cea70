"""A rotation cut short by a crash (the next segment made, the seal digest of the one
before not yet written) against the same state made on purpose after a clean stop, to
have a start-up sign whatever was done to the segment meanwhile (a crash-safety and an
integrity review, 2026-11-26)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.integrity.findings import DIGEST_MISSING
from collector.storage.errors import StorageError
from tests.collector.storage_helpers import events, open_store
from tests.e2e.harness import run_python
from tests.integrity.helpers import (
    SMALL,
    build_store,
    check,
    digest_paths,
    reasons,
    refuse_digests,
    segment_paths,
)

_KILLED_IN_ROTATION = r"""
import os, sys
from pathlib import Path
from collector.integrity.ledger import Ledger
from tests.collector.storage_helpers import events, open_store

Ledger.sealed = lambda self, old, new: os._exit(9)  # killed: next segment made, no seal
with open_store(Path(sys.argv[1]), max_segment_bytes=2048) as store:
    while True:
        store.write(events(3))
"""


def test_a_crash_inside_a_rotation_is_noted_by_verify_and_sealed_by_the_next_start(
        tmp_path: Path) -> None:
    """verify called the store INVALID ('a sealed segment without its seal digest') from
    the crash until the collector's next start wrote the seal."""
    data_dir = tmp_path / "data"
    killed = run_python(_KILLED_IN_ROTATION, str(data_dir))
    assert killed.returncode in (-9, 9), killed.stderr
    newest = segment_paths(data_dir)[-1]
    assert newest.read_bytes().count(b"\n") == 1  # the new segment: its header only
    report = check(data_dir)
    assert report.valid, reasons(report)
    notes = [n for r in report.files for n in r.notes]
    assert any("stopped (a crash) between starting the next segment" in n for n in notes)
    with open_store(data_dir, max_segment_bytes=2048) as store:
        store.write(events(2))
    report = check(data_dir)
    assert report.valid, reasons(report)


def test_a_seal_removed_after_a_clean_stop_is_not_signed_again_at_start_up(
        tmp_path: Path) -> None:
    """The seal of the segment before the active one and the active segment's digests
    removed after a clean stop: the start re-sealed the segment, signing whatever was
    done to it meanwhile, and verify called the store valid."""
    data_dir = build_store(tmp_path / "data", batches=6)
    files = digest_paths(data_dir)
    files[-1].unlink()  # the active segment's digests (its start and stop checkpoints)
    before_active = files[-2]
    kept = [line for line in before_active.read_bytes().splitlines(keepends=True)
            if b'"kind":"seal"' not in line]
    before_active.write_bytes(b"".join(kept))
    assert not check(data_dir).valid
    with open_store(data_dir, max_segment_bytes=SMALL):
        pass
    found = reasons(check(data_dir))
    sealed = segment_paths(data_dir)[-2].name
    assert DIGEST_MISSING in found.get(f"segments/{sealed}", []), found


def test_a_new_segment_takes_no_record_before_the_seal_of_the_one_before_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A seal digest the disk refused was only queued, and records went on into the new
    segment: a crash then left records after an unsigned seal, which no start may sign
    (see above), so verify would report it for good."""
    refuse = refuse_digests(monkeypatch, "seal")
    data_dir = tmp_path / "data"
    with open_store(data_dir, max_segment_bytes=2048) as store:
        with pytest.raises(StorageError, match="No space left"):
            for _ in range(10):  # the rotation comes within these
                store.write(events(3))
        assert segment_paths(data_dir)[-1].read_bytes().count(b"\n") == 1
        refuse["on"] = False
        store.write(events(3))
    report = check(data_dir)
    assert report.valid, reasons(report)
