"""The store: durable, deduplicated, indexed audit records (the collector's write side).

One commit thread owns the active segment and the index. ``submit`` only enqueues; the
commit thread takes every pending submission at once (group commit), drops ids already
stored, appends the records, fsyncs once, indexes them in one transaction and then
resolves every submission's future. While one group is being written the next one
gathers, so the busier the store, the more events share an fsync.

Data directory layout (dirs 0750, files 0640)::

    segments/segment-<seq:08d>-<UTC YYYYmmddTHHMMSSZ>.jsonl[.gz]
    index.sqlite          derived: rebuilt from the segments when missing or damaged
    quarantine/           torn tails cut from a segment at start-up
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from collector.index import CHUNK_ROWS, MAX_UNINDEXED, ChunkIndexer, Index
from collector.storage import sources
from collector.storage.compression import BlockMap, compress
from collector.storage.errors import (
    DataDirInUseError,
    StorageError,
    StorageSettingsError,
    StoreClosedError,
)
from collector.storage.records import (
    Encoded,
    Row,
    check_source,
    created_micros,
    encode_events,
    rebase,
    record_lines,
)
from collector.storage.recovery import RepairReport, recover, reset_index_files
from collector.storage.retention import SealedInfo, expired
from collector.storage.segments import (
    DIR_MODE,
    FILE_MODE,
    ActiveSegment,
    fsync_dir,
    header_of,
    list_segment_files,
    seal,
)

__all__ = ["RepairReport", "StorageError", "StorageSettings", "Store", "WriteResult"]

log = logging.getLogger("collector.store")

_TICK: Final = 0.5  # housekeeping period (age rotation, retention, idle chunk close)
_IDLE_CHUNK_ROWS: Final = 4_096  # an idle store indexes an open chunk this big
_IDLE_SECONDS: Final = 1.0
_RATE_WINDOW: Final = 10.0
LOCK_FILE: Final = "store.lock"


@dataclass(frozen=True)
class StorageSettings:
    data_dir: Path
    max_segment_bytes: int = 64 * 1024 * 1024
    max_segment_age: float = 3600.0  # seconds
    compress_sealed: bool = False
    retention_days: float = 365.0
    retention_bytes: int | None = None  # total size cap of sealed segments

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.max_segment_bytes < 1024:
            raise StorageSettingsError(
                f"max_segment_bytes={self.max_segment_bytes}: use at least 1024 bytes")
        if self.max_segment_age <= 0:
            raise StorageSettingsError(
                f"max_segment_age={self.max_segment_age}: use a positive number of seconds")
        if self.retention_days <= 0:
            raise StorageSettingsError(
                f"retention_days={self.retention_days}: use a positive number of days")
        if self.retention_bytes is not None and self.retention_bytes < 0:
            raise StorageSettingsError(
                f"retention_bytes={self.retention_bytes}: use a size in bytes, or None")


@dataclass(frozen=True)
class WriteResult:
    written: list[str]  # event ids appended + fsynced + indexed by this call
    duplicates: list[str]  # ids already stored (or repeated in the batch): not written again


class _Submission:
    __slots__ = ("encoded", "source", "source_seqs", "future")

    def __init__(self, encoded: Encoded, source: str, source_seqs: list[int] | None,
                 future: Future[WriteResult]) -> None:
        self.encoded = encoded
        self.source = source
        self.source_seqs = source_seqs
        self.future = future


class _Prepared:
    """A submission's records after dedupe, numbered and placed, not yet written."""

    __slots__ = ("sub", "encoded", "lines", "rows", "numbers", "size", "duplicates")

    def __init__(self, sub: _Submission) -> None:
        self.sub = sub
        self.encoded = sub.encoded
        self.lines: list[bytes] = []
        self.rows: list[Row] = []
        self.numbers: list[int] = []
        self.size = 0
        self.duplicates: list[str] = []


class _Sealed:
    __slots__ = ("path", "size", "sealed_ns", "compressed")

    def __init__(self, path: Path, size: int, sealed_ns: int, compressed: bool) -> None:
        self.path = path
        self.size = size
        self.sealed_ns = sealed_ns
        self.compressed = compressed


class Store:
    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self.segments_dir = settings.data_dir / "segments"
        self.quarantine_dir = settings.data_dir / "quarantine"
        self.index_path = settings.data_dir / "index.sqlite"
        self._lock = threading.Lock()
        self._pending: list[_Submission] = []
        self._wake = threading.Event()
        self._state = "new"  # new -> open -> closing -> closed
        self._thread: threading.Thread | None = None
        self._counts = collections.Counter[str]()
        self._rate: collections.deque[tuple[float, int]] = collections.deque()
        self._sources: dict[str, sources.Ranges] = {}
        self._sealed: dict[int, _Sealed] = {}
        self._compressed: collections.deque[tuple[int, Path, BlockMap]] = collections.deque()
        self._compressing: set[int] = set()
        self._last_activity = time.monotonic()
        self._last_error: str | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def open(self) -> RepairReport:
        """Create the directories, repair what a crash left (a torn tail goes to
        quarantine), index records missing from the index, start the commit thread."""
        if self._state != "new":
            raise StorageError("this Store was opened already: create a new Store")
        for d in (self.settings.data_dir, self.segments_dir, self.quarantine_dir):
            d.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self._lock_fd = lock_data_dir(self.settings.data_dir)
        try:
            report = self._open_storage()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._fsyncer = ThreadPoolExecutor(1, thread_name_prefix="audit-store-fsync")
        self._compressor = ThreadPoolExecutor(1, thread_name_prefix="audit-store-compress")
        if self.settings.compress_sealed:
            for seq, info in self._sealed.items():
                if not info.compressed:
                    self._schedule_compression(seq, info.path)
        self._state = "open"
        self._thread = threading.Thread(target=self._run, name="audit-store-commit",
                                        daemon=True)
        self._thread.start()
        return report

    def _open_storage(self) -> RepairReport:
        rebuild = None
        write_lock = threading.Lock()
        try:
            self._index = Index(self.index_path, write_lock)
        except sqlite3.DatabaseError as exc:
            reset_index_files(self.index_path)
            self._index = Index(self.index_path, write_lock)
            rebuild = f"index unreadable ({exc})"
        report = recover(self.segments_dir, self.quarantine_dir, self._index, rebuild=rebuild)
        index = self._index
        self._indexer = ChunkIndexer(self.index_path, write_lock)
        for chunk in index.closed_chunks():
            self._indexer.submit(chunk)
        files = list_segment_files(self.segments_dir)
        catalog = index.segments()
        if files and not files[-1].compressed:
            last = files[-1]
            self._active = ActiveSegment.reopen(last.path, catalog[last.seq].records)
            sealed_files = files[:-1]
        else:
            previous = header_of(files[-1]).id if files else ""
            seq = files[-1].seq + 1 if files else 1
            self._active = ActiveSegment.create(self.segments_dir, seq, previous)
            self._register(self._active)
            sealed_files = files
        # A segment was sealed when the next one was created.
        following = [*sealed_files[1:], None]
        for f, after in zip(sealed_files, following):
            sealed_ns = (self._active.created_ns if after is None
                         else created_micros(header_of(after).created) * 1000)
            self._sealed[f.seq] = _Sealed(f.path, f.path.stat().st_size, sealed_ns,
                                          f.compressed)
        self._next_seq = index.max_seq() + 1
        self._sources = index.source_ranges()
        self._stored = index.count()
        return report

    def close(self) -> None:
        """Drain pending submissions (written and acknowledged), fsync, stop the threads."""
        with self._lock:
            if self._state != "open":
                self._state = "closed"
                return
            self._state = "closing"
        self._wake.set()
        assert self._thread is not None
        self._thread.join()
        self._compressor.shutdown(wait=True, cancel_futures=True)
        self._apply_compressed()
        self._fsyncer.shutdown(wait=True)
        try:
            self._active.sync()
        finally:
            self._active.close()
            self._indexer.close()  # finishes the closed chunks' indexes
            self._index.close()
            os.close(self._lock_fd)
            self._state = "closed"

    def __enter__(self) -> Store:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------
    def submit(self, events: list[dict[str, Any]], source: str = "",
               source_seqs: list[int] | None = None) -> Future[WriteResult]:
        """Queue ``events`` (validated dicts with the 14 schema fields and an optional
        ``peer_ip``). Thread-safe, never blocks on I/O. The future resolves after the
        records are fsynced to the segment and committed to the index, or fails with a
        ``StorageError`` naming the cause (then none of them is stored)."""
        future: Future[WriteResult] = Future()
        try:
            events = list(events)
            check_source(source, source_seqs, len(events))
            # Encoding here, on the caller's thread, while the dicts it just parsed are
            # still in the CPU cache, costs half of what it costs in a group later.
            encoded = encode_events(events)
        except TypeError:
            return self._rejected(future, StorageError("events must be a list of event dicts"))
        except StorageError as exc:
            return self._rejected(future, exc)
        sub = _Submission(encoded, source, list(source_seqs) if source_seqs else None, future)
        with self._lock:
            if self._state != "open":
                future.set_exception(StoreClosedError(
                    "the store is not open: call Store.open() first, and do not submit "
                    "after Store.close()"))
                return future
            self._pending.append(sub)
        self._wake.set()
        return future

    def _rejected(self, future: Future[WriteResult], exc: StorageError) -> Future[WriteResult]:
        with self._lock:
            self._counts["rejected"] += 1
        future.set_exception(exc)
        return future

    def write(self, events: list[dict[str, Any]], source: str = "",
              source_seqs: list[int] | None = None) -> WriteResult:
        return self.submit(events, source, source_seqs).result()

    # -- the commit thread --------------------------------------------------------------
    def _run(self) -> None:
        last_housekeeping = time.monotonic()
        while True:
            self._wake.wait(_TICK)
            self._wake.clear()
            with self._lock:
                batch, self._pending = self._pending, []
                closing = self._state == "closing"
            try:
                if batch:
                    self._commit(batch)
                    self._last_activity = time.monotonic()
                self._apply_compressed()
                now = time.monotonic()
                if not batch or now - last_housekeeping >= _TICK:
                    self._housekeeping(idle=not batch)
                    last_housekeeping = now
            except Exception as exc:  # never let the commit thread die
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.exception("audit store: commit or housekeeping failed")
                for sub in batch:
                    if not sub.future.done():
                        sub.future.set_exception(StorageError(str(exc)))
            if closing:
                with self._lock:
                    if not self._pending:
                        return

    def _commit(self, batch: list[_Submission]) -> None:
        """Dedupe (one index query for the group), number, place, write."""
        subs = [s for s in batch if s.future.set_running_or_notify_cancel()]
        known = self._index.known_ids(list({i for sub in subs for i in sub.encoded.ids}))
        seen: set[str] = set()
        # A submission never straddles two segments: the active one takes what fits,
        # then rotates (an empty segment takes a submission of any size).
        piece: list[_Prepared] = []
        piece_bytes = 0
        seq = self._next_seq
        for n, sub in enumerate(subs):
            p = self._dedupe(sub, known, seen)
            if not p.encoded.ids:
                self._counts["duplicates"] += len(p.duplicates)
                sub.future.set_result(WriteResult([], p.duplicates))
                continue
            offset = self._active.size + piece_bytes
            p.lines, p.rows = record_lines(p.encoded, seq, sub.source, p.numbers or None,
                                           offset)
            p.size = p.rows[-1][10] + p.rows[-1][11] - offset
            if self._rotation_due(piece_bytes + p.size, bool(piece)):
                if piece and not self._write_piece(piece):
                    self._fail_rest([sub, *subs[n + 1:]])
                    return
                piece, piece_bytes = [], 0
                self._rotate()
                if self._active.size != offset:
                    p.rows = rebase(p.rows, self._active.size - offset)
            piece.append(p)
            piece_bytes += p.size
            seq += len(p.lines)
        if piece:
            self._write_piece(piece)

    @staticmethod
    def _dedupe(sub: _Submission, known: set[str], seen: set[str]) -> _Prepared:
        p = _Prepared(sub)
        ids = sub.encoded.ids
        unique = set(ids)
        if len(unique) == len(ids) and unique.isdisjoint(known) and unique.isdisjoint(seen):
            p.numbers = sub.source_seqs or []  # the common case, without a loop
            seen |= unique
            return p
        keep = []
        for i, event_id in enumerate(ids):
            if event_id in known or event_id in seen:
                p.duplicates.append(event_id)
            else:
                seen.add(event_id)
                keep.append(i)
        p.encoded = sub.encoded.pick(keep)
        if sub.source_seqs:
            p.numbers = [sub.source_seqs[i] for i in keep]
        return p

    def _write_piece(self, piece: list[_Prepared]) -> bool:
        """Append, fsync and index the records of ``piece`` (all into the active
        segment); resolve their futures. False if the write failed (nothing stays)."""
        active = self._active
        index = self._index
        rows: list[Row] = []
        for p in piece:
            rows += p.rows
        data = b"".join(line for p in piece for line in p.lines)
        changed = self._new_ranges(piece)
        start = active.size
        try:
            active.append(data)
        except OSError as exc:
            self._fail(piece, exc, "appending to")
            return False
        # The fsync runs beside the index inserts; the index commits only after it.
        synced = self._fsyncer.submit(active.sync)
        try:
            index.begin()
            index.add_segment(active.path.name, active.header, start)
            index.add_rows(active.header.seq, rows, active.size)
            index.set_source_ranges(changed)
            synced.result()
            index.commit()
        except Exception as exc:  # OSError, sqlite3.Error, or a bug: nothing may stay
            synced.exception()  # wait for the fsync either way
            index.rollback()
            try:
                active.cut(start)
            except OSError:
                active.needs_cut = True  # retried before the next append
            self._fail(piece, exc, "syncing or indexing")
            return False
        written = len(rows)
        active.records += written
        self._next_seq = rows[-1][0] + 1
        self._stored += written
        with self._lock:
            self._sources.update(changed)
        self._counts["fsyncs"] += 1
        self._counts["written"] += written
        now = time.monotonic()
        self._rate.append((now, written))
        while now - self._rate[0][0] > _RATE_WINDOW:
            self._rate.popleft()
        for p in piece:
            self._counts["duplicates"] += len(p.duplicates)
            p.sub.future.set_result(WriteResult(p.encoded.ids, p.duplicates))
        if index.open_chunk is not None and index.open_chunk.rows >= CHUNK_ROWS:
            self._close_chunk()
        return True

    def _new_ranges(self, piece: list[_Prepared]) -> dict[str, sources.Ranges]:
        numbered: dict[str, list[int]] = {}
        for p in piece:
            if p.sub.source and p.numbers:
                numbered.setdefault(p.sub.source, []).extend(p.numbers)
        return {s: sources.add(self._sources.get(s, []), n) for s, n in numbered.items()}

    def _fail(self, piece: list[_Prepared], exc: BaseException, doing: str) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._counts["write_errors"] += 1
        log.error("audit store: %s %s failed: %s", doing, self._active.path.name, exc)
        error = StorageError(
            f"{doing} {self._active.path.name} failed ({exc}); none of these records was "
            f"stored: retry when the cause is fixed (e.g. disk space)")
        for p in piece:
            p.sub.future.set_exception(error)

    def _fail_rest(self, rest: list[_Submission]) -> None:
        error = StorageError(
            f"not written: an earlier write in the same group failed ({self._last_error}); "
            f"retry")
        for sub in rest:
            sub.future.set_exception(error)

    # -- rotation, sealing, compression, retention ----------------------------------------
    def _rotation_due(self, incoming: int, piece_pending: bool) -> bool:
        active = self._active
        if active.records == 0 and not piece_pending:
            return False
        if active.size + incoming > self.settings.max_segment_bytes:
            return True
        age = (time.time_ns() - active.created_ns) / 1e9
        return age >= self.settings.max_segment_age

    def _rotate(self) -> None:
        old = self._active
        try:
            new = ActiveSegment.create(self.segments_dir, old.header.seq + 1, old.header.id)
        except OSError as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"
            log.error("audit store: cannot start a new segment (%s); still appending to %s",
                      exc, old.path.name)
            return
        self._active = new
        self._register(new)
        self._seal(old, new.created_ns)

    def _register(self, segment: ActiveSegment) -> None:
        try:
            self._index.begin()
            self._index.add_segment(segment.path.name, segment.header, segment.size)
            self._index.commit()
        except sqlite3.Error:
            self._index.rollback()  # registered again with its first records

    def _seal(self, old: ActiveSegment, sealed_ns: int) -> None:
        """Everything that happens when a segment stops being the active one."""
        path = seal(old)
        chunk = self._index.open_chunk
        if chunk is not None and chunk.segment == old.header.seq:
            self._close_chunk()
        self._sealed[old.header.seq] = _Sealed(path, old.size, sealed_ns, False)
        if self.settings.compress_sealed:
            self._schedule_compression(old.header.seq, path)

    def _schedule_compression(self, seq: int, path: Path) -> None:
        self._compressing.add(seq)

        def work() -> None:
            try:
                tmp, blocks = compress(path)
            except Exception as exc:
                log.error("audit store: compressing %s failed: %s", path.name, exc)
                self._compressing.discard(seq)
                return
            self._compressed.append((seq, tmp, blocks))
            self._wake.set()

        self._compressor.submit(work)

    def _apply_compressed(self) -> None:
        while self._compressed:
            seq, tmp, blocks = self._compressed.popleft()
            self._compressing.discard(seq)
            info = self._sealed.get(seq)
            if info is None or info.compressed:
                tmp.unlink(missing_ok=True)  # deleted by retention meanwhile
                continue
            target = info.path.with_name(info.path.name + ".gz")
            os.rename(tmp, target)
            fsync_dir(self.segments_dir)
            self._index.begin()
            self._index.mark_compressed(seq, blocks)
            self._index.commit()
            info.path.unlink()
            fsync_dir(self.segments_dir)
            info.path, info.size, info.compressed = target, target.stat().st_size, True

    def _housekeeping(self, idle: bool) -> None:
        active = self._active
        if active.records and (time.time_ns() - active.created_ns) / 1e9 >= \
                self.settings.max_segment_age:
            self._rotate()
        chunk = self._index.open_chunk
        if (idle and chunk is not None and chunk.rows >= _IDLE_CHUNK_ROWS
                and time.monotonic() - self._last_activity >= _IDLE_SECONDS):
            self._close_chunk()
        self._apply_retention()

    def _close_chunk(self) -> None:
        """Hand the open chunk to the indexer; if the indexer is too far behind, wait
        for it (the store then runs at the indexer's pace: queries stay fast)."""
        chunk = self._index.close_chunk()
        if chunk is not None:
            self._indexer.submit(chunk)
            self._indexer.wait(most=MAX_UNINDEXED)

    def _apply_retention(self) -> None:
        s = self.settings
        infos = [SealedInfo(seq, i.size, i.sealed_ns) for seq, i in self._sealed.items()]
        for seq in expired(infos, now_ns=time.time_ns(), retention_days=s.retention_days,
                           retention_bytes=s.retention_bytes,
                           keep_newest=self._active.records == 0):
            info = self._sealed.pop(seq)
            info.path.unlink(missing_ok=True)
            fsync_dir(self.segments_dir)
            self._index.begin()
            self._index.drop_segment(seq)
            self._index.commit()
            self._counts["retention_deleted"] += 1
            self._stored = self._index.count()

    # -- stats --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        recent = sum(n for t, n in list(self._rate) if now - t <= _RATE_WINDOW)
        counts = self._counts
        with self._lock:
            per_source = {s: sources.report(r) for s, r in self._sources.items()}
            pending = sum(len(s.events) for s in self._pending)
        sealed = list(self._sealed.values())
        active = self._active
        quarantined = list(self.quarantine_dir.iterdir())
        return {
            "events": self._stored,
            "segments": {
                "count": len(sealed) + 1,
                "bytes": sum(i.size for i in sealed) + active.size,
                "sealed": len(sealed),
                "compressed": sum(1 for i in sealed if i.compressed),
            },
            "active_segment": {"name": active.path.name, "bytes": active.size,
                               "records": active.records},
            "written": counts["written"],
            "duplicates": counts["duplicates"],
            "rejected": counts["rejected"],
            "write_errors": counts["write_errors"],
            "last_error": self._last_error,
            "pending": pending,
            "quarantined": len(quarantined),
            "quarantined_bytes": sum(p.stat().st_size for p in quarantined),
            "retention_deleted": counts["retention_deleted"],
            "ingest_rate": round(recent / _RATE_WINDOW, 1),
            "fsyncs": counts["fsyncs"],
            "events_per_fsync": round(counts["written"] / counts["fsyncs"], 1)
            if counts["fsyncs"] else 0.0,
            "sources": per_source,
        }


def lock_data_dir(data_dir: Path) -> int:
    """Hold the data directory for this process (one writer: the store, or reindex)."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirInUseError(
            f"{data_dir} is in use by another process (a running collector or a reindex): "
            f"stop it first, or use another data directory") from None
    return fd
