"""How the index forgets a segment retention deleted: in short transactions, on the
background indexer's thread (``collector.storage.indexer``).

Retention deletes the file first, then its index rows. Dropped in one transaction on
the store's commit thread, a segment's rows held every acknowledgement for as long as
SQLite took to delete them: ~0.15-0.4 s a 64k-row chunk, so 2.4 s for ten segments of
two chunks and minutes when an operator lowers ``retention_days`` on a year-old store
(thousands of segments in one pass): the senders' acknowledgements timed out, they
spooled, and ``fail_closed`` requests failed. Here each step is one table's rows of one
chunk, taken under the write lock's ``background_transaction``, so a commit waits for
one step at most (~15 ms: one table's postings of a chunk, or ``SLICE`` rows).

Every step leaves an index a query and the start-up check read correctly:

0. as soon as the file is gone, before its drop begins (on the store's commit thread:
   one small update, ``hide_segments``), its chunks get the time range of a chunk
   without rows, which no query's walk reads: a page is not filled with hits whose
   records cannot be read while the drop waits (behind the builds and the drops queued
   before it), where it came back short or empty, with a next cursor (the forwarder
   took such a page for caught up, and forwarded nothing until the drops ended);
1. the segment's zones and compressed-block map go (its file is gone: no query reads
   them again), and its chunks become CLOSED, so queries read their rows, not postings;
2. chunk by chunk, its postings table by table (a CLOSED chunk's partial postings are
   what a killed build leaves too: the start-up check allows for them), then its rows
   and their ids ``SLICE`` seqs at a time from its start, the catalog row's first seq
   and row count moved with them (the catalog and the rows always agree), the catalog
   row going with the last slice;
3. the segment's row, last: while it is there, a restart finds the file missing and
   finishes the drop (``collector.storage.recovery``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Final

from collector.storage.chunks import CLOSED, INDEXED, SECONDARY, chunk_range, postings
from collector.storage.write_lock import WriteLock

__all__ = ["NO_TIME", "drop_segment_rows", "hide_segments", "zone_blocks_inside"]

#: Seqs of a chunk whose rows and ids one step deletes (~8 ms; a whole 64k-row chunk's
#: took ~50-100 ms).
SLICE: Final = 8192


#: (min_created, max_created) of a chunk no query reads: a chunk without rows has it
#: (``Index._new_chunk``), and no time window holds it (``query.Reader._walk``).
NO_TIME: Final = (2**62, -(2**62))


def hide_segments(con: sqlite3.Connection, segments: list[int]) -> None:
    """Hide the chunks of ``segments`` (whose files are gone) from every query, in the
    caller's transaction: their rows stay, and agree with the catalog, until dropped."""
    con.executemany("UPDATE chunks SET min_created=?, max_created=? WHERE segment=?",
                    [(*NO_TIME, segment) for segment in segments])


def zone_blocks_inside(first_seq: int, last_seq: int, shift: int) -> tuple[int, int]:
    """The zone blocks (of ``1 << shift`` seqs) wholly inside ``first_seq..last_seq``:
    a block shared with a neighbouring segment stays with it."""
    return (first_seq + (1 << shift) - 1) >> shift, ((last_seq + 1) >> shift) - 1


def drop_segment_rows(con: sqlite3.Connection, segment: int, write_lock: WriteLock | None,
                      zone_shift: int, *,
                      yield_to: Callable[[], bool] | None = None) -> int | None:
    """Delete ``segment``'s index rows in steps (above); returns how many events rows
    went. Idempotent: a drop that failed or was stopped half-way is finished by the next
    call (or by start-up recovery). Each step is a ``background_transaction`` of
    ``write_lock``; with None, every step is in the caller's transaction (start-up
    repair, ``Index.drop_segment``: no commit waits on it).

    ``yield_to``, asked after each step: when it says so, the drop stops there and
    returns None (call again to go on). The indexer's thread lets a waiting build go
    first: a drop of a whole segment without one held the builds for as long as it
    took (the store waits for them past ``MAX_UNINDEXED``: acknowledgements too)."""

    def stop_here() -> bool:
        return yield_to is not None and yield_to()

    def step() -> AbstractContextManager[None]:
        if write_lock is None:
            return nullcontext()
        return write_lock.background_transaction(con)

    with step():
        first, last = con.execute(
            "SELECT min(first_seq), max(last_seq) FROM chunks WHERE segment=?",
            (segment,)).fetchone()
        if first is not None:
            con.execute("DELETE FROM zones WHERE block BETWEEN ? AND ?",
                        zone_blocks_inside(first, last, zone_shift))
        con.execute("DELETE FROM gz_blocks WHERE segment=?", (segment,))
        con.execute("UPDATE chunks SET state=? WHERE segment=? AND state=?",
                    (CLOSED, segment, INDEXED))
        hide_segments(con, [segment])  # if the commit thread could not
        chunks = [c for (c,) in con.execute(
            "SELECT chunk FROM chunks WHERE segment=? ORDER BY chunk", (segment,))]
    dropped = 0
    for chunk in chunks:
        for column in SECONDARY:
            if stop_here():
                return None
            with step():
                con.execute(f"DELETE FROM {postings(column)} WHERE chunk=?", (chunk,))
        while True:
            if stop_here():
                return None
            with step():
                seqs = chunk_range(con, chunk)
                if seqs is None:
                    break
                first, last = seqs
                if last - first < SLICE:
                    dropped += _delete_rows(con, first, last)
                    con.execute("DELETE FROM chunks WHERE chunk=?", (chunk,))
                    break
                # The chunk shrinks from its start: its catalog row moves with the rows.
                gone = _delete_rows(con, first, first + SLICE - 1)
                con.execute("UPDATE chunks SET first_seq=?, rows=rows-? WHERE chunk=?",
                            (first + SLICE, gone, chunk))
                dropped += gone
    if stop_here():
        return None
    with step():
        con.execute("DELETE FROM segments WHERE seq=?", (segment,))
    return dropped


def _delete_rows(con: sqlite3.Connection, first: int, last: int) -> int:
    """Delete the ids and rows of seqs ``first..last``; returns how many rows went."""
    con.execute("DELETE FROM ids WHERE id IN (SELECT id FROM events WHERE seq BETWEEN ? AND ?)",
                (first, last))
    return int(con.execute("DELETE FROM events WHERE seq BETWEEN ? AND ?",
                           (first, last)).rowcount)
