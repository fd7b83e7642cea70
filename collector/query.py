"""Querying stored audit records: filters, keyset pages, streaming, reindex.

    page = search(data_dir, Filters(principal="u-1", org="o-1", since="1h"))
    while page.next_cursor:
        page = search(data_dir, filters, cursor=page.next_cursor)

Pages are ordered by ``seq`` (arrival order; newest first by default) and the cursor is
a keyset on it, so paging stays stable while new events arrive: a page never repeats or
skips a record that existed when paging began. Relative times ("24h") are resolved on
the first page and carried in the cursor.

Each index chunk is queried in turn through its indexes (see ``collector.index``) and
the records are read back from the segments by offset: a page never scans a segment.
What each chunk is asked, and through which index, is ``collector.storage.conditions``.
"""

from __future__ import annotations

import base64
import bisect
import dataclasses
import hashlib
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from collector.index import CATCHING_UP, INDEX_SCHEMA, ZONE_SHIFT, Index, connect_reader, wal_path
from collector.storage.chunks import INDEXED
from collector.storage.conditions import FOREVER, Conditions, compile_conditions
from collector.storage.data_dir_lock import lock_data_dir
from collector.storage.errors import IndexOutOfDateError
from collector.storage.filters import QueryError, check_text
from collector.storage.reader import RecordReader
from collector.storage.records import id_key
from collector.storage.recovery import RepairReport, open_and_recover
from collector.storage.time_limit import check, checked, interruptible

if TYPE_CHECKING:
    from collector.store import Store

__all__ = ["Filters", "IndexUnavailableError", "Page", "QueryError", "Reader", "close_readers",
           "cursor_after", "find", "follow_cursor", "iter_records", "reindex", "search"]

MAX_LIMIT: Final = 10_000


@dataclass(frozen=True)
class Filters:
    types: tuple[str, ...] = ()  # exact names or globs like "run_*" (OR)
    principal: str | None = None
    target: str | None = None
    org: str | None = None  # matches org_id
    workspace: str | None = None  # matches workspace_id
    client_ip: str | None = None  # an IP or a CIDR (IPv4/IPv6)
    since: str | None = None  # RFC 3339, YYYY-MM-DD-HH-MM-SS (UTC), or "15m"/"24h"/"7d"
    until: str | None = None  # exclusive
    status: str | None = None  # exact ("" matches the events without a status)
    org_name: str | None = None  # exact: the name the event carried
    workspace_name: str | None = None  # exact: the name the event carried


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


class Reader:
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
            raise IndexOutOfDateError(
                f"{self._index} is being brought up to date with the segments "
                f"({catching_up[0]}): its answers would be partial. Wait for the "
                f"collector's start-up or `reindex` to finish; if neither runs, one was "
                f"interrupted: run `audit-collector reindex`")

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


def _incomplete(index: Path, exc: sqlite3.DatabaseError) -> IndexUnavailableError:
    return IndexUnavailableError(f"{index} is not a complete index ({exc}): a collector may "
                                 f"be building it right now (retry in a moment); if not, "
                                 f"stop it and run `audit-collector reindex`")


def _identity(st: os.stat_result) -> tuple[int, tuple[int, int, int]]:
    """The index file's inode, and what changes with any write to it."""
    return st.st_ino, (st.st_ino, st.st_size, st.st_mtime_ns)


# -- module-level API (a Reader per thread and data directory, for a few of them) -----------
#: Data directories a thread keeps a Reader open for between calls; beyond these, the
#: one it used least recently is closed. A thread kept one for every directory it ever
#: queried, for good: one that went through many (a test run, a tool visiting several
#: collectors' directories) held about six descriptors each, ~700 by the end of tests/api.
KEEP_READERS: Final = 4


class _ThreadReaders:
    """One thread's Readers, by data directory, the most recently used last."""

    def __init__(self) -> None:
        self._readers: OrderedDict[Path, Reader] = OrderedDict()

    def get(self, data_dir: Path) -> Reader:
        reader = self._readers.get(data_dir)
        if reader is not None and reader.stale:  # the index was rebuilt since: reopen
            self.close(data_dir)
            reader = None
        if reader is None:
            reader = self._readers[data_dir] = Reader(data_dir)
        self._readers.move_to_end(data_dir)
        while len(self._readers) > KEEP_READERS:
            self._readers.popitem(last=False)[1].close()
        return reader

    def close(self, data_dir: Path | None = None) -> None:
        for key in list(self._readers) if data_dir is None else [data_dir]:
            reader = self._readers.pop(key, None)
            if reader is not None:
                reader.close()

    def __del__(self) -> None:
        # Run when the thread ends (its ``threading.local`` value is dropped): left to the
        # garbage collector, a Reader's SQLite connection was closed but its segment
        # files (plain descriptors, up to 16) never were, for each thread that queried.
        self.close()


_local = threading.local()


def _thread_readers() -> _ThreadReaders:
    readers: _ThreadReaders | None = getattr(_local, "readers", None)
    if readers is None:
        readers = _local.readers = _ThreadReaders()
    return readers


def _reader(index_path_or_store: Store | Path | str) -> Reader:
    return _thread_readers().get(_data_dir(index_path_or_store))


def close_readers(index_path_or_store: Store | Path | str | None = None) -> None:
    """Close the Readers the module-level functions (``search``, ``iter_records``, ...)
    keep open on this thread: the one of a data directory, or all of them (None). For
    a thread or a program done with a data directory (a test's, once its store is
    closed): its index and segment files are not held until the thread ends. A later
    call opens a new one."""
    readers: _ThreadReaders | None = getattr(_local, "readers", None)
    if readers is not None:
        readers.close(None if index_path_or_store is None
                      else _data_dir(index_path_or_store))


def _data_dir(index_path_or_store: Store | Path | str) -> Path:
    settings = getattr(index_path_or_store, "settings", None)
    if settings is not None:
        return Path(settings.data_dir).resolve()
    path = Path(index_path_or_store)  # type: ignore[arg-type]
    return (path.parent if path.name == "index.sqlite" else path).resolve()


def search(index_path_or_store: Store | Path | str, filters: Filters, *, limit: int = 100,
           cursor: str | None = None, newest_first: bool = True,
           bounds: bool = False) -> Page:
    """One page of the records matching ``filters`` (a data directory, its
    index.sqlite, or an open Store); ``bounds``: with ``Page.stored``."""
    return _reader(index_path_or_store).search(filters, limit=limit, cursor=cursor,
                                               newest_first=newest_first, bounds=bounds)


def iter_records(index_path_or_store: Store | Path | str, filters: Filters | None = None, *,
                 newest_first: bool = False, page_size: int = 1000,
                 cursor: str | None = None) -> Iterator[dict[str, Any]]:
    """Every matching record, a page at a time (constant memory: for exports)."""
    filters = filters or Filters()
    while True:
        page = search(index_path_or_store, filters, limit=page_size, cursor=cursor,
                      newest_first=newest_first)
        yield from page.records
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def find(index_path_or_store: Store | Path | str, event_id: str) -> dict[str, Any] | None:
    """The stored record of ``event_id``, or None."""
    return _reader(index_path_or_store).find(check_text(event_id, "event id"))


def stored_types(index_path_or_store: Store | Path | str) -> frozenset[str]:
    """Every event type the store holds."""
    return _reader(index_path_or_store).stored_types()


def follow_cursor(index_path_or_store: Store | Path | str, filters: Filters) -> str:
    """Where ``tail -f`` starts: pass it to ``search(..., newest_first=False)``."""
    return _reader(index_path_or_store).follow_cursor(filters)


def newest_seq(index_path_or_store: Store | Path | str) -> int:
    """The seq of the newest record stored now (0: none)."""
    return _reader(index_path_or_store).newest_seq()


def reindex(data_dir: Path | str, progress: Callable[[int, int], None] | None = None) -> RepairReport:
    """Rebuild index.sqlite from the segments (plain and compressed). ``progress`` gets
    (bytes done, bytes total). Refuses while a collector holds the data directory."""
    data_dir = Path(data_dir)
    segments = data_dir / "segments"
    if not segments.is_dir():
        raise QueryError(f"{data_dir} has no segments/ directory: not a collector data "
                         f"directory")
    (data_dir / "quarantine").mkdir(mode=0o750, exist_ok=True)
    lock = lock_data_dir(data_dir)
    try:
        index, report = open_and_recover(
            data_dir / "index.sqlite", segments, data_dir / "quarantine", make_index=Index,
            rebuild="reindex requested", progress=progress)
        try:
            index.close_chunk()
            for chunk in index.closed_chunks():
                index.build_indexes(chunk)
            index.checkpoint()
        finally:
            index.close()
    finally:
        lock.close()
    return report


# -- cursors ------------------------------------------------------------------------------
def cursor_after(seq: int, filters: Filters | None = None) -> str:
    """A cursor for ``search(filters, newest_first=False)`` that continues after record
    ``seq``: the cursor a page ending at ``seq`` would have returned (a follower that
    keeps its own position, such as the forwarder's checkpoint, resumes with it)."""
    return _encode_cursor({"s": seq, "f": _fingerprint(filters or Filters(), False),
                           "a": None, "b": None})


def cursor_before(seq: int, filters: Filters | None = None) -> str:
    """A cursor for ``search(filters, newest_first=True)`` that continues with the records
    before ``seq``: the last N as of a moment, however many arrived since (``tail``)."""
    return _encode_cursor({"s": seq, "f": _fingerprint(filters or Filters(), True),
                           "a": None, "b": None})


def _fingerprint(filters: Filters, newest_first: bool) -> str:
    body = orjson.dumps([dataclasses.astuple(filters), newest_first], default=str)
    return hashlib.sha256(body).hexdigest()[:16]


def _encode_cursor(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"v": 1, **state})).decode().rstrip("=")


def _decode_cursor(cursor: object, fingerprint: str) -> dict[str, Any]:
    try:
        if not isinstance(cursor, str) or len(cursor) > 512:
            raise ValueError
        state = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if (state["v"] != 1 or type(state["s"]) is not int or type(state["f"]) is not str
                or not all(state[k] is None or type(state[k]) is int for k in "ab")):
            raise ValueError
    except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
        raise QueryError("cursor is not one this store returned: pass a page's "
                         "next_cursor unchanged") from None
    if state["f"] != fingerprint:
        raise QueryError("this cursor belongs to another query: page with the same "
                         "filters and order that produced it")
    return state  # type: ignore[no-any-return]
