"""The index on its own: chunks (append, close, bulk-built postings), the id table
that dedupe asks, zones, and the checks start-up uses to decide on a rebuild."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from collector.index import Index
from collector.storage import indexer as indexer_module
from collector.storage.chunks import (
    CLOSED,
    EVENTS_TABLE,
    INDEXED,
    SECONDARY,
    build_chunk_indexes,
    insert_rows,
    postings,
)
from collector.storage.indexer import ChunkIndexer
from collector.storage.records import Row, encode_events, record_lines
from collector.storage.segments import SegmentHeader
from collector.storage.write_lock import WriteLock
from tests.collector.storage_helpers import event, wait_until


def header(seq: int) -> SegmentHeader:
    return SegmentHeader(f"{seq:032x}", seq, "", 1, "2026-11-26T00:00:00.000000Z")


def rows(first_seq: int, count: int, **fields: object) -> list[Row]:
    encoded = encode_events([event(**fields) for _ in range(count)])
    return record_lines(encoded, first_seq, "", None, 100)[1]


def add(index: Index, segment: int, batch: list[Row]) -> None:
    index.begin()
    index.add_segment(f"segment-{segment:08d}.jsonl", header(segment), 100)
    index.add_rows(segment, batch, batch[-1][-2] + batch[-1][-1])
    index.commit()


@pytest.fixture
def index(tmp_path: Path) -> Index:
    return Index(tmp_path / "index.sqlite")


def postings_of(con: sqlite3.Connection, chunk: int) -> dict[str, int]:
    """Per filter column, the chunk's postings entries."""
    return {column: con.execute(f"SELECT count(*) FROM {postings(column)} WHERE chunk=?",
                                (chunk,)).fetchone()[0] for column in SECONDARY}


def schema_objects(con: sqlite3.Connection) -> int:
    return int(con.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0])


#: A chunk of rows without a status: every column but status has an entry per row.
def full_postings(rows: int) -> dict[str, int]:
    return {column: 0 if column == "status" else rows for column in SECONDARY}


def chunk_state(index: Index, chunk: int) -> int:
    return index.con.execute("SELECT state FROM chunks WHERE chunk=?", (chunk,)).fetchone()[0]


def test_rows_go_to_an_open_chunk_without_secondary_indexes(index: Index) -> None:
    add(index, 1, rows(1, 10))
    add(index, 1, rows(11, 5))
    chunk = index.open_chunk
    assert chunk is not None and (chunk.first_seq, chunk.last_seq, chunk.rows) == (1, 15, 15)
    assert set(postings_of(index.con, chunk.chunk).values()) == {0}
    assert index.count() == 15 and index.max_seq() == 15


def test_a_closed_chunk_gets_postings_for_every_filter_column(index: Index) -> None:
    add(index, 1, rows(1, 10))
    chunk = index.close_chunk()
    assert chunk is not None and chunk_state(index, chunk) == CLOSED
    index.build_indexes(chunk)
    assert postings_of(index.con, chunk) == full_postings(10)
    assert index.con.execute("SELECT v, seq FROM ix_principal WHERE chunk=?",
                             (chunk,)).fetchall() == [("user-1", seq) for seq in range(1, 11)]
    assert chunk_state(index, chunk) == INDEXED
    add(index, 1, rows(11, 1))  # the next rows start a new chunk
    assert index.open_chunk is not None and index.open_chunk.chunk == chunk + 1


def test_rows_of_another_segment_close_the_open_chunk(index: Index) -> None:
    add(index, 1, rows(1, 3))
    first = index.open_chunk
    add(index, 2, rows(4, 3))
    assert first is not None and chunk_state(index, first.chunk) == CLOSED
    assert index.open_chunk is not None and index.open_chunk.segment == 2


def test_the_indexer_thread_builds_closed_chunks(tmp_path: Path) -> None:
    lock = WriteLock()
    index = Index(tmp_path / "index.sqlite", lock)
    indexer = ChunkIndexer(tmp_path / "index.sqlite", lock)
    add(index, 1, rows(1, 50))
    chunk = index.close_chunk()
    assert chunk is not None
    indexer.submit(chunk)
    assert indexer.wait(most=0, timeout=10)
    indexer.close()
    assert chunk_state(index, chunk) == INDEXED
    assert postings_of(index.con, chunk) == full_postings(50)


class _CheckpointRefused:
    """The indexer's connection, whose WAL checkpoint meets a full disk."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def __getattr__(self, name: str) -> object:
        return getattr(self.con, name)

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if "wal_checkpoint" in sql:
            raise sqlite3.OperationalError("database or disk is full")
        return self.con.execute(sql, *args)


def test_a_checkpoint_the_disk_refuses_does_not_end_the_indexer_thread(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint is best effort (the WAL stays, copied later). Raised, one that met a
    full disk at stop ended the indexer thread with a traceback (the disk-full test's
    collector printed it), and one during a build was logged as that chunk failing."""
    lock = WriteLock()
    index = Index(tmp_path / "index.sqlite", lock)
    indexer = ChunkIndexer(tmp_path / "index.sqlite", lock)
    real = indexer._con
    indexer._con = _CheckpointRefused(real)  # type: ignore[assignment]
    indexer.CHECKPOINT_BYTES = 0  # type: ignore[misc]  # a checkpoint after each build
    add(index, 1, rows(1, 50))
    chunk = index.close_chunk()
    assert chunk is not None
    with caplog.at_level("WARNING", "collector.index"):
        indexer.submit(chunk)
        assert indexer.wait(most=0, timeout=10)
        indexer.close()  # a checkpoint at stop, refused too
    real.close()
    assert chunk_state(index, chunk) == INDEXED
    assert indexer.failed is None, indexer.failed
    messages = [r.getMessage() for r in caplog.records]
    assert any("checkpointing the index's WAL failed" in m for m in messages), messages
    assert not any(r.exc_info or r.levelname in ("ERROR", "CRITICAL")
                   for r in caplog.records), messages


def test_known_ids_are_the_stored_ones_among_those_asked(index: Index) -> None:
    batch = rows(1, 5)
    add(index, 1, batch)
    stored = [r[1] for r in batch]
    assert index.known_ids([stored[0], "00000000-0000-7000-8000-000000000000", stored[3]]) \
        == {stored[0], stored[3]}
    assert index.known_ids([]) == set()


def test_zones_hold_the_time_range_of_each_block_of_seqs(index: Index) -> None:
    batch = rows(1, 3)
    add(index, 1, batch)
    zone = index.con.execute("SELECT block, min_created, max_created FROM zones").fetchall()
    created = [r[2] for r in batch]
    assert zone == [(0, min(created), max(created))]


def test_dropping_a_segment_forgets_its_rows_ids_and_postings(index: Index) -> None:
    first, second = rows(1, 4), rows(5, 4)
    add(index, 1, first)
    add(index, 2, second)  # closes the first segment's chunk
    index.build_indexes(1)
    index.close_chunk()
    index.build_indexes(2)
    index.begin()
    index.drop_segment(1)
    index.commit()
    assert index.count() == 4 and set(index.segments()) == {2}
    assert index.known_ids([r[1] for r in first + second]) == {r[1] for r in second}
    assert index.rows_match_catalog()
    assert set(postings_of(index.con, 1).values()) == {0}
    assert postings_of(index.con, 2) == full_postings(4)
    assert [s for (s,) in index.con.execute("SELECT seq FROM events")] == [5, 6, 7, 8]


def test_rows_deleted_behind_the_catalogs_back_are_noticed(index: Index) -> None:
    add(index, 1, rows(1, 4))
    assert index.rows_match_catalog()
    index.con.execute("DELETE FROM events WHERE seq = 2")
    assert not index.rows_match_catalog()


def test_postings_missing_from_an_indexed_chunk_are_noticed(index: Index) -> None:
    add(index, 1, rows(1, 4))
    chunk = index.close_chunk()
    assert chunk is not None
    index.build_indexes(chunk)
    assert index.rows_match_catalog()
    index.con.execute("DELETE FROM ix_target WHERE seq = 3")
    assert not index.rows_match_catalog()


def test_what_a_killed_build_left_of_a_chunk_not_indexed_yet_is_no_damage(
        index: Index) -> None:
    """Its next build clears and redoes it: no reason to rebuild the whole index."""
    add(index, 1, rows(1, 4))
    chunk = index.close_chunk()
    assert chunk is not None
    index.build_indexes(chunk)
    add(index, 2, rows(5, 4))
    closed = index.close_chunk()
    index.con.execute("INSERT INTO ix_principal VALUES(?, 'user-1', 5)", (closed,))
    assert index.rows_match_catalog()


def test_rows_outside_every_chunk_are_noticed(index: Index) -> None:
    add(index, 1, rows(1, 4))
    index.con.execute("DELETE FROM chunks")
    assert not index.rows_match_catalog()


def test_the_schema_does_not_grow_with_the_chunks(index: Index) -> None:
    """Each chunk was a table with seven indexes of its own: a year of hourly segments
    made ~72,000 schema objects, which every connection reloaded (quadratically in
    their number: ~1.9 s) after every chunk created, indexed or dropped."""
    before = schema_objects(index.con)
    for segment in range(1, 41):
        add(index, segment, rows(segment * 10, 3, status="ok"))
        chunk = index.close_chunk()
        assert chunk is not None
        index.build_indexes(chunk)
    index.begin()
    index.drop_segment(1)
    index.commit()
    assert schema_objects(index.con) == before
    assert index.con.execute("SELECT count(*) FROM chunks WHERE state=?",
                             (INDEXED,)).fetchone()[0] == 39


def test_a_build_killed_half_way_is_redone_from_the_start(index: Index) -> None:
    add(index, 1, rows(1, 5))
    chunk = index.close_chunk()
    assert chunk is not None
    # What a kill between two columns' transactions leaves: some postings, CLOSED.
    index.con.execute("INSERT INTO ix_principal VALUES(?, 'user-1', 1), (?, 'user-1', 2)",
                      (chunk, chunk))
    index.build_indexes(chunk)
    assert postings_of(index.con, chunk) == full_postings(5)


def test_a_chunk_retention_dropped_before_its_build_gets_no_postings(index: Index) -> None:
    add(index, 1, rows(1, 5))
    chunk = index.close_chunk()
    assert chunk is not None
    index.begin()
    index.drop_segment(1)
    index.commit()
    assert build_chunk_indexes(index.con, chunk, index.write_lock) is False
    assert set(postings_of(index.con, chunk).values()) == {0}


def test_a_rolled_back_append_leaves_the_chunk_as_it_was(index: Index) -> None:
    add(index, 1, rows(1, 4))
    index.begin()
    index.add_rows(1, rows(5, 4), 999)
    index.rollback()
    assert index.open_chunk is not None and index.open_chunk.rows == 4
    assert index.count() == 4 and index.max_seq() == 4


def test_source_ranges_round_trip(index: Index) -> None:
    index.begin()
    index.set_source_ranges({"src-a": [[1, 5], [8, 9]]})
    index.commit()
    assert index.source_ranges() == {"src-a": [[1, 5], [8, 9]]}


def test_the_index_database_runs_in_wal_mode(index: Index) -> None:
    assert index.con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_status_postings_leave_out_events_without_a_status(index: Index) -> None:
    add(index, 1, rows(1, 6, status=""))
    add(index, 1, rows(7, 2, status="failed: TimeoutError"))
    chunk = index.close_chunk()
    assert chunk is not None
    index.build_indexes(chunk)
    assert index.con.execute("SELECT v, seq FROM ix_status WHERE chunk=?",
                             (chunk,)).fetchall() == [("failed: TimeoutError", 7),
                                                      ("failed: TimeoutError", 8)]
    assert postings_of(index.con, chunk)["type"] == 8


def test_indexing_a_chunk_records_its_organization_and_workspace_names(index: Index) -> None:
    add(index, 1, rows(1, 3, org_id="o-1", org_name="Acme", workspace_id="w-1",
                       workspace_name="Main"))
    add(index, 1, rows(4, 2, org_id="o-1", org_name="Acme Inc", workspace_id="w-2",
                       workspace_name="Main"))
    assert index.con.execute("SELECT count(*) FROM names").fetchone()[0] == 0  # not yet
    chunk = index.close_chunk()
    assert chunk is not None
    index.build_indexes(chunk)
    assert set(index.con.execute("SELECT kind, name, id FROM names")) == {
        ("org", "Acme", "o-1"), ("org", "Acme Inc", "o-1"),
        ("workspace", "Main", "w-1"), ("workspace", "Main", "w-2")}
    assert chunk_state(index, chunk) == INDEXED


def test_known_ids_finds_stored_ids_below_the_newest_and_skips_none(tmp_path: Path) -> None:
    """Ids above every stored UUID key are not looked up; every id at or below it is,
    so a replay, a sender whose clock is behind and a non-UUID id are all found."""
    index = Index(tmp_path / "index.sqlite")
    old = rows(1, 3)
    custom = encode_events([{**event(), "id": "not-a-uuid-7"}])
    add(index, 1, old + record_lines(custom, 4, "", None, 100)[1])
    new = rows(5, 2)  # made later: UUIDv7 keys above every stored one
    stored = [r[1] for r in old]
    assert all(isinstance(k, bytes) and k > max(stored) for k in (r[1] for r in new))
    asked = [new[0][1], stored[1], "not-a-uuid-7", "not-a-uuid-8", new[1][1], stored[2]]
    assert index.known_ids(asked) == {stored[1], "not-a-uuid-7", stored[2]}
    add(index, 1, new)
    assert index.known_ids([r[1] for r in new]) == {r[1] for r in new}  # bound raised
    # A new writer over the same file reads the bound from the ids table.
    again = Index(tmp_path / "index.sqlite")
    assert again.known_ids([*stored, new[1][1], rows(9, 1)[0][1]]) == {*stored, new[1][1]}


@pytest.mark.parametrize("count", [1, 7, 199, 200, 201, 327, 399, 400, 655])
def test_insert_rows_stores_every_row_once_in_order(count: int) -> None:
    con = sqlite3.connect(":memory:")
    con.execute(EVENTS_TABLE)
    batch = rows(1, count)
    insert_rows(con, batch)
    assert con.execute("SELECT * FROM events ORDER BY seq").fetchall() == batch


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_indexer_thread_does_not_hold_up_its_waiters(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's commit thread waits in ChunkIndexer.wait(); if the indexer thread
    dies of a BaseException (which notifies nobody), the wait ends and says so."""
    def die(*args: object) -> bool:
        raise SystemExit("injected")

    monkeypatch.setattr(indexer_module, "build_chunk_indexes", die)
    lock = WriteLock()
    index = Index(tmp_path / "index.sqlite", lock)
    indexer = ChunkIndexer(tmp_path / "index.sqlite", lock)
    chunks = []
    for segment in (1, 2):
        add(index, segment, rows(segment * 10, 5))
        chunk = index.close_chunk()
        assert chunk is not None
        chunks.append(chunk)
    indexer.submit(chunks[0])  # kills the thread
    assert wait_until(lambda: indexer.failed)
    assert "indexer thread stopped: SystemExit" in indexer.failed
    indexer.submit(chunks[1])  # nobody will take it
    waited: list[bool] = []
    waiter = threading.Thread(target=lambda: waited.append(indexer.wait(most=0)))
    waiter.start()
    waiter.join(10)
    assert waited == [False], "wait() still blocked on a dead indexer"
    assert [chunk_state(index, c) for c in chunks] == [CLOSED, CLOSED]  # for the next start
    indexer.close()


def test_the_backlog_found_at_open_holds_up_neither_acknowledgements_nor_the_stop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a rebuild or a catch-up at start every chunk waits for its indexes. The
    commit thread waits in wait(most=MAX_UNINDEXED) when it closes a chunk: it waited for
    that whole backlog (4.5 s for 470,000 events, minutes for a large store), and no
    batch was acknowledged meanwhile; close() built it all before the process could end
    (a lifecycle review). The backlog found at open is not counted, and a stop leaves
    its rest CLOSED for the next open."""
    import time

    real_build = indexer_module.build_chunk_indexes

    def slow(*args: object) -> bool:
        time.sleep(0.3)
        return real_build(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(indexer_module, "build_chunk_indexes", slow)
    lock = WriteLock()
    index = Index(tmp_path / "index.sqlite", lock)
    chunks = []
    for segment in range(1, 12):
        add(index, segment, rows(segment * 10, 5))
        chunk = index.close_chunk()
        assert chunk is not None
        chunks.append(chunk)
    indexer = ChunkIndexer(tmp_path / "index.sqlite", lock)
    for chunk in chunks[:-1]:  # found closed at open: ~3 s of work
        indexer.submit(chunk, at_open=True)
    indexer.submit(chunks[-1])  # closed by the running store
    started = time.monotonic()
    assert indexer.wait(most=4)
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    indexer.close()
    assert time.monotonic() - started < 1.5  # the chunk in hand, and the store's own
    states = [chunk_state(index, c) for c in chunks]
    assert states[-1] == INDEXED and CLOSED in states[:-1]  # the rest: the next open's


def test_events_without_a_client_ip_have_no_client_ip_postings(index: Index) -> None:
    """A system event has no client IP (NULL in its row), which a postings key cannot
    hold: the build failed on the first one (reindex of any store with system events)."""
    add(index, 1, rows(1, 3, client_ip="", principal="system"))
    add(index, 1, rows(4, 2))
    chunk = index.close_chunk()
    assert chunk is not None
    index.build_indexes(chunk)
    assert chunk_state(index, chunk) == INDEXED
    assert index.con.execute("SELECT v, seq FROM ix_client_ip WHERE chunk=?",
                             (chunk,)).fetchall() == [(bytes([203, 0, 113, 7]), 4),
                                                      (bytes([203, 0, 113, 7]), 5)]


def test_a_reader_opened_beside_the_writer_leaves_its_locks_held(tmp_path: Path) -> None:
    """Opening a reader checks that SQLite's files are regular files: by a stat, never
    an open and close of our own, which drops every POSIX lock this process holds on
    the file (SQLite's writer's too: another process could then write, checkpoint or
    reset the WAL under it)."""
    import subprocess
    import sys

    from collector.index_connections import connect

    path = tmp_path / "index.sqlite"
    writer = connect(path)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t (x)")
    writer.execute("BEGIN IMMEDIATE")  # the write lock, held by this process
    writer.execute("INSERT INTO t VALUES (1)")
    reader = connect(path, readonly=True)
    try:
        script = ("import sqlite3, sys\n"
                  "con = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
                  "try:\n"
                  "    con.execute('BEGIN IMMEDIATE')\n"
                  "    print('took the write lock')\n"
                  "except sqlite3.OperationalError as exc:\n"
                  "    print(exc)\n")
        other = subprocess.run([sys.executable, "-c", script, str(path)],
                               capture_output=True, text=True, timeout=60, check=True)
        assert other.stdout.strip() == "database is locked", other.stdout
    finally:
        reader.close()
        writer.execute("ROLLBACK")
        writer.close()
