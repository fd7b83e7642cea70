"""Event validation on the ingest hot path: schema version 1, exactly.

``Validator.validate`` returns the record (a dict in schema field order) or a rejection
reason: a string that names the field and says what was expected, sent back to the
client and counted. It must stay cheap (about a microsecond per event): type checks
use ``type(x) is``, formats are precompiled regexes, and the only slow check (the date)
runs on a string the regex already shaped.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final

import orjson

from audit_middleware.catalogue import NAME_PATTERN
from audit_middleware.event import FIELDS, OPTIONAL_FIELDS, SCHEMA_VERSION, TEXT_FIELDS
from audit_middleware.sanitize import COLLECTOR_DEFAULT_MAX_FIELD_LENGTH, MAX_IP_LENGTH

from .own_records import OWN_TYPES, own_type_reason

#: Collector-side cap on each text field, in characters. Apps cap at 1024 by default and
#: may raise their own cap; the collector refuses anything beyond this.
DEFAULT_MAX_FIELD_LENGTH: Final = COLLECTOR_DEFAULT_MAX_FIELD_LENGTH
#: ``client_ip``/``peer_ip`` hold an IP (at most 45 characters for IPv6, plus a zone) or
#: the raw socket peer the app saw; anything longer is not an address.
#: A line longer than this cannot hold a valid event (14 capped fields, JSON-escaped).
MAX_LINE_BYTES: Final = 256 * 1024

_FIELD_SET: Final = frozenset(FIELDS)
_FIELD_SET_OPTIONAL: Final = frozenset(FIELDS + OPTIONAL_FIELDS)
_FIELDS_OPTIONAL: Final = FIELDS + OPTIONAL_FIELDS
_MAX_KNOWN_TYPES: Final = 10_000
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch
_TYPE = NAME_PATTERN.fullmatch
# The hour is 00-23 here, not left to fromisoformat: newer Pythons read T24:00:00 as the
# next day's midnight, and the record's text and its index key would then disagree.
_CREATED = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-9]{2}:[0-9]{2}\.[0-9]{6}Z").fullmatch
# The years whose times fit in a signed 64-bit count of nanoseconds since 1970, as OTLP,
# most log stores and the index's arithmetic take them: a record outside them could be
# stored but never exported (one such record stalled the OpenTelemetry forwarder for good).
CREATED_YEARS: Final = ("1970", "2261")
_TRACE_ID = re.compile(r"[0-9a-f]{32}").fullmatch
_SPAN_ID = re.compile(r"[0-9a-f]{16}").fullmatch
_fromisoformat = datetime.fromisoformat


def is_event_id(value: object) -> bool:
    """Whether ``value`` is an event id as stored: a UUID in lowercase canonical form."""
    return type(value) is str and _UUID(value) is not None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Validator:
    def __init__(self, max_field_length: int = DEFAULT_MAX_FIELD_LENGTH, *,
                 from_clients: bool = False) -> None:
        """``from_clients``: validating what apps sent, which may not hold the
        collector's own types (``collector.own_records``)."""
        if max_field_length < 16:
            raise ValueError("max_field_length must be at least 16 characters")
        self.max_field_length = max_field_length
        self._known_types: set[str] = set()  # well-formed types already seen
        self._refused_types = OWN_TYPES if from_clients else frozenset()

    def parse(self, line: bytes) -> dict[str, Any] | str:
        """One JSON line of a batch -> the validated record, or the rejection reason."""
        if len(line) > MAX_LINE_BYTES:
            return f"event line is {len(line)} bytes, over the limit of {MAX_LINE_BYTES}"
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return f"event is not valid JSON: {exc}"
        return self.validate(record)

    def validate(self, record: object) -> dict[str, Any] | str:
        if type(record) is not dict:
            return f"an event must be a JSON object, got {type(record).__name__}"
        n = len(record)
        # Fast path: the shipper sends fields in schema order. Anything else is checked as
        # a set and, when valid, put in schema order at the end.
        in_order = tuple(record) == (FIELDS if n == 14 else _FIELDS_OPTIONAL)
        if not in_order and not (
            (n == 14 and record.keys() == _FIELD_SET)
            or (n == 15 and record.keys() == _FIELD_SET_OPTIONAL)
        ):
            return self._key_problem(record)

        v = record["v"]
        if type(v) is not int or v != SCHEMA_VERSION:
            return f"field 'v' must be {SCHEMA_VERSION} (schema version), got {_show(v)}"
        ident = record["id"]
        if type(ident) is not str or not _UUID(ident):
            return f"field 'id' must be a UUID in lowercase canonical form, got {_show(ident)}"
        kind = record["type"]
        # The type check comes first: a list or an object cannot be looked up in a set.
        if type(kind) is not str or (kind not in self._known_types
                                     and not self._check_type(kind)):
            if type(kind) is str and kind in self._refused_types:
                return own_type_reason(kind)
            return ("field 'type' must be 1-64 characters of a-z, 0-9 and '_' starting with a "
                    f"letter, got {_show(kind)}")
        cap = self.max_field_length
        for name in TEXT_FIELDS:
            value = record[name]
            if type(value) is not str:
                return f"field {name!r} must be a string, got {type(value).__name__}"
            if len(value) > cap:
                return f"field {name!r} is {len(value)} characters, over the cap of {cap}"
        ip = record["client_ip"]
        if type(ip) is not str or len(ip) > MAX_IP_LENGTH:
            return f"field 'client_ip' must be an IP address string or empty, got {_show(ip)}"
        created = record["created"]
        if type(created) is not str or not _CREATED(created) or not _valid_date(created):
            return ("field 'created' must be RFC 3339 UTC with microseconds, e.g. "
                    f"'2026-11-26T01:07:10.123456Z', got {_show(created)}")
        if not CREATED_YEARS[0] <= created[:4] <= CREATED_YEARS[1]:
            return (f"field 'created' must be a time from {CREATED_YEARS[0]} to "
                    f"{CREATED_YEARS[1]} (is the sender's clock right?), got {_show(created)}")
        trace_id, span_id = record["trace_id"], record["span_id"]
        if type(trace_id) is not str or (trace_id and not _TRACE_ID(trace_id)):
            return f"field 'trace_id' must be 32 lowercase hex digits or empty, got " \
                   f"{_show(trace_id)}"
        if type(span_id) is not str or (span_id and not _SPAN_ID(span_id)):
            return f"field 'span_id' must be 16 lowercase hex digits or empty, got " \
                   f"{_show(span_id)}"
        if n == 15:
            peer = record["peer_ip"]
            if type(peer) is not str or not peer or len(peer) > MAX_IP_LENGTH:
                return ("optional field 'peer_ip' must be a non-empty IP address string when "
                        f"present, got {_show(peer)}")
        return record if in_order else _in_schema_order(record)

    def _check_type(self, kind: object) -> bool:
        if type(kind) is not str or not _TYPE(kind) or kind in self._refused_types:
            return False
        if len(self._known_types) < _MAX_KNOWN_TYPES:  # bounded: types are few, but a
            self._known_types.add(kind)  # client could send many distinct ones
        return True

    @staticmethod
    def _key_problem(record: dict[str, Any]) -> str:
        missing = [f for f in FIELDS if f not in record]
        extra = sorted(k for k in record if k not in _FIELD_SET_OPTIONAL)
        if missing:
            return f"missing field(s) {', '.join(missing)} (schema v{SCHEMA_VERSION} has 14)"
        return (f"unknown field(s) {', '.join(_show(k) for k in extra[:5])}: schema "
                f"v{SCHEMA_VERSION} allows only its 14 fields and 'peer_ip'")


def _valid_date(created: str) -> bool:
    try:
        _fromisoformat(created[:-1])  # the regex fixed the shape; this checks the calendar
    except ValueError:
        return False
    return True


def _in_schema_order(record: dict[str, Any]) -> dict[str, Any]:
    ordered = {name: record[name] for name in FIELDS}
    if "peer_ip" in record:
        ordered["peer_ip"] = record["peer_ip"]
    return ordered


def event_id(line: bytes) -> str | None:
    """The id of a rejected event line, when one can be read (for the rejection reply)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    ident = record.get("id") if type(record) is dict else None
    return ident if type(ident) is str and len(ident) <= 64 else None
