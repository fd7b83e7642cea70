"""The audit event record (schema version 1) and its one-line JSON serialization.

The emit path must stay cheap (the request thread only builds an event and enqueues it),
so an event keeps its time as integer nanoseconds and its span as the OpenTelemetry
``SpanContext`` object; the id, the RFC 3339 date and the hex trace ids are formatted on
first access, which normally happens on a sink's background thread.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Mapping
from typing import Any, Final

import orjson

from .tracing import trace_ids

SCHEMA_VERSION: Final = 1

#: Field names of schema version 1, in the order they appear in every record.
FIELDS: Final[tuple[str, ...]] = (
    "v",
    "id",
    "type",
    "target",
    "principal",
    "status",
    "org_id",
    "org_name",
    "workspace_id",
    "workspace_name",
    "client_ip",
    "created",
    "trace_id",
    "span_id",
)

#: Optional fields an event may carry after the schema fields (documented in docs/record.md).
OPTIONAL_FIELDS: Final[tuple[str, ...]] = ("peer_ip",)

#: The string fields a caller supplies; each is length-capped (see ``sanitize``).
TEXT_FIELDS: Final[tuple[str, ...]] = (
    "target",
    "principal",
    "status",
    "org_id",
    "org_name",
    "workspace_id",
    "workspace_name",
)

#: Principal of events the application itself initiates.
SYSTEM: Final = "system"

#: The statuses that deny access: not authenticated, not allowed (``denials``).
DENIED_STATUSES: Final[frozenset[int]] = frozenset((401, 403))


def denied_status(status_code: object, method: object) -> str:
    """The status of a denied request's event (``denials``): ``HTTP 403 on DELETE``."""
    return f"HTTP {status_code} on {method}"


#: How the status of a denied request's event begins (``otel.severity`` tells them by it).
DENIED_STATUS_PREFIXES: Final[tuple[str, ...]] = tuple(
    denied_status(code, "") for code in sorted(DENIED_STATUSES))

# Characters orjson leaves raw that readers may act on: the C1 controls U+0080-U+009F
# (NEL, a line break to str.splitlines; CSI and OSC, the 8-bit ESC [ and ESC ] that
# terminals honouring C1 run during a `tail -f` or `grep`) and LINE and PARAGRAPH
# SEPARATOR (line breaks to JavaScript). In UTF-8 a C1 control is \xc2 and \x80-\x9f,
# and neither byte can be part of another character: one pattern finds them all.
_RAW_CONTROLS: Final = re.compile(rb"\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")


def _escaped(match: re.Match[bytes]) -> bytes:
    return b"\\u%04x" % ord(match.group().decode("utf-8"))


def escape_raw_controls(data: bytes) -> bytes:
    """Escape the characters orjson leaves raw in UTF-8 JSON that readers may act on (the
    C1 controls, U+2028, U+2029), so one record is one line for every reader and no
    terminal control reaches a screen. ASCII data cannot hold them: callers skip this
    when ``data.isascii()``."""
    return _RAW_CONTROLS.sub(_escaped, data)


_getrandbits = random.getrandbits  # reseeded in forked children by the random module


_ms_prefix: tuple[int, str] = (-1, "")


def _format_uuid7(ns: int, rand: int) -> str:
    """RFC 9562 UUIDv7: 48-bit Unix ms, then 12 bits of sub-millisecond time (method 3,
    so ids from one process sort by emit time), then the variant and 62 random bits."""
    global _ms_prefix
    ms, sub_ns = divmod(ns, 1_000_000)
    cached_ms, prefix = _ms_prefix  # events come in bursts: reuse the millisecond's text
    if cached_ms != ms:
        prefix = "%08x-%04x-7" % ((ms >> 16) & 0xFFFF_FFFF, ms & 0xFFFF)  # noqa: UP031
        _ms_prefix = (ms, prefix)
    return "%s%03x-%04x-%012x" % (  # noqa: UP031 - %-format is the fastest here
        prefix, sub_ns * 4096 // 1_000_000, 0x8000 | (rand >> 48), rand & 0xFFFF_FFFF_FFFF)


_second_prefix: tuple[int, str] = (-1, "")


def format_created(ns: int) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-11-26T01:07:10.123456Z``."""
    global _second_prefix
    sec, rem = divmod(ns, 1_000_000_000)
    cached_sec, prefix = _second_prefix  # events come in bursts within one second
    if cached_sec != sec:
        t = time.gmtime(sec)
        prefix = (
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}."
        )
        _second_prefix = (sec, prefix)
    return f"{prefix}{rem // 1000:06d}Z"


#: What the request path hands a sink that builds events on its own thread (a sink with
#: ``submit_pending``): ``(type, target, status, request fields, created_ns, OpenTelemetry
#: context)``, every string already checked and capped; the request fields are
#: ``emitter.request_fields``' tuple. A tuple costs the request a fifth of an
#: ``AuditEvent``; :func:`from_pending` makes the event from it later.
PendingEvent = tuple[str, str, str, tuple[str, str, str, str, str, str, str], int, Any]


def from_pending(item: PendingEvent) -> AuditEvent:
    event_type, target, status, f, created_ns, span = item
    return AuditEvent(event_type, target, f[0], status, f[3], f[4], f[5], f[6], f[1],
                      created_ns, span, f[2])


def json_line(item: AuditEvent | PendingEvent) -> bytes:
    """The record line of a queued event, whichever form the request path queued."""
    event = item if isinstance(item, AuditEvent) else from_pending(item)
    return event.to_json_line()


def encodable(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` with every str made UTF-8-encodable: a lone surrogate (as os.fsdecode
    makes of undecodable bytes) becomes its visible ``\\udcXX`` escape."""
    return {key: value.encode("utf-8", "backslashreplace").decode("utf-8")
            if type(value) is str else value for key, value in record.items()}


def capped_again(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` after ``encodable``, each field capped again: an escape is six
    characters for one, so a field capped before could pass the cap six times over, and
    the collector then refused the event (its action unrecorded)."""
    from . import _config  # the configured cap (imported here: _config imports this)
    from .sanitize import MAX_IP_LENGTH, cap

    longest = _config.settings.max_field_length
    for name in (*TEXT_FIELDS, "client_ip", "peer_ip"):
        value = record.get(name)
        limit = MAX_IP_LENGTH if name in ("client_ip", "peer_ip") else longest
        if type(value) is str and len(value) > limit:
            record[name] = cap(value, limit)
    return record


def seed_date(created: str) -> str:
    """The seed's display form ``YYYY-MM-DD-HH-MM-SS`` of an RFC 3339 ``created`` value."""
    return f"{created[0:10]}-{created[11:13]}-{created[14:16]}-{created[17:19]}"


class AuditEvent:
    """One audit record. Construct through :func:`audit_middleware.emit` or
    :meth:`AuditEvent.create`; field values are already validated and capped there."""

    __slots__ = (
        "_id",
        "_rand",
        "_span",
        "_trace",
        "client_ip",
        "created_ns",
        "org_id",
        "org_name",
        "peer_ip",
        "principal",
        "status",
        "target",
        "type",
        "workspace_id",
        "workspace_name",
    )

    type: str
    target: str
    principal: str
    status: str
    org_id: str
    org_name: str
    workspace_id: str
    workspace_name: str
    client_ip: str
    peer_ip: str
    created_ns: int

    def __init__(
        self,
        type: str,
        target: str,
        principal: str,
        status: str,
        org_id: str,
        org_name: str,
        workspace_id: str,
        workspace_name: str,
        client_ip: str,
        created_ns: int,
        span: Any = None,  # the OpenTelemetry Context at emit (see tracing.py)
        peer_ip: str = "",
    ) -> None:
        self.type = type
        self.target = target
        self.principal = principal
        self.status = status
        self.org_id = org_id
        self.org_name = org_name
        self.workspace_id = workspace_id
        self.workspace_name = workspace_name
        self.client_ip = client_ip
        self.peer_ip = peer_ip
        self.created_ns = created_ns
        self._span = span
        self._id: str | None = None
        # The id's random bits, drawn now: the id is made at its first read, which the
        # caller of emit() and the sink's thread may do at once; drawn then, each drew
        # its own, and the caller kept an id the record does not hold.
        self._rand = _getrandbits(62)
        self._trace: tuple[str, str] | None = None

    @property
    def v(self) -> int:
        return SCHEMA_VERSION

    @property
    def id(self) -> str:
        if self._id is None:
            # Formatted here, off the request path (usually on the sink's thread); two
            # threads formatting it at once make the same text.
            self._id = _format_uuid7(self.created_ns, self._rand)
        return self._id

    @property
    def otel_context(self) -> Any:
        """The OpenTelemetry ``Context`` captured at emit (None or empty: no span)."""
        return self._span

    @property
    def created(self) -> str:
        return format_created(self.created_ns)

    def _trace_ids(self) -> tuple[str, str]:
        if self._trace is None:
            self._trace = trace_ids(self._span)
        return self._trace

    @property
    def trace_id(self) -> str:
        return self._trace_ids()[0]

    @property
    def span_id(self) -> str:
        return self._trace_ids()[1]

    def to_dict(self) -> dict[str, Any]:
        """The record as a dict in schema field order (optional fields only when set)."""
        trace_id, span_id = self._trace if self._trace is not None else self._trace_ids()
        record: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "id": self._id if self._id is not None else self.id,
            "type": self.type,
            "target": self.target,
            "principal": self.principal,
            "status": self.status,
            "org_id": self.org_id,
            "org_name": self.org_name,
            "workspace_id": self.workspace_id,
            "workspace_name": self.workspace_name,
            "client_ip": self.client_ip,
            "created": format_created(self.created_ns),
            "trace_id": trace_id,
            "span_id": span_id,
        }
        if self.peer_ip:
            record["peer_ip"] = self.peer_ip
        return record

    def to_json_line(self) -> bytes:
        """Exactly one line of UTF-8 JSON ending in ``\\n``: orjson escapes every control
        character (CR, LF, NUL, ESC of ANSI sequences); the remaining Unicode line
        breaks are escaped here."""
        try:
            line = orjson.dumps(self.to_dict())
        except TypeError:
            # A str that is not Unicode text (a lone surrogate, as os.fsdecode makes of
            # undecodable bytes) cannot be UTF-8: written as its \\udcXX escape instead,
            # so the event is recorded (visibly marked) rather than failing its batch.
            line = orjson.dumps(capped_again(encodable(self.to_dict())))
        if not line.isascii():
            line = escape_raw_controls(line)
        # The newline is appended here, not with OPT_APPEND_NEWLINE, because the
        # concatenation is a copy: orjson's own result sits in a >=1 KiB allocation
        # shrunk in place, and a sink keeps a batch of lines alive until it is written
        # or acknowledged. Kept by the hundred, those allocations grow and trim the
        # heap on every batch: ~2.1 us an event, against ~0.05 us for the copy
        # (docs/architecture.md, "Where the time goes").
        return line + b"\n"

    def __repr__(self) -> str:
        return f"AuditEvent({self.to_dict()!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AuditEvent):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]
