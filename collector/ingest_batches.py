"""Ingest's batches (a part of ``IngestServer``, which inherits it): a batch frame
validated event by event, its good events handed to the store at once (they join the
next group commit), and its reply once the store's future resolves (after fsync and
index commit): only then is the batch acknowledged; a store failure is no
acknowledgement, and the client sends the batch again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable
from typing import Any, Protocol

from audit_middleware.wire import (
    MAX_BATCH_EVENTS,
    ErrorCode,
    ErrorReply,
    Rejection,
    Result,
    WireError,
    decode_batch,
)

from .batch_events import BatchEvents, LineReader
from .own_records import own_source, own_source_reason
from .reply_queue import result_size
from .storage.records import Encoded

log = logging.getLogger("collector.ingest")


class StoreLike(Protocol):
    def submit_encoded(self, encoded: Encoded, source: str = "",
                       source_seqs: list[int] | None = None, numbered: int = 0) -> Any: ...


class _Batches:
    """``IngestServer``'s batches (see this module's doc)."""

    #: Set, and said, in ``IngestServer.__init__``.
    counters: Counter[str]
    _store: StoreLike
    _lines: LineReader

    def _batch(self, payload: bytes) -> tuple[asyncio.Future[bytes], int]:
        """Validate a batch and hand its good events to the Store now (so they join the
        next group commit); the returned future gives the reply once they are stored,
        the number about how many bytes it will be."""
        batch = decode_batch(payload)
        if own_source(batch.source):
            raise WireError(ErrorCode.BAD_BATCH, own_source_reason(batch.source),
                            batch=batch.batch_id)
        if len(batch.lines) > MAX_BATCH_EVENTS:
            raise WireError(ErrorCode.BAD_BATCH, f"{len(batch.lines)} events in one batch, "
                            f"over the limit of {MAX_BATCH_EVENTS}: send smaller batches",
                            batch=batch.batch_id)
        events = self._lines.sort(batch.lines, batch.seqs)
        self.counters["batches"] += 1
        self.counters["events_received"] += len(batch.lines)
        if events.rejected:
            self._log_rejections(batch.source, events.rejected)
        if not events.seqs:
            self.counters["events_duplicate"] += len(events.repeated)
            done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            reply = Result(batch.batch_id, [], events.repeated, events.rejected).encode()
            done.set_result(reply)
            return done, len(reply)
        try:
            stored = asyncio.wrap_future(self._store.submit_encoded(
                events.encoded, batch.source, events.seqs, batch.numbered))
        except Exception as exc:  # noqa: BLE001 - any store failure: no ack, retryable
            stored = asyncio.get_running_loop().create_future()
            stored.set_exception(exc)
        size = result_size(len(events.seqs) + len(events.repeated), events.rejected)
        events.encoded = Encoded([], [], [])  # the store has them: not held here meanwhile
        return (asyncio.ensure_future(self._reply(batch.batch_id, stored, events)),
                size)

    async def _reply(self, batch_id: int, stored: Awaitable[Any],
                     events: BatchEvents) -> bytes:
        try:
            result = await stored
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any store failure: no ack, retryable
            self.counters["storage_errors"] += 1
            log.error("ingest: the store failed to write %d events: %s", len(events.seqs),
                      exc)
            return ErrorReply(ErrorCode.STORAGE_UNAVAILABLE, f"events not stored "
                              f"({exc or type(exc).__name__}); send the batch again later",
                              batch_id).encode()
        written = list(result.written)
        duplicates = list(result.duplicates) + events.repeated
        self.counters["events_written"] += len(written)
        self.counters["events_duplicate"] += len(duplicates)
        return Result(batch_id, written, duplicates, events.rejected).encode()

    def _log_rejections(self, source: str, rejected: list[Rejection]) -> None:
        before = self.counters["events_rejected"]
        self.counters["events_rejected"] += len(rejected)
        if before.bit_length() != self.counters["events_rejected"].bit_length():
            first = rejected[0]  # logged at 1, 2, 4, 8, ... rejections: visible, no flood
            log.warning("ingest: rejected %d event(s) from %s, e.g. #%d: %s (%d so far)",
                        len(rejected), source, first.seq, first.reason,
                        self.counters["events_rejected"])
