"""One connection's replies: sent in batch order by a task of their own, while the
connection's reader goes on reading and validating its next batches (pipelining).

What a connection's replies may hold of the collector is bounded twice: at most
``PIPELINE_DEPTH`` batches are in flight, and the reader reads no further frame while
the replies its client has not taken yet (queued, or in the socket's write buffer)
exceed ``REPLY_BACKLOG`` bytes. A RESULT is not small when a batch is rejected: a reason
per event makes 8,000 rejected events a reply of about 1.7 MB, and a client that pushed
such batches without reading used to hold four of them, one more read ahead and the one
being sent (~11 MB each). Now it holds about one, until the write timeout closes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

from audit_middleware.wire import Rejection

__all__ = ["PIPELINE_DEPTH", "REPLY_BACKLOG", "ReplyQueue", "result_size"]

#: Batches of one connection in flight at once (read and validated, not yet answered).
PIPELINE_DEPTH: Final = 4
#: Reply bytes of one connection not yet taken by its client above which its next frame
#: is not read. Above asyncio's write-buffer high-water mark (64 KiB), so a client that
#: reads is never held back, and ~40 ordinary results (a written id is ~40 bytes).
REPLY_BACKLOG: Final = 256 * 1024

_RESULT_OVERHEAD: Final = 64  # {"batch":..,"written":[],"duplicates":[],"rejected":[]}
_PER_ID: Final = 40  # "<36-character uuid>",
_PER_REJECTION: Final = 100  # {"index":..,"seq":..,"id":"<uuid>","reason":""}, + reason


def result_size(acknowledged: int, rejected: list[Rejection]) -> int:
    """About how many bytes the RESULT of a batch will take, before the store has
    answered (an admission estimate, not an exact size: ids are usually uuids)."""
    return (_RESULT_OVERHEAD + _PER_ID * acknowledged
            + sum(_PER_REJECTION + len(r.reason) for r in rejected))


class ReplyQueue:
    def __init__(self, writer: asyncio.StreamWriter,
                 drain: Callable[[], Awaitable[None]]) -> None:
        """``drain``: waits until ``writer`` takes more, raising ``ConnectionError`` when
        the client does not read within the write timeout."""
        self._writer = writer
        self._drain = drain
        self._queue: asyncio.Queue[tuple[Awaitable[bytes], int] | None] = asyncio.Queue(
            PIPELINE_DEPTH)
        self._unsent = 0  # estimated bytes of the queued replies (not written yet)
        self._progress = asyncio.Event()  # set whenever the sender wrote or dropped one
        self.task = asyncio.create_task(self._send())

    def backlog(self) -> int:
        """Reply bytes this connection's client has not taken yet (estimated for the
        replies still waiting for the store)."""
        return self._unsent + self._writer.transport.get_write_buffer_size()

    async def room(self) -> None:
        """Return once the backlog is within ``REPLY_BACKLOG`` (or the sender ended):
        the reader calls it before reading a frame, so a connection whose replies are
        not read is not read either."""
        while self.backlog() > REPLY_BACKLOG and not self.task.done():
            self._progress.clear()
            await self._progress.wait()

    async def put(self, reply: Awaitable[bytes], size: int) -> None:
        """Queue the reply to the next batch; ``size``: its (estimated) bytes."""
        self._unsent += size
        await self._queue.put((reply, size))

    async def finish(self) -> None:
        """Answer what was queued, then end the sender."""
        if not self.task.done():
            await self._queue.put(None)
        try:
            await self.task
        except asyncio.CancelledError:
            self.task.cancel()
            raise

    async def _send(self) -> None:
        broken = False
        try:
            while (item := await self._queue.get()) is not None:
                try:
                    data = await item[0]
                finally:
                    self._unsent -= item[1]
                # Once written, the transport's copy is the only one needed: the future
                # (and ``data``) holding the reply too while the client does not read
                # would double what this connection costs.
                del item
                if not broken:  # else keep taking replies: the reader never blocks on put
                    self._writer.write(data)
                    del data
                    try:
                        await self._drain()
                    except ConnectionError:
                        broken = True
                        self._writer.transport.abort()  # a client that does not read
                self._progress.set()
        finally:
            self._progress.set()  # a reader waiting for room sees the sender ended
