"""One budget of frame bytes for the whole collector (``max_inflight_bytes``): what the
frames being read and the batches not yet stored may hold of its memory, over every
connection of the ingest socket and every ``POST /api/v1/events`` together.

Without it each connection held up to ``max_frame`` (4 MiB) while a client trickled a
frame, and 1,024 connections (``max_connections``) about 4 GiB: a client with the token
(or any process of the collector's user) could get the collector OOM-killed. Now a frame
takes its bytes from the budget before its payload is read, all at once, and gives them
back once its events are stored (or it failed). One that does not fit waits, unread:
its client's socket fills and TCP holds it back. The wait counts against the frame's
read deadline, so a full budget closes a connection (``timeout``, retryable) rather than
hang it.

Taken in arrival order (FIFO): a large frame is not passed forever by small ones. A frame
takes all its bytes at once, never part of them while waiting for the rest, so two
frames cannot each hold half the budget and wait for each other; ``max_frame`` is at most
the budget (``collector.config.check``), so every frame fits once the others are done.
All on the event loop's thread (the ingest server and the query API share it): no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Final

__all__ = ["DEFAULT_MAX_INFLIGHT_BYTES", "FrameBudget", "Lease"]

#: 64 maximum-size frames of the default 4 MiB: far above what shippers that read their
#: replies hold (a few batches each), far below what kills a small host.
DEFAULT_MAX_INFLIGHT_BYTES: Final = 256 * 1024 * 1024


class Lease:
    """Bytes taken from a ``FrameBudget``; ``release`` gives them back (once, however
    often it is called: a frame's error path and its stored reply may both call it)."""

    __slots__ = ("_budget", "size")

    def __init__(self, budget: FrameBudget | None, size: int) -> None:
        self._budget = budget
        self.size = size

    def release(self, *_: object) -> None:
        """Also a done-callback (``future.add_done_callback(lease.release)``)."""
        budget, self._budget = self._budget, None
        if budget is not None:
            budget.give_back(self.size)


class FrameBudget:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the frame budget must be at least 1 byte, got {limit}")
        self.limit = limit
        self.held = 0
        self.peak = 0  # the most held at once since start: the bound, as kept
        self.waits = 0  # frames that waited for room
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def take(self, size: int) -> Lease:
        """``size`` bytes, once they fit (after every frame that came first)."""
        if size > self.limit:
            # Refused by the configuration check; said plainly if a caller forgets it.
            raise ValueError(f"a frame of {size} bytes can never fit a budget of "
                             f"{self.limit} (max_inflight_bytes >= max_frame)")
        if not self._waiting and self.held + size <= self.limit:
            self._hold(size)
            return Lease(self, size)
        self.waits += 1
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, turn)
        self._waiting.append(entry)
        try:
            await turn
        except asyncio.CancelledError:  # its deadline passed, or its connection closed
            if turn.done() and not turn.cancelled():
                self.give_back(size)  # granted as it was cancelled: not kept
            else:
                with contextlib.suppress(ValueError):  # skipped by _grant already
                    self._waiting.remove(entry)
                self._grant()  # the frames behind it may fit now
            raise
        return Lease(self, size)

    @property
    def contended(self) -> bool:
        """Whether a frame waits for room now (``collector.frame_rate`` cuts slow ones
        holding it only then)."""
        return bool(self._waiting)

    def give_back(self, size: int) -> None:
        self.held -= size
        self._grant()

    def _hold(self, size: int) -> None:
        self.held += size
        self.peak = max(self.peak, self.held)

    def _grant(self) -> None:
        while self._waiting and self.held + self._waiting[0][0] <= self.limit:
            size, turn = self._waiting.popleft()
            if turn.done():
                continue  # cancelled, its waiter not yet run to take itself out
            self._hold(size)
            turn.set_result(None)

    def stats(self) -> dict[str, int]:
        return {"inflight_bytes": self.held, "inflight_peak_bytes": self.peak,
                "max_inflight_bytes": self.limit, "inflight_waits": self.waits,
                "inflight_waiting": len(self._waiting)}
