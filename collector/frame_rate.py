"""A batch frame's payload, read at a minimum rate while other frames wait for room in
the frame budget (``collector.frame_budget``).

A frame takes its whole length from the budget before its payload is read; without a
rate, one whose client then trickled it (a byte now and then) held that room for its
whole ``read_timeout``. A few dozen such connections (a token holder's, or any process
of the collector's user on the unix socket), reconnecting as they were closed, held the
whole budget at every moment: honest frames queued behind theirs reached their own read
deadline first, were closed with ``timeout``, sent again and queued again, and the
collector stored nothing. As Kestrel's ``MinRequestBodyDataRate`` (a minimum rate after
a grace period; nginx's ``client_body_timeout`` bounds each read only, which a byte now
and then meets), a frame's payload must keep up with ``MIN_FRAME_RATE`` from ``GRACE``
after its room was granted: what it holds must arrive within ``GRACE`` plus its length
at that rate. Enforced only while other frames wait for room: a client on a slow link
costs no one anything when there is room, and cutting it then would only make it send
the same batch again, as slowly, forever.

HTTP ingest's bodies take their room from the same budget (``collector.http_ingest``)
and are held to the same rule: ``Pace`` is the judgment both share (when the next check
is due, and whether falling behind then counts), ``read_payload`` the socket's read and
``next_chunk`` an HTTP body's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final

from audit_middleware.wire import ErrorCode, WireError

from .frame_budget import FrameBudget

__all__ = ["GRACE", "MIN_FRAME_RATE", "RULE", "FrameTooSlow", "Pace", "next_chunk",
           "read_payload"]

#: Bytes per second. A shipper writes a whole frame at once, at the link's speed: 1 MiB/s
#: is a slow link's (8 Mbit/s), a 4 MiB frame's 4 s. Honest frames behind a trickled one
#: wait ``GRACE`` per turn of the budget (64 frames of 4 MiB by default), not
#: ``read_timeout``.
MIN_FRAME_RATE: Final = 1024 * 1024
#: Seconds a payload may lag behind the rate (TCP's slow start, a scheduling hiccup).
GRACE: Final = 1.0
#: The rule as the metrics' help and the OpenAPI document say it, from the two above.
RULE: Final = f"{MIN_FRAME_RATE / (1024 * 1024):g} MiB/s after {GRACE:g} s"


class FrameTooSlow(WireError):
    """Sent as ``timeout`` (retryable: the shipper sends the batch again on a new
    connection, as after any read deadline; an HTTP body's is answered 503 ``timeout``);
    a class of its own to be counted apart."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.TIMEOUT, message)


class Pace:
    """One payload's minimum rate, from the moment its room in ``budget`` was granted
    (now): ``due`` is when the bytes received so far stop being enough; ``lagging``, at
    that moment with nothing more arrived, says whether that counts. ``what`` names the
    payload in the error ("a frame of 4096 bytes")."""

    def __init__(self, budget: FrameBudget, what: str, *, rate: float = MIN_FRAME_RATE,
                 grace: float = GRACE) -> None:
        self._budget, self._what, self._rate, self._grace = budget, what, rate, grace
        self._time = asyncio.get_running_loop().time
        self._granted = self._time()
        self.received = 0
        self.due = self._granted + grace

    def arrived(self, size: int) -> None:
        self.received += size
        self.due = self._granted + self._grace + self.received / self._rate

    def lagging(self) -> FrameTooSlow | None:
        """The error that cuts the payload, if others wait for room now; else None, and
        the next look a grace later (no one waits: a slow link costs no one anything)."""
        now = self._time()
        if self._budget.contended:
            return FrameTooSlow(too_slow(self._what, self.received, now - self._granted,
                                         self._rate))
        self.due = now + self._grace
        return None


async def read_payload(reader: asyncio.StreamReader, length: int, budget: FrameBudget, *,
                       rate: float = MIN_FRAME_RATE, grace: float = GRACE) -> bytes:
    """``length`` bytes of ``reader``, whose room ``budget`` has just granted; a
    ``FrameTooSlow`` if they fall behind ``rate`` while others wait for room.
    The frame's own read deadline is the caller's, around this."""
    pace = Pace(budget, f"a frame of {length} bytes", rate=rate, grace=grace)
    chunks: list[bytes] = []
    while pace.received < length:
        try:
            # A check already past with bytes buffered still returns them: the timeout
            # only cancels a read that has to wait.
            async with asyncio.timeout_at(pace.due):
                chunk = await reader.read(length - pace.received)
        except TimeoutError:
            # The check and the socket's bytes can be handled in the same turn of the
            # loop (a loop busy past the check while the client's bytes waited in the
            # socket): the read is cancelled as they land in the reader. The collector's
            # lag, not the client's: read on.
            late = await _already_arrived(reader, length - pace.received)
            if late is None:
                if cut := pace.lagging():
                    raise cut from None
                continue
            chunk = late
        if not chunk:
            raise asyncio.IncompleteReadError(b"".join(chunks), length)
        chunks.append(chunk)
        pace.arrived(len(chunk))
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def next_chunk(chunks: AsyncIterator[bytes], pace: Pace) -> bytes | None:
    """The next of ``chunks`` (an HTTP body's, Starlette's ``request.stream()``), None at
    its end; a ``FrameTooSlow`` if it falls behind ``pace`` while others wait for room.

    The chunk is awaited in a task of its own, never cancelled at a check that lets it
    go on: cancelling ``__anext__`` ends the generator, and the body could not be read
    on. Only a cut cancels it (the body is then abandoned and answered, as at
    ``read_timeout``: uvicorn reads and drops the rest), as does the caller's own
    deadline, cancelling this."""
    pending = asyncio.ensure_future(anext(chunks, None))
    try:
        while not pending.done():
            now = asyncio.get_running_loop().time()
            await asyncio.wait({pending}, timeout=max(pace.due - now, 0))
            if pending.done():
                break
            # Its bytes handled by the server in the same turn as the check (a loop busy
            # past it) are the collector's lag: one more turn to take them.
            await asyncio.wait({pending}, timeout=0)
            if not pending.done() and (cut := pace.lagging()):
                raise cut
    finally:
        # Also once it is done: that marks an error it ended with as retrieved (a caller
        # cancelled as the client left has nobody to raise it to), which asyncio would
        # log as a task exception never retrieved. Not awaited: a cancelled read ends
        # in the next turn (uvicorn's receive waits on an event only).
        pending.cancel()
    chunk = pending.result()
    if chunk is not None:
        pace.arrived(len(chunk))
    return chunk


async def _already_arrived(reader: asyncio.StreamReader, limit: int) -> bytes | None:
    """What ``reader`` holds now (or its end: ``b""``), or None when a read would wait:
    ``read`` returns buffered bytes without suspending, before a zero timeout fires."""
    try:
        async with asyncio.timeout(0):
            return await reader.read(limit)
    except TimeoutError:
        return None


def too_slow(what: str, received: int, seconds: float, rate: float) -> str:
    return (f"{what} arrived too slowly ({received} bytes in {seconds:.1f}s, under "
            f"{rate / 1024:g} KiB/s) while other clients' batches waited for room in "
            "max_inflight_bytes; send it again")
