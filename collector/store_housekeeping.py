"""The store's housekeeping (a part of ``Store``, which inherits it): what the commit
thread does once before its first batch, at each pass without one, and every ``_TICK``
while busy (``Store._run``): the active segment rotated once too old, an open chunk
closed and indexed while the store idles, retention applied (its deleted segments hidden
from queries, handed to the indexer's drops, their sources forgotten, the index's WAL
checkpointed in the room they freed on a nearly full disk), the ledger's tick, and the
events count refreshed after a drop.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from audit_middleware._counter import worth_saying
from audit_middleware.event import format_created
from collector.index import Index
from collector.storage.disk_space import free_bytes
from collector.storage.group_commit import GroupWriter
from collector.storage.indexer import ChunkIndexer
from collector.storage.segment_set import SegmentSet

if TYPE_CHECKING:
    from collector.integrity.ledger import Ledger
    from collector.store_settings import StorageSettings

log = logging.getLogger("collector.store")

#: An idle store (no write for ``_IDLE_SECONDS``) closes and indexes an open chunk this big.
IDLE_CHUNK_ROWS: Final = 4_096
_IDLE_SECONDS: Final = 1.0


class _Housekeeping:
    """``Store``'s housekeeping (see this module's doc)."""

    #: Set, and said, in ``Store.__init__`` (the storage's parts: in ``Store.open``).
    settings: StorageSettings
    _last_activity: float
    _count_failures: int
    _count_stale: bool
    _checkpoint_failures: int
    _segments: SegmentSet
    _writer: GroupWriter
    _index: Index
    _indexer: ChunkIndexer
    _ledger: Ledger | None
    #: The acknowledgements of the sources retention forgot, dropped
    #: (``_LossAcknowledging``).
    _forget_loss_acks: Callable[[list[str]], None]

    def _housekeeping(self, idle: bool) -> None:
        segments = self._segments
        writer = self._writer
        if segments.active.records and segments.too_old():
            segments.rotate(writer.sealed)
        chunk = self._index.open_chunk
        if (idle and chunk is not None and chunk.rows >= IDLE_CHUNK_ROWS
                and time.monotonic() - self._last_activity >= _IDLE_SECONDS):
            self._index.close_chunk()  # queries need not scan it while the store idles
            writer.index_closed_chunks()
        done = segments.apply_retention()
        if done.deleted:
            self._checkpoint_in_freed_room()
            for segment in done.deleted:
                chunk = self._index.open_chunk
                if chunk is not None and chunk.segment == segment:
                    self._index.close_chunk()  # sealing closed it; the indexer drops closed ones
                self._indexer.drop_segment(segment)
            try:  # one small update: no query reads them while their drops wait
                self._index.hide_segments(done.deleted)
                self._count_stale = True  # nor counts them (``_refresh_count``)
            except sqlite3.Error as exc:  # their drops hide them at their first step
                log.warning("audit store: hiding the index rows of deleted segments from "
                            "queries failed (%s); they go with their drops", exc)
            writer.counts["retention_deleted"] += len(done.deleted)
            # Said in the log too: deletions seen only as a counter surprised operators.
            log.info("retention: deleted %d sealed segment(s); records stored before %s "
                     "are gone (retention_days %g, retention_bytes %s)", len(done.deleted),
                     format_created(done.stored_before_ns), self.settings.retention_days,
                     self.settings.retention_bytes)
            # A source whose last record was in a segment older than every segment kept
            # has no record left: it goes with them (by age or by size).
            forgotten = writer.forget_sources(segments.oldest_kept(), done.stored_before_ns)
            if forgotten:
                self._forget_loss_acks(forgotten)
        if self._ledger is not None:
            self._ledger.tick(segments.active)
        self._refresh_count()

    def _checkpoint_in_freed_room(self) -> None:
        """On a nearly full disk, checkpoint the index's WAL in the room retention just
        freed, before the next commit (and the indexer's next step) can take it.

        A WAL holding pages past the end of ``index.sqlite`` (rows since the last
        checkpoint, or a checkpoint the full disk cut short) is copied back only once
        that file can grow; until then SQLite cannot write the WAL again from its start,
        and each commit grows it instead. The indexer's checkpoint (about once a second)
        lost the race for each room retention freed to the commits: the WAL grew into
        all of it (17.3 -> 20.4 MiB in ``tests/faults/test_disk_full.py``, the index
        1.9 of the 2.1 MiB it needed), retention deleted every sealed segment, and the
        store refused every batch for good, however long the apps retried. Best effort:
        a checkpoint the disk still refuses has grown the file as far as it could, and
        the next pass that frees room goes on from there; so does the indexer's
        checkpoint at each of its passes while the disk is this low, in room freed by
        hand too (``tests/faults/test_disk_full.py``). Not in the reserve's room: done
        on a full disk, it lets no batch in (their segment appends need room all the
        same), and the reserve is what retention's next digest is signed in."""
        data_dir = self.settings.data_dir
        if free_bytes(data_dir) >= ChunkIndexer.CHECKPOINT_BYTES:
            return  # room enough: the indexer's checkpoints keep up
        try:
            self._index.checkpoint()
        except sqlite3.Error as exc:
            self._checkpoint_failures += 1
            n = self._checkpoint_failures
            if worth_saying(n):  # at 1, 2, 4, 8, ... failures: said, not a flood
                log.warning("audit store: checkpointing the index's WAL in the room "
                            "retention freed failed (%s, %d failures so far); the indexer "
                            "tries again about once a second while the disk is this "
                            "low, and this after retention's next deletions", exc, n)
            return  # raised, the deleted segments' drops below were lost
        self._checkpoint_failures = 0

    def _refresh_count(self) -> None:
        """The events count again once segments were hidden or the indexer dropped their
        rows. Last in the housekeeping, and a failure kept to itself: raised before the
        deleted segments were handed to their drops, it lost them (their rows stayed,
        pointing at files that are gone, until the next start). The dropped segments stay
        counted until a refresh succeeds."""
        dropped = self._indexer.dropped
        if not dropped and not self._count_stale:
            return
        try:
            self._writer.stored = self._index.count()
            self._count_stale = False
        except sqlite3.Error as exc:
            self._count_failures += 1
            n = self._count_failures
            if worth_saying(n):  # at 1, 2, 4, 8, ... failures: said, not a flood
                log.warning("audit store: counting the events after a retention drop "
                            "failed (%s, %d failures so far); tried again at the next "
                            "housekeeping", exc, n)
            return
        self._count_failures = 0
        self._indexer.took_dropped(dropped)
