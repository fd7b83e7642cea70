"""The index: SQLite (WAL) rows that find records in the segments. Derived data: it can
always be rebuilt from the segments (``collector.query.reindex``). This module is the
writer's view (``Index``, on the store's commit thread); its parts: the layout and schema
(``collector.index_schema``), the connections (``collector.index_connections``), the write
transactions (``collector.index_transactions``) and the per-source tables
(``collector.index_sources``). The names other modules import from here are re-exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from collector.index_connections import (
    BUSY_TIMEOUT_MS,
    connect,
    connect_reader,
    count_rows,
    files_bytes,
    wal_path,
    writer_connection,
)
from collector.index_schema import (
    _SCHEMA,
    CATCHING_UP,
    CHUNK_ROWS,
    INDEX_SCHEMA,
    MAX_UNINDEXED,
    ZONE_SHIFT,
)
from collector.index_sources import _SourceTables
from collector.index_transactions import _Transactions
from collector.storage.chunks import (
    CLOSED,
    INDEXED,
    PARTIAL,
    SECONDARY,
    Chunk,
    build_chunk_indexes,
    insert_rows,
    postings,
)
from collector.storage.compression import BlockMap
from collector.storage.records import Row
from collector.storage.segment_drop import drop_segment_rows, hide_segments
from collector.storage.segments import SegmentHeader
from collector.storage.write_lock import WriteLock

__all__ = [
    "BUSY_TIMEOUT_MS",
    "CATCHING_UP",
    "CHUNK_ROWS",
    "INDEX_SCHEMA",
    "MAX_UNINDEXED",
    "ZONE_SHIFT",
    "Index",
    "SegmentEntry",
    "connect",
    "connect_reader",
    "count_rows",
    "files_bytes",
    "wal_path",
    "writer_connection",
]


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


class Index(_Transactions, _SourceTables):
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
        #: Whether this opening made the index (no schema yet): a change recovery marks
        #: first (``collector.storage.recovery``), an empty index looking whole.
        self.created = self.meta("schema") is None
        if self.created:
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

    # Transactions are inherited from _Transactions, the per-source tables from
    # _SourceTables.
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

