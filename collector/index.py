"""The index: SQLite (WAL) rows that find records in the segments. Derived data: it can
always be rebuilt from the segments (``collector.query.reindex``). This module is the
writer's view (``Index``, on the store's commit thread) and the connection settings.

Layout, chosen for the ingest rate:

- ``events`` holds one row per event (seq, id, created as integer microseconds, the
  filter columns, offset and length of the line in the uncompressed segment). Its seqs
  are cut into *chunks*: a chunk belongs to one segment and holds at most
  ``CHUNK_ROWS`` rows. Rows are appended to the open chunk without postings;
  a closed chunk's postings (``ix_<column>``: chunk, value, seq) are built in bulk in
  the background (``collector.storage.chunks``). A query scans only the chunks not
  indexed yet: the open one, and during a burst the few closed ones the indexer has not
  reached (``MAX_UNINDEXED`` bounds them). The schema never changes after creation,
  however many chunks a store holds (see ``collector.storage.chunks`` for why).
- ``names``: the (kind, name, id) triples of organizations and workspaces found in the
  indexed chunks, filled by the indexer off the commit thread, so that a name filter
  walks the id index (``collector.storage.names``).
- ``chunks``: each chunk's segment, seq range, row count, time range and state.
- ``ids``: event id -> seq, for dedupe. A UUID is kept as its 16 bytes (see ``id_key``),
  here and in the chunk rows; UUIDv7 ids are time-ordered, so inserts are near-append.
- ``zones``: min/max ``created`` per block of 1024 seqs, so a time window becomes seq
  ranges inside a chunk.
- ``segments``: each segment's name, header, how far it is indexed, compression.
- ``gz_blocks``: the block map of each compressed segment.
- ``sources``: per-source ranges of source_seq (see ``collector.storage.sources``).
- ``numbered``: per source, the highest number its batches said it had given out; and
  ``source_seen``: when the collector last stored an event of each source, and
  ``source_segment``: in which segment (what retention forgets sources by). Not derived
  from the segments, so a rebuild (``wipe``) keeps them.
- ``types``: every event type stored (so a glob becomes a list of exact names).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from collector.storage.chunks import (
    CLOSED,
    EVENTS_TABLE,
    INDEXED,
    PARTIAL,
    POSTINGS_TABLES,
    SECONDARY,
    Chunk,
    build_chunk_indexes,
    insert_rows,
    postings,
)
from collector.storage.compression import BlockMap
from collector.storage.data_dir_lock import data_dir_held
from collector.storage.records import Row
from collector.storage.segment_drop import (
    NO_TIME,
    drop_segment_rows,
    hide_segments,
)
from collector.storage.segments import FILE_MODE, SegmentHeader, file_sizes
from collector.storage.sources import Ranges
from collector.storage.write_lock import WriteLock

# 2: IPv4 client_ip keys are 4 bytes; 3: ids are 16 bytes; 4: org_name, workspace_name,
# the names table and the status index; 5: one events table and postings tables
# instead of a table and seven indexes per chunk. An index of another schema is rebuilt
# from the segments at start (``collector.storage.recovery``).
INDEX_SCHEMA: Final = 5
#: Meta key present while the index is brought up to date with the segments (start-up
#: repair, reindex): readers refuse it meanwhile, and after an interruption.
CATCHING_UP: Final = "catching_up"
CHUNK_ROWS: Final = 65_536
#: Closed chunks waiting for their postings before the store slows down to wait for the
#: indexer (each unindexed chunk costs a query a scan of up to CHUNK_ROWS rows).
MAX_UNINDEXED: Final = 4
ZONE_SHIFT: Final = 10
#: How long a connection waits for another's write lock (SQLite's busy handler).
BUSY_TIMEOUT_MS: Final = 10_000
#: The meta row ``Index.check_writes`` writes and deletes in one transaction: never
#: seen outside it.
_WRITE_CHECK_KEY: Final = "write_check"


_SCHEMA = EVENTS_TABLE + POSTINGS_TABLES + """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments(
    seq INTEGER PRIMARY KEY, name TEXT NOT NULL, id TEXT NOT NULL, previous TEXT NOT NULL,
    created TEXT NOT NULL, compressed INTEGER NOT NULL DEFAULT 0,
    end_offset INTEGER NOT NULL, records INTEGER NOT NULL DEFAULT 0,
    last_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS chunks(
    chunk INTEGER PRIMARY KEY, segment INTEGER NOT NULL, first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL, rows INTEGER NOT NULL, min_created INTEGER NOT NULL,
    max_created INTEGER NOT NULL, state INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS chunks_segment ON chunks(segment);
-- The chunks not INDEXED (2) yet: few, looked up by every query (collector.query).
CREATE INDEX IF NOT EXISTS chunks_unindexed ON chunks(segment) WHERE state <> 2;
CREATE TABLE IF NOT EXISTS ids(id PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS zones(
    block INTEGER PRIMARY KEY, min_created INTEGER NOT NULL, max_created INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS zones_max ON zones(max_created);
CREATE TABLE IF NOT EXISTS types(type TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS names(kind TEXT NOT NULL, name TEXT NOT NULL, id TEXT NOT NULL,
    PRIMARY KEY(kind, name, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sources(source TEXT PRIMARY KEY, ranges TEXT NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS numbered(source TEXT PRIMARY KEY, highest INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS source_seen(source TEXT PRIMARY KEY, at_ns INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS source_segment(source TEXT PRIMARY KEY, segment INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gz_blocks(
    segment INTEGER NOT NULL, uoff INTEGER NOT NULL, coff INTEGER NOT NULL,
    PRIMARY KEY(segment, uoff)) WITHOUT ROWID;
"""

_IDS_PER_QUERY: Final = 30_000  # SQLite allows 32,766 parameters a statement


@dataclass(frozen=True)
class SegmentEntry:
    seq: int
    name: str
    id: str
    compressed: bool
    end_offset: int  # where the indexed records end, in the uncompressed segment
    records: int
    last_seq: int


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if not readonly and not path.exists():
        # Created here so it gets the store's file mode (SQLite gives -wal/-shm the same).
        path.touch(mode=FILE_MODE)
    # A reader opens an existing index only: mode=rw (WAL readers need to write the
    # -shm file) never creates one, where a plain connect left an empty index.sqlite
    # behind in a directory that had none.
    if readonly:
        return _connect_uri(path, "mode=rw")
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                          cached_statements=512)
    con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return con


def connect_reader(path: Path) -> tuple[sqlite3.Connection, bool]:
    """A read-only connection to an existing index, and whether it reads the file as
    immutable (see below).

    The store's files are 0640 and its directories 0750 so that a group of auditors can
    read them, but SQLite reads a WAL index only through its ``-shm`` file: while the
    collector runs, that file is there and a reader without write access opens it read
    only; once the collector has stopped it is gone, and a reader who may not create it
    got "attempt to write a readonly database" (and was told to run reindex). A stopped
    store's index does not change, so it is then read with ``immutable=1``. Such a
    reader must be reopened once a collector starts writing (``wal_path`` appears):
    an immutable connection never looks at the WAL."""
    # The -shm file is made beside the index: a writable index in a directory the
    # reader may not write to is read as a read-only one.
    if os.access(path, os.W_OK) and os.access(path.parent, os.W_OK):
        return connect(path, readonly=True), False
    con = _connect_uri(path, "mode=ro")
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return con, False
    except sqlite3.OperationalError as exc:
        con.close()
        # With a -wal file left, the index holds more than its main file (a collector
        # killed, or one just starting): reading the main file alone would miss it.
        if wal_path(path).exists() or data_dir_held(path.parent):
            raise sqlite3.OperationalError(
                f"{exc}: this user may read {path} but not write beside it, and SQLite "
                f"needs to for now (a collector starting, or one killed left "
                f"{wal_path(path).name}); retry once the collector runs, or read as the "
                f"collector's user") from None
    return _connect_uri(path, "mode=ro&immutable=1"), True


def wal_path(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def files_bytes(path: Path) -> int:
    """The disk space the index at ``path`` takes: the file with its ``-wal`` (which
    grows while no checkpoint can run) and ``-shm``. One stat a file, no SQLite: safe
    beside a running collector, which may remove the WAL meanwhile."""
    return sum(file_sizes(path.parent.glob(f"{path.name}*")).values())


def _connect_uri(path: Path, options: str) -> sqlite3.Connection:
    con = sqlite3.connect(f"{path.resolve().as_uri()}?{options}", isolation_level=None,
                          check_same_thread=False, cached_statements=512, uri=True)
    con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    con.execute("PRAGMA query_only=1")
    return con


def count_rows(con: sqlite3.Connection) -> int:
    """Events in the index (the partitions' row counts; no table scan), leaving out
    those of segments retention deleted, hidden until the indexer drops their rows."""
    return int(con.execute("SELECT coalesce(sum(rows), 0) FROM chunks WHERE min_created<>?",
                           (NO_TIME[0],)).fetchone()[0])


def writer_connection(path: Path) -> sqlite3.Connection:
    con = connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    # The segments are the source of truth (fsynced before the index commits), and
    # start-up indexes whatever the index lacks: no fsync per index commit.
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("PRAGMA cache_size=-32768")
    con.execute("PRAGMA temp_store=MEMORY")
    # Checkpoints run on the indexer thread, not inside the store's commits.
    con.execute("PRAGMA wal_autocheckpoint=0")
    return con


class Index:
    """The writer's view of the index (one thread at a time; the store's commit thread).

    ``write_lock`` serializes write transactions with the ``ChunkIndexer``, the store's
    first (``collector.storage.write_lock``)."""

    def __init__(self, path: Path, write_lock: WriteLock | None = None) -> None:
        self.path = path
        self.write_lock = write_lock or WriteLock()
        self._holding = False
        #: Chunks closed since the owner last looked (it hands them to the indexer).
        self.newly_closed: list[int] = []
        #: No stored id key of bytes (a UUID) is above this (b"": none is stored); None
        #: until first read from the ids table (``known_ids``).
        self._id_bound: bytes | None = None
        self._closed_before = 0
        self.con = writer_connection(path)
        con = self.con
        con.executescript(_SCHEMA)
        if self.meta("schema") is None:
            con.execute("INSERT INTO meta VALUES('schema', ?)", (INDEX_SCHEMA,))
        self._load()

    def _load(self) -> None:
        row = self.con.execute(
            "SELECT chunk, segment, first_seq, last_seq, rows, min_created, max_created "
            "FROM chunks WHERE state=0 ORDER BY chunk DESC LIMIT 1").fetchone()
        self.open_chunk = Chunk(*row) if row else None
        self.next_chunk = (self.con.execute("SELECT max(chunk) FROM chunks").fetchone()[0]
                           or 0) + 1
        self.types = {t for (t,) in self.con.execute("SELECT type FROM types")}

    def meta(self, key: str) -> Any:
        row = self.con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        """Set (None: delete) a meta value, in a transaction of its own."""
        with self.transaction():
            if value is None:
                self.con.execute("DELETE FROM meta WHERE key=?", (key,))
            else:
                self.con.execute("INSERT OR REPLACE INTO meta VALUES(?, ?)", (key, value))

    def close(self) -> None:
        self.con.close()

    # -- transactions -------------------------------------------------------------------
    def begin(self) -> None:
        self.write_lock.acquire()
        self._begin_holding()

    def _begin_holding(self) -> None:
        """``BEGIN IMMEDIATE`` with the in-process write lock taken (released if it fails)."""
        self._holding = True
        self._closed_before = len(self.newly_closed)
        try:
            self.con.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._release()
            raise

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction around the block: committed when it ends, rolled back
        (the writer's view reloaded with it) when it raises."""
        self.begin()
        with self._ending():
            yield

    @contextmanager
    def _ending(self) -> Iterator[None]:
        """Commit the transaction begun when the block ends; roll it back if it raises."""
        try:
            yield
            self.commit()
        except BaseException:
            self.rollback()
            raise

    def commit(self) -> None:
        try:
            self.con.execute("COMMIT")
        finally:
            if not self.con.in_transaction:
                self._release()

    def rollback(self) -> None:
        try:
            if self.con.in_transaction:
                self.con.execute("ROLLBACK")
        finally:
            self._release()
        del self.newly_closed[self._closed_before:]  # those closes were rolled back too
        self._load()  # the open chunk's counters went back with the rows

    def check_writes(self) -> bool:
        """Write a meta row and delete it again, in a transaction of its own: raises
        SQLite's error while the index refuses writes (an I/O error, a read-only or full
        file, its lock held by another process). No row stays, yet the commit writes
        the changed page to the WAL, as a batch's commit does. For the idle store
        (``Store._check_failed_write``), which must not say ready over an index that
        refuses every batch, nor unready for good once it takes them again. False (not
        checked) while the ``ChunkIndexer`` holds the in-process write lock.

        It waits for no lock: it runs on the commit thread, which a batch arriving then
        waits for. SQLite's busy handler is off meanwhile (another process holding the
        index's lock fails a batch's commit too, after the busy timeout), and the
        in-process write lock is only tried: the indexer can hold it for that whole busy
        timeout (10 s) while another process holds the index's lock, and a check that
        waited for it held every batch that long."""
        con = self.con
        con.execute("PRAGMA busy_timeout=0")
        try:
            if not self.write_lock.try_acquire():
                return False
            self._begin_holding()
            with self._ending():
                con.execute("INSERT OR REPLACE INTO meta VALUES(?, '')", (_WRITE_CHECK_KEY,))
                con.execute("DELETE FROM meta WHERE key=?", (_WRITE_CHECK_KEY,))
        finally:
            con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return True

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self.write_lock.release()

    # -- reads --------------------------------------------------------------------------
    def known_ids(self, keys: list[bytes | str]) -> set[bytes | str]:
        """The id keys (see ``id_key``) among ``keys`` that are already stored: one
        query for a batch (a few for a huge one).

        UUIDv7 ids grow with time, so most new ids sort above every stored one: those
        cannot be stored yet and are not looked up (``_id_bound``). Only ids at or below
        it (a replay, a sender whose clock is behind, an id that is not a UUID) cost
        the B-tree lookups, ~1 us each."""
        if self._id_bound is None:
            highest = self.con.execute("SELECT max(id) FROM ids").fetchone()[0]
            self._id_bound = highest if type(highest) is bytes else b""
        bound = self._id_bound
        keys = [k for k in keys if type(k) is not bytes or k <= bound]
        known: set[bytes | str] = set()
        for i in range(0, len(keys), _IDS_PER_QUERY):
            part = keys[i:i + _IDS_PER_QUERY]
            known.update(k for (k,) in self.con.execute(
                f"SELECT id FROM ids WHERE id IN ({','.join('?' * len(part))})", part))
        return known

    def segments(self) -> dict[int, SegmentEntry]:
        return {
            row[0]: SegmentEntry(row[0], row[1], row[2], bool(row[3]), row[4], row[5], row[6])
            for row in self.con.execute(
                "SELECT seq, name, id, compressed, end_offset, records, last_seq "
                "FROM segments ORDER BY seq")
        }

    def max_seq(self) -> int:
        return self.con.execute("SELECT max(last_seq) FROM segments").fetchone()[0] or 0

    def max_seq_before(self, segment: int) -> int:
        return self.con.execute("SELECT max(last_seq) FROM segments WHERE seq < ?",
                                (segment,)).fetchone()[0] or 0

    def count(self) -> int:
        return count_rows(self.con)

    def source_ranges(self) -> dict[str, Ranges]:
        return {s: orjson.loads(r) for s, r in
                self.con.execute("SELECT source, ranges FROM sources")}

    def source_numbered(self) -> dict[str, int]:
        return dict(self.con.execute("SELECT source, highest FROM numbered"))

    def source_seen(self) -> dict[str, int]:
        return dict(self.con.execute("SELECT source, at_ns FROM source_seen"))

    def source_segment(self) -> dict[str, int]:
        return dict(self.con.execute("SELECT source, segment FROM source_segment"))

    def rows_match_catalog(self) -> bool:
        """Every chunk holds the rows the catalog says, no row is outside a chunk, and
        the indexed chunks have their postings (rows or postings deleted by hand, a
        partial copy of the file, ... show here)."""
        con = self.con
        total = 0
        for first, last, rows in con.execute(
                "SELECT first_seq, last_seq, rows FROM chunks").fetchall():
            if con.execute("SELECT count(*) FROM events WHERE seq BETWEEN ? AND ?",
                           (first, last)).fetchone()[0] != rows:
                return False
            total += rows
        if con.execute("SELECT count(*) FROM events").fetchone()[0] != total:
            return False
        # The postings of the columns every row has (no PARTIAL): one entry per row of
        # an indexed chunk. Missing ones would silently drop results. A count of a whole
        # table walks its pages without decoding them; what a build killed half-way
        # left of a chunk not indexed yet (rebuilt by its next build) is taken off it.
        indexed = con.execute("SELECT coalesce(sum(rows), 0) FROM chunks WHERE state=?",
                              (INDEXED,)).fetchone()[0]
        unindexed = [c for (c,) in con.execute("SELECT chunk FROM chunks WHERE state<>?",
                                               (INDEXED,))]
        for column in SECONDARY:
            if column in PARTIAL:
                continue
            table = postings(column)
            entries = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for chunk in unindexed:
                entries -= con.execute(f"SELECT count(*) FROM {table} WHERE chunk=?",
                                       (chunk,)).fetchone()[0]
            if entries != indexed:
                return False
        return True

    def block_map(self, segment: int) -> BlockMap:
        return [(u, c) for u, c in self.con.execute(
            "SELECT uoff, coff FROM gz_blocks WHERE segment=? ORDER BY uoff", (segment,))]

    # -- writes (inside begin()/commit()) -------------------------------------------------
    def add_segment(self, name: str, header: SegmentHeader, end_offset: int) -> None:
        """Register a segment (no-op when it is registered already)."""
        self.con.execute(
            "INSERT OR IGNORE INTO segments(seq, name, id, previous, created, end_offset) "
            "VALUES(?,?,?,?,?,?)",
            (header.seq, name, header.id, header.previous, header.created, end_offset))

    def add_rows(self, segment: int, rows: list[Row], end_offset: int) -> None:
        """Index ``rows`` (records of ``segment``, in seq order, ending at
        ``end_offset``): the chunk rows, their ids, zones and types."""
        if not rows:
            return
        con = self.con
        first, last = rows[0][0], rows[-1][0]
        chunk = self.open_chunk
        if chunk is None or chunk.segment != segment:
            if chunk is not None:
                self._close(chunk)
            chunk = self._new_chunk(segment, first)
        insert_rows(con, rows)
        # Derived tables are filled from the rows just inserted, inside SQLite: no
        # second pass over the batch in Python.
        con.execute("INSERT OR IGNORE INTO ids SELECT id, seq FROM events "
                    "WHERE seq BETWEEN ? AND ?", (first, last))
        low, high, highest_id = con.execute(
            "SELECT min(created), max(created), max(id) FROM events "
            "WHERE seq BETWEEN ? AND ?", (first, last)).fetchone()
        # A BLOB sorts above any TEXT in SQLite: a bytes maximum is the highest UUID key.
        # Raised before the commit: if it rolls back, the bound is merely loose.
        if type(highest_id) is bytes and self._id_bound is not None \
                and highest_id > self._id_bound:
            self._id_bound = highest_id
        con.execute(
            f"INSERT INTO zones SELECT seq >> {ZONE_SHIFT}, min(created), max(created) "
            f"FROM events WHERE seq BETWEEN ? AND ? GROUP BY 1 "
            f"ON CONFLICT(block) DO UPDATE SET "
            f"min_created=min(min_created, excluded.min_created), "
            f"max_created=max(max_created, excluded.max_created)", (first, last))
        new_types = {r[3] for r in rows} - self.types
        if new_types:
            con.executemany("INSERT OR IGNORE INTO types VALUES(?)", [(t,) for t in new_types])
            self.types |= new_types
        chunk.last_seq = last
        chunk.rows += len(rows)
        chunk.min_created = min(chunk.min_created, low)
        chunk.max_created = max(chunk.max_created, high)
        con.execute(
            "UPDATE chunks SET last_seq=?, rows=?, min_created=?, max_created=? WHERE chunk=?",
            (last, chunk.rows, chunk.min_created, chunk.max_created, chunk.chunk))
        con.execute(
            "UPDATE segments SET end_offset=?, records=records+?, last_seq=? WHERE seq=?",
            (end_offset, len(rows), last, segment))

    def _new_chunk(self, segment: int, first_seq: int) -> Chunk:
        chunk = Chunk(self.next_chunk, segment, first_seq, first_seq - 1, 0,
                      2**62, -(2**62))
        self.con.execute(
            "INSERT INTO chunks VALUES(?,?,?,?,?,?,?,0)",
            (chunk.chunk, segment, first_seq, chunk.last_seq, 0, chunk.min_created,
             chunk.max_created))
        self.next_chunk += 1
        self.open_chunk = chunk
        return chunk

    def set_source_ranges(self, changed: dict[str, Ranges]) -> None:
        self.con.executemany(
            "INSERT OR REPLACE INTO sources VALUES(?,?)",
            [(s, orjson.dumps(r).decode()) for s, r in changed.items()])

    def set_source_numbered(self, changed: dict[str, int]) -> None:
        self.con.executemany("INSERT OR REPLACE INTO numbered VALUES(?,?)", changed.items())

    def set_source_seen(self, seen: dict[str, int]) -> None:
        self.con.executemany("INSERT OR REPLACE INTO source_seen VALUES(?,?)", seen.items())

    def set_source_segment(self, segment: int, sources: list[str]) -> None:
        self.con.executemany("INSERT OR REPLACE INTO source_segment VALUES(?,?)",
                             [(source, segment) for source in sources])

    def forget_sources(self, names: list[str]) -> None:
        rows = [(name,) for name in names]
        for table in ("sources", "numbered", "source_seen", "source_segment"):
            # The table names are these constants, never input.
            self.con.executemany(f"DELETE FROM {table} WHERE source=?", rows)

    def mark_compressed(self, segment: int, blocks: BlockMap) -> None:
        self.con.execute("DELETE FROM gz_blocks WHERE segment=?", (segment,))
        self.con.executemany("INSERT INTO gz_blocks VALUES(?,?,?)",
                             [(segment, u, c) for u, c in blocks])
        self.con.execute("UPDATE segments SET compressed=1 WHERE seq=?", (segment,))

    def mark_uncompressed(self, segment: int) -> None:
        self.con.execute("DELETE FROM gz_blocks WHERE segment=?", (segment,))
        self.con.execute("UPDATE segments SET compressed=0 WHERE seq=?", (segment,))

    def drop_segment(self, segment: int) -> None:
        """Forget a segment: its chunks, ids, zones (those wholly inside it), blocks, in
        the caller's transaction (start-up repair; retention drops the same rows in short
        steps on the indexer's thread: ``collector.storage.segment_drop``)."""
        drop_segment_rows(self.con, segment, None, ZONE_SHIFT)
        if self.open_chunk is not None and self.open_chunk.segment == segment:
            self.open_chunk = None

    def hide_segments(self, segments: list[int]) -> None:
        """Hide the chunks of segments whose files retention deleted from every query
        until their rows are dropped (``segment_drop.hide_segments``), in a transaction
        of its own."""
        with self.transaction():
            hide_segments(self.con, segments)

    def wipe(self) -> None:
        """Drop everything (a rebuild follows)."""
        con = self.con
        # Schema 4 kept a table per chunk (events_000001, ...): a rebuild drops them.
        for (name,) in con.execute("SELECT name FROM sqlite_schema WHERE type='table' "
                                   "AND name GLOB 'events_[0-9]*'").fetchall():
            con.execute(f"DROP TABLE {name}")
        # The table names are these constants, never input.
        for table in ("events", *map(postings, SECONDARY), "segments", "chunks", "ids",
                      "zones", "types", "names", "sources", "gz_blocks"):
            con.execute(f"DELETE FROM {table}")
        # A rebuild for a schema change builds this schema: say so, or every start
        # would find the old number and rebuild again.
        con.execute("INSERT OR REPLACE INTO meta VALUES('schema', ?)", (INDEX_SCHEMA,))
        self.open_chunk = None
        self.next_chunk = 1
        self.types = set()

    # -- chunk closing ---------------------------------------------------------------------
    def close_chunk(self) -> int | None:
        """Close the open chunk (its own small transaction): no row is added to it any
        more, its postings are due. Returns its number, None if no chunk was open."""
        chunk = self.open_chunk
        if chunk is None:
            return None
        with self.transaction():
            self._close(chunk)
        return chunk.chunk

    def _close(self, chunk: Chunk) -> None:
        self.con.execute("UPDATE chunks SET state=? WHERE chunk=?", (CLOSED, chunk.chunk))
        self.open_chunk = None
        self.newly_closed.append(chunk.chunk)

    def closed_chunks(self) -> list[int]:
        """Closed chunks whose postings are not built yet."""
        return [c for (c,) in self.con.execute(
            "SELECT chunk FROM chunks WHERE state=? ORDER BY chunk", (CLOSED,))]

    def build_indexes(self, chunk: int) -> None:
        """Build a closed chunk's postings now, on this connection (reindex, tests)."""
        build_chunk_indexes(self.con, chunk, self.write_lock)

    def checkpoint(self) -> None:
        """Copy the WAL into the database (when no ``ChunkIndexer`` does it)."""
        with self.write_lock.background():
            self.con.execute("PRAGMA wal_checkpoint(PASSIVE)")

