"""``Reader``: a query connection to one data directory (re-exported by
``collector.query``), and what a page is (``Page``).

It opens the index read-only, refuses one it cannot trust (missing, half built, another
schema, being brought up to date: ``IndexUnavailableError``, ``IndexOutOfDateError``),
tells when the file was replaced under it (``stale``), and answers pages, lookups by
event id and the store's extent, each in one snapshot. Which chunks a page reads, and
how, is ``collector.query_walk`` (a part ``Reader`` inherits); its cursors are
``collector.query_cursors``.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from collector.index import CATCHING_UP, INDEX_SCHEMA, connect_reader, wal_path
from collector.index_catching_up import catching_up_refusal
from collector.query_cursors import _decode_cursor, _encode_cursor, _fingerprint, cursor_after
from collector.query_filters import Filters
from collector.query_walk import _PageWalk
from collector.storage.conditions import FOREVER, Conditions, compile_conditions
from collector.storage.errors import IndexOutOfDateError
from collector.storage.filters import QueryError
from collector.storage.reader import RecordReader
from collector.storage.records import id_key
from collector.storage.time_limit import check, checked, interruptible

MAX_LIMIT: Final = 10_000


class IndexUnavailableError(QueryError):
    """The index cannot be read now (missing, empty or half built, another schema, not
    readable): the data directory's state, not the query's fault. A ``QueryError`` still,
    so the read commands print it as one; the query API answers it 503, not 400."""


@dataclass
class Page:
    records: list[dict[str, Any]]
    next_cursor: str | None
    #: The time window the page was read in, microseconds since the epoch (None: no
    #: bound). A later page's comes from its cursor, not its filters: the API records
    #: it, so that a read's audit record says what was read whatever the cursor held.
    window: tuple[int | None, int | None] | None = None
    #: The seqs of matching records left out: retention deleted their segment while the
    #: page was read (after the index named them).
    gone: list[int] = dataclasses.field(default_factory=list)
    #: With ``bounds=True``: (oldest, newest) seq the page's index snapshot held, the
    #: segments retention deleted left out (oldest is newest + 1 when none is left). A
    #: reader going on from a cursor tells by it what was deleted before it got there.
    stored: tuple[int, int] | None = None


class Reader(_PageWalk):
    """A query connection to one data directory (use from one thread; ``search`` keeps
    one per thread for you, ``close_readers`` closes it). Close it when done: its
    segment files are plain descriptors, which the garbage collector never closes."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        index = data_dir / "index.sqlite"
        if not index.exists():
            raise IndexUnavailableError(f"{data_dir} holds no index.sqlite: is it a collector "
                                        f"data directory? (`audit-collector reindex` builds "
                                        f"one)")
        self._index = index
        # Which file: a restart that rebuilds the index replaces it (a new inode), and a
        # reader kept for hours (tail -f) must then read the new one (see ``stale``).
        self._index_ino, self._index_identity = _identity(os.stat(index))
        try:
            self.con, self._immutable = connect_reader(index)
        except sqlite3.OperationalError as exc:
            raise IndexUnavailableError(f"{index} cannot be read: {exc}") from None
        except sqlite3.DatabaseError as exc:  # read by connect_reader: not an index
            raise _incomplete(index, exc) from None
        try:
            schema = self.con.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            # An empty file is what a starting collector's rebuild shows for a moment.
            self.con.close()
            if "unable to open" in str(exc):  # no index to judge: a read-only directory
                raise IndexUnavailableError(
                    f"{index} cannot be opened ({exc}): reading it needs write access to "
                    f"its directory (SQLite's -shm file), even to query; copy a read-only "
                    f"snapshot somewhere writable") from None
            raise _incomplete(index, exc) from None
        if schema is None or schema[0] != INDEX_SCHEMA:
            self.con.close()
            raise IndexUnavailableError(
                f"{index} has index schema {schema and schema[0]}, this version reads "
                f"schema {INDEX_SCHEMA}: restart the collector (it rebuilds the index from "
                f"the segments at start), or stop it and run `audit-collector reindex`")
        try:
            self._check_complete()
        except IndexOutOfDateError:
            self.con.close()
            raise
        self._records = RecordReader(data_dir / "segments", self.con)

    def _check_complete(self) -> None:
        """Refuse an index being brought up to date. Checked at every read, inside its
        snapshot, not only when the reader opens: a long-lived reader (a ``tail -f``, an
        API worker) outlives a collector restart that repairs the same file in place."""
        catching_up = self.con.execute("SELECT value FROM meta WHERE key=?",
                                       (CATCHING_UP,)).fetchone()
        if catching_up is not None:
            raise IndexOutOfDateError(catching_up_refusal(
                self.data_dir, catching_up[0], "its answers would be partial"))

    @property
    def stale(self) -> bool:
        """Whether the index file this reader has open was replaced (or removed)."""
        try:
            ino, identity = _identity(os.stat(self._index))
        except FileNotFoundError:
            return True
        if not self._immutable:
            return ino != self._index_ino
        # A stopped store's file read as immutable: a collector started since writes
        # into its WAL, which this connection never reads; and one that has stopped
        # again since (or a reindex) copied its WAL into this file, under a connection
        # that neither sees the change nor drops the pages it has cached: its answers
        # missed what was written meanwhile, without a word.
        return identity != self._index_identity or wal_path(self._index).exists()

    def close(self) -> None:
        self._records.close()
        self.con.close()

    # -- pages --------------------------------------------------------------------------
    def search(self, filters: Filters, *, limit: int = 100, cursor: str | None = None,
               newest_first: bool = True, bounds: bool = False) -> Page:
        if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
            raise QueryError(f"limit must be an int from 1 to {MAX_LIMIT}, got {limit!r}")
        fingerprint = _fingerprint(filters, newest_first)
        state = _decode_cursor(cursor, fingerprint) if cursor else None
        con = self.con
        with interruptible(con):  # under the caller's time limit, if any
            con.execute("BEGIN")  # one snapshot for the whole page
            try:
                self._check_complete()
                compiled = self._compile(filters, state)
                hits, segments = self._hits(compiled, limit + 1, newest_first,
                                            state["s"] if state else None)
                stored = self._stored() if bounds else None
            finally:
                con.execute("COMMIT")
            gone: list[int] = []
            records = self._records.records(hits[:limit], segments, gone)
        next_cursor = None
        if len(hits) > limit:
            next_cursor = _encode_cursor({"s": hits[limit - 1][0], "f": fingerprint,
                                          "a": compiled.since, "b": compiled.until})
        window = None
        if compiled.timed:
            window = (compiled.since if compiled.since != FOREVER[0] else None,
                      compiled.until if compiled.until != FOREVER[1] else None)
        return Page(records, next_cursor, window, gone, stored)

    def _stored(self) -> tuple[int, int]:
        """(oldest, newest) seq of this snapshot; the chunks of deleted segments, hidden
        until their rows are dropped (``hide_segments``: no time), left out."""
        newest = self._newest_seq()
        oldest = self.con.execute(
            "SELECT min(first_seq) FROM chunks WHERE rows > 0 AND max_created >= ? "
            "AND min_created < ?", FOREVER).fetchone()[0]
        return (newest + 1 if oldest is None else int(oldest)), newest

    def find(self, event_id: str) -> dict[str, Any] | None:
        """The stored record of one event id, or None."""
        con = self.con
        with interruptible(con):
            con.execute("BEGIN")
            try:
                self._check_complete()
                row = con.execute("SELECT seq FROM ids WHERE id=?",
                                  (id_key(event_id),)).fetchone()
                chunk = row and con.execute(
                    "SELECT chunk, segment FROM chunks WHERE first_seq <= ? AND last_seq >= ?",
                    (row[0], row[0])).fetchone()
                hit = chunk and con.execute("SELECT seq, off, len FROM events WHERE seq=?",
                                            (row[0],)).fetchone()
                segments = self._segments({chunk[1]}) if hit else {}
            finally:
                con.execute("COMMIT")
            if not hit:
                return None
            found = self._records.records([(hit[0], chunk[1], hit[1], hit[2])], segments)
        return found[0] if found else None

    # These three are under the caller's time limit too, as a page is: ``query
    # --timeout`` lists the stored types after an empty answer (a store may hold a
    # million), and ran past its limit there.
    def newest_seq(self) -> int:
        """The seq of the newest record stored now (0: none)."""
        with interruptible(self.con):
            check()
            return self._newest_seq()

    def _newest_seq(self) -> int:
        """``newest_seq`` inside a page's snapshot (and its ``interruptible``: a nested
        one would end the snapshot when it ends)."""
        return int(self.con.execute("SELECT max(last_seq) FROM chunks").fetchone()[0] or 0)

    def stored_types(self) -> frozenset[str]:
        """Every event type the store holds (globs are matched against these)."""
        with interruptible(self.con):
            return frozenset(t for (t,) in checked(self.con.execute("SELECT type FROM types")))

    def follow_cursor(self, filters: Filters) -> str:
        """A cursor for ``search(..., newest_first=False)`` that starts after the newest
        record stored now: what ``tail -f`` polls with."""
        return cursor_after(self.newest_seq(), filters)

    # -- internals ----------------------------------------------------------------------
    def _compile(self, filters: Filters, state: dict[str, Any] | None) -> Conditions:
        if not isinstance(filters, Filters):
            raise QueryError("filters must be a collector.query.Filters")
        window = None
        if state is not None and (state["a"] is not None or state["b"] is not None):
            # A cursor this store made holds both bounds or neither; one edited by hand
            # may hold anything: an open bound is no bound, and none passes FOREVER.
            low, high = FOREVER
            window = (low if state["a"] is None else min(max(state["a"], low), high),
                      high if state["b"] is None else min(max(state["b"], low), high))
        return compile_conditions(self.con, filters, window)


def _incomplete(index: Path, exc: sqlite3.DatabaseError) -> IndexUnavailableError:
    return IndexUnavailableError(f"{index} is not a complete index ({exc}): a collector may "
                                 f"be building it right now (retry in a moment); if not, "
                                 f"stop it and run `audit-collector reindex`")


def _identity(st: os.stat_result) -> tuple[int, tuple[int, int, int]]:
    """The index file's inode, and what changes with any write to it."""
    return st.st_ino, (st.st_ino, st.st_size, st.st_mtime_ns)
