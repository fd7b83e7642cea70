"""The store's stats (a part of ``Store``, which inherits it): what it holds, has written
and refused, its sources' gaps, its fsyncs, what fails now, the disk it fills and its
signed digests' figures; read at each scrape of ``/metrics``, by the OpenTelemetry reader
and by serve's stats task (``collector.metrics`` names them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.index import files_bytes as index_files_bytes
from collector.storage import loss_acks, sources
from collector.storage.disk_space import known_free_bytes
from collector.storage.errors import StoreClosedError
from collector.storage.failures import Failures
from collector.storage.group_commit import RATE_WINDOW, Submission
from collector.storage.indexer import ChunkIndexer
from collector.storage.segment_set import SegmentSet
from collector.storage.segments import file_sizes

if TYPE_CHECKING:
    from collector.integrity.ledger import Ledger
    from collector.store_settings import StorageSettings


class _Stats:
    """``Store``'s stats (see this module's doc)."""

    #: Set, and said, in ``Store.__init__`` (the storage's parts: in ``Store.open``).
    settings: StorageSettings
    quarantine_dir: Path
    index_path: Path
    _lock: threading.Lock
    _pending: list[Submission]
    _rejected_count: int
    _failures: Failures
    _loss_acks: dict[str, loss_acks.Ack]
    _segments: SegmentSet
    _indexer: ChunkIndexer
    _ledger: Ledger | None
    #: How long the oldest work not yet written has waited (``_Readiness``).
    waiting_seconds: Callable[[], float]
    #: Why the store takes no events now, or None (``_Readiness``).
    refusal: Callable[[], str | None]

    def stats(self) -> dict[str, Any]:
        writer = getattr(self, "_writer", None)
        if writer is None:
            raise StoreClosedError("stats are kept from Store.open() on: open the store first")
        now = time.monotonic()
        recent = sum(n for t, n in list(writer.rate) if now - t <= RATE_WINDOW)
        counts = writer.counts
        with writer.lock:  # copies only, the commit thread waits on it (ranges are
            # replaced on commit, never changed in place: the copies stay consistent)
            snapshot = dict(writer.sources), dict(writer.numbered), dict(writer.seen)
        acknowledged = {source: ack.through for source, ack in self._loss_acks.items()}
        known = sources.overview(*snapshot, acknowledged=acknowledged)
        with self._lock:
            pending = sum(len(s.encoded.ids) for s in self._pending)
            rejected = self._rejected_count
        # An operator may delete a quarantined file between the listing and its stat, or
        # the whole directory once reviewed: none then (the stats task died of it).
        try:
            quarantined = file_sizes(self.quarantine_dir.iterdir())
        except FileNotFoundError:
            quarantined = {}
        return {
            "events": writer.stored,
            **self._segments.stats(),
            "unindexed_chunks": self._indexer.backlog,
            "segments_dropping": self._indexer.drops_pending,
            "written": counts["written"],
            "duplicates": counts["duplicates"],
            "rejected": rejected,
            "write_errors": counts["write_errors"],
            "last_error": writer.last_error or self._failures.newest
            or self._segments.last_error or self._indexer.failed or self._indexer.drop_error,
            "pending": pending,
            "quarantined": len(quarantined),
            "quarantined_bytes": sum(quarantined.values()),
            # What an operator alerts on before the disk fills (beside "segments"' bytes,
            # which retention_bytes caps). A stat and a statvfs: read at each scrape and
            # stats file write, off the event loop (GET /metrics, the OpenTelemetry
            # reader and serve's stats task share one reading on a daemon thread of its
            # own, collector/single_flight.py; the losses listing calls this in a worker
            # thread; serve's last write, at a stop, once ingest and the API are closed),
            # so a hung disk holds that thread, never ingest or GET /healthz (``refusal``
            # reads memory only). None (no gauge) when the file system cannot be asked:
            # 0 read as a full disk.
            "index_bytes": index_files_bytes(self.index_path),
            "disk_free_bytes": known_free_bytes(self.settings.data_dir),
            "retention_deleted": counts["retention_deleted"],
            "sources_forgotten": counts["sources_forgotten"],
            "ingest_rate": round(recent / RATE_WINDOW, 1),
            "fsyncs": counts["fsyncs"],
            "events_per_fsync": round(counts["written"] / counts["fsyncs"], 1)
            if counts["fsyncs"] else 0.0,
            "fsync_seconds_total": round(writer.fsync_seconds_total, 6),
            "fsync_seconds_max": round(writer.fsync_seconds_max, 6),
            "commit_wait_seconds": round(self.waiting_seconds(), 6),
            # GET /healthz's word (None: ready), for the read commands, which run in
            # another process and see only the stats file: verify tells a seal digest
            # waiting for room on a full disk from one deleted (``integrity.disk_room``).
            "refusal": self.refusal(),
            "sources": known.reports,
            "sources_total": known.total,
            "sources_omitted": known.omitted,
            "gap_events": known.gap_events,
            "unreceived_tail_events": known.unreceived_tail_events,
            "unacknowledged_gap_events": known.unacknowledged_gap_events,
            "unacknowledged_tail_events": known.unacknowledged_tail_events,
            "integrity": self.integrity_stats(),
        }

    def integrity_stats(self) -> dict[str, Any] | None:
        """The signed digests' figures (``Ledger.stats``); None when the store keeps no
        hash chain (``chain = false``)."""
        return self._ledger.stats() if self._ledger is not None else None
