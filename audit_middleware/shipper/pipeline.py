"""Batches in flight on one connection: send up to ``depth`` before waiting for the
oldest reply, so the collector validates and stores one batch while the next is being
encoded and sent. Replies arrive in send order.

A chunk that does not fit the collector's frame limit is split; a single event that
cannot fit any frame is refused here. After any failure the connection is closed and
every chunk not acknowledged is handed back (``unsent``), in order, for the spool.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from ..wire import MAX_BATCH_EVENTS, ErrorCode, Rejection, Result, WireError, encode_batch_body
from .connection import Connection
from .receipts import Receipt

#: Frame bytes besides the event lines: frame header, batch id, the header line's keys.
_BATCH_OVERHEAD: Final = 5 + 4 + 64
#: Header-line bytes per event: its sequence number (up to 19 digits) and a comma.
_PER_EVENT_OVERHEAD: Final = 21


@dataclass
class Chunk:
    source: str
    seqs: list[int]
    lines: list[bytes]  # one "\n"-terminated JSON line per event
    receipts: Sequence[Receipt[str | None] | None] | None = None  # fail_closed only
    #: The highest number the source had given out when the chunk was made (the batch
    #: header's ``numbered``: the collector sees what never arrived, even at the end).
    numbered: int = 0

    def __len__(self) -> int:
        return len(self.lines)

    def slice(self, start: int, end: int) -> Chunk:
        receipts = self.receipts[start:end] if self.receipts is not None else None
        return Chunk(self.source, self.seqs[start:end], self.lines[start:end], receipts,
                     self.numbered)


OnResult = Callable[[Chunk, Result], None]
OnRefused = Callable[[Chunk, str], None]  # a batch the collector can never take: dropped


class Pipeline:
    def __init__(self, conn: Connection, depth: int, timeout: Callable[[], float],
                 on_result: OnResult, on_refused: OnRefused) -> None:
        self._conn = conn
        self._depth = depth
        self._timeout = timeout
        self._on_result = on_result
        self._on_refused = on_refused
        self._inflight: collections.deque[tuple[int, Chunk]] = collections.deque()
        self.failed: BaseException | None = None
        self.unsent: list[Chunk] = []
        self.acknowledged = 0

    def send(self, chunk: Chunk) -> None:
        if self.failed is not None:
            self.unsent.append(chunk)
            return
        for part in self._fit(chunk):
            if self.failed is not None:
                self.unsent.append(part)
                continue
            while len(self._inflight) >= self._depth and self.failed is None:
                self._settle_oldest()
            if self.failed is not None:
                self.unsent.append(part)
                continue
            try:
                body = encode_batch_body(part.source, part.seqs, part.lines, part.numbered)
                self._inflight.append((self._conn.send(body, self._timeout()), part))
            except (OSError, WireError) as exc:
                self._fail(exc)
                self.unsent.append(part)

    def finish(self) -> None:
        """Wait for every reply still in flight."""
        while self._inflight and self.failed is None:
            self._settle_oldest()

    def _settle_oldest(self) -> None:
        batch_id, chunk = self._inflight[0]
        try:
            result = self._conn.receive(batch_id, self._timeout())
        except WireError as exc:
            if exc.code == ErrorCode.BAD_BATCH and exc.batch == batch_id:
                self._inflight.popleft()  # sending it again cannot help
                self._on_refused(chunk, f"the collector refused the batch: {exc}")
            self._fail(exc)
            return
        except OSError as exc:
            self._fail(exc)
            return
        if result.acknowledged + len(result.rejected) != len(chunk):
            self._fail(WireError(ErrorCode.UNEXPECTED_FRAME, f"the collector answered a batch "
                                 f"of {len(chunk)} events about "
                                 f"{result.acknowledged + len(result.rejected)}"))
            return
        indexes = {r.index for r in result.rejected}
        if len(indexes) != len(result.rejected) or not all(
                0 <= i < len(chunk) for i in indexes):
            # The counts added up, yet the rejections do not name distinct events of the
            # batch: which ones were stored cannot be told (a fail_closed request would be
            # answered as recorded). Sent again; the collector dedupes what it has.
            self._fail(WireError(ErrorCode.UNEXPECTED_FRAME, "the collector's rejections do "
                                 "not name distinct events of the batch"))
            return
        self._inflight.popleft()
        self.acknowledged += result.acknowledged
        self._on_result(chunk, result)

    def _fail(self, exc: BaseException) -> None:
        self.failed = exc
        self._conn.close()
        self.unsent.extend(chunk for _, chunk in self._inflight)
        self._inflight.clear()

    def _fit(self, chunk: Chunk) -> list[Chunk]:
        """``chunk`` in parts that each fit one frame (in bytes and in events); events too
        large for any frame are refused on the spot."""
        budget = self._conn.max_frame - _BATCH_OVERHEAD - len(chunk.source)
        parts: list[Chunk] = []
        start, size, n = 0, 0, len(chunk)
        for i, line in enumerate(chunk.lines):
            cost = len(line) + _PER_EVENT_OVERHEAD
            if cost > budget:
                if i > start:
                    parts.append(chunk.slice(start, i))
                reason = (f"event of {len(line)} bytes does not fit the collector's frame "
                          f"limit of {self._conn.max_frame} bytes")
                self._on_result(chunk.slice(i, i + 1),
                                Result(0, rejected=[Rejection(0, chunk.seqs[i], None, reason)]))
                start, size = i + 1, 0
            elif size + cost > budget or i - start >= MAX_BATCH_EVENTS:
                parts.append(chunk.slice(start, i))
                start, size = i, cost
            else:
                size += cost
        if start < n:
            parts.append(chunk if start == 0 and not parts else chunk.slice(start, n))
        return parts
