"""Group commit: the store's commit thread writes every pending submission in one go.

For a group: one index query finds the ids already stored (dedupe, also within the
group), each submission is numbered and placed (a submission never straddles two
segments), the records are appended, fsynced once (beside the index inserts) and
indexed in one transaction, then every submission's future resolves. On an error
nothing of the failed piece stays in the segment or the index.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from collector.index import CHUNK_ROWS, MAX_UNINDEXED, Index

from . import sources
from .errors import StorageError
from .failures import WriteFailure, checkable, write_failure
from .indexer import ChunkIndexer
from .records import Encoded, Row, Unencodable, rebase, record_lines
from .segment_set import SegmentSet
from .segments import ActiveSegment

if TYPE_CHECKING:
    from collector.integrity.ledger import Ledger

log = logging.getLogger("collector.store")

RATE_WINDOW: Final = 10.0  # seconds the ingest rate is averaged over


@dataclass(frozen=True)
class WriteResult:
    written: list[str]  # event ids appended + fsynced + indexed by this call
    duplicates: list[str]  # ids already stored (or repeated in the batch): not written again
    #: Events the store cannot encode as records, left out (their position in the
    #: submitted events, id, reason): ``Store.submit(..., reject_unencodable=True)``.
    rejected: list[Unencodable] = field(default_factory=list)


class Submission:
    __slots__ = ("encoded", "future", "numbered", "rejected", "source", "source_seqs")

    def __init__(self, encoded: Encoded, source: str, source_seqs: list[int] | None,
                 future: Future[WriteResult],
                 rejected: list[Unencodable] | None = None, numbered: int = 0) -> None:
        self.encoded = encoded
        self.source = source
        self.source_seqs = source_seqs
        self.future = future
        self.rejected = rejected or []  # events left out before the commit: in its result
        #: The highest number ``source`` said it had given out (0: not said).
        self.numbered = numbered


class _Prepared:
    """A submission's records after dedupe, numbered and placed, not yet written."""

    __slots__ = ("duplicates", "encoded", "in_group", "lines", "numbers", "rows", "size",
                 "sub")

    def __init__(self, sub: Submission) -> None:
        self.sub = sub
        self.encoded = sub.encoded
        self.lines: list[bytes] = []
        self.rows: list[Row] = []
        self.numbers: list[int] = []
        self.size = 0
        self.duplicates: list[str] = []
        #: Some duplicates' first copies are earlier in this group, not yet written.
        self.in_group = False



class GroupWriter:
    """The commit thread's state and its work on one group (one thread only, except
    ``sources`` which ``lock`` guards for readers)."""

    def __init__(self, index: Index, segments: SegmentSet, indexer: ChunkIndexer,
                 ledger: Ledger | None = None) -> None:
        self._index = index
        self._segments = segments
        self._indexer = indexer
        self._ledger = ledger  # tamper evidence (None: records are not chained)
        self._fsyncer = ThreadPoolExecutor(1, thread_name_prefix="audit-store-fsync")
        self.next_seq = index.max_seq() + 1
        self.stored = index.count()
        self.sources: dict[str, sources.Ranges] = index.source_ranges()
        self.numbered: dict[str, int] = index.source_numbered()
        self.seen: dict[str, int] = index.source_seen()  # ns of the last stored event
        #: The segment of each source's last stored event: retention forgets a source by
        #: it, not by time (a clock stepped back made live sources look older than
        #: deleted segments). Missing for sources last seen before it was kept.
        self.last_segment: dict[str, int] = index.source_segment()
        self.lock = threading.Lock()
        self.counts = collections.Counter[str]()
        self.fsync_seconds_total = 0.0
        self.fsync_seconds_max = 0.0
        self.rate: collections.deque[tuple[float, int]] = collections.deque()
        #: The failure of the last write, until a write succeeds.
        self.last_error: str | None = None
        #: What ends it (``failures.write_failure``), for the store's readiness.
        self.failure: WriteFailure | None = None
        #: Whether the idle store's write checks can show that failure ended
        #: (``failures.checkable``: the segment file's or the index's, not a bug's).
        self.failure_checkable = False

    def close(self) -> None:
        self._fsyncer.shutdown(wait=True)

    def commit(self, batch: list[Submission]) -> bool:
        """Dedupe (one index query for the group), number, place, write. True if records
        were written (every piece of the group): a group whose every future was cancelled
        (its senders gone) or that held only duplicates writes nothing, and shows no
        earlier failure of a commit ended (``Store._run``)."""
        subs = [s for s in batch if s.future.set_running_or_notify_cancel()]
        known = self._index.known_ids(list({k[0] for sub in subs for k in sub.encoded.keys}))
        seen: set[bytes | str] = set()
        # A submission never straddles two segments: the active one takes what fits,
        # then rotates (an empty segment takes a submission of any size).
        piece: list[_Prepared] = []
        piece_bytes = 0
        seq = self.next_seq
        # The chain runs on as if every piece is written: a failed piece fails the rest
        # of the group, so nothing is ever chained to a record that was not written.
        chain = self._ledger.chain if self._ledger is not None else None
        # A submission of nothing but duplicates is answered now when the index holds
        # them; when their first copies are earlier in this group (a resend beside its
        # original), only once the group is written: answered before, a failed write of
        # the original left both unstored and the resend acknowledged (lost).
        waiting: list[_Prepared] = []
        for n, sub in enumerate(subs):
            p = self._dedupe(sub, known, seen)
            if not p.encoded.ids:
                if p.in_group:
                    waiting.append(p)
                    continue
                self.counts["duplicates"] += len(p.duplicates)
                sub.future.set_result(WriteResult([], p.duplicates, sub.rejected))
                continue
            offset = self._segments.active.size + piece_bytes
            p.lines, p.rows = record_lines(p.encoded, seq, sub.source, p.numbers or None,
                                           offset, chain)
            if chain is not None:
                chain = p.lines[-1][-67:-3]
            p.size = p.rows[-1][-2] + p.rows[-1][-1] - offset
            if self._segments.rotation_due(piece_bytes + p.size, bool(piece)):
                if piece and not self._write_piece(piece):
                    self._fail_rest([sub, *subs[n + 1:], *(w.sub for w in waiting)])
                    return False
                piece, piece_bytes = [], 0
                self._segments.rotate(self.sealed)
                moved = self._segments.active.size - offset
                if moved:
                    p.rows = rebase(p.rows, moved)
            piece.append(p)
            piece_bytes += p.size
            seq += len(p.lines)
        if piece and not self._write_piece(piece):
            self._fail_rest([w.sub for w in waiting])
            return False
        for w in waiting:
            self.counts["duplicates"] += len(w.duplicates)
            w.sub.future.set_result(WriteResult([], w.duplicates, w.sub.rejected))
        return bool(piece)

    @staticmethod
    def _dedupe(sub: Submission, known: set[bytes | str],
                seen: set[bytes | str]) -> _Prepared:
        p = _Prepared(sub)
        keys = [k[0] for k in sub.encoded.keys]  # the ids as the index keys them
        unique = set(keys)
        if len(unique) == len(keys) and unique.isdisjoint(known) and unique.isdisjoint(seen):
            p.numbers = sub.source_seqs or []  # the common case, without a loop
            seen |= unique
            return p
        keep = []
        for i, key in enumerate(keys):
            if key in known:
                p.duplicates.append(sub.encoded.ids[i])
            elif key in seen:
                p.duplicates.append(sub.encoded.ids[i])
                p.in_group = True
            else:
                seen.add(key)
                keep.append(i)
        p.encoded = sub.encoded.pick(keep)
        if sub.source_seqs:
            p.numbers = [sub.source_seqs[i] for i in keep]
        return p

    def _write_piece(self, piece: list[_Prepared]) -> bool:
        """Append, fsync and index the records of ``piece`` (all into the active
        segment); resolve their futures. False if the write failed (nothing stays)."""
        active = self._segments.active
        index = self._index
        rows: list[Row] = []
        for p in piece:
            rows += p.rows
        data = b"".join(line for p in piece for line in p.lines)
        changed = self._new_ranges(piece)
        announced = self._new_numbered(piece)
        now_ns = time.time_ns()
        seen = {p.sub.source: now_ns for p in piece if p.sub.source}
        segment = active.header.seq
        moved = [s for s in seen if self.last_segment.get(s) != segment]
        start = active.size
        try:
            if self._ledger is not None and not active.records:
                self._ledger.require_seal()
            active.append(data)
        except OSError as exc:
            self._fail(piece, exc, "appending to")
            return False
        # The fsync runs beside the index inserts; the index commits only after it.
        synced = self._fsyncer.submit(self._timed_sync, active)
        try:
            index.begin()
            index.add_segment(active.path.name, active.header, start)
            index.add_rows(active.header.seq, rows, active.size)
            index.set_source_ranges(changed)
            index.set_source_numbered(announced)
            index.set_source_seen(seen)
            if moved:
                index.set_source_segment(segment, moved)
            synced.result()
            index.commit()
        except Exception as exc:  # noqa: BLE001 - OSError, sqlite3.Error or a bug: nothing may stay
            synced.exception()  # wait for the fsync either way
            index.rollback()
            try:
                active.cut(start)
            except OSError:
                # The records end at start: the bytes after it are cut before the next
                # append or a rotation (size kept at the failed piece's end, that cut
                # cut nothing, and the failed records stayed in the file).
                active.size = start
                active.needs_cut = True
            self._fail(piece, exc, "syncing or indexing")
            return False
        written = len(rows)
        if self._ledger is not None:
            first, last = piece[0], piece[-1]
            self._ledger.appended(data, active.size, written,
                                  (rows[0][0], first.encoded.ids[0], rows[0][2]),
                                  (rows[-1][0], last.encoded.ids[-1], rows[-1][2]),
                                  last.lines[-1][-67:-3])
        active.records += written
        self.next_seq = rows[-1][0] + 1
        self.stored += written
        with self.lock:
            self.sources.update(changed)
            self.numbered.update(announced)
            self.seen.update(seen)
        for source in moved:
            self.last_segment[source] = segment
        self.counts["fsyncs"] += 1
        self.counts["written"] += written
        self.last_error = None  # written again: the failure is over (``write_errors`` counts it)
        self.failure = None
        now = time.monotonic()
        self.rate.append((now, written))
        while now - self.rate[0][0] > RATE_WINDOW:
            self.rate.popleft()
        for p in piece:
            self.counts["duplicates"] += len(p.duplicates)
            p.sub.future.set_result(WriteResult(p.encoded.ids, p.duplicates, p.sub.rejected))
        if index.open_chunk is not None and index.open_chunk.rows >= CHUNK_ROWS:
            index.close_chunk()
        self.index_closed_chunks()
        return True

    def _timed_sync(self, active: ActiveSegment) -> None:
        started = time.perf_counter()
        active.sync()
        took = time.perf_counter() - started
        # Read by stats() and the metrics: fsync latency is where a slow disk shows first.
        self.fsync_seconds_total += took
        self.fsync_seconds_max = max(self.fsync_seconds_max, took)

    def _new_ranges(self, piece: list[_Prepared]) -> dict[str, sources.Ranges]:
        numbered: dict[str, list[int]] = {}
        for p in piece:
            if p.sub.source and p.numbers:
                numbered.setdefault(p.sub.source, []).extend(p.numbers)
        return {s: sources.add(self.sources.get(s, []), n) for s, n in numbered.items()}

    def _new_numbered(self, piece: list[_Prepared]) -> dict[str, int]:
        """Sources whose highest announced number rose with this piece."""
        raised: dict[str, int] = {}
        for p in piece:
            source, numbered = p.sub.source, p.sub.numbered
            if source and numbered > max(raised.get(source, 0), self.numbered.get(source, 0)):
                raised[source] = numbered
        return raised

    def _fail(self, piece: list[_Prepared], exc: BaseException, doing: str) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        # Judged on the index's disk: the directory only decides SQLite's "disk I/O
        # error" (the index unable to grow its files), and segments/ may be a file
        # system of its own (its OSErrors say ENOSPC themselves).
        self.failure = write_failure(exc, self._index.path.parent)
        self.failure_checkable = checkable(exc)
        self.counts["write_errors"] += 1
        name = self._segments.active.path.name
        log.error("audit store: %s %s failed: %s", doing, name, exc)
        error = StorageError(
            f"{doing} {name} failed ({exc}); none of these records was "
            f"stored: retry when the cause is fixed (e.g. disk space)")
        for p in piece:
            p.sub.future.set_exception(error)

    def _fail_rest(self, rest: list[Submission]) -> None:
        error = StorageError(
            f"not written: an earlier write in the same group failed ({self.last_error}); "
            f"retry")
        for sub in rest:
            sub.future.set_exception(error)

    def forget_sources(self, oldest_kept: int, seen_before_ns: int) -> list[str]:
        """Forget the sources whose last record was in a segment older than every segment
        left (``oldest_kept``, the lowest segment number that still exists): their
        ranges, numbered and last_seen; returns their names. Such a source has no record
        left, and its entries would otherwise be kept forever, one per app process ever
        started (a reindex cannot bring it back: nothing of it remains). By position, not
        by time or by the numbers deleted: after a clock stepped back, retention by age
        can delete a newer segment and keep an older one, which may hold a source's
        earlier records (such a source is kept, for a while longer than it needs). A
        source whose segment is unknown (last stored by an older version) goes by time:
        last seen before ``seen_before_ns``, the time before which every record is
        deleted. One with neither is kept."""
        last_segment = self.last_segment
        old = [s for s, at in self.seen.items()
               if (last_segment[s] < oldest_kept if s in last_segment
                   else at < seen_before_ns)]
        if not old:
            return []
        with self._index.transaction():
            self._index.forget_sources(old)
        with self.lock:
            for source in old:
                self.sources.pop(source, None)
                self.numbered.pop(source, None)
                del self.seen[source]
                self.last_segment.pop(source, None)
        self.counts["sources_forgotten"] += len(old)
        return old

    def sealed(self, segment: int) -> None:
        """A segment was sealed: its last chunk is complete."""
        chunk = self._index.open_chunk
        if chunk is not None and chunk.segment == segment:
            self._index.close_chunk()
        self.index_closed_chunks()

    def index_closed_chunks(self) -> None:
        """Hand closed chunks to the indexer; if it is too far behind, wait for it (the
        store then runs at the indexer's pace, and queries stay fast)."""
        closed = self._index.newly_closed
        if not closed:
            return
        for chunk in closed:
            self._indexer.submit(chunk)
        closed.clear()
        self._indexer.wait(most=MAX_UNINDEXED)
