"""How many records one export may carry: ``batch_size``, halved for good at each 413
of the endpoint, and narrowed at each 400 (a record it cannot decode, or a body limit
answered 400) until an export passes, then grown back (see ``BatchSize``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collector.forward_config import ForwardSettings

__all__ = ["HTTP_BAD_REQUEST", "HTTP_TOO_LARGE", "PROBE_AFTER", "BatchSize"]

log = logging.getLogger("collector.forward")  # the forwarder's lines, one logger

HTTP_BAD_REQUEST: Final = 400
HTTP_TOO_LARGE: Final = 413
#: Exports accepted in a row at a size narrowed by 400s before a double size is tried
#: (doubled at each such try refused: a body limit answered 400 is tried rarely).
PROBE_AFTER: Final = 8


class BatchSize:
    """The size state of one forwarder: ``limit`` says how many records the next export
    may carry; the forwarder tells it what the endpoint answered (``too_large``,
    ``bad_request``, ``accepted``)."""

    def __init__(self, settings: ForwardSettings) -> None:
        self.settings = settings
        #: Records per export: ``batch_size``, halved at each 413 of the endpoint.
        self._most = settings.batch_size
        #: Records per export since a 400 (None: batches of ``_most``): halved at each
        #: 400, and kept once one passes (see ``bad_request``).
        self._suspect: int | None = None
        #: A record was refused with 400 on its own: that record, not the batches'
        #: size, is what the receiver refuses; once it passes, batches are full again.
        self._refused_alone = False
        self._said_suspect: int | None = None  # the size accepted said
        self._passed = 0  # exports accepted in a row at ``_suspect``
        self._probing = False  # ``_suspect`` was just doubled: not accepted at it yet
        self._probe_after = PROBE_AFTER  # of those before ``_suspect`` is doubled

    def limit(self, fit: int) -> int:
        """At most ``fit`` records (what the export budget takes), narrowed as above."""
        return min(fit, self._most, self._suspect or self._most)

    def too_large(self, sent: int) -> None:
        """The endpoint refused ``sent`` records as too large (a proxy's body limit,
        the OpenTelemetry Collector's ``max_request_body_size``): the same batch would be
        refused forever. Halved for good (the limit stays); one record that is still too
        large is retried, visibly (``last_error``), never skipped."""
        if sent <= 1:
            return
        self._most = max(1, sent // 2)
        log.warning("forwarder: %s refused %d records as too large (HTTP 413); sending "
                    "at most %d per request from now on", self.settings.shown_endpoint, sent,
                    self._most)

    def bad_request(self, sent: int) -> None:
        """The endpoint answered 400 to ``sent`` records: for what one of them holds (a
        record it cannot decode), or for their size (a body limit some servers answer
        400, not 413). Halved until an export passes: the records before a bad one
        are delivered, and a bad one ends up alone. A larger size tried again (see
        ``accepted``) and refused is tried after twice as many."""
        if self._probing:
            self._probe_after *= 2
        self._suspect, self._passed, self._probing = max(1, sent // 2), 0, False
        if sent == 1:
            self._refused_alone = True

    def skipped_alone(self) -> None:
        """The record refused on its own was skipped (``forward_on_refused``): as when
        it passes, the 400s were that record's, and batches are full again."""
        self.accepted(1)

    def accepted(self, sent: int) -> None:
        """An export passed. After a record refused on its own, the batches are full
        again (the 400 was that record's). Else the size that passed is kept, and
        doubled after ``_probe_after`` exports in a row pass at it, back to full.
        Full again at once, a body limit answered 400 refused the next batch, halved
        it down again, and so on at every batch for good (a failure, its backoff and
        two log lines each time); never grown again, two 400s of a receiver being
        set up left 1 record per export for good."""
        suspect, probed = self._suspect, self._probing
        self._probing = False
        if suspect is None or self._refused_alone:
            if probed or self._refused_alone:  # full again: what a next 400 starts from
                self._probe_after, self._said_suspect = PROBE_AFTER, None
            self._suspect, self._passed, self._refused_alone = None, 0, False
            return
        self._passed += 1
        if self._passed >= self._probe_after:
            grown = suspect * 2
            self._suspect = None if grown >= self._most else grown
            self._passed, self._probing = 0, True
        elif self._said_suspect is None or suspect < self._said_suspect:
            self._said_suspect = suspect
            log.warning("forwarder: %s accepted %d records after refusing more with HTTP "
                        "400; sending at most %d per request, more again after %d "
                        "accepted (a body limit answered 400?)",
                        self.settings.shown_endpoint, sent, suspect, self._probe_after)
