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
"""

from __future__ import annotations

import asyncio
from typing import Final

from audit_middleware.wire import ErrorCode, WireError

from .frame_budget import FrameBudget

__all__ = ["GRACE", "MIN_FRAME_RATE", "FrameTooSlow", "read_payload"]

#: Bytes per second. A shipper writes a whole frame at once, at the link's speed: 1 MiB/s
#: is a slow link's (8 Mbit/s), a 4 MiB frame's 4 s. Honest frames behind a trickled one
#: wait ``GRACE`` per turn of the budget (64 frames of 4 MiB by default), not
#: ``read_timeout``.
MIN_FRAME_RATE: Final = 1024 * 1024
#: Seconds a payload may lag behind the rate (TCP's slow start, a scheduling hiccup).
GRACE: Final = 1.0


class FrameTooSlow(WireError):
    """Sent as ``timeout`` (retryable: the shipper sends the batch again on a new
    connection, as after any read deadline); a class of its own to be counted apart."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.TIMEOUT, message)


async def read_payload(reader: asyncio.StreamReader, length: int, budget: FrameBudget, *,
                       rate: float = MIN_FRAME_RATE, grace: float = GRACE) -> bytes:
    """``length`` bytes of ``reader``, whose room ``budget`` has just granted; a
    ``FrameTooSlow`` if they fall behind ``rate`` while others wait for room.
    The frame's own read deadline is the caller's, around this."""
    loop = asyncio.get_running_loop()
    granted = loop.time()
    chunks: list[bytes] = []
    received = 0
    check = granted + grace  # when the bytes received so far stop being enough
    while received < length:
        try:
            # A check already past with bytes buffered still returns them: the timeout
            # only cancels a read that has to wait.
            async with asyncio.timeout_at(check):
                chunk = await reader.read(length - received)
        except TimeoutError:
            # The check and the socket's bytes can be handled in the same turn of the
            # loop (a loop busy past the check while the client's bytes waited in the
            # socket): the read is cancelled as they land in the reader. The collector's
            # lag, not the client's: read on.
            late = await _already_arrived(reader, length - received)
            if late is None:
                if budget.contended:
                    raise FrameTooSlow(too_slow(received, length, loop.time() - granted,
                                                rate)) from None
                check = loop.time() + grace  # no one waits: looked at again in a while
                continue
            chunk = late
        if not chunk:
            raise asyncio.IncompleteReadError(b"".join(chunks), length)
        chunks.append(chunk)
        received += len(chunk)
        check = granted + grace + received / rate
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _already_arrived(reader: asyncio.StreamReader, limit: int) -> bytes | None:
    """What ``reader`` holds now (or its end: ``b""``), or None when a read would wait:
    ``read`` returns buffered bytes without suspending, before a zero timeout fires."""
    try:
        async with asyncio.timeout(0):
            return await reader.read(limit)
    except TimeoutError:
        return None


def too_slow(received: int, length: int, seconds: float, rate: float) -> str:
    return (f"a frame of {length} bytes arrived too slowly ({received} bytes in "
            f"{seconds:.1f}s, under {rate / 1024:g} KiB/s) while other clients' frames "
            "waited for room in max_inflight_bytes; send it again")
