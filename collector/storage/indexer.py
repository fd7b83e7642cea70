"""The background thread that maintains the index beside the store's commits: it builds
closed chunks' postings (``collector.storage.chunks``), drops the rows of segments
retention deleted (``collector.storage.segment_drop``) and checkpoints the WAL."""

from __future__ import annotations

import collections
import functools
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Final

from audit_middleware._counter import worth_saying
from collector.index import ZONE_SHIFT, writer_connection
from collector.storage.chunks import build_chunk_indexes
from collector.storage.disk_space import free_bytes, out_of_space
from collector.storage.segment_drop import drop_segment_rows
from collector.storage.write_lock import WriteLock

log = logging.getLogger("collector.index")
#: How often ``ChunkIndexer.wait`` checks that the indexer thread is still alive.
_LIVENESS_CHECK: Final = 1.0
#: Seconds before a segment drop that failed is tried again.
DROP_RETRY: Final = 1.0
#: Seconds before a chunk build the full disk refused is tried again, doubled at each
#: refusal up to ``BUILD_RETRY_MAX``: a build is the chunk's postings written again (a
#: 64k-row chunk's ~0.3 s of work, and a WAL grown to the disk's last byte before it
#: is refused), not to be spent every second on a disk that stays full.
BUILD_RETRY: Final = 1.0
BUILD_RETRY_MAX: Final = 30.0
#: Free bytes gained since the last refusal after which a build waiting for room is
#: tried at once, its backoff left: the room retention or an operator just freed.
ROOM_BACK: Final = 1024 * 1024


class ChunkIndexer:
    """The background thread that builds closed chunks' postings, drops deleted
    segments' rows and checkpoints the WAL. A build runs inside SQLite without the GIL,
    so it overlaps the store's commit thread encoding the next group.

    Builds go first (a chunk waiting for its postings costs every query a scan of it,
    and the store waits for them past ``MAX_UNINDEXED``); drops, one segment at a time,
    when no build waits, and a drop under way stops after its step when one comes. A
    drop that fails is tried again after ``DROP_RETRY``, after the others waiting; one
    left at ``close`` is finished at the next start (the file is gone, so recovery drops
    what the index still holds of it).

    A build the full disk refuses waits for room (``_no_room``): one of those chunks is
    tried again after ``BUILD_RETRY``, doubled at each refusal up to ``BUILD_RETRY_MAX``,
    or at once when a build succeeds or ``ROOM_BACK`` bytes were freed since the last
    refusal; the others follow it once it is built. ``wait`` does not count them (the
    store's commits go on), ``backlog`` (the stats) does. Said once when the first is
    refused and once when the last is built; those left at ``close`` stay CLOSED and
    are built at the next start. Until 2026-11-27 they waited for that start whatever
    the room: queries scanned their rows for as long as the collector ran."""

    CHECKPOINT_BYTES: Final = 16 * 1024 * 1024

    def __init__(self, path: Path, write_lock: WriteLock) -> None:
        self._con = writer_connection(path)
        self._wal = Path(f"{path}-wal")
        self._write_lock = write_lock
        self._queue: collections.deque[int] = collections.deque()
        self._queued: set[int] = set()  # the chunks in ``_queue``: a second submit is none
        self._cond = threading.Condition()
        self._building: int | None = None  # the chunk being built
        self._stop = False
        #: Chunks found closed at open (a rebuild, a catch-up after a kill): built in the
        #: background; ``wait`` does not count them, or the first chunk the store closes
        #: would hold every acknowledgement until the whole backlog is indexed (minutes
        #: for a large store rebuilt after an upgrade).
        self._backlog_at_open: set[int] = set()
        self.failed: str | None = None
        #: Segments retention deleted whose rows are still to drop, oldest first (one
        #: whose drop failed goes to the back).
        self._drops: collections.deque[int] = collections.deque()
        self._drop_after = 0.0  # monotonic: no drop before (after a failure)
        self._drop_failures = 0
        self._dropped = 0  # segments dropped not yet accounted for (``took_dropped``)
        self._checkpoint_failures = 0
        self.drop_error: str | None = None
        #: Chunks whose build the full disk refused, in the order they closed.
        self._no_room: dict[int, None] = {}
        self._retrying = False  # the chunk being built is one of ``_no_room``
        self._build_after = 0.0  # monotonic: no build of ``_no_room`` before
        self._build_delay = BUILD_RETRY
        self._free_at_refusal = 0  # free bytes when the disk last refused a build
        self._refusals = 0  # builds the full disk refused since the first (one episode)
        self._room_error: str | None = None  # the last refusal, as ``failed`` says it
        #: The last failure of a chunk left CLOSED until the next start (not waiting
        #: for room): what ``failed`` says again once no chunk waits for room.
        self._lasting_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="audit-store-indexer",
                                        daemon=True)
        self._thread.start()

    def submit(self, chunk: int, *, at_open: bool = False) -> None:
        """Build ``chunk``'s postings in the background. A chunk already queued, being
        built or waiting for room is on its way: submitted again, it was queued twice,
        counted twice in ``backlog`` and ``wait`` and built twice (all its postings
        deleted and written again)."""
        with self._cond:
            if chunk in self._queued or chunk == self._building or chunk in self._no_room:
                return
            self._queue.append(chunk)
            self._queued.add(chunk)
            if at_open:
                self._backlog_at_open.add(chunk)
            self._cond.notify_all()

    def drop_segment(self, segment: int) -> None:
        """Drop the rows of ``segment``, whose file retention deleted, in the background
        (the caller made sure no chunk of it is open)."""
        with self._cond:
            self._drops.append(segment)
            self._cond.notify_all()

    @property
    def dropped(self) -> int:
        """How many segments' rows were dropped since ``took_dropped`` last took them."""
        return self._dropped

    def took_dropped(self, count: int) -> None:
        """The caller has accounted for ``count`` dropped segments (after the work that
        needed them succeeded: taken before, a failure there lost them)."""
        with self._cond:
            self._dropped -= count

    @property
    def drops_pending(self) -> int:
        return len(self._drops)

    @property
    def backlog(self) -> int:
        """Closed chunks without their postings yet (those waiting for room included).
        Under the lock, and the chunk being built counted once whether or not it is one
        of ``_no_room``: read without it, or while a refused build had put its chunk in
        ``_no_room`` but not yet ended, the stats said one chunk more than there was."""
        with self._cond:
            building = self._building is not None and self._building not in self._no_room
            return len(self._queue) + building + len(self._no_room)

    def wait(self, most: int = 0, timeout: float | None = None) -> bool:
        """Wait until at most ``most`` chunks are waiting for their indexes; False on
        timeout, or at once if the indexer thread is gone (the store's commit thread
        waits here: a dead indexer must not stop acknowledgements). Neither the backlog
        found at open nor the chunks waiting for room on a full disk count."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not (len(self._queue) + (self._building is not None and not self._retrying)
                       - len(self._backlog_at_open) <= most or self._stop):
                if not self._thread.is_alive():
                    return False  # it died: nobody would ever notify (see failed)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                # In slices: a thread that dies of a BaseException notifies nobody.
                self._cond.wait(_LIVENESS_CHECK if left is None else min(left, _LIVENESS_CHECK))
            return True

    def close(self) -> None:
        """Finish the chunk being built and the ones closed since open, checkpoint, stop.
        What is left of the backlog found at open, and the chunks waiting for room on a
        full disk, stay CLOSED and are queued again at the next open (as after a kill): a
        stop must not wait for a whole rebuild, nor try a full disk once more."""
        with self._cond:
            self._stop = True
            self._queue = collections.deque(
                c for c in self._queue if c not in self._backlog_at_open)
            self._queued = set(self._queue)
            self._backlog_at_open.clear()
            self._cond.notify_all()
        self._thread.join()
        self._con.close()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            # Not an index build failing (that is kept in ``failed`` and tried again once
            # the disk has room, or at the next open): the thread itself is ending. Said
            # in the store's stats; wait() stops waiting for it.
            self.failed = f"indexer thread stopped: {type(exc).__name__}: {exc}"
            log.critical("audit store: %s; closed chunks stay unindexed until restart",
                         self.failed)
            raise

    def _loop(self) -> None:
        while True:
            room = self._room_freed()  # not under the lock: see there
            with self._cond:
                self._cond.wait_for(functools.partial(self._work_due, room), timeout=1.0)
                if not self._queue and self._stop:
                    self._checkpoint()
                    return
                chunk: int | None = None
                if self._queue:
                    chunk = self._queue.popleft()
                    self._queued.discard(chunk)
                elif self._retry_due(room):
                    chunk = next(iter(self._no_room))  # the oldest: once built, the rest
                self._building = chunk
                self._retrying = chunk in self._no_room
                segment = self._drops[0] if chunk is None and self._drop_due() else None
            try:
                if chunk is not None:
                    self._build(chunk)
                elif segment is not None:
                    self._drop(segment)
                self._checkpoint()
            except Exception as exc:  # the chunk stays CLOSED: re-queued at next open
                self.failed = f"{type(exc).__name__}: {exc}"
                log.exception("audit store: indexing chunk %s failed", chunk)
                if self._retrying:
                    # One waiting for room that failed otherwise waits its backoff too:
                    # its try stayed due (the backoff over, or the room freed still
                    # freed), and it was built again at once, in a loop (thousands of
                    # tracebacks a second), no drop getting a turn. Its failure lasts
                    # as long as it waits (cleared with the episode).
                    self._back_off()
                    self._room_error = self.failed
                else:
                    self._lasting_error = self.failed
            finally:
                with self._cond:
                    self._building = None
                    self._retrying = False
                    self._backlog_at_open.discard(chunk)
                    self._cond.notify_all()

    def _build(self, chunk: int) -> None:
        """Build a closed chunk's postings; one the full disk refuses (no bug: no
        traceback) waits for room (``_refused``). Other errors are raised."""
        try:
            built = build_chunk_indexes(self._con, chunk, self._write_lock)
        except Exception as exc:
            if not out_of_space(exc, self._wal.parent):
                raise
            self._refused(chunk, exc)
            return
        if built:
            self._built(chunk)
        else:
            self._gone(chunk)

    def _work_due(self, room_freed: bool) -> bool:
        """Whether the loop has something to do (under ``_cond``)."""
        return bool(self._queue or self._stop or self._drop_due()
                    or self._retry_due(room_freed))

    def _retry_due(self, room_freed: bool) -> bool:
        """Whether a chunk waiting for room is to be built again now: its backoff is
        over, or the disk has gained ``ROOM_BACK`` bytes since the last refusal
        (``room_freed``, from ``_room_freed``)."""
        return bool(self._no_room) and (room_freed or time.monotonic() >= self._build_after)

    def _room_freed(self) -> bool:
        """Whether the disk has gained ``ROOM_BACK`` bytes since the last refusal of a
        chunk waiting for room. Asked before the loop takes ``_cond``, and a second late
        at most: asked under it (in ``_retry_due``), a ``statvfs`` hung on a stalled file
        system (NFS) held the lock, and every thread that submits a chunk or reads the
        stats waited for it, the store's commit thread included."""
        if not self._no_room:  # without the lock: a stale answer costs one pass
            return False
        return free_bytes(self._wal.parent) >= self._free_at_refusal + ROOM_BACK

    def _refused(self, chunk: int, exc: Exception) -> None:
        """A build the full disk refused: the chunk waits for room, the next try after
        the backoff. Said at the first refusal of an episode (until every chunk waiting
        is built), at debug level after it: not a line every try."""
        self.failed = self._room_error = f"{type(exc).__name__}: {exc}"
        first = not self._no_room
        with self._cond:
            self._no_room[chunk] = None
        self._refusals += 1
        delay = self._back_off()
        if first:
            log.error("audit store: indexing chunk %s failed (%s): the disk is full; its "
                      "records stay stored and found by queries (more slowly), and it is "
                      "indexed once the disk has room (tried again from %g s to every "
                      "%g s, and at once when space is freed): free space on it", chunk,
                      exc, delay, BUILD_RETRY_MAX)
        else:
            log.debug("audit store: indexing chunk %s refused again (%s, %d refusals, "
                      "%d chunk(s) waiting for room); next try in %g s", chunk, exc,
                      self._refusals, len(self._no_room), delay)

    def _back_off(self) -> float:
        """The next try of a chunk waiting for room after the backoff (doubled for the
        one after), or once ``ROOM_BACK`` bytes more than now are free; the delay."""
        delay = self._build_delay
        self._free_at_refusal = free_bytes(self._wal.parent)
        self._build_after = time.monotonic() + delay
        self._build_delay = min(delay * 2, BUILD_RETRY_MAX)
        return delay

    def _built(self, chunk: int) -> None:
        """A build done: the disk has room, the chunks waiting for it go next, and the
        episode ends with the last of them."""
        if not self._no_room:
            return
        with self._cond:
            self._no_room.pop(chunk, None)
        self._build_after = 0.0
        self._build_delay = BUILD_RETRY
        if self._no_room:
            return
        log.info("audit store: the disk has room again: indexed the chunks it had "
                 "refused (%d refusal(s)); queries use their postings again",
                 self._refusals)
        self._end_episode()

    def _gone(self, chunk: int) -> None:
        """A chunk retention dropped before it was built: nothing was written, so it
        says nothing of the room (taken for a build done, it reset the backoff of the
        chunks still waiting, tried again at once on the full disk, and said the disk
        had room again). One that waited for room waits no more."""
        if chunk not in self._no_room:
            return
        with self._cond:
            self._no_room.pop(chunk, None)
        if self._no_room:
            return
        log.info("audit store: chunk %s, refused by the full disk, was deleted by "
                 "retention before it could be indexed; no chunk waits for room now",
                 chunk)
        self._end_episode()

    def _end_episode(self) -> None:
        """No chunk waits for room any more."""
        self._refusals = 0
        self._build_after = 0.0
        self._build_delay = BUILD_RETRY
        # Not another failure since, said as it is; nor one before, of a chunk still
        # unindexed (until the next start), which the refusals had overwritten: cleared,
        # the stats said nothing of it any more.
        if self.failed == self._room_error:
            self.failed = self._lasting_error

    def _drop_due(self) -> bool:
        return bool(self._drops) and time.monotonic() >= self._drop_after

    def _drop(self, segment: int) -> None:
        """Drop one segment's rows; on failure, log (at the 1st, 2nd, 4th... failure in
        a row: visible, not every second) and try again after ``DROP_RETRY``, after the
        other segments waiting (as the commit thread's drop went on past a failing one)."""
        try:
            finished = drop_segment_rows(self._con, segment, self._write_lock, ZONE_SHIFT,
                                         yield_to=self._yield_drop)
        except Exception as exc:  # noqa: BLE001 - sqlite3.Error or a bug: tried again
            self.drop_error = f"{type(exc).__name__}: {exc}"
            self._drop_failures += 1
            n = self._drop_failures
            if worth_saying(n):
                log.error("audit store: dropping the index rows of deleted segment %d "
                          "failed (%s, %d failures so far); trying again every %g s",
                          segment, exc, n, DROP_RETRY)
            self._drop_after = time.monotonic() + DROP_RETRY
            with self._cond:  # to the back: one that keeps failing holds up no other
                if self._drops and self._drops[0] == segment:
                    self._drops.rotate(-1)
            return
        self._drop_failures = 0  # a later run of failures is logged from its first
        if finished is None:
            return  # a build waits (or the store stops): the drop goes on after it
        with self._cond:
            self._drops.popleft()
            self._dropped += 1
            if not self._drops:
                self.drop_error = None  # every deleted segment's rows are gone now

    def _yield_drop(self) -> bool:
        """Whether a drop stops after its step: a build waits (builds go first, and the
        store waits for them past MAX_UNINDEXED), or the store stops (the next start
        finishes the drop)."""
        return bool(self._queue) or self._stop

    def _checkpoint(self) -> None:
        """Copy the WAL into the database once it is large, at stop, and whenever the
        disk has less room left than the WAL may still take. Best effort: one that fails
        (a full disk: the database file cannot grow) leaves the WAL as it is, to be
        copied at the next try or the next open. Raised, it ended the indexer thread
        with a traceback when it met a full disk at stop.

        A clean stop removes the WAL, and after a start it grows anew up to
        ``CHECKPOINT_BYTES``: started on a full disk, it took what retention freed
        (3.2 of 3.5 MiB in ``tests/faults/test_disk_full_start.py``, the index rows of
        the deleted segments), the segment's appends failed, the active segment never
        filled, and retention had nothing more to delete. Copied back early, the WAL
        is written again from its start instead of growing."""
        try:
            small = os.path.getsize(self._wal) < self.CHECKPOINT_BYTES
        except FileNotFoundError:
            return
        if small and not self._stop and free_bytes(self._wal.parent) >= self.CHECKPOINT_BYTES:
            return
        try:
            self._con.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            self._checkpoint_failures += 1
            n = self._checkpoint_failures
            if worth_saying(n):  # at 1, 2, 4, 8, ... failures: said, not a flood
                log.warning("audit store: checkpointing the index's WAL failed (%s, %d "
                            "failures so far); it is tried again later", exc, n)
            return
        self._checkpoint_failures = 0

