"""The segments on disk as the store sees them: the active one it appends to, and the
sealed ones, which it may compress (in the background) and which retention deletes.

Only the store's commit thread calls these methods (the compressor thread only writes a
compressed copy beside a sealed segment and hands it back).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from audit_middleware._counter import worth_saying
from collector.index import Index

from . import store_clock
from .compression import BlockMap, compress
from .disk_space import Reserve, free_bytes, is_full
from .failures import Failures
from .records import created_micros
from .regular_files import fsync_dir
from .retention import SealedInfo, expired, seal_times
from .segments import (
    ActiveSegment,
    SegmentFile,
    header_of,
    list_segment_files,
    seal,
)

if TYPE_CHECKING:
    from collector.integrity.ledger import Ledger
    from collector.store_settings import StorageSettings

log = logging.getLogger("collector.store")


#: Seconds a segment waiting for its compressed copy is left out of retention's size
#: count (its size is not known yet); past that it counts at its plain size (a
#: compressor that falls behind or is stuck must not let the disk outgrow the cap).
COMPRESSION_STALL: Final = 60.0
#: Seconds before a failed compression (a full disk, most often) is tried again: failed
#: ones stayed plain until the next start, counted at their plain size by retention.
COMPRESSION_RETRY: float = 60.0


class RetentionPass(NamedTuple):
    """What one retention pass did."""

    #: the segments whose files were deleted, oldest first: their index rows are the
    #: caller's to drop (``ChunkIndexer.drop_segment``); those of an earlier pass that
    #: failed after deleting them come first
    deleted: list[int]
    #: the time before which every record stored is now deleted (the creation of the
    #: oldest segment kept; 0 when none was deleted)
    stored_before_ns: int


class _Sealed:
    __slots__ = ("compressed", "path", "sealed_ns", "size")

    def __init__(self, path: Path, size: int, sealed_ns: int, compressed: bool) -> None:
        self.path = path
        self.size = size
        self.sealed_ns = sealed_ns  # when the next segment was created
        self.compressed = compressed


class SegmentSet:
    def __init__(self, settings: StorageSettings, directory: Path, index: Index,
                 wake: Callable[[], None], ledger: Ledger | None = None,
                 named: int = 0) -> None:
        """``named``: the highest segment number the index or the digests name; a new
        segment is numbered after it, even when its file is gone."""
        self.settings = settings
        self.directory = directory
        self._index = index
        self._wake = wake  # tells the commit thread a compressed copy is ready
        self._ledger = ledger  # tamper evidence: chain links and digests (None: off)
        self._reserve = Reserve(settings.data_dir)  # for retention's digest (with a ledger)
        self._sealed: dict[int, _Sealed] = {}
        self._compressed: collections.deque[tuple[int, Path, BlockMap]] = collections.deque()
        self._compressor = ThreadPoolExecutor(1, thread_name_prefix="audit-store-compress")
        # Segments waiting for their compressed copy (seq -> when queued, monotonic):
        # retention by size leaves a waiting one out until its copy comes (see
        # apply_retention). Failures come back from the compressor thread by a deque.
        self._compressing: dict[int, float] = {}
        self._compress_failed: collections.deque[int] = collections.deque()
        self._compress_retry: dict[int, float] = {}  # seq -> when to try again (monotonic)
        # Segments whose files retention deleted, not yet handed to the caller (whose
        # index rows are then dropped): kept across a pass that fails half-way (a
        # directory fsync or a digest's removal raising), so that the next pass hands
        # them over, and the index never keeps pointing at them until the next start.
        self._deleted: list[int] = []
        self._deleted_before_ns = 0  # the latest sealed_ns of those
        #: Passes in a row whose digest could not be written (logged at the 1st, 2nd,
        #: 4th...: a pass comes every half second while the disk stays full).
        self._unsigned_passes = 0
        #: What fails now ("rotation", "retention", "compressing <seq>"): each goes once
        #: its work succeeds (or its segment is gone). The compressor thread sets one.
        self._failures = Failures()
        self._rotation_failures = 0  # in a row (``rotate``), for the log
        self._clock = store_clock.StoreClock(settings.data_dir)
        self._active_since = 0  # when the active segment became so (elapsed_ns)
        files = list_segment_files(directory)
        newest = files[-1].seq if files else 0
        #: Newer segments than any file left, yet named: the active one was deleted.
        self.missing_newest = list(range(newest + 1, named + 1))
        if files and not files[-1].compressed and not self.missing_newest:
            last = files[-1]
            self.active = ActiveSegment.reopen(last.path, index.segments()[last.seq].records)
            sealed = files[:-1]
        else:
            # A new store, or one whose active segment was removed: reopening the sealed
            # one before it would reuse the removed one's number (and, within the same
            # second, its very file name), and verify could not tell them apart.
            previous = header_of(files[-1]).id if files else ""
            chain = ledger.chain_after(files) if ledger is not None else ""
            self.active = ActiveSegment.create(directory, max(newest, named) + 1, previous,
                                               chain=chain)
            self.register(self.active)
            sealed = files
        if ledger is not None:
            ledger.attach(self.active.path, self.active.header)
        for f, after in zip(sealed, [*sealed[1:], None]):
            sealed_ns = (self.active.created_ns if after is None
                         else created_micros(header_of(after).created) * 1000)
            self._sealed[f.seq] = _Sealed(f.path, f.path.stat().st_size, sealed_ns,
                                          f.compressed)
        if settings.compress_sealed:
            for seq, info in self._sealed.items():
                if not info.compressed:
                    self._schedule_compression(seq, info.path)

    def register(self, segment: ActiveSegment) -> None:
        """Put a new segment in the index catalog (its first records would too)."""
        with contextlib.suppress(sqlite3.Error), self._index.transaction():
            # On failure, its first records register it again.
            self._index.add_segment(segment.path.name, segment.header, segment.size)

    @property
    def active(self) -> ActiveSegment:
        return self._active

    @active.setter
    def active(self, segment: ActiveSegment) -> None:
        self._active = segment
        self._active_since = store_clock.elapsed_ns()

    # -- rotation -------------------------------------------------------------------------
    def rotation_due(self, incoming: int, piece_pending: bool) -> bool:
        """Whether ``incoming`` more bytes should go to a new segment: the active one
        would grow past the size limit, or is older than the age limit. An empty
        segment takes anything."""
        active = self.active
        if active.records == 0 and not piece_pending:
            return False
        if active.size + incoming > self.settings.max_segment_bytes:
            return True
        return self.too_old()

    def too_old(self) -> bool:
        # By either clock (store_clock says why): the wall clock alone, stepped back,
        # kept a segment open until it had caught up again.
        age = max(time.time_ns() - self.active.created_ns,
                  store_clock.elapsed_ns() - self._active_since)
        return age / 1e9 >= self.settings.max_segment_age

    def rotate(self, sealed: Callable[[int], None]) -> None:
        """Start the next segment (by creating it: never copytruncate), then seal the
        old one; ``sealed(seq)`` runs after the seal."""
        old = self.active
        ledger = self._ledger
        try:
            # What the segment is sealed with must be what its records are: a failed
            # write not cut back yet goes first (sealed with it, verify called the
            # segment written to after sealing, and a restart indexed the unacknowledged
            # record). And it is durable before the next segment exists: a failed fsync
            # after the switch left the rotation half done (the ledger following the old
            # segment while records went to the new one). Either failing: no rotation,
            # tried again with the next write.
            if old.needs_cut:
                old.cut(old.size)
            old.sync()
            new = ActiveSegment.create(self.directory, old.header.seq + 1, old.header.id,
                                       chain=ledger.chain.decode() if ledger else "")
        except OSError as exc:
            self._failures.failing("rotation", f"{type(exc).__name__}: {exc}")
            # Tried again at every write while it fails (out of files, a full disk): a
            # line each time was a line per group commit, dozens a second.
            self._rotation_failures += 1
            if worth_saying(self._rotation_failures):  # at 1, 2, 4, 8, ... failures
                log.error("audit store: cannot rotate (%s; %d time(s) in a row); still "
                          "appending to %s", exc, self._rotation_failures, old.path.name)
            return
        self._failures.recovered("rotation")
        if self._rotation_failures:
            log.info("audit store: rotated again after %d failed attempt(s)",
                     self._rotation_failures)
            self._rotation_failures = 0
        self.active = new
        self.register(new)
        try:
            path = seal(old)
        except OSError as exc:  # its records are synced already: only the close is left
            log.warning("audit store: sealing %s: %s", old.path.name, exc)
            old.close()
            path = old.path
        self._sealed[old.header.seq] = _Sealed(path, old.size, new.created_ns, False)
        if ledger is not None:
            ledger.sealed(old, new)
        sealed(old.header.seq)
        if self.settings.compress_sealed:
            self._schedule_compression(old.header.seq, path)

    # -- compression ----------------------------------------------------------------------
    def _schedule_compression(self, seq: int, path: Path) -> None:
        def work() -> None:
            # Retention takes a segment out of _sealed before it deletes the file: one
            # it deleted while this waited in the queue is no failure (said as one,
            # "tried again", for each segment a compressor behind the writes lost).
            if seq not in self._sealed:
                return
            try:
                tmp, blocks = compress(path)
            except Exception as exc:  # noqa: BLE001 - a full disk, most often
                if seq not in self._sealed:
                    return  # deleted by retention while being compressed
                self._compression_failed(seq, path, exc)
                return
            self._compressed.append((seq, tmp, blocks))
            self._wake()

        self._compressing[seq] = time.monotonic()
        self._compressor.submit(work)

    def _compression_failed(self, seq: int, path: Path, exc: BaseException) -> None:
        """Say so (in the log, and in the stats until it succeeds) and have it tried
        again after ``COMPRESSION_RETRY``; retention no longer waits for it. Called on
        the compressor's thread or the commit thread."""
        log.warning("audit store: compressing %s failed: %s (tried again in %g s)",
                    path.name, exc, COMPRESSION_RETRY)
        self._failures.failing(f"compressing {seq}",
                               f"compressing {path.name}: {type(exc).__name__}: {exc}")
        self._compress_failed.append(seq)

    def apply_compressed(self) -> None:
        """Swap in the compressed copies that are ready: rename into place, point the
        index at it, then remove the plain file (a crash in between leaves both, and
        start-up keeps the one the index names)."""
        while self._compressed:
            seq, tmp, blocks = self._compressed.popleft()
            self._compressing.pop(seq, None)
            info = self._sealed.get(seq)
            if info is None or info.compressed:
                tmp.unlink(missing_ok=True)  # deleted by retention meanwhile
                continue
            target = info.path.with_name(info.path.name + ".gz")
            try:
                self._swap_in(seq, tmp, target, blocks)
            except (OSError, sqlite3.Error) as exc:
                # A compression that failed, tried again as one. Raised, the copy was
                # lost with it: the segment stayed plain until the next start, and the
                # failure went from the stats at the next housekeeping pass.
                self._compression_failed(seq, info.path, exc)
                continue
            info.path.unlink()
            fsync_dir(self.directory)
            info.path, info.size, info.compressed = target, target.stat().st_size, True
            self._failures.recovered(f"compressing {seq}")

    def _swap_in(self, seq: int, tmp: Path, target: Path, blocks: BlockMap) -> None:
        """The compressed copy ``tmp`` put in place as ``target`` and named by the index;
        if that fails, neither is left (the plain file stays what the index names)."""
        try:
            os.rename(tmp, target)
            fsync_dir(self.directory)
            with self._index.transaction():
                self._index.mark_compressed(seq, blocks)
        except BaseException:
            tmp.unlink(missing_ok=True)
            target.unlink(missing_ok=True)
            raise

    # -- retention ------------------------------------------------------------------------
    def _retry_compressions(self) -> None:
        """Failed compressions: no longer waited for (retention counts them at their
        plain size), and scheduled again once their retry time has come."""
        now = time.monotonic()
        while self._compress_failed:
            seq = self._compress_failed.popleft()
            self._compressing.pop(seq, None)
            self._compress_retry[seq] = now + COMPRESSION_RETRY
        for seq, due in list(self._compress_retry.items()):
            info = self._sealed.get(seq)
            if info is None or info.compressed:  # deleted by retention, or done
                del self._compress_retry[seq]
                self._failures.recovered(f"compressing {seq}")
            elif due <= now and free_bytes(self.directory) < info.size:
                # Not yet: its copy would fill what is left, and the appends beside it
                # fail meanwhile (the disk that failed it is still nearly full).
                self._compress_retry[seq] = now + COMPRESSION_RETRY
            elif due <= now:
                del self._compress_retry[seq]
                self._schedule_compression(seq, info.path)

    def apply_retention(self) -> RetentionPass:
        """Delete the files of the sealed segments retention no longer keeps: the oldest
        ones, by age or by size (their index rows go after, in the background)."""
        s = self.settings
        self._retry_compressions()
        if self._ledger is not None:
            self._reserve.ensure()
        infos = self._sizes_for_retention()
        now_ns = self._clock.retention_now_ns()
        self._clock.save_if_due()  # the anchor a restart counts from: at its cadence
        doomed = expired(infos, now_ns=now_ns, retention_days=s.retention_days,
                         retention_bytes=s.retention_bytes,
                         keep_newest=self.active.records == 0)
        # What "gone before" says: only when something goes (each pass runs this).
        taken = seal_times(infos, now_ns) if doomed else {}
        if doomed and self._ledger is not None:
            # Signed, on disk, before anything is deleted: verify then tells retention
            # from theft. A digest that could not be written (a full disk) deletes
            # nothing in this pass: deleted under a digest only queued, and the process
            # killed before the queue was written, the segments read as stolen for good.
            try:
                self._sign_retention(max(doomed) + 1)
            except OSError as exc:
                self._failures.failing("retention", f"{type(exc).__name__}: {exc}")
                self._unsigned_passes += 1
                n = self._unsigned_passes
                if not worth_saying(n):
                    pass  # said at the 1st, 2nd, 4th... pass in a row, not every 0.5 s
                elif is_full(exc) and not self._reserve.size():
                    # Nothing in the store can free space now: said what to do.
                    log.error("retention: nothing deleted in this pass, its digest could "
                              "not be written (%s) and no disk space reserve is left to "
                              "write it in: free space on the disk (a few MiB); retention "
                              "goes on by itself then (%d passes in a row)", exc, n)
                else:
                    log.error("retention: nothing deleted in this pass, its digest could "
                              "not be written (%s); trying again at the next pass (%d "
                              "passes in a row)", exc, n)
                return self._take_deleted()
            if self._unsigned_passes:
                log.warning("retention: its digest written after %d pass(es) that could "
                            "not write it; deleting what it no longer keeps",
                            self._unsigned_passes)
                self._unsigned_passes = 0
        self._failures.recovered("retention")  # signed, or nothing to sign
        remake = True  # the reserve, after each deletion; not again once a write failed
        for seq in doomed:
            info = self._sealed.pop(seq)  # first: the compressor looks here (work)
            self._compressing.pop(seq, None)
            self._compress_retry.pop(seq, None)
            info.path.unlink(missing_ok=True)
            self._deleted.append(seq)  # gone: its rows are to drop, whatever fails next
            # As retention took it, not its own: sealed while the clock ran ahead, it
            # said records stored up to a year from now were gone, and sources last
            # stored by an older version were forgotten by that time.
            self._deleted_before_ns = max(self._deleted_before_ns, taken[seq])
            self._failures.recovered(f"compressing {seq}")  # its file is gone
            fsync_dir(self.directory)
            if self._ledger is not None:
                self._ledger.forget(info.path.name.removesuffix(".gz"))
                # Out of the space this deletion freed, before the index, the batches or
                # another process take it: the next pass on a full disk signs in it.
                # Once a write failed (a full quota), not again in this pass: not once
                # for each of a thousand segments it deletes.
                remake = remake and self._reserve.ensure(after_deletions=True)
        return self._take_deleted()

    def _sizes_for_retention(self) -> list[SealedInfo]:
        """The sealed segments as retention counts them. One waiting for its compressed
        copy counts at nothing until it waited ``COMPRESSION_STALL``, then at its plain
        size (so a compressor that falls behind, or a full disk, never lets the disk
        pass the cap for long); a failed compression at once at its plain size. Why not
        at a size it may take: a deletion cannot be undone, a cap passed for the moment
        a copy takes can. Counted at its plain size (several times what it takes), then
        at a guess of its compressed size (a quarter of it before the first copy came,
        above the 0.17 audit records take), a pass before the copies came deleted
        segments the cap had room for, for good (6 kept of 11 where 8 fit)."""
        now = time.monotonic()
        infos = []
        for seq, i in self._sealed.items():
            queued = self._compressing.get(seq)
            waiting = (queued is not None and not i.compressed
                       and now - queued < COMPRESSION_STALL)
            infos.append(SealedInfo(seq, 0 if waiting else i.size, i.sealed_ns))
        return infos

    def _take_deleted(self) -> RetentionPass:
        done = RetentionPass(self._deleted, self._deleted_before_ns)
        self._deleted, self._deleted_before_ns = [], 0
        return done

    def _sign_retention(self, deleted_below: int) -> None:
        """The retention digest, written in the reserve's space if the disk is full
        (``collector.storage.disk_space``): without it, a disk full to the last byte
        stayed full, retention having to write before it may delete."""
        ledger, active = self._ledger, self.active
        assert ledger is not None
        try:
            ledger.retention(deleted_below, active)
        except OSError as exc:
            if not is_full(exc):
                raise
            self._reserve.spend(lambda: ledger.retention(deleted_below, active), exc)

    def oldest_kept(self) -> int:
        """The lowest number of a segment that still exists (sealed or active)."""
        return min(self._sealed, default=self.active.header.seq)

    # -- failures -------------------------------------------------------------------------
    @property
    def last_error(self) -> str | None:
        """The newest failure that lasts (None once each has recovered)."""
        return self._failures.newest

    # -- the rest -------------------------------------------------------------------------
    def sealed_files(self) -> list[SegmentFile]:
        return [SegmentFile(seq, i.path, i.compressed) for seq, i in sorted(self._sealed.items())]

    def stats(self) -> dict[str, Any]:
        sealed = list(self._sealed.values())
        active = self.active
        return {
            "segments": {
                "count": len(sealed) + 1,
                "bytes": sum(i.size for i in sealed) + active.size,
                "sealed": len(sealed),
                "compressed": sum(1 for i in sealed if i.compressed),
            },
            "active_segment": {"name": active.path.name, "bytes": active.size,
                               "records": active.records},
        }

    def abandon(self) -> None:
        """Stop compressing and close the active segment, writing nothing: a store whose
        opening failed after this was made (a compressed copy left half-made is a
        temporary file the next opening removes)."""
        self._compressor.shutdown(wait=True, cancel_futures=True)
        self.active.close()

    def close(self) -> None:
        """Finish a compression under way (the others resume at the next start)."""
        self._compressor.shutdown(wait=True, cancel_futures=True)
        self.apply_compressed()
        self._clock.save()  # the anchor the next start in this boot counts from
        try:
            self.active.sync()
        finally:
            self.active.close()
