"""The forwarder's failures in a row: counted, said at the 1st, 2nd, 4th, ... and at the
first success after them, and waited out with exponential backoff (with jitter), or the
receiver's ``Retry-After`` when longer (up to ``MAX_RETRY_AFTER``).

A mixin of ``Forwarder``: these methods read and set the forwarder's figures, under its
lock, as they did in it; the attributes are declared below and set by
``Forwarder.__init__``."""

from __future__ import annotations

import logging
import random
import threading
from typing import TYPE_CHECKING, Final

from audit_middleware._counter import worth_saying
from collector.endpoint_url import hide_query_values
from collector.render import terminal_safe

if TYPE_CHECKING:
    from collector.forward_config import ForwardSettings

__all__ = ["MAX_RETRY_AFTER", "Backoff"]

log = logging.getLogger("collector.forward")  # the forwarder's lines, one logger

#: The longest wait a receiver's Retry-After gets: one far off (a clock off by years, a
#: mistake) must not stop forwarding for good.
MAX_RETRY_AFTER: Final = 600.0


class Backoff:
    settings: ForwardSettings
    _lock: threading.Lock
    state: str
    failures: int
    last_error: str | None
    _stopping: bool
    _streak: int
    _delay: float
    _asked: float | None

    def _backoff(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * 2, self.settings.backoff_max)
        jittered = delay * random.uniform(0.8, 1.2)
        # OTLP: a client SHOULD wait what a 429/503 asks (the exporter waits it only
        # within its own timeout; past that, this backoff follows).
        asked = self._asked
        return jittered if asked is None else max(jittered, min(asked, MAX_RETRY_AFTER))

    def _failed(self, exc: Exception) -> None:
        if self._stopping:
            return  # stopped meanwhile: its state stays "stopped"
        with self._lock:
            self.failures += 1
            self.state = "retrying"
            # requests names the URL it failed to reach, query (a key?) included.
            self.last_error = hide_query_values(f"{type(exc).__name__}: {exc}" if str(exc)
                                                else type(exc).__name__)
        self._streak += 1
        if worth_saying(self._streak):  # at 1, 2, 4, 8, ... in a row: visible, not a flood
            # The receiver's answer is quoted in it: escaped, a line break in it would
            # forge a line of this log.
            log.error("forwarder: export to %s failed (%d in a row, %d so far, retrying "
                      "with backoff): %s", self.settings.shown_endpoint, self._streak,
                      self.failures, terminal_safe(self.last_error))

    def _recovered(self) -> None:
        """An export was accepted: the end of an outage is said, as its start was."""
        if self._streak:
            log.info("forwarder: %s accepted again after %d failed exports",
                     self.settings.shown_endpoint, self._streak)
            self._streak = 0
