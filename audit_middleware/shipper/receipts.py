"""The ``fail_closed`` seam between a sink and the request that emitted an event.

A fail-closed sink gives every event emitted during a request a receipt (a
``concurrent.futures.Future`` resolved by the sink's worker: ``None`` once the collector
acknowledged the event, else the reason it was not recorded) and adds it to the list
the middleware keeps in :data:`pending` for that request. Before the response starts,
the middleware waits for them (:func:`wait_durable`) and answers 503 instead when one
fails or the deadline passes. Fail-open sinks (the default) never touch any of this.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

Receipt = Future  # result: None when durably recorded, else the reason it was not

pending: contextvars.ContextVar[list[Receipt[str | None]] | None] = contextvars.ContextVar(
    "audit_pending_receipts", default=None
)


def new_receipt() -> Receipt[str | None] | None:
    """A receipt registered with the current request, or None outside a request."""
    receipts = pending.get()
    if receipts is None:
        return None
    receipt: Receipt[str | None] = Future()
    receipts.append(receipt)
    return receipt


async def wait_durable(receipts: list[Receipt[str | None]], timeout: float) -> str | None:
    """None when every receipt says durably recorded within ``timeout`` seconds, else
    why not."""
    try:
        async with asyncio.timeout(timeout):
            for receipt in list(receipts):
                reason = await asyncio.wrap_future(receipt)
                if reason is not None:
                    return reason
    except TimeoutError:
        return f"not acknowledged by the collector within {timeout:g}s"
    return None


def wait_durable_blocking(receipts: list[Receipt[str | None]], timeout: float) -> str | None:
    """:func:`wait_durable` for WSGI servers, whose request threads may block."""
    deadline = time.monotonic() + timeout
    try:
        for receipt in list(receipts):
            reason = receipt.result(timeout=max(0.0, deadline - time.monotonic()))
            if reason is not None:
                return reason
    except FutureTimeout:
        return f"not acknowledged by the collector within {timeout:g}s"
    return None
