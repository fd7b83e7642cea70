"""The bytes of a stored record, and the derived values the index keeps of one.

``record_lines`` is the one place where a record's final bytes are produced: the
event's 14 schema fields in schema order, ``peer_ip`` when present and non-empty, then
the storage fields ``seq``, ``source``, ``source_seq`` and ``chain`` (the record hash
chain of tamper evidence, ``collector.integrity.chain``); one line of orjson, ``\\n``
terminated.
``encode_events`` does the seq-independent part on the submitting thread.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

import orjson

# Reused rather than copied, so the app and the collector escape the same characters.
# (audit_middleware.event keeps it private; a public helper there would be cleaner.)
from audit_middleware.event import FIELDS, escape_raw_controls
from audit_middleware.wire import MAX_SEQ

from .errors import StorageError

log = logging.getLogger("collector.store")

_FIELDS_WITH_PEER: Final = (*FIELDS, "peer_ip")
#: The storage fields the collector appends to every record, in order (``chain`` only
#: while tamper evidence is on, which is the default).
STORAGE_FIELDS: Final = ("seq", "source", "source_seq", "chain")
#: A source id longer than this is refused: it is repeated in every record it sends.
MAX_SOURCE_LENGTH: Final = 256

#: An index row: seq, id (see ``id_key``), created (integer microseconds UTC), type,
#: principal, target, org_id, workspace_id, client_ip key (``ip_column``), status,
#: org_name, workspace_name, then offset and length of the line in the uncompressed
#: segment (always the last two: ``row[-2]``, ``row[-1]``).
Row = tuple[int, "bytes | str", int, str, str, str, str, str, "bytes | bytearray | None", str,
            str, str, int, int]


def _ordered(event: dict[str, Any]) -> dict[str, Any]:
    """The event's fields in record order. Unknown keys are left out: the record's shape
    is the store's to define, not the sender's."""
    record = {name: event[name] for name in FIELDS}
    peer_ip = event.get("peer_ip")
    if peer_ip:
        record["peer_ip"] = peer_ip
    return record


def check_source(source: str, source_seqs: Sequence[int] | None, count: int,
                 numbered: int = 0) -> None:
    """Reject a source id or source numbering that cannot be stored, before any work."""
    if type(source) is not str or len(source) > MAX_SOURCE_LENGTH:
        raise StorageError(
            f"source must be a string of at most {MAX_SOURCE_LENGTH} characters, "
            f"got {type(source).__name__} {str(source)[:40]!r}"
        )
    if type(numbered) is not int or not 0 <= numbered <= MAX_SEQ:
        raise StorageError(f"numbered must be an int from 0 (not said) to 2**63-1, "
                           f"got {str(numbered)[:40]!r}")
    if source_seqs is None:
        return
    if len(source_seqs) != count:
        raise StorageError(
            f"got {len(source_seqs)} source_seqs for {count} events: pass one number per "
            f"event, or None"
        )
    # Checked per batch on the ingest thread: C-level passes, not a Python step per event.
    if source_seqs and (not set(map(type, source_seqs)) <= _INT or min(source_seqs) < 0):
        number = next(n for n in source_seqs if type(n) is not int or n < 0)
        raise StorageError(
            f"source_seqs must be non-negative ints (0 for 'not numbered'), got {number!r}"
        )


_INT: Final = frozenset({int})


class Encoded:
    """A submission's events, encoded once on the submitting thread (their dicts were
    just parsed there, so they are still in the CPU cache): the JSON of each event in
    record order without its closing brace, and its index key (the row without seq,
    offset and length). Seq-dependent parts are added at commit by ``record_lines``."""

    __slots__ = ("bodies", "ids", "keys")

    def __init__(self, ids: list[str], bodies: list[bytes], keys: list[tuple[Any, ...]]) -> None:
        self.ids = ids
        self.bodies = bodies
        self.keys = keys

    def pick(self, positions: list[int]) -> Encoded:
        return Encoded([self.ids[i] for i in positions], [self.bodies[i] for i in positions],
                       [self.keys[i] for i in positions])


def encode_events(events: Sequence[dict[str, Any]]) -> Encoded:
    """Encode validated event dicts. Raises ``StorageError`` naming the first event that
    cannot be a record (a missing schema field, an id that is not a string, a value
    JSON cannot hold, a ``created`` that is not a time)."""
    dumps = orjson.dumps
    micros = created_micros
    address_key = ip_column
    ids: list[str] = []
    bodies: list[bytes] = []
    keys: list[tuple[Any, ...]] = []
    index = 0
    try:
        for index, event in enumerate(events):
            # Fast path: a sender that already produced schema order (every shipper
            # does) is dumped as is, without building a second dict.
            order = tuple(event)
            if order == FIELDS or (order == _FIELDS_WITH_PEER and event["peer_ip"]):
                body = dumps(event)
            else:
                body = dumps(_ordered(event))
            if not body.isascii():
                body = escape_raw_controls(body)
            event_id = event["id"]
            if type(event_id) is not str:
                raise TypeError(f"id must be a string, got {type(event_id).__name__}")
            ids.append(event_id)
            bodies.append(body[:-1])
            keys.append((id_key(event_id), micros(event["created"]), event["type"],
                         event["principal"], event["target"], event["org_id"],
                         event["workspace_id"], address_key(event["client_ip"]),
                         event["status"], event["org_name"], event["workspace_name"]))
    except KeyError as exc:
        raise StorageError(
            f"event {index} has no {exc.args[0]!r} field: every event needs the 14 schema "
            f"fields (audit_middleware.event.FIELDS)"
        ) from None
    except (TypeError, ValueError, AttributeError, orjson.JSONEncodeError) as exc:
        raise StorageError(f"event {index} cannot be stored: {exc}") from None
    return Encoded(ids, bodies, keys)


class Unencodable(NamedTuple):
    """An event the store cannot encode as a record: its position in the events given,
    its id (when it is a string) and why."""

    position: int
    id: str | None
    reason: str


def encode_each(events: Sequence[dict[str, Any]]) -> tuple[Encoded, list[Unencodable]]:
    """Encode events one at a time, after ``encode_events`` refused the lot: the events
    that can be records, and each that cannot. A mismatch between what validation
    accepts and what the store can encode then costs that event, not its whole batch
    (which its sender would retry forever)."""
    ids: list[str] = []
    bodies: list[bytes] = []
    keys: list[tuple[Any, ...]] = []
    refused: list[Unencodable] = []
    for position, event in enumerate(events):
        try:
            one = encode_events((event,))
        except Exception as exc:
            if isinstance(exc, StorageError):
                reason = str(exc)
                if reason.startswith("event 0 "):  # its place in the one-event list
                    reason = "the event " + reason.removeprefix("event 0 ")
            else:  # a bug in encoding: logged, and this event alone is refused, not retried
                log.exception("audit store: encoding an accepted event failed")
                reason = f"the event cannot be stored ({type(exc).__name__}: {exc})"
            ident = event.get("id") if isinstance(event, dict) else None
            refused.append(Unencodable(position, ident if type(ident) is str else None,
                                       reason))
            continue
        ids += one.ids
        bodies += one.bodies
        keys += one.keys
    return Encoded(ids, bodies, keys), refused


def id_key(event_id: str) -> bytes | str:
    """What the index keys an event id by: the 16 bytes of a UUID in canonical form
    (what the ingest server accepts; half the size of its text), any other id as is."""
    if (len(event_id) == 36 and event_id[8] == event_id[13] == event_id[18] == event_id[23]
            == "-"):
        try:
            key = bytes.fromhex(event_id.replace("-", ""))
        except ValueError:
            return event_id
        if len(key) == 16:  # fromhex skips spaces: " " in place of digits is not a UUID
            return key
    return event_id


def record_lines(
    encoded: Encoded,
    first_seq: int,
    source: str,
    source_seqs: Sequence[int] | None,
    offset: int,
    chain: bytes | None = None,
) -> tuple[list[bytes], list[Row]]:
    """The record line of each encoded event, numbered from ``first_seq``, and its index
    row as if the lines were appended at ``offset`` of a segment. The one place a
    record's final bytes are produced.

    ``chain``: the chain value of the record before the first one (64 hex digits);
    each line then ends with its own ``"chain"`` field (``collector.integrity.chain``),
    and the last line's is where the next call continues (``line[-67:-3]``)."""
    quoted = orjson.dumps(source)
    if not quoted.isascii():
        quoted = escape_raw_controls(quoted)
    tail = b',"seq":%d,"source":' + quoted.replace(b"%", b"%%") + b',"source_seq":%d'
    lines: list[bytes] = []
    rows: list[Row] = []
    seq = first_seq
    numbers = source_seqs if source_seqs else [0] * len(encoded.bodies)
    if chain is None:
        tail += b"}\n"
        for body, key, number in zip(encoded.bodies, encoded.keys, numbers):
            line = body + tail % (seq, number)
            n = len(line)
            lines.append(line)
            rows.append((seq, *key, offset, n))
            seq += 1
            offset += n
        return lines, rows
    # Chained: one SHA-256 over ~400 bytes per record (well under a microsecond), on
    # the commit thread, which is the one that knows the order.
    sha256 = hashlib.sha256
    for body, key, number in zip(encoded.bodies, encoded.keys, numbers):
        unchained = body + tail % (seq, number)
        chain = sha256(chain + unchained).hexdigest().encode()
        line = b'%s,"chain":"%s"}\n' % (unchained, chain)
        n = len(line)
        lines.append(line)
        rows.append((seq, *key, offset, n))
        seq += 1
        offset += n
    return lines, rows


def rebase(rows: list[Row], delta: int) -> list[Row]:
    """``rows`` moved by ``delta`` bytes (their records go to another segment)."""
    return [(*row[:-2], row[-2] + delta, row[-1]) for row in rows]


_second_micros: dict[str, int] = {}


def second_micros(second: str) -> int:
    """Microseconds since the epoch of ``YYYY-MM-DDTHH:MM:SS`` (UTC), cached: the value
    repeats for every event of that second. Raises ``StorageError`` for a date that is
    not on the calendar."""
    base = _second_micros.get(second)
    if base is None:
        base = _parse_micros(second)
        if len(_second_micros) >= 65_536:  # a cache: keep it bounded
            _second_micros.clear()
        _second_micros[second] = base
    return base


def created_micros(created: object) -> int:
    """Integer microseconds since the epoch (UTC) of a ``created`` value. A value
    without an offset is UTC, as the schema says."""
    # Fast path for the schema's own form, 2026-11-26T01:07:10.123456Z.
    if type(created) is str and len(created) == 27 and created[26] == "Z":
        fraction = created[20:26]
        if created[19] == "." and fraction.isascii() and fraction.isdigit():
            return second_micros(created[:19]) + int(fraction)
    return _parse_micros(created)


def _parse_micros(created: object) -> int:
    try:
        moment = datetime.fromisoformat(created)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise StorageError(
            f"created {str(created)[:40]!r} is not an RFC 3339 time such as "
            f"2026-11-26T01:07:10.123456Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


V4_MAPPED: Final = b"\x00" * 10 + b"\xff\xff"
_ip_keys: dict[str, bytes | None] = {}


def ip_key(address: str) -> bytes | None:
    """A key that sorts like the address, so a CIDR block is one index range: the 4
    bytes of an IPv4 address (also of an IPv4-mapped IPv6 one), the 16 of an IPv6
    address; None for an empty or unparseable value."""
    if type(address) is not str:
        return None
    key = _ip_keys.get(address, b"")
    if key != b"":
        return key
    # inet_pton raises ValueError, not OSError, for a NUL in the text: that event then
    # failed its whole batch as "storage unavailable", retried by its shipper forever.
    try:
        key = socket.inet_pton(socket.AF_INET, address)
    except (OSError, ValueError):
        try:
            # A link-local address keeps its zone in the record (fe80::1%eth0); its key
            # is the address (inet_pton refuses the zone, and the client was unfindable).
            key = socket.inet_pton(socket.AF_INET6, address.split("%", 1)[0])
            if key.startswith(V4_MAPPED):
                key = key[12:]
        except (OSError, ValueError):
            key = None
    if len(_ip_keys) >= 65_536:  # a cache, not a second index: keep it bounded
        _ip_keys.clear()
    _ip_keys[address] = key
    return key


_ip_columns: dict[str, bytearray | None] = {}


def ip_column(address: str) -> bytearray | None:
    """``ip_key`` as an index row holds it. A bytearray: the sqlite3 module binds one as
    a BLOB at once, where bytes first go through its adapter lookup (~0.3 us a value, on
    the commit thread, which binds every row while the ingest thread waits for the
    GIL). Cached and shared: never mutated."""
    if type(address) is not str:
        return None
    column = _ip_columns.get(address, _UNCACHED)
    if column is _UNCACHED:
        key = ip_key(address)
        column = bytearray(key) if key is not None else None
        if len(_ip_columns) >= 65_536:
            _ip_columns.clear()
        _ip_columns[address] = column
    return column


_UNCACHED: Final = bytearray()
