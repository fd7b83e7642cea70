"""A batch's event lines sorted for the ingest server: the good events encoded for the
store (with where each stood in the batch), the rejected ones with their reasons, and
the ids repeated within the batch.

A line in the shipper's canonical form takes the fast path (``CanonicalLines``: one
regular expression, no JSON parsing); any other line is parsed, validated and encoded
on its own, which also gives every rejection its reason."""

from __future__ import annotations

from array import array
from typing import Any

from audit_middleware.wire import Rejection

from .canonical_lines import CanonicalLines
from .storage.records import Encoded, encode_each
from .validation import Validator, event_id

__all__ = ["BatchEvents", "LineReader"]


class BatchEvents:
    __slots__ = ("at", "encoded", "rejected", "repeated", "seqs")

    def __init__(self) -> None:
        self.encoded = Encoded([], [], [])  # handed to the store, then dropped here
        self.seqs: list[int] = []  # each good event's sequence number
        self.at = array("I")  # each good event's index in the batch (4 bytes each)
        self.rejected: list[Rejection] = []
        self.repeated: list[str] = []  # an id twice in one batch: acknowledged as duplicate


class LineReader:
    """Sorts the event lines of batches (one per ingest server: it keeps the validator's
    memory of known types)."""

    def __init__(self, max_field_length: int) -> None:
        self._validator = Validator(max_field_length, from_clients=True)
        self._canonical = CanonicalLines(max_field_length, from_clients=True)

    def sort(self, lines: list[bytes], seqs: list[int]) -> BatchEvents:
        events = BatchEvents()
        encoded = events.encoded
        ids, bodies, keys = encoded.ids, encoded.bodies, encoded.keys
        good_seqs, at = events.seqs, events.at
        seen: set[str] = set()
        fast = self._canonical.read
        for i, line in enumerate(lines):
            read = fast(line)
            if read is None:
                general = self._general(line)
                if isinstance(general, str):
                    events.rejected.append(Rejection(i, seqs[i], event_id(line), general))
                    continue
                read = general
            ident, body, key = read
            if ident in seen:
                events.repeated.append(ident)
                continue
            seen.add(ident)
            ids.append(ident)
            bodies.append(body)
            keys.append(key)
            good_seqs.append(seqs[i])
            at.append(i)
        return events

    def _general(self, line: bytes) -> tuple[str, bytes, tuple[Any, ...]] | str:
        """Parse, validate and encode one line: its ``(id, body, key)``, or the reason it
        is rejected. An event validation accepts and the store cannot encode (a mismatch
        between the two) is rejected on its own, never retried by its sender."""
        record = self._validator.parse(line)
        if type(record) is str:
            return record
        encoded, refused = encode_each((record,))  # type: ignore[arg-type]
        if refused:  # a mismatch with validation, or a bug in encoding (then logged)
            return "storage_error: " + refused[0].reason
        return encoded.ids[0], encoded.bodies[0], encoded.keys[0]
