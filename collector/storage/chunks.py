"""Chunks: the partitions of the index (``collector.index``), their layout and states, how
rows are appended, and the bulk build of a closed chunk's postings.

Every event has one row in the ``events`` table (rowid = seq). A chunk is a run of
seqs of one segment, at most ``CHUNK_ROWS`` rows. It is OPEN while the store appends
rows to it, and its rows are then found by a scan of its seq range: a B-tree insert per
event per filter column would cost ~2 us each on a small machine. Once CLOSED (full,
its segment sealed, or the store idle) no row is added any more, and a background
thread (``collector.storage.indexer.ChunkIndexer``, or ``reindex`` inline) runs
``build_chunk_indexes``: for each column of ``SECONDARY``, the chunk's (value, seq)
pairs, sorted, are appended to that column's postings table ``ix_<column>``, keyed
(chunk, value, seq); then the chunk's names (``collector.storage.names``) and the
INDEXED state in one transaction. "This principal in this chunk, newest first" is a
walk down one postings key range.

Why postings tables and not an index per chunk: every chunk was once a table with seven
indexes of its own, built by ``CREATE INDEX`` (~0.65x of this build's cost). SQLite keeps
a schema's objects in hash tables of at most 64 buckets, so loading a schema costs
quadratically in its objects, and every connection reloads it after every schema
change: with the default hourly segments a year made ~9,000 chunks, 72,000 objects,
and ~1.9 s of reload per connection per chunk table or index created or dropped
(measured: 66 ms at 2,000 chunks, 347 ms at 4,000). The schema is now fixed: a chunk is
rows of three tables, whatever the store's age.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
from dataclasses import dataclass
from typing import Final

from collector.storage.names import add_names, chunk_names
from collector.storage.records import Row
from collector.storage.write_lock import WriteLock

OPEN, CLOSED, INDEXED = 0, 1, 2  # chunk states (the ``state`` column of ``chunks``)
SECONDARY: Final = ("type", "principal", "target", "org_id", "workspace_id", "client_ip",
                    "status")
#: Postings that leave rows out: an empty status is not worth an entry (most events
#: carry none, and those cost the indexer nothing), and no filter matches an event
#: without a client IP (a ``system`` event) by its IP.
PARTIAL: Final = {"status": "status <> ''", "client_ip": "client_ip IS NOT NULL"}
#: An ``events`` row, in the order of ``Row`` (client_ip is a sortable key of 4 (IPv4) or
#: 16 (IPv6) bytes; off and len locate the line in the uncompressed segment).
COLUMNS: Final = ("seq", "id", "created", "type", "principal", "target", "org_id",
                  "workspace_id", "client_ip", "status", "org_name", "workspace_name",
                  "off", "len")

EVENTS_TABLE: Final = """CREATE TABLE IF NOT EXISTS events(
    seq INTEGER PRIMARY KEY, id NOT NULL, created INTEGER NOT NULL,
    type TEXT NOT NULL, principal TEXT NOT NULL, target TEXT NOT NULL,
    org_id TEXT NOT NULL, workspace_id TEXT NOT NULL, client_ip BLOB,
    status TEXT NOT NULL, org_name TEXT NOT NULL, workspace_name TEXT NOT NULL,
    off INTEGER NOT NULL, len INTEGER NOT NULL);
"""
#: ``v`` has no declared type, so a value keeps the type it has in ``events`` (text, or
#: the client IP's bytes) and compares as it does there.
POSTINGS_TABLES: Final = "".join(
    f"CREATE TABLE IF NOT EXISTS {'ix_' + column}(chunk INTEGER NOT NULL, v, "
    f"seq INTEGER NOT NULL, PRIMARY KEY(chunk, v, seq)) WITHOUT ROWID;\n"
    for column in SECONDARY)


def postings(column: str) -> str:
    """The postings table of a ``SECONDARY`` column."""
    return "ix_" + column


@dataclass
class Chunk:
    """A chunk's row of the ``chunks`` catalog, as the writer keeps it for the open one."""

    chunk: int
    segment: int
    first_seq: int
    last_seq: int
    rows: int
    min_created: int
    max_created: int


_ROWS_PER_STATEMENT: Final = 200
_ONE_ROW: Final = f"({','.join('?' * len(COLUMNS))})"
#: The statement sizes, largest first: full statements, then the binary digits of the
#: rest.
_STATEMENT_ROWS: Final = (_ROWS_PER_STATEMENT, 128, 64, 32, 16, 8, 4, 2, 1)


def insert_rows(con: sqlite3.Connection, rows: list[Row]) -> None:
    """Insert many rows per statement: binding a statement's parameters in one go
    costs ~40% less per row than ``executemany`` stepping a statement per row. Each
    step also lets go of the GIL and must win it back from the ingest thread, so the
    rows after the last full statement go in a few statements too (of 128, 64, ... 1
    rows: at most eight, and as few distinct statements to cache), never one by one."""
    flat = itertools.chain.from_iterable
    done = 0
    for size in _STATEMENT_ROWS:
        many = f"INSERT INTO events VALUES {_rows_sql(size)}"
        while len(rows) - done >= size:
            con.execute(many, tuple(flat(rows[done:done + size])))
            done += size
            if size < _ROWS_PER_STATEMENT:
                break  # each smaller size is needed at most once


@functools.cache
def _rows_sql(rows: int) -> str:
    return ",".join([_ONE_ROW] * rows)


def chunk_range(con: sqlite3.Connection, chunk: int) -> tuple[int, int] | None:
    """A chunk's (first seq, last seq), None if it is gone (retention dropped it)."""
    row = con.execute("SELECT first_seq, last_seq FROM chunks WHERE chunk=?",
                      (chunk,)).fetchone()
    return (row[0], row[1]) if row else None


def build_chunk_indexes(con: sqlite3.Connection, chunk: int, write_lock: WriteLock) -> bool:
    """One sorted append per postings table, each its own transaction so the store's
    commits interleave; False if the chunk is gone (retention dropped it meanwhile).

    Each transaction first looks the chunk up under the write lock (a build after
    retention dropped the chunk would leave postings of no chunk behind) and clears
    what a build killed half-way left of this column."""
    for column in SECONDARY:
        where = f" AND {PARTIAL[column]}" if column in PARTIAL else ""
        with write_lock.background_transaction(con):
            seqs = chunk_range(con, chunk)
            if seqs is None:
                return False  # nothing written: the empty transaction commits
            table = postings(column)
            con.execute(f"DELETE FROM {table} WHERE chunk=?", (chunk,))
            # Sorted first, the pairs go in at the right edge of the B-tree: appends,
            # not inserts into the middle of pages.
            con.execute(f"INSERT INTO {table} SELECT ?, {column}, seq FROM events "
                        f"WHERE seq BETWEEN ? AND ?{where} ORDER BY 2, 3",
                        (chunk, *seqs))
    seqs = chunk_range(con, chunk)  # the names are a read: no need to hold up commits
    if seqs is None:
        return False
    triples = chunk_names(con, *seqs)
    # One transaction: a reader sees the chunk indexed with its names, or neither.
    with write_lock.background_transaction(con):
        if chunk_range(con, chunk) is None:
            return False  # dropped by retention since the names were read
        add_names(con, triples)
        con.execute("UPDATE chunks SET state=? WHERE chunk=?", (INDEXED, chunk))
    return True
