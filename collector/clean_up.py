"""The steps of a clean-up (``serve``'s, on every way out of serving), each run whatever
the one before did, and none hiding the error that led to it.

Raised from a ``finally``, a step's failure skipped the steps after it (an API whose
stop raised left the forwarder's thread running while the store closed) and replaced
the error that started the clean-up (a start-up's, then never said).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger("collector")


class CleanUp:
    """Steps of a clean-up after ``first`` (the error on its way out, or None)."""

    def __init__(self, first: BaseException | None) -> None:
        self._first = first
        self._failed: list[tuple[str, Exception]] = []

    async def step(self, what: str, work: Awaitable[Any]) -> None:
        """Await ``work`` (``what``: its name in the log); a failure is kept for
        ``done``, and the next step runs."""
        try:
            await work
        except Exception as exc:  # noqa: BLE001 - raised or logged by ``done``
            if exc is not self._first:  # a stop waited for again re-raises its error
                self._failed.append((what, exc))

    def done(self) -> None:
        """Raise the first step's failure when no error was on its way out; log every
        other one with its traceback: none hidden, and the first error stands."""
        raised = self._failed[0][1] if self._first is None and self._failed else None
        after = f"after {self._first!r}" if self._first is not None else "after another"
        for what, exc in self._failed:
            if exc is not raised:
                log.error("%s failed too, %s: %s", what, after, exc, exc_info=exc)
        if raised is not None:
            raise raised
