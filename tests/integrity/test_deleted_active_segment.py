"""The active segment deleted while the collector is stopped: the next start never reuses
its number (nor its records' seqs), says it is missing, and ``verify`` reports the gap
instead of calling the store valid."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.index import INDEX_SCHEMA
from collector.integrity.findings import SEGMENT_MISSING
from collector.store import StorageSettings, Store
from tests.collector.storage_helpers import events
from tests.integrity.helpers import SMALL, build_store, check, reasons, run_verify, segment_paths


def seq_of(segment: Path) -> int:
    return int(segment.name.split("-")[1])


def record_seqs(segment: Path) -> list[int]:
    return [r["seq"] for r in map(orjson.loads, segment.read_bytes().splitlines())
            if "segment" not in r]


def delete_the_active_segment(data_dir: Path, *, index_too: bool = False) -> Path:
    """Delete the newest segment of a stopped store (and the index with it, leaving the
    digests as the only record of it); returns the deleted path."""
    active = segment_paths(data_dir)[-1]
    assert record_seqs(active), "the active segment should hold records"
    active.unlink()
    if index_too:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{data_dir / 'index.sqlite'}{suffix}").unlink(missing_ok=True)
    return active


def restart_and_write(data_dir: Path, **settings: Any) -> list[int]:
    """Start the store, write two batches (a rotation in between), stop; what start-up
    said about the newest segments."""
    store = Store(StorageSettings(data_dir=data_dir, max_segment_bytes=SMALL, **settings))
    report = store.open()
    try:
        store.write(events(3))
        store.write(events(3))
    finally:
        store.close()
    return list(report.missing_newest)


@pytest.mark.parametrize("index_too", [False, True], ids=["index kept", "index deleted too"])
def test_a_deleted_active_segment_is_never_renumbered_and_verify_reports_it(
        tmp_path: Path, index_too: bool) -> None:
    data_dir = build_store(tmp_path / "data", batches=4)
    names_before = [p.name for p in segment_paths(data_dir)]
    deleted = segment_paths(data_dir)[-1]
    last_deleted_record = record_seqs(deleted)[-1]
    delete_the_active_segment(data_dir, index_too=index_too)

    missing = restart_and_write(data_dir)

    assert missing == [seq_of(deleted)], "start-up should say the newest segment is gone"
    after = segment_paths(data_dir)
    new = [p for p in after if p.name not in names_before]
    assert new, "the restarted store should have written a new segment"
    assert min(seq_of(p) for p in new) == seq_of(deleted) + 1
    assert deleted.name not in {p.name for p in after}, "a file name was reused"
    assert len({seq_of(p) for p in after}) == len(after)
    assert min(s for p in new for s in record_seqs(p)) > last_deleted_record, \
        "a record seq of the deleted segment was reused"
    found = reasons(check(data_dir))
    assert found.get(f"segments/{deleted.name}") == [SEGMENT_MISSING], found
    result = run_verify(str(data_dir))
    assert result.returncode != 0, result.stdout
    assert deleted.name in result.stdout and "missing" in result.stdout


def test_without_tamper_evidence_the_index_still_keeps_the_number(tmp_path: Path) -> None:
    data_dir = build_store(tmp_path / "data", batches=4, chain=False)
    deleted = delete_the_active_segment(data_dir)

    assert restart_and_write(data_dir, chain=False) == [seq_of(deleted)]
    assert min(seq_of(p) for p in segment_paths(data_dir) if seq_of(p) >= seq_of(deleted)) \
        == seq_of(deleted) + 1


def test_a_store_whose_newest_segment_is_intact_reopens_it(tmp_path: Path) -> None:
    data_dir = build_store(tmp_path / "data", batches=4)
    names_before = [p.name for p in segment_paths(data_dir)]

    assert restart_and_write(data_dir) == []
    assert [p.name for p in segment_paths(data_dir)][:len(names_before)] == names_before
    assert check(data_dir).valid


def test_an_index_rebuilt_at_start_still_keeps_the_number(tmp_path: Path) -> None:
    """A rebuild (an older index schema, as after an upgrade; or rows that do not match)
    wipes the catalog: the numbers it named are read before that, so a store without
    digests does not renumber the deleted segment either."""
    data_dir = build_store(tmp_path / "data", batches=4, chain=False)
    deleted = delete_the_active_segment(data_dir)
    con = sqlite3.connect(data_dir / "index.sqlite")
    try:
        last_deleted_record = con.execute(
            "SELECT last_seq FROM segments WHERE seq=?", (seq_of(deleted),)).fetchone()[0]
        con.execute("UPDATE meta SET value=? WHERE key='schema'", (INDEX_SCHEMA - 1,))
        con.commit()
    finally:
        con.close()

    assert restart_and_write(data_dir, chain=False) == [seq_of(deleted)]
    later = [p for p in segment_paths(data_dir) if seq_of(p) >= seq_of(deleted)]
    assert min(seq_of(p) for p in later) == seq_of(deleted) + 1
    assert min(s for p in later for s in record_seqs(p)) > last_deleted_record
