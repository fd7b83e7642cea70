"""Chunk tables: the ``events_NNNNNN`` partitions of the index (``collector.index``),
their layout and states, how rows are appended, and the bulk index build once a chunk
is closed.

A chunk is OPEN while the store appends rows to it, with no secondary index: a B-tree
insert per event per filter column would cost ~2 us each on a small machine, where
building the same index in bulk costs a fifth of that. Once CLOSED (full, its segment
sealed, or the store idle) no row is added any more, and a background thread
(``collector.storage.indexer.ChunkIndexer``, or ``reindex`` inline) runs
``build_chunk_indexes``: one bulk pass per column of ``SECONDARY`` while the store keeps
committing, then the chunk's names (``collector.storage.names``), a sampled ``ANALYZE``
and the INDEXED state in one transaction. Each index ends with the rowid (= seq), so
"this principal, newest first" is a walk down one index. The status index is partial
(``PARTIAL``): most events carry no status, and those cost the indexer nothing.
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
#: Secondary indexes that leave rows out: an empty status is not worth an index entry
#: (a query for a non-empty status repeats the condition so that SQLite uses it).
PARTIAL: Final = {"status": "status <> ''"}
#: A chunk row, in the order of ``Row`` (client_ip is a sortable key of 4 (IPv4) or 16
#: (IPv6) bytes; off and len locate the line in the uncompressed segment).
COLUMNS: Final = ("seq", "id", "created", "type", "principal", "target", "org_id",
                  "workspace_id", "client_ip", "status", "org_name", "workspace_name",
                  "off", "len")

CHUNK_TABLE: Final = """CREATE TABLE {table}(
    seq INTEGER PRIMARY KEY, id NOT NULL, created INTEGER NOT NULL,
    type TEXT NOT NULL, principal TEXT NOT NULL, target TEXT NOT NULL,
    org_id TEXT NOT NULL, workspace_id TEXT NOT NULL, client_ip BLOB,
    status TEXT NOT NULL, org_name TEXT NOT NULL, workspace_name TEXT NOT NULL,
    off INTEGER NOT NULL, len INTEGER NOT NULL)"""


def chunk_table(chunk: int) -> str:
    return f"events_{chunk:06d}"


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

    @property
    def table(self) -> str:
        return chunk_table(self.chunk)


_ROWS_PER_STATEMENT: Final = 200
_ONE_ROW: Final = f"({','.join('?' * len(COLUMNS))})"
#: The statement sizes, largest first: full statements, then the binary digits of the
#: rest.
_STATEMENT_ROWS: Final = (_ROWS_PER_STATEMENT, 128, 64, 32, 16, 8, 4, 2, 1)


def insert_rows(con: sqlite3.Connection, table: str, rows: list[Row]) -> None:
    """Insert many rows per statement: binding a statement's parameters in one go
    costs ~40% less per row than ``executemany`` stepping a statement per row. Each
    step also lets go of the GIL and must win it back from the ingest thread, so the
    rows after the last full statement go in a few statements too (of 128, 64, ... 1
    rows: at most eight, and as few distinct statements to cache), never one by one."""
    flat = itertools.chain.from_iterable
    done = 0
    for size in _STATEMENT_ROWS:
        many = f"INSERT INTO {table} VALUES {_rows_sql(size)}"
        while len(rows) - done >= size:
            con.execute(many, tuple(flat(rows[done:done + size])))
            done += size
            if size < _ROWS_PER_STATEMENT:
                break  # each smaller size is needed at most once


@functools.cache
def _rows_sql(rows: int) -> str:
    return ",".join([_ONE_ROW] * rows)


def build_chunk_indexes(con: sqlite3.Connection, chunk: int, write_lock: WriteLock) -> bool:
    """One bulk pass per secondary index, each its own transaction so the store's
    commits interleave; False if the chunk is gone (retention dropped it meanwhile)."""
    table = chunk_table(chunk)
    try:
        for column in SECONDARY:
            where = f" WHERE {PARTIAL[column]}" if column in PARTIAL else ""
            with write_lock.background():
                con.execute(f"CREATE INDEX IF NOT EXISTS {table}_{column} "
                            f"ON {table}({column}){where}")
        triples = chunk_names(con, table)  # a read: no need to hold up the store's commits
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return False
        raise
    with write_lock.background():
        # One transaction: a reader sees the chunk indexed with its names, or neither.
        con.execute("BEGIN IMMEDIATE")
        try:
            add_names(con, triples)
            # Sampled statistics (~1 ms a chunk) so that, given principal AND org, SQLite
            # walks the principal index (1 in 1000 rows) rather than the org one (1 in 50).
            con.execute("PRAGMA analysis_limit=1000")
            con.execute(f"ANALYZE {table}")
            con.execute("UPDATE chunks SET state=? WHERE chunk=?", (INDEXED, chunk))
            con.execute("COMMIT")
        except BaseException as exc:
            con.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc):
                return False  # dropped by retention since the names were read
            raise
    return True
