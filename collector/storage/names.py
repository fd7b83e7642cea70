"""Organization and workspace names: which ids have carried a name, so that a filter by
name walks the id's index instead of scanning (the ``names`` table of
``collector.index``).

The ``events`` rows hold every event's ``org_name`` and ``workspace_name``, without an index
of their own: each secondary index costs the background indexer ~0.4 us per event, and
ingest throughput is the scarce resource. When the indexer indexes a closed chunk it
adds the chunk's distinct (kind, name, id) triples here, in the transaction that marks
the chunk indexed, so a reader's snapshot has both or neither. Nothing is added on the
commit thread (the serial part of ingest): the chunks not indexed yet are scanned by
every filter anyway, and there the row's own name column answers.

A name filter then reads ``org_id IN (ids that had the name) AND org_name = ?`` in an
indexed chunk: the id index narrows, the row confirms, so an organization renamed later
matches exactly the events that carried the name asked for. Triples of events removed
by retention may stay; they only cost a probe that finds nothing.
"""

from __future__ import annotations

import sqlite3
from typing import Final

#: kind -> the id column of the chunk rows that a name filter narrows.
ID_COLUMNS: Final = {"org": "org_id", "workspace": "workspace_id"}
#: A name shared by more ids than this is filtered by its column alone (SQLite takes at
#: most 32,766 parameters a statement, and so many index probes cost more than a walk).
MAX_IDS: Final = 1000

Triple = tuple[str, str, str]


def chunk_names(con: sqlite3.Connection, first: int, last: int) -> list[Triple]:
    """The distinct (kind, name, id) triples of a chunk's rows (seqs ``first`` to
    ``last``). Read without the write lock: a closed chunk's rows never change (the
    caller checks, under the lock, that retention did not drop the chunk meanwhile)."""
    # One pass over the rows for both kinds, ~0.25-0.3 us a row (a pass per kind costs
    # a third more): reading the rows, not the distinct, is the cost. It runs on the
    # indexer thread, where SQLite works without the GIL; the same set built in Python
    # on the commit thread, the serial part of ingest, cost ~0.17 us an event.
    found: set[Triple] = set()
    for org_name, org_id, workspace_name, workspace_id in con.execute(
            "SELECT DISTINCT org_name, org_id, workspace_name, workspace_id FROM events "
            "WHERE seq BETWEEN ? AND ?", (first, last)):
        found.add(("org", org_name, org_id))
        found.add(("workspace", workspace_name, workspace_id))
    return sorted(found)


def add_names(con: sqlite3.Connection, triples: list[Triple]) -> None:
    """Record ``triples`` (inside the caller's write transaction)."""
    con.executemany("INSERT OR IGNORE INTO names VALUES(?,?,?)", triples)


def ids_named(con: sqlite3.Connection, kind: str, name: str) -> list[str]:
    """The ids that carried ``name`` in an indexed chunk, up to ``MAX_IDS + 1``."""
    return [i for (i,) in con.execute(
        "SELECT id FROM names WHERE kind=? AND name=? LIMIT ?", (kind, name, MAX_IDS + 1))]
