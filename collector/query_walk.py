"""The page walk of a ``Reader`` (a part ``Reader`` inherits): which index chunks a
page reads, in page order, and through which statement, until the page is full.

A run of indexed chunks is read in one statement (``Conditions.indexed_run``); the
chunks not indexed yet (the open one, those the indexer has not reached), and the
chunks a run cannot take, are asked one at a time (``Conditions.statement``), narrowed
to the seq blocks the time window touches (the zones) and to what lies past the cursor.
Hits are (seq, segment, offset, length): the records are read back from the segments
by offset (``collector.storage.reader``), never by scanning a segment.
"""

from __future__ import annotations

import bisect
import sqlite3
from typing import Any

from collector.index import ZONE_SHIFT
from collector.storage.chunks import INDEXED
from collector.storage.conditions import FOREVER, Conditions
from collector.storage.time_limit import check


class _PageWalk:
    """``Reader``'s page walk (see this module's doc)."""

    #: Set in ``Reader.__init__``: the index connection, in the page's snapshot.
    con: sqlite3.Connection

    def _hits(self, c: Conditions, want: int, newest_first: bool,
              after: int | None) -> tuple[list[tuple[int, int, int, int]],
                                          dict[int, tuple[str, bool]]]:
        """Up to ``want`` (seq, segment, offset, length), in page order."""
        if c.nothing:
            return [], {}
        con = self.con
        order = "DESC" if newest_first else "ASC"
        blocks = [b for (b,) in con.execute(
            "SELECT block FROM zones WHERE max_created >= ? AND min_created < ? ORDER BY block",
            (c.since, c.until))] if c.timed else None
        hits: list[tuple[int, int, int, int]] = []
        # The chunks not indexed, in walk order: where a run of indexed chunks walked in
        # one statement ends (``Conditions.indexed_run``). Few (the open one, the closed
        # ones the indexer has not reached), found through a partial index.
        unindexed = con.execute(
            f"SELECT segment, chunk FROM chunks WHERE state <> {INDEXED} AND rows > 0 "
            f"AND max_created >= ? AND min_created < ? "
            f"ORDER BY segment {order}, chunk {order}",
            (c.since, c.until)).fetchall() if c.runs else []
        resume: tuple[int, int] | None = None
        while True:
            resume = self._walk(c, resume, unindexed, blocks, hits, want, newest_first, after)
            if resume is None or len(hits) >= want:
                return hits, self._segments({h[1] for h in hits})

    def _walk(self, c: Conditions, start: tuple[int, int] | None,
              unindexed: list[tuple[int, int]], blocks: list[int] | None,
              hits: list[tuple[int, int, int, int]], want: int, newest_first: bool,
              after: int | None) -> tuple[int, int] | None:
        """Walk the chunks from ``start`` (segment, chunk; None: the first), adding to
        ``hits``; the chunk to walk on from after a run of indexed chunks was read in
        one statement, None when the walk is over (the page full, or no chunk left)."""
        con = self.con
        order = "DESC" if newest_first else "ASC"
        # Read as the walk goes, not fetched whole, and in the order of the chunks_segment
        # index (segment, chunk), which needs no sort: a page found in the newest chunks
        # must not cost a row per chunk of a store that holds thousands. Not in chunk
        # number order: a segment that start-up indexes afresh (its compressed copy
        # swapped in after a crash lost the index's note of it, ...) gets chunks
        # numbered after every later segment's. Segments are numbered in seq order, and
        # a segment's chunks in its seq order.
        held, held_params = c.catalog_filter()
        where = f"rows > 0 AND max_created >= ? AND min_created < ? AND {held}"
        params: tuple[Any, ...] = (c.since, c.until, *held_params)
        if start is not None:
            where += f" AND (segment, chunk) {'<=' if newest_first else '>='} (?, ?)"
            params += start
        chunks = con.execute(
            f"SELECT chunk, segment, first_seq, last_seq, state FROM chunks WHERE {where} "
            f"ORDER BY segment {order}, chunk {order}", params)
        try:
            for chunk, segment, low, high, state in chunks:
                # SQLite's handler sees the statements; between them, a walk of thousands
                # of chunks is Python's.
                check()
                if state == INDEXED:
                    here = (segment, chunk)
                    # In walk order, the first chunk not indexed past here.
                    stop = next((u for u in unindexed
                                 if (u < here if newest_first else u > here)), None)
                    run = c.indexed_run(here, stop, _run_seqs(blocks, after, newest_first),
                                        order)
                    if run is not None:
                        sql, run_params = run
                        hits += con.execute(sql, (*run_params, want - len(hits))).fetchall()
                        return None if len(hits) >= want else stop
                if after is not None:
                    if newest_first:
                        high = min(high, after - 1)
                    else:
                        low = max(low, after + 1)
                    if low > high:
                        continue
                if blocks is not None:  # narrow to the seq blocks the time window touches
                    i = bisect.bisect_left(blocks, low >> ZONE_SHIFT)
                    j = bisect.bisect_right(blocks, high >> ZONE_SHIFT)
                    if i == j:
                        continue
                    low = max(low, blocks[i] << ZONE_SHIFT)
                    high = min(high, ((blocks[j - 1] + 1) << ZONE_SHIFT) - 1)
                asked = c.statement(con, chunk, state == INDEXED, low, high, order)
                if asked is None:
                    continue
                sql, statement_params = asked
                rows = con.execute(sql, (*statement_params, want - len(hits))).fetchall()
                hits += [(seq, segment, off, length) for seq, off, length in rows]
                if len(hits) >= want:
                    return None
            return None
        finally:
            chunks.close()  # the rest of the walk is not needed

    def _segments(self, seqs: set[int]) -> dict[int, tuple[str, bool]]:
        if not seqs:
            return {}
        return {s: (n, bool(z)) for s, n, z in self.con.execute(
            f"SELECT seq, name, compressed FROM segments WHERE seq IN "
            f"({','.join('?' * len(seqs))})", tuple(seqs))}


def _run_seqs(blocks: list[int] | None, after: int | None,
              newest_first: bool) -> tuple[int, int]:
    """The seqs a run of indexed chunks may hold hits in: those of the time window's seq
    blocks (from the first to the last: a window's events are near each other in seq
    order, so this narrows a walk at the window's edges, as the zones do chunk by chunk)
    and past a cursor's ``after``."""
    low, high = FOREVER
    if blocks is not None:
        if not blocks:
            return 1, 0  # no block holds a time in the window: nothing
        low, high = blocks[0] << ZONE_SHIFT, ((blocks[-1] + 1) << ZONE_SHIFT) - 1
    if after is not None:
        if newest_first:
            high = min(high, after - 1)
        else:
            low = max(low, after + 1)
    return low, high
