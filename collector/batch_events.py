"""A batch's event lines sorted for the ingest server: the good events for the store
(with where each stood in the batch), the rejected ones with their reasons, and the ids
repeated within the batch; and the store's own refusals told in the batch's terms."""

from __future__ import annotations

from array import array
from typing import Any

from audit_middleware.wire import Rejection

from .storage.records import Unencodable
from .validation import Validator, event_id

__all__ = ["BatchEvents", "sort_events"]


class BatchEvents:
    __slots__ = ("at", "good", "rejected", "repeated", "seqs")

    def __init__(self) -> None:
        self.good: list[dict[str, Any]] = []  # handed to the store, then dropped here
        self.seqs: list[int] = []  # each good event's sequence number
        self.at = array("I")  # each good event's index in the batch (4 bytes each)
        self.rejected: list[Rejection] = []
        self.repeated: list[str] = []  # an id twice in one batch: acknowledged as duplicate

    def refused(self, unencodable: list[Unencodable]) -> list[Rejection]:
        """The store's refusals (events validation let through that it cannot encode,
        by their position among ``good``) as rejections of the batch: not retryable,
        the rest of the batch is stored."""
        return [Rejection(self.at[u.position], self.seqs[u.position], u.id,
                          f"storage_error: {u.reason}") for u in unencodable]


def sort_events(validator: Validator, lines: list[bytes], seqs: list[int]) -> BatchEvents:
    events = BatchEvents()
    good, good_seqs, at = events.good, events.seqs, events.at
    rejected, repeated = events.rejected, events.repeated
    seen: set[str] = set()
    parse = validator.parse
    for i, line in enumerate(lines):
        record = parse(line)
        if type(record) is str:
            rejected.append(Rejection(i, seqs[i], event_id(line), record))
            continue
        ident = record["id"]  # type: ignore[index]
        if ident in seen:
            repeated.append(ident)
            continue
        seen.add(ident)
        good.append(record)  # type: ignore[arg-type]
        good_seqs.append(seqs[i])
        at.append(i)
    return events
