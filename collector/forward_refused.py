"""A record the receiver refuses on its own: what ``forward_on_refused`` does with it.

A 400 to a batch narrows it (``forward_batch_size``) until the record the receiver
cannot take is sent alone. Answered 400 alone, it is what the receiver refuses, not
the batch's size. ``hold`` (the default) retries it until the receiver takes it:
forwarding stops there, visibly. ``skip`` gives it up after ``SKIP_AFTER`` refusals in a
row (the backoff between them), so that one record no receiver will take does not stop
the whole feed: the forwarder counts it, logs it at ERROR and moves the checkpoint past
it, which keeps the last ``KEPT`` of them (``SkippedRecord``) for an operator to find.

Only an answer counts: an export that got none (a timeout, a refused connection) neither
adds a refusal nor ends the row; any other answer for that record ends it.

A receiver that refuses *every* record (a schema it no longer takes, a proxy answering
400 to all) is not a poison record: skipping would give up the whole store, one record
at a time. So at most ``KEPT`` records are skipped in a row without an export accepted
between them (every one of them still named in the checkpoint file); the next one
refused alone is held, as with ``hold``, until the receiver takes it, and the log says
why. A restart allows ``KEPT`` again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = ["KEPT", "ON_REFUSED", "SKIP_AFTER", "RefusedInARow", "SkippedRecord"]

#: The values of ``forward_on_refused``.
ON_REFUSED: Final = ("hold", "skip")
OnRefused = Literal["hold", "skip"]
#: Refusals of a record sent alone, in a row, before ``skip`` gives it up: a receiver
#: being restarted or reconfigured that answers 400 once or twice does not cost a record.
SKIP_AFTER: Final = 3
#: The records skipped that the checkpoint file keeps (the log has every one), and the
#: most skipped in a row with no export accepted between them.
KEPT: Final = 10


@dataclass(frozen=True)
class SkippedRecord:
    """A record skipped as refused, as the checkpoint file keeps it."""

    seq: int
    event_id: str
    reason: str  # the receiver's answer (cut to 200 characters)
    skipped: str  # RFC 3339 UTC, when

    @classmethod
    def now(cls, seq: int, event_id: str, reason: str) -> SkippedRecord:
        return cls(seq, event_id, reason, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "event_id": self.event_id, "reason": self.reason,
                "skipped": self.skipped}


class RefusedInARow:
    """Counts the refusals of the record sent alone at the head of the forwarder's
    position; says when ``skip`` gives it up."""

    def __init__(self, on_refused: OnRefused) -> None:
        self.on_refused = on_refused
        self._seq: int | None = None  # the record refused (None: none)
        self.times = 0  # its refusals in a row
        #: Records skipped since the receiver last took an export (module doc).
        self._skips_in_a_row = 0
        #: Whether the hold for want of an accepted export was said (once a row).
        self.hold_said = False

    def refused_alone(self, seq: int) -> bool:
        """The record at ``seq``, sent alone, was answered 400: whether to skip it now."""
        if seq != self._seq:
            self._seq, self.times = seq, 0
        self.times += 1
        return (self.on_refused == "skip" and self.times >= SKIP_AFTER
                and self._skips_in_a_row < KEPT)

    def held_for_want_of_acceptance(self) -> bool:
        """Whether ``skip`` would give the record up but holds it: ``KEPT`` were skipped
        in a row, the receiver taking nothing between them."""
        return (self.on_refused == "skip" and self.times >= SKIP_AFTER
                and self._skips_in_a_row >= KEPT)

    def skipped(self) -> None:
        """The record was given up."""
        self.answered()
        self._skips_in_a_row += 1

    def accepted(self) -> None:
        """The receiver took an export: the row ends, and skips are allowed again."""
        self.answered()
        self._skips_in_a_row = 0
        self.hold_said = False

    def answered(self) -> None:
        """Another answer (another status, a batch of several): the row ends."""
        self._seq, self.times = None, 0
