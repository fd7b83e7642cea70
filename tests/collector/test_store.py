"""The Store as the ingest server uses it: durable, deduplicated, indexed writes, group
commit, rotation, crash repair, retention, compression and per-source gaps."""

from __future__ import annotations

import errno
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_middleware.event import format_created
from collector.query import Filters, iter_records, reindex
from collector.storage import segments, sources
from collector.storage.errors import DataDirInUseError, StorageError, StoreClosedError
from collector.storage.records import encode_events
from collector.store import StorageSettings, Store
from tests.collector.storage_helpers import (
    Hold,
    event,
    events,
    open_store,
    record_lines,
    segment_files,
    wait_until,
)


def stored_ids(data_dir: Path, **filters: object) -> list[str]:
    return [r["id"] for r in iter_records(data_dir, Filters(**filters))]  # type: ignore[arg-type]


def all_records(data_dir: Path) -> list[dict]:
    return [orjson.loads(line) for path in segment_files(data_dir)
            if not path.name.endswith(".gz") for line in record_lines(path)]


# -- writing ------------------------------------------------------------------------------
def test_written_events_are_in_the_segment_and_the_index_when_the_write_returns(
        tmp_path: Path) -> None:
    batch = events(3)
    with open_store(tmp_path) as store:
        result = store.write(batch, "src-a", [1, 2, 3])
        assert result.written == [e["id"] for e in batch] and result.duplicates == []
        assert [r["id"] for r in all_records(tmp_path)] == result.written
        assert stored_ids(tmp_path) == result.written
        assert store.stats()["events"] == 3


def test_records_are_numbered_by_one_collector_wide_sequence(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.write(events(2), "a", [1, 2])
        store.write(events(2), "b", [1, 2])
    assert [(r["seq"], r["source"], r["source_seq"]) for r in all_records(tmp_path)] == [
        (1, "a", 1), (2, "a", 2), (3, "b", 1), (4, "b", 2)]


def test_a_replayed_batch_is_written_once(tmp_path: Path) -> None:
    batch = events(5)
    with open_store(tmp_path) as store:
        first = store.write(batch)
        again = store.write(batch)
    assert len(first.written) == 5
    assert again.written == [] and again.duplicates == [e["id"] for e in batch]
    assert len(all_records(tmp_path)) == 5


def test_duplicates_inside_one_batch_are_written_once(tmp_path: Path) -> None:
    a, b = event(), event()
    with open_store(tmp_path) as store:
        result = store.write([a, b, a, a])
        assert result.written == [a["id"], b["id"]]
        assert result.duplicates == [a["id"], a["id"]]
        assert store.stats()["duplicates"] == 2


def test_ids_that_are_not_uuids_are_stored_and_deduplicated_too(tmp_path: Path) -> None:
    odd = [event(id="evt-1"), event(id="EVT-2"), event(id="evt-1")]
    with open_store(tmp_path) as store:
        assert store.write(odd).written == ["evt-1", "EVT-2"]
        assert store.write(odd[:1]).duplicates == ["evt-1"]
    assert stored_ids(tmp_path) == ["evt-1", "EVT-2"]


def test_submissions_waiting_together_share_one_fsync(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        blocker = threading.Event()
        # Hold the commit thread inside a write so the next submissions gather.
        real = store._segments.active.sync

        def slow_sync() -> None:
            blocker.wait(10)
            real()

        store._segments.active.sync = slow_sync  # type: ignore[method-assign]
        first = store.submit(events(1))
        wait_until(lambda: first.running())
        futures = [store.submit(events(10)) for _ in range(20)]
        blocker.set()
        assert sum(len(f.result(10).written) for f in futures) == 200
        stats = store.stats()
    assert stats["fsyncs"] == 2 and stats["events_per_fsync"] == 100.5
    # The held fsync is the slowest one, and counted in the total.
    assert 0 < stats["fsync_seconds_max"] <= stats["fsync_seconds_total"]


def test_many_threads_submitting_store_every_event_exactly_once(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        def worker() -> None:
            for _ in range(20):
                store.write(events(25))
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    records = all_records(tmp_path)
    assert len(records) == len({r["id"] for r in records}) == 8 * 20 * 25
    assert [r["seq"] for r in records] == list(range(1, 4001))


def test_a_bad_event_fails_its_submission_only(tmp_path: Path) -> None:
    bad = event()
    del bad["created"]
    with open_store(tmp_path) as store:
        failed = store.submit([event(), bad])
        ok = store.submit(events(2))
        with pytest.raises(StorageError, match="event 1 has no 'created' field"):
            failed.result()
        assert len(ok.result().written) == 2
        assert store.stats()["rejected"] == 1
    assert len(all_records(tmp_path)) == 2


@pytest.mark.parametrize("source, seqs, message", [
    (5, None, "source must be a string"),
    ("x" * 300, None, "at most 256"),
    ("s", [1], "got 1 source_seqs for 2 events"),
    ("s", [1, -2], "non-negative"),
    ("s", [1, "2"], "non-negative ints .*got '2'"),
    ("s", [True, 2], "got True"),
])
def test_bad_source_numbering_is_refused_before_anything_is_written(
        tmp_path: Path, source: object, seqs: object, message: str) -> None:
    with open_store(tmp_path) as store, pytest.raises(StorageError, match=message):
        store.write(events(2), source, seqs)  # type: ignore[arg-type]
    assert all_records(tmp_path) == []


def test_submitting_to_a_closed_store_fails_the_future(tmp_path: Path) -> None:
    store = Store(StorageSettings(tmp_path))
    with pytest.raises(StoreClosedError, match="call Store.open"):
        store.write(events(1))
    store.open()
    store.close()
    with pytest.raises(StoreClosedError):
        store.write(events(1))


def test_close_drains_what_was_submitted(tmp_path: Path) -> None:
    store = Store(StorageSettings(tmp_path))
    store.open()
    futures = [store.submit(events(5)) for _ in range(10)]
    store.close()
    assert all(len(f.result(0).written) == 5 for f in futures)


def test_one_data_directory_has_one_store(tmp_path: Path) -> None:
    with open_store(tmp_path):
        with pytest.raises(DataDirInUseError, match="in use by another process"):
            Store(StorageSettings(tmp_path)).open()
        with pytest.raises(DataDirInUseError):
            reindex(tmp_path)


def test_directories_are_0750_and_files_0640(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with open_store(data) as store:
        store.write(events(1))
    for d in (data, data / "segments", data / "quarantine"):
        assert d.stat().st_mode & 0o777 == 0o750
    for f in [*segment_files(data), data / "index.sqlite"]:
        assert f.stat().st_mode & 0o777 == 0o640


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="max_segment_bytes"):
        StorageSettings(Path("x"), max_segment_bytes=10)
    with pytest.raises(ValueError, match="retention_days"):
        StorageSettings(Path("x"), retention_days=0)
    with pytest.raises(ValueError, match="retention_days"):
        StorageSettings(Path("x"), retention_days=float("nan"))
    with pytest.raises(ValueError, match="write_stall_timeout"):
        StorageSettings(Path("x"), write_stall_timeout=0)


# -- disk errors ----------------------------------------------------------------------------
def test_a_full_disk_fails_the_write_leaves_nothing_partial_and_the_store_recovers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_store(tmp_path) as store:
        store.write(events(2))
        segment = segment_files(tmp_path)[-1]
        before = segment.read_bytes()
        real_pwrite = os.pwrite

        def full(fd: int, data: bytes, offset: int) -> int:
            real_pwrite(fd, bytes(data)[:50], offset)  # part of it lands, then ENOSPC
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "pwrite", full)
        with pytest.raises(StorageError, match="No space left on device.*retry"):
            store.write(events(3))
        assert segment.read_bytes() == before
        assert "No space" in str(store.stats()["last_error"])
        monkeypatch.undo()  # space returns
        assert len(store.write(events(3)).written) == 3
        stats = store.stats()
        # Counted, and no longer said as what fails now: it stayed in last_error for
        # good, hiding a later failure (the indexer's) behind it.
        assert stats["write_errors"] == 1 and stats["last_error"] is None
    assert [r["seq"] for r in all_records(tmp_path)] == [1, 2, 3, 4, 5]


def test_a_failed_fsync_cuts_the_records_back_out(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with open_store(tmp_path) as store:
        store.write(events(1))

        def broken(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", broken)
        with pytest.raises(StorageError, match="Input/output error"):
            store.write(events(2))
        monkeypatch.undo()
        assert len(all_records(tmp_path)) == 1
        ids = store.write(events(2)).written
    assert stored_ids(tmp_path)[-2:] == ids and len(all_records(tmp_path)) == 3


# -- rotation -------------------------------------------------------------------------------
def test_segments_rotate_by_size_and_each_header_links_the_previous_one(tmp_path: Path) -> None:
    with open_store(tmp_path, max_segment_bytes=4096) as store:
        for _ in range(10):
            store.write(events(4))
    files = segment_files(tmp_path)
    assert len(files) >= 4
    headers = [orjson.loads(f.read_bytes().splitlines()[0])["segment"] for f in files]
    assert headers[0]["previous"] == ""
    assert [h["previous"] for h in headers[1:]] == [h["id"] for h in headers[:-1]]
    assert [h["seq"] for h in headers] == list(range(1, len(files) + 1))
    assert all(f.stat().st_size <= 4096 for f in files)
    assert [r["seq"] for r in all_records(tmp_path)] == list(range(1, 41))


def test_a_rotation_whose_directory_sync_fails_leaves_no_second_segment_of_its_seq(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of files with one to spare, the next segment is made and renamed into place,
    and only the directory's fsync fails (it needs a second file): the rotation fails,
    the store goes on appending to the active segment. The new file stayed: each
    attempt left one more segment of the next seq (named for its second), and readers
    took the first of them, a header only, for that seq: the events of the one that
    finally rotated were not found, after a restart either."""
    def out_of_files(directory: Path) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    written: list[str] = []
    with open_store(tmp_path, max_segment_bytes=4096) as store:
        written += store.write(events(4)).written
        monkeypatch.setattr(segments, "fsync_dir", out_of_files)
        for _ in range(5):  # past 4096 bytes: a rotation is due, and fails
            written += store.write(events(4)).written
        assert len(segment_files(tmp_path)) == 1, "a failed rotation left its segment"
        monkeypatch.undo()
        for _ in range(5):
            written += store.write(events(4)).written
    files = segment_files(tmp_path)
    seqs = [orjson.loads(f.read_bytes().splitlines()[0])["segment"]["seq"] for f in files]
    assert seqs == list(range(1, len(files) + 1))
    assert stored_ids(tmp_path) == written


def test_a_submission_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    with open_store(tmp_path, max_segment_bytes=2048) as store:
        store.write(events(2))
        store.write(events(30))  # ~12 KB
        store.write(events(1))
    sizes = [len(record_lines(f)) for f in segment_files(tmp_path)]
    assert sizes == [2, 30, 1]


def test_an_idle_active_segment_rotates_by_age(tmp_path: Path) -> None:
    with open_store(tmp_path, max_segment_age=0.3) as store:
        store.write(events(2))
        # The new file appears a moment before the store switches to it: wait for both.
        wait_until(lambda: len(segment_files(tmp_path)) == 2
                   and store.stats()["active_segment"]["records"] == 0)
        assert store.stats()["active_segment"]["name"] == segment_files(tmp_path)[1].name
        store.write(events(1))
    files = segment_files(tmp_path)
    assert [len(record_lines(f)) for f in files[:2]] == [2, 1]


def test_a_sealed_segment_never_changes(tmp_path: Path) -> None:
    with open_store(tmp_path, max_segment_bytes=4096) as store:
        store.write(events(8))
        store.write(events(8))
        sealed = segment_files(tmp_path)[0]
        before = sealed.read_bytes()
        for _ in range(5):
            store.write(events(8))
    assert sealed.read_bytes() == before


# -- start-up repair ------------------------------------------------------------------------
def test_a_torn_last_line_is_quarantined_and_counted_and_complete_records_kept(
        tmp_path: Path) -> None:
    batch = events(5)
    with open_store(tmp_path) as store:
        store.write(batch)
    segment = segment_files(tmp_path)[-1]
    data = segment.read_bytes()
    segment.write_bytes(data[:-40])  # killed while writing the last record
    with open_store(tmp_path) as store:
        stats = store.stats()
        assert stats["quarantined"] == 1 and stats["quarantined_bytes"] > 0
        assert stored_ids(tmp_path) == [e["id"] for e in batch[:4]]
        assert store.write(batch).written == [batch[4]["id"]]  # the shipper resends
    quarantined = list((tmp_path / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].name.startswith(segment.name)


def test_stats_survive_a_quarantined_file_deleted_between_listing_and_stat(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator clearing quarantine/ while the collector writes its stats file: the
    file listed and gone before its stat is left out, not a crash of the stats dump."""
    with open_store(tmp_path) as store:
        store.write(events(2))
        quarantine = tmp_path / "quarantine"
        kept = quarantine / "kept.torn"
        kept.write_bytes(b"y" * 10)
        gone = quarantine / "gone.torn"
        real_iterdir = Path.iterdir

        def iterdir(self: Path) -> Iterator[Path]:
            if self != quarantine:
                return real_iterdir(self)
            gone.write_bytes(b"x" * 100)
            found = list(real_iterdir(self))
            gone.unlink()  # deleted right after the listing
            return iter(found)

        monkeypatch.setattr(Path, "iterdir", iterdir)
        stats = store.stats()
    assert stats["quarantined"] == 1 and stats["quarantined_bytes"] == 10


def test_open_reports_what_it_repaired(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.write(events(3))
    segment = segment_files(tmp_path)[-1]
    segment.write_bytes(segment.read_bytes()[:-10])
    store = Store(StorageSettings(tmp_path))
    report = store.open()
    store.close()
    assert len(report.quarantined) == 1 and report.quarantined[0].segment == segment.name


def test_a_deleted_index_is_rebuilt_at_open(tmp_path: Path) -> None:
    with open_store(tmp_path, max_segment_bytes=4096) as store:
        for _ in range(5):
            store.write(events(5), "s", None)
    expected = stored_ids(tmp_path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / 'index.sqlite'}{suffix}").unlink(missing_ok=True)
    store = Store(StorageSettings(tmp_path))
    report = store.open()
    store.close()
    assert report.indexed == 25
    assert stored_ids(tmp_path) == expected


def test_an_index_missing_rows_is_rebuilt_at_open(tmp_path: Path) -> None:
    import sqlite3

    with open_store(tmp_path) as store:
        store.write(events(10))
    expected = stored_ids(tmp_path)
    con = sqlite3.connect(tmp_path / "index.sqlite")
    con.execute("DELETE FROM events WHERE seq IN (3, 4)")
    con.commit()
    con.close()
    store = Store(StorageSettings(tmp_path))
    report = store.open()
    store.close()
    assert report.index_rebuilt is not None and "rows" in report.index_rebuilt
    assert stored_ids(tmp_path) == expected


def test_an_index_missing_postings_is_rebuilt_at_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Postings deleted from an indexed chunk would drop its rows from every query
    walking them, silently: start-up counts them against the indexed rows."""
    import sqlite3

    from collector.query import Filters, iter_records

    monkeypatch.setattr("collector.storage.group_commit.CHUNK_ROWS", 5)
    with open_store(tmp_path) as store:
        store.write(events(12))
    expected = stored_ids(tmp_path)
    con = sqlite3.connect(tmp_path / "index.sqlite")
    assert con.execute("SELECT count(*) FROM chunks WHERE state=2").fetchone()[0] == 1
    con.execute("DELETE FROM ix_principal WHERE seq IN (2, 3)")
    con.commit()
    con.close()
    store = Store(StorageSettings(tmp_path))
    report = store.open()
    try:
        assert report.index_rebuilt is not None and "postings" in report.index_rebuilt
        found = [r["id"] for r in iter_records(store, Filters(principal="user-1"))]
    finally:
        store.close()
    assert sorted(found) == sorted(expected)


def damage_segments_schema(data_dir: Path, column: str) -> None:
    """Rename ``column`` of the index's segments table under SQLite: the file opens, but
    reading or writing the segment catalog fails, as with a damaged schema page."""
    import sqlite3

    con = sqlite3.connect(data_dir / "index.sqlite")
    con.execute("PRAGMA writable_schema=ON")
    con.execute("UPDATE sqlite_schema SET sql=replace(sql, ?, ?) WHERE name='segments'",
                (column, column + "_damaged"))
    con.commit()
    con.close()


def test_an_index_damaged_where_start_up_reads_it_is_started_afresh(tmp_path: Path) -> None:
    """The segment catalog cannot be read: the index is built anew from the segments,
    never repaired on top of a catalog read as empty."""
    with open_store(tmp_path, max_segment_bytes=4096) as store:
        for _ in range(4):
            store.write(events(5), "s", None)
    expected = stored_ids(tmp_path)
    damage_segments_schema(tmp_path, "end_offset")
    store = Store(StorageSettings(tmp_path))
    report = store.open()
    store.close()
    assert report.index_rebuilt is not None and "damaged" in report.index_rebuilt
    assert report.indexed == 20
    assert stored_ids(tmp_path) == expected


def test_only_damage_starts_an_index_afresh_never_a_busy_or_full_database(
        tmp_path: Path) -> None:
    import sqlite3

    from collector.storage.recovery import is_damage

    def error(con: sqlite3.Connection, sql: str) -> sqlite3.DatabaseError:
        with pytest.raises(sqlite3.DatabaseError) as caught:
            con.execute(sql)
        return caught.value

    path = tmp_path / "x.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t(a)")
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    assert not is_damage(error(other, "INSERT INTO t VALUES(1)"))  # busy: wait, not rebuild
    holder.execute("ROLLBACK")
    assert is_damage(error(other, "SELECT b FROM t"))  # a schema that does not match
    (tmp_path / "garbage.sqlite").write_bytes(b"x" * 4096)
    assert is_damage(error(sqlite3.connect(tmp_path / "garbage.sqlite"),
                           "SELECT 1 FROM sqlite_schema"))  # not a database
    holder.close()
    other.close()


def test_reindex_starts_afresh_from_an_index_damaged_where_it_reads(tmp_path: Path) -> None:
    with open_store(tmp_path, max_segment_bytes=4096) as store:
        store.write(events(7), "s", None)
    expected = stored_ids(tmp_path)
    damage_segments_schema(tmp_path, "last_seq")
    report = reindex(tmp_path)
    assert report.index_rebuilt is not None and "damaged" in report.index_rebuilt
    assert stored_ids(tmp_path) == expected


def test_records_fsynced_but_not_yet_indexed_are_indexed_at_open(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.write(events(2))
    # A crash between the segment's fsync and the index commit leaves this state:
    extra = events(3)
    segment = segment_files(tmp_path)[-1]
    with open(segment, "ab") as f:
        f.writelines(orjson.dumps({**e, "seq": seq, "source": "", "source_seq": 0}) + b"\n" for seq, e in enumerate(extra, start=3))
    with open_store(tmp_path) as store:
        assert store.write(extra).duplicates == [e["id"] for e in extra]
        assert store.write(events(1)).written  # numbering continues after them
    assert [r["seq"] for r in all_records(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_a_store_killed_while_writing_loses_no_acknowledged_event(tmp_path: Path) -> None:
    script = f"""
import sys
sys.path.insert(0, {str(Path.cwd())!r})
from pathlib import Path
from collector.store import Store, StorageSettings
from tests.collector.storage_helpers import events
store = Store(StorageSettings(Path({str(tmp_path)!r}), max_segment_bytes=64 * 1024))
store.open()
while True:
    for event_id in store.write(events(50)).written:
        print(event_id, flush=True)
"""
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    acknowledged = [writer.stdout.readline().strip() for _ in range(3000)]
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    acknowledged += [line.strip() for line in writer.stdout if line.strip()]
    with open_store(tmp_path) as store:
        assert not store.write([]).written
    assert set(acknowledged) <= set(stored_ids(tmp_path))


# -- retention and compression --------------------------------------------------------------
# Retention runs on the store's commit thread: these tests wait on the store's own view
# (no listing of a directory a file may leave between the listing and its stat), then
# close the store, which finishes a deletion under way, and check the files and the
# index once nothing changes them any more.
def sealed_bytes(store: Store) -> int:
    stats = store.stats()
    return int(stats["segments"]["bytes"] - stats["active_segment"]["bytes"])


def test_retention_deletes_sealed_segments_older_than_retention_days(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="collector.store"), \
            open_store(tmp_path, max_segment_bytes=4096, retention_days=2 / 86_400) as store:
        for _ in range(6):
            store.write(events(6))
        kept = store.write(events(2)).written
        wait_until(lambda: store.stats()["segments"]["sealed"] == 0
                   and store.stats()["retention_deleted"] >= 2)
    assert len(segment_files(tmp_path)) == 1  # only the active one
    # Said in the log, not only counted (an operator found deletions in a counter).
    assert any(r.message.startswith("retention: deleted") for r in caplog.records)
    active = [r["id"] for r in all_records(tmp_path)]
    assert stored_ids(tmp_path) == active and set(kept) <= set(active)


def test_retention_forgets_the_sources_whose_records_it_deleted(tmp_path: Path) -> None:
    """Every app process is a source: kept forever, they would pile up by the thousand.
    A source whose records retention deleted goes with them, across a restart too; a
    source with a record kept stays, and so does one whose last_seen is unknown."""
    with open_store(tmp_path, max_segment_bytes=4096) as store:
        store.write(events(3), "src-unknown-age", [1, 2, 3])
    con = sqlite3.connect(tmp_path / "index.sqlite")  # as an index from before last_seen
    con.execute("DELETE FROM source_seen WHERE source='src-unknown-age'")
    con.commit()
    con.close()
    with open_store(tmp_path, max_segment_bytes=4096, retention_days=4 / 86_400) as store:
        store.submit_encoded(encode_events(events(6)), "src-gone", [1, 2, 3, 5, 6, 7],
                             9).result()
        while store.stats()["segments"]["sealed"] < 2:  # src-gone's segment sealed
            store.write(events(6))
        time.sleep(3)  # retention deletes that segment ~1 s from now, and src-gone with it
        store.write(events(2), "src-live", [1, 2])  # in the active segment: kept
        wait_until(lambda: store.stats()["sources_forgotten"] == 1)
        stats = store.stats()
    assert sorted(stats["sources"]) == ["src-live", "src-unknown-age"]
    assert (stats["gap_events"], stats["unreceived_tail_events"]) == (0, 0)
    with open_store(tmp_path) as store:
        assert sorted(store.stats()["sources"]) == ["src-live", "src-unknown-age"]


def test_retention_by_size_forgets_the_sources_whose_records_it_deleted(
        tmp_path: Path) -> None:
    """Forgetting follows the records, not a clock: a source whose last record is in a
    deleted segment has nothing left (a reindex could not bring it back); one with a
    record in a kept segment stays. With an unbounded age (retention_days=inf), too."""
    with open_store(tmp_path, max_segment_bytes=4096, retention_bytes=9000,
                    retention_days=float("inf")) as store:
        store.write(events(6), "src-old", list(range(1, 7)))
        for n in range(8):
            store.write(events(8), "src-busy", list(range(n * 8 + 1, n * 8 + 9)))
        wait_until(lambda: store.stats()["sources_forgotten"] == 1)
        stats = store.stats()
        assert stats["last_error"] is None
    assert sorted(stats["sources"]) == ["src-busy"]
    reindex(tmp_path)
    with open_store(tmp_path) as store:
        assert sorted(store.stats()["sources"]) == ["src-busy"]


def test_index_rows_of_a_deleted_segment_go_without_a_restart_when_the_first_drop_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention deletes the file first, then its index rows. A failed drop (a busy or
    failing index) left the rows until the next start: queries and the count kept
    records that no longer exist. The drop is tried again a moment later."""
    import collector.storage.indexer as indexer_module
    real_drop = indexer_module.drop_segment_rows
    failures: list[int] = []

    def drop_failing_once(con: sqlite3.Connection, segment: int, *args: Any,
                          **kwargs: Any) -> int | None:
        if not failures:
            failures.append(segment)
            raise sqlite3.OperationalError("disk I/O error")
        return real_drop(con, segment, *args, **kwargs)

    monkeypatch.setattr(indexer_module, "drop_segment_rows", drop_failing_once)
    with open_store(tmp_path, max_segment_bytes=4096, retention_bytes=9000) as store:
        written = [store.write(events(8)).written for _ in range(8)]
        wait_until(lambda: failures and sealed_bytes(store) <= 9000)
        on_disk = {r["id"] for r in all_records(tmp_path)}
        wait_until(lambda: store.stats()["segments_dropping"] == 0)
        assert store.stats()["events"] == len(on_disk)
        assert set(stored_ids(tmp_path)) == on_disk
        stats = store.stats()
        assert stats["last_error"] is None  # said while the drop failed, not for good
        assert stats["segments_dropping"] == 0
    assert not set(written[0]) & on_disk


def test_a_clock_stepped_back_does_not_make_retention_forget_live_sources(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention forgot a source last seen before the time its deleted segments ended.
    With the clock stepped back an hour (a VM restored, NTP stepping), every source
    stored after the step looked older than segments deleted later: the live ones were
    forgotten, gaps and all. Sources are forgotten by the segment of their last record."""
    real_time_ns = time.time_ns
    with open_store(tmp_path, max_segment_bytes=4096, retention_bytes=9000,
                    retention_days=float("inf")) as store:
        store.write(events(6), "src-old", list(range(1, 7)))
        for n in range(4):
            store.write(events(8), "src-busy", list(range(n * 8 + 1, n * 8 + 9)))
        monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() - 3600 * 10**9)
        store.write(events(2), "src-live", [1, 3])  # 2 missing: a gap to keep reporting
        for n in range(4, 6):
            store.write(events(8), "src-busy", list(range(n * 8 + 1, n * 8 + 9)))
        wait_until(lambda: store.stats()["sources_forgotten"] >= 1)
        time.sleep(1.2)  # another retention pass: nothing more may go
        stats = store.stats()
    assert stats["retention_deleted"] >= 2
    assert sorted(stats["sources"]) == ["src-busy", "src-live"]
    assert stats["gap_events"] == 1
    with open_store(tmp_path) as store:  # the segments of the last records were kept
        assert sorted(store.stats()["sources"]) == ["src-busy", "src-live"]


def test_retention_by_age_after_a_clock_step_deletes_a_prefix_and_keeps_every_source_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the clock stepped back, a segment sealed after the step looked older than one
    sealed before it: retention by age deleted the newer and kept the older, and
    forgetting sources by the numbers deleted forgot one whose records the older segment
    still held (a diff review; sources now go by whether their segment still exists). A
    segment's age is now the youngest seal time at or after it: retention deletes a
    prefix, and every source with a record still stored is still known."""
    real_time_ns = time.time_ns
    step = [0]
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() - step[0])
    with open_store(tmp_path, max_segment_bytes=4096, retention_days=3 / 86_400) as store:
        store.write(events(2), "src-x", [1, 3])  # segment 1; 2 missing: a gap
        for n in range(3):
            store.write(events(8), "src-busy", list(range(n * 8 + 1, n * 8 + 9)))
        step[0] = 3600 * 10**9  # NTP steps the clock back an hour
        store.write(events(1), "src-x", [4])  # its last record: after the step
        for n in range(3, 6):
            store.write(events(8), "src-busy", list(range(n * 8 + 1, n * 8 + 9)))
        wait_until(lambda: store.stats()["retention_deleted"] >= 1, timeout=15)
        time.sleep(1.5)
        stats = store.stats()
    left = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "segments").iterdir()
                  if p.name.startswith("segment-"))
    assert left == list(range(left[0], left[0] + len(left))), left  # no hole
    assert left[0] > 1  # segment 1, before the step, went too: it is older than the rest
    stored = {r["source"] for r in all_records(tmp_path)}
    assert stored <= set(stats["sources"]), (stored, stats["sources"])


def test_retention_after_a_clock_that_ran_ahead_says_no_future_time_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Segment 1 sealed while the clock ran a year ahead, since set back: it goes with
    the segment after it (a prefix), but the time before which every record is gone
    (the log's "records stored before", and what sources last stored by an older
    version are forgotten by) was its own seal time, a year ahead: every such source
    went, and the log said records not yet stored were gone."""
    real_time_ns = time.time_ns
    step = [0]
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + step[0])
    ahead = 365 * 86_400 * 10**9
    caplog.set_level(logging.INFO, logger="collector.store")
    with open_store(tmp_path, max_segment_bytes=4096, retention_days=3 / 86_400) as store:
        store.write(events(8), "src-busy", list(range(1, 9)))  # segment 1
        step[0] = ahead
        store.write(events(8), "src-busy", list(range(9, 17)))  # segment 2, a year on
        step[0] = 0  # NTP steps it back
        for n in range(2, 5):
            store.write(events(8), "src-busy", list(range(n * 8 + 1, n * 8 + 9)))
        wait_until(lambda: store.stats()["retention_deleted"] >= 2, timeout=15)
    said = [r.getMessage() for r in caplog.records
            if r.getMessage().startswith("retention: deleted")]
    year_ahead = time.gmtime((real_time_ns() + ahead) // 10**9).tm_year
    assert said and not any(str(year_ahead) in m for m in said), said


def test_a_source_last_stored_by_an_older_version_is_forgotten_by_time(
        tmp_path: Path) -> None:
    """An index from before source_segment knows only when each source was last seen:
    retention forgets such a source by that time, as it used to."""
    with open_store(tmp_path, max_segment_bytes=4096) as store:
        store.write(events(6), "src-old", list(range(1, 7)))
    con = sqlite3.connect(tmp_path / "index.sqlite")
    con.execute("DELETE FROM source_segment")
    con.commit()
    con.close()
    with open_store(tmp_path, max_segment_bytes=4096, retention_bytes=9000,
                    retention_days=float("inf")) as store:
        for n in range(8):
            store.write(events(8), "src-busy", list(range(n * 8 + 1, n * 8 + 9)))
        wait_until(lambda: store.stats()["sources_forgotten"] == 1)
        assert sorted(store.stats()["sources"]) == ["src-busy"]


def test_retention_by_size_deletes_the_oldest_segments_first(tmp_path: Path) -> None:
    with open_store(tmp_path, max_segment_bytes=4096, retention_bytes=9000) as store:
        written = [store.write(events(8)).written for _ in range(8)]
        wait_until(lambda: sealed_bytes(store) <= 9000)
    assert sum(f.stat().st_size for f in segment_files(tmp_path)[:-1]) <= 9000
    remaining = set(stored_ids(tmp_path))
    assert not set(written[0]) & remaining  # the oldest went first
    assert set(written[-1]) <= remaining


def test_compressed_segments_stay_readable_and_queryable(tmp_path: Path) -> None:
    with open_store(tmp_path, max_segment_bytes=4096, compress_sealed=True) as store:
        written = [i for _ in range(6) for i in store.write(events(8, principal="p-7")).written]
        wait_until(lambda: len([f for f in segment_files(tmp_path) if f.suffix == ".gz"]) >= 3)
        assert stored_ids(tmp_path, principal="p-7") == written
        assert store.stats()["segments"]["compressed"] >= 3
    import gzip

    packed = [f for f in segment_files(tmp_path) if f.suffix == ".gz"]
    assert all(gzip.decompress(f.read_bytes()).startswith(b'{"segment":') for f in packed)
    assert not [f for f in segment_files(tmp_path)
                if f.with_name(f.name + ".gz").exists()]  # no plain copy left behind
    reindex(tmp_path)
    assert stored_ids(tmp_path, principal="p-7") == written


# -- per-source gaps ------------------------------------------------------------------------
def test_gaps_in_a_sources_numbering_are_reported_across_a_restart(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.write(events(500), "src-a", list(range(1, 501)))
    with open_store(tmp_path) as store:
        before = time.time_ns()
        store.write(events(498), "src-a", list(range(503, 1001)))
        report = store.stats()["sources"]["src-a"]
        assert report.pop("last_seen") >= format_created(before)  # when it was stored
        assert report == {
            "received": 998, "ranges": [[1, 500], [503, 1000]], "gaps": [[501, 502]],
            "folded_gap_events": 0, "numbered": 0, "unreceived_tail": [],
            "acknowledged_through": 0}


def test_how_far_a_source_numbered_is_kept_across_a_restart_and_a_reindex(
        tmp_path: Path) -> None:
    """The last events of a source that stops (a killed app's queue) show as its
    unreceived tail; the number cannot be rebuilt from the segments, so reindex keeps it."""
    with open_store(tmp_path) as store:
        store.submit_encoded(encode_events(events(3)), "src-n", [1, 2, 3], 9).result()
        store.submit_encoded(encode_events(events(2)), "src-n", [4, 5], 7).result()  # older
    with open_store(tmp_path) as store:
        report = store.stats()["sources"]["src-n"]
        seen = report.pop("last_seen")
        assert report == {"received": 5, "ranges": [[1, 5]], "gaps": [],
                          "folded_gap_events": 0, "numbered": 9,
                          "unreceived_tail": [6, 9], "acknowledged_through": 0}
    reindex(tmp_path)
    with open_store(tmp_path) as store:
        report = store.stats()["sources"]["src-n"]
        assert (report["unreceived_tail"], report["last_seen"]) == ([6, 9], seen)
        for bad in (2**64, -1, "9", 1.5, True):  # refused up front, never in the commit
            with pytest.raises(StorageError, match="numbered must be an int"):
                store.submit_encoded(encode_events(events(1)), "src-n", [10], bad).result()
        assert store.stats()["sources"]["src-n"]["numbered"] == 9


def test_totals_of_unreceived_numbers_stay_within_what_metrics_can_carry(
        tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        for source in ("a", "b"):  # two tails of ~2**63 each: the sum would pass int64
            store.submit_encoded(encode_events(events(1)), source, [1], 2**63 - 1).result()
        stats = store.stats()
    assert stats["unreceived_tail_events"] == 2**63 - 1
    assert stats["sources"]["a"]["unreceived_tail"] == [2, 2**63 - 1]


def test_a_fragmented_source_is_kept_folded_across_a_restart_and_a_reindex(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source dropping events between every export: what the index keeps for it stays
    within MAX_RANGES ranges (each commit rewrites them), with the same totals after a
    restart and after a rebuild from the segments."""
    monkeypatch.setattr(sources, "MAX_RANGES", 10)
    with open_store(tmp_path) as store:
        for export in range(30):  # 6 numbers stored, then 4 dropped, 30 times
            store.write(events(6), "src-f", list(range(export * 10 + 1, export * 10 + 7)))
        first = store.stats()
    expected = {"received": 180, "folded_gap_events": 20 * 4, "gaps": 9 * 4}
    reports = []
    with open_store(tmp_path) as store:
        reports.append(store.stats())
    reindex(tmp_path)
    with open_store(tmp_path) as store:
        reports.append(store.stats())
    for stats in (first, *reports):
        report = stats["sources"]["src-f"]
        assert len(report["ranges"]) == 10 and report["ranges"][0] == [1, 206, 80]
        assert {"received": report["received"], "folded_gap_events":
                report["folded_gap_events"], "gaps": sources.count(report["gaps"])} == expected
        assert stats["gap_events"] == 80 + 36
        assert (stats["sources_total"], stats["sources_omitted"]) == (1, 0)
    con = sqlite3.connect(tmp_path / "index.sqlite")
    (stored,) = con.execute("SELECT ranges FROM sources WHERE source='src-f'").fetchone()
    con.close()
    assert orjson.loads(stored) == reports[-1]["sources"]["src-f"]["ranges"]


def test_gaps_are_rebuilt_from_the_segments_by_reindex(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.write(events(3), "src-b", [1, 2, 5])
        store.write(events(1))  # unnumbered: no source, no range
    reindex(tmp_path)
    with open_store(tmp_path) as store:
        report = store.stats()["sources"]["src-b"]
        assert report.pop("last_seen") is not None  # kept by the rebuild
        assert report == {"received": 3, "ranges": [[1, 2], [5, 5]], "gaps": [[3, 4]],
                          "folded_gap_events": 0, "numbered": 0, "unreceived_tail": [],
            "acknowledged_through": 0}


def test_stats_report_segments_rates_and_fsyncs(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.write(events(10))
        stats = store.stats()
    assert stats["events"] == 10 and stats["written"] == 10
    assert stats["segments"]["count"] == 1 and stats["segments"]["bytes"] > 0
    assert stats["active_segment"]["records"] == 10
    assert stats["fsyncs"] == 1 and stats["events_per_fsync"] == 10.0
    assert stats["ingest_rate"] > 0 and stats["pending"] == 0


def test_the_sequence_continues_after_retention_and_a_lost_index(tmp_path: Path) -> None:
    # Retention keeps the newest record even at a zero size cap while the active
    # segment is still empty: it is where the numbering continues from.
    with open_store(tmp_path, max_segment_age=0.3, retention_bytes=0) as store:
        store.write(events(3))
        wait_until(lambda: store.stats()["segments"]["count"] == 2)
        assert store.stats()["retention_deleted"] == 0
    (tmp_path / "index.sqlite").unlink()
    with open_store(tmp_path) as store:
        store.write(events(1))
    assert [r["seq"] for r in all_records(tmp_path)][-1] == 4


def test_a_damaged_segment_stops_open_with_a_clear_error_and_releases_the_directory(
        tmp_path: Path) -> None:
    with open_store(tmp_path, max_segment_bytes=4096) as store:
        for _ in range(3):
            store.write(events(8))
    first = segment_files(tmp_path)[0]
    first.write_bytes(b"not a header\n" + first.read_bytes().split(b"\n", 1)[1])
    (tmp_path / "index.sqlite").unlink()
    for _ in range(2):  # the second attempt is not refused as "in use"
        with pytest.raises(StorageError, match="segment header.*move it out"):
            Store(StorageSettings(tmp_path)).open()


def test_stats_need_an_open_store(tmp_path: Path) -> None:
    with pytest.raises(StoreClosedError, match="open the store first"):
        Store(StorageSettings(tmp_path)).stats()


def test_a_resend_beside_its_original_is_not_acknowledged_before_the_original_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An original and its resend (a shipper that gave up waiting) land in one group
    commit; the original's write fails (disk full). The resend was answered "duplicate"
    at once, before the original was written: acknowledged, so dropped by its app, while
    no copy was stored (found by a storage review helper). Both must fail."""
    import errno
    import threading

    from collector.storage import segments

    real_append = segments.ActiveSegment.append
    calls, gate = {"n": 0}, threading.Event()

    def append(self: segments.ActiveSegment, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 1:  # hold the commit thread so that the next two group up
            gate.wait(5)
        elif calls["n"] == 2:  # the group of the original and its resend: disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(self, data)

    monkeypatch.setattr(segments.ActiveSegment, "append", append)
    x = event()
    with open_store(tmp_path) as store:
        blocker = store.submit(events(1))
        time.sleep(0.3)  # the commit thread is inside the blocker's append
        original = store.submit([x], source="app", source_seqs=[7])
        resend = store.submit([x], source="app", source_seqs=[7])
        gate.set()
        blocker.result(10)
        with pytest.raises(StorageError):
            original.result(10)
        with pytest.raises(StorageError):
            resend.result(10)  # not "duplicate": nothing of x is stored
        monkeypatch.undo()
        again = store.submit([x], source="app", source_seqs=[7]).result(10)
        assert again.written == [x["id"]]


def test_retention_by_size_counts_a_segment_being_compressed_at_what_it_will_take(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A just-sealed segment waits a moment for its compressed copy; counted at its plain
    size meanwhile, retention by size deleted segments the cap had room for (kept 6 of
    10 where 9 fit; found by a storage review helper). Counted at a guess of its
    compressed size (a quarter of its plain size before the first compression
    finished), it still did: a retention pass that ran before the first compressed copy
    came (a loaded machine: the writes outran the compressor) deleted 5 of 11 segments
    where 8 fit, for good (kept 6). Here no copy comes until the writes are done and
    retention has passed twice."""
    from collector.storage import segment_set

    passes = {"n": 0}
    real_retention = segment_set.SegmentSet.apply_retention

    def counted_retention(self: segment_set.SegmentSet) -> segment_set.RetentionPass:
        done = real_retention(self)
        passes["n"] += 1
        return done

    def two_more_passes() -> None:
        start = passes["n"]
        wait_until(lambda: passes["n"] >= start + 2, 30)

    compressing = Hold(monkeypatch, segment_set, "compress")
    monkeypatch.setattr(segment_set.SegmentSet, "apply_retention", counted_retention)
    cap = 24 * 1024
    try:
        with open_store(tmp_path, max_segment_bytes=16 * 1024, compress_sealed=True,
                        retention_bytes=cap) as store:
            for _ in range(12):
                store.write(events(36))  # ~16 KiB: a rotation each
            two_more_passes()  # with 11 segments waiting for their copies
            compressing.release()
            wait_until(lambda: store.stats()["segments"]["compressed"]
                       == store.stats()["segments"]["sealed"], 30)
            two_more_passes()  # after the last copy
            segments = store.stats()["segments"]
            kept = sorted((tmp_path / "segments").glob("*.jsonl.gz"))
            sizes = [p.stat().st_size for p in kept]
    finally:
        compressing.release()  # a failed wait must not leave the compressor held at close
    assert sum(sizes) <= cap
    # as many as fit under the cap, give or take one
    assert segments["sealed"] >= cap // max(sizes) - 1, (segments, sizes)


def test_a_failed_compression_is_tried_again_without_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compressions that failed on a full disk stayed plain until the next start
    (8 of 12 segments after space came back, from a crash-safety review), counted at
    their plain size by retention, and nothing said why in stats; then said, it stayed
    in the stats for good, long after the retry had compressed every segment."""
    import errno

    from collector.storage import segment_set

    real_compress = segment_set.compress
    full = {"on": True}

    def compress(*args: Any, **kwargs: Any) -> Any:
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_compress(*args, **kwargs)

    monkeypatch.setattr(segment_set, "compress", compress)
    monkeypatch.setattr(segment_set, "COMPRESSION_RETRY", 0.2)
    with open_store(tmp_path, max_segment_bytes=4096, compress_sealed=True) as store:
        for _ in range(4):
            store.write(events(12))
        wait_until(lambda: "No space left" in str(store.stats()["last_error"]))
        assert store.stats()["segments"]["compressed"] == 0
        full["on"] = False
        # Not tried while the file system has no room for the copy: its appends would
        # fail beside it.
        free = {"bytes": 0}
        monkeypatch.setattr(segment_set, "free_bytes", lambda _: free["bytes"])
        time.sleep(1)
        assert store.stats()["segments"]["compressed"] == 0
        free["bytes"] = 1 << 40
        wait_until(lambda: store.stats()["segments"]["compressed"]
                   == store.stats()["segments"]["sealed"] >= 3)
        assert store.stats()["last_error"] is None


def test_a_rotation_that_failed_leaves_the_stats_once_one_succeeds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotation that failed (records kept going to the old segment) stayed the stats'
    last_error for good, after the next rotation had gone through."""
    from collector.storage.segment_set import ActiveSegment

    real_create = ActiveSegment.create
    failing = {"on": True}

    def create(*args: Any, **kwargs: Any) -> ActiveSegment:
        if failing["on"]:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_create(*args, **kwargs)

    with open_store(tmp_path, max_segment_bytes=4096) as store:
        monkeypatch.setattr(ActiveSegment, "create", create)
        for _ in range(3):
            store.write(events(12))
        assert store.stats()["segments"]["sealed"] == 0
        assert "Too many open files" in str(store.stats()["last_error"])
        failing["on"] = False
        store.write(events(12))
        stats = store.stats()
    assert stats["segments"]["sealed"] == 1
    assert stats["last_error"] is None


def housekeeping_passes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The commit thread's housekeeping passes that went through, as they end."""
    passes: list[bool] = []
    real = Store._housekeeping

    def counted(self: Store, idle: bool) -> None:
        real(self, idle)
        passes.append(idle)

    monkeypatch.setattr(Store, "_housekeeping", counted)
    return passes


def test_a_commit_that_raised_stays_in_the_stats_until_a_commit_succeeds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A group's commit that raised (here the index refusing its duplicate lookup) was
    the stats' last_error only until the next housekeeping pass went through, half a
    second later: every batch still failed, and the stats said nothing did."""
    from collector.index import Index

    real_known_ids = Index.known_ids
    failing = {"on": True}

    def known_ids(self: Index, keys: list[bytes | str]) -> set[bytes | str]:
        if failing["on"]:
            raise sqlite3.OperationalError("disk I/O error")
        return real_known_ids(self, keys)

    passes = housekeeping_passes(monkeypatch)
    with open_store(tmp_path) as store:
        monkeypatch.setattr(Index, "known_ids", known_ids)
        with pytest.raises(StorageError, match="disk I/O error"):
            store.write(events(1))
        after = len(passes)
        wait_until(lambda: len(passes) >= after + 2)  # housekeeping goes on meanwhile
        assert "disk I/O error" in str(store.stats()["last_error"])
        failing["on"] = False
        assert store.write(events(1)).written
        assert store.stats()["last_error"] is None


def test_a_compressed_copy_the_index_refused_is_tried_again_and_said_until_then(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compressed copy whose swap-in failed (the index refusing its block map on a
    full disk) was never tried again: the segment stayed plain until the next start,
    counted at its plain size by retention, and the failure, the commit thread's
    last_error, went from the stats at the next housekeeping pass."""
    from collector.index import Index
    from collector.storage import segment_set

    real_mark = Index.mark_compressed
    full = {"on": True}
    refused: list[int] = []

    def mark_compressed(self: Index, segment: int, blocks: Any) -> None:
        if full["on"]:
            refused.append(segment)
            exc = sqlite3.OperationalError("database or disk is full")
            exc.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
            raise exc
        real_mark(self, segment, blocks)

    monkeypatch.setattr(segment_set, "COMPRESSION_RETRY", 0.2)
    passes = housekeeping_passes(monkeypatch)
    with open_store(tmp_path, max_segment_bytes=4096, compress_sealed=True) as store:
        monkeypatch.setattr(Index, "mark_compressed", mark_compressed)
        for _ in range(4):
            store.write(events(12))
        sealed = store.stats()["segments"]["sealed"]
        assert sealed >= 3
        wait_until(lambda: set(refused) >= set(range(1, sealed + 1)))
        after = len(passes)
        wait_until(lambda: len(passes) >= after + 2)
        assert "disk is full" in str(store.stats()["last_error"])
        assert store.stats()["segments"]["compressed"] == 0
        full["on"] = False
        wait_until(lambda: store.stats()["segments"]["compressed"] == sealed)
        assert store.stats()["last_error"] is None
    assert not list((tmp_path / "segments").glob("*.tmp"))


def test_a_failed_write_that_could_not_be_cut_back_is_cut_before_a_rotation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write fails half way (disk full) and cutting it back fails too (EIO); then the
    segment rotates by age. It was sealed with the failed bytes in it: verify called it
    written to after sealing, and a restart indexed the never-acknowledged records
    (found by a storage review helper)."""
    from collector.integrity.verify import verify
    from collector.storage import segments

    real_pwrite_all, real_ftruncate = segments._pwrite_all, os.ftruncate
    fault = {"write": False, "cut": False}

    def pwrite_all(fd: int, data: bytes, offset: int) -> None:
        if fault["write"]:
            fault["write"] = False
            os.pwrite(fd, data[: len(data) * 2 // 3], offset)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_pwrite_all(fd, data, offset)

    def ftruncate(fd: int, size: int) -> None:
        if fault["cut"]:
            fault["cut"] = False
            raise OSError(errno.EIO, "Input/output error")
        real_ftruncate(fd, size)

    monkeypatch.setattr(segments, "_pwrite_all", pwrite_all)
    monkeypatch.setattr(os, "ftruncate", ftruncate)
    failed = events(2)
    with open_store(tmp_path, max_segment_bytes=4096, max_segment_age=1) as store:
        store.write(events(6))
        fault.update(write=True, cut=True)
        with pytest.raises(StorageError):
            store.write(failed)
        time.sleep(1.3)  # the age rotation comes before the next write
        assert store.write(failed).written == [e["id"] for e in failed]  # the retry
        for _ in range(4):
            store.write(events(4))
    monkeypatch.undo()
    with open_store(tmp_path):  # a restart indexes what the segments hold
        pass
    lines = [line for path in segment_files(tmp_path) for line in record_lines(path)]
    assert all(line.endswith(b"}\n") for line in lines), "a torn line was sealed in"
    records = [orjson.loads(line) for line in lines]
    ids = [r["id"] for r in records]
    assert sorted(ids) == sorted(set(ids)), "a record stored twice"
    assert len([r for r in records if r["id"] in {e["id"] for e in failed}]) == 2
    assert verify(tmp_path).valid


@pytest.mark.parametrize("failing", ["seal", "sync"])
def test_a_rotation_whose_fsync_fails_is_whole_or_not_at_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    """The old segment's fsync failed after the store had switched to the new one: the
    ledger kept following the old segment while records went to the new, and verify
    called both tampered for good (found by a storage review helper)."""
    from collector.integrity.verify import verify
    from collector.storage import segment_set, segments

    state = {"armed": False}
    if failing == "seal":
        real_seal = segment_set.seal

        def flaky_seal(segment: segments.ActiveSegment) -> Path:
            if state["armed"]:
                state["armed"] = False
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_seal(segment)

        monkeypatch.setattr(segment_set, "seal", flaky_seal)
    else:
        real_sync = segments.ActiveSegment.sync

        def flaky_sync(self: segments.ActiveSegment) -> None:
            if state["armed"]:
                state["armed"] = False
                raise OSError(errno.EIO, "Input/output error")
            real_sync(self)

        monkeypatch.setattr(segments.ActiveSegment, "sync", flaky_sync)
    with open_store(tmp_path, max_segment_bytes=2048) as store:
        store.write(events(3))
        state["armed"] = True
        for _ in range(6):
            try:
                store.write(events(3))
            except StorageError:
                pass  # a failed group's write: its app sends it again
    monkeypatch.undo()
    report = verify(tmp_path)
    assert report.valid, [(r.path, r.reasons) for r in report.invalid]


def test_a_compressor_that_falls_behind_does_not_let_the_disk_outgrow_the_cap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments rotating faster than they compress: waiting for the compressor put size
    retention off for good (1.3 MB on disk for a 64 KiB cap; a review helper). A segment
    is left out of the count for COMPRESSION_STALL at most, then counts at its plain
    size."""
    from collector.storage import segment_set

    real_compress = segment_set.compress

    def slow_compress(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)
        return real_compress(*args, **kwargs)

    monkeypatch.setattr(segment_set, "compress", slow_compress)
    monkeypatch.setattr(segment_set, "COMPRESSION_STALL", 1.0)
    cap = 64 * 1024
    with open_store(tmp_path, max_segment_bytes=16 * 1024, compress_sealed=True,
                    retention_bytes=cap) as store:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            store.write(events(36))  # a rotation each, ~10 a second against 2 compressed
        time.sleep(1.5)  # retention passes once the waits are over
        sealed_bytes = sum(p.stat().st_size for p in segment_files(tmp_path)) \
            - store.stats()["active_segment"]["bytes"]
        assert store.stats()["retention_deleted"] > 0
    assert sealed_bytes <= cap + 2 * 16 * 1024, sealed_bytes  # the cap, give or take


def test_a_segment_retention_deleted_before_its_compression_is_no_compression_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A segment still waiting for the compressor when retention deletes it (the
    compressor behind the writes, past COMPRESSION_STALL) was reported as a failed
    compression: a warning saying it would be tried again, and the stats' last_error
    naming it, for each such segment, though nothing failed."""
    from collector.storage import segment_set

    compressing = Hold(monkeypatch, segment_set, "compress")
    monkeypatch.setattr(segment_set, "COMPRESSION_STALL", 0.0)  # counted plain at once
    caplog.set_level(logging.WARNING, logger="collector.store")
    try:
        with open_store(tmp_path, max_segment_bytes=16 * 1024, compress_sealed=True,
                        retention_bytes=32 * 1024) as store:
            for _ in range(6):
                store.write(events(36))  # ~16 KiB: a rotation each
            wait_until(lambda: store.stats()["retention_deleted"] >= 2)
            compressing.release()
            wait_until(lambda: store.stats()["segments"]["compressed"]
                       == store.stats()["segments"]["sealed"])
            last_error = store.stats()["last_error"]
    finally:
        compressing.release()
    failed = [r.getMessage() for r in caplog.records if "compressing" in r.getMessage()]
    assert failed == [], failed
    assert last_error is None, last_error
