"""An audit record as an OpenTelemetry log record: attribute names and the mapping.

One mapping serves both halves: the app's :class:`~audit_middleware.sinks.otel.OTelLogSink`
(events as they are emitted) and the collector's forwarder (stored records exported over
OTLP/HTTP), so a record looks the same in an OpenTelemetry backend whichever way it came.

- event name: the event ``type`` (``credentials_deleted``);
- timestamp: ``created``; trace and span: the span active at emit;
- attributes: semantic-convention names where one exists (``user.id``,
  ``client.address``, ``network.peer.address``, ``log.record.uid`` for the event id, so
  backends can drop the duplicates at-least-once delivery may produce), and ``audit.*``
  names for what is ours (target, status, organization, workspace);
- body: the record itself, one JSON object as written to the audit file, so an archive
  fed from OpenTelemetry keeps the exact record.

Empty fields are left out: an attribute is absent when its value is unknown (a
``system`` event has ``user.id`` = ``system`` and no ``client.address``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from .event import FIELDS, SCHEMA_VERSION

#: Instrumentation scope of every audit log record.
SCOPE_NAME: Final = "audit_middleware"

EVENT_ID: Final = "log.record.uid"
USER_ID: Final = "user.id"
CLIENT_ADDRESS: Final = "client.address"
PEER_ADDRESS: Final = "network.peer.address"
TARGET: Final = "audit.target.id"
STATUS: Final = "audit.status"
ORG_ID: Final = "audit.org.id"
ORG_NAME: Final = "audit.org.name"
WORKSPACE_ID: Final = "audit.workspace.id"
WORKSPACE_NAME: Final = "audit.workspace.name"
SCHEMA: Final = "audit.schema.version"
#: Added by the collector's forwarder: the record's collector-wide sequence number, so a
#: receiver can order records and see gaps.
COLLECTOR_SEQ: Final = "audit.collector.seq"

#: Record field -> attribute name, in record order.
ATTRIBUTES: Final[tuple[tuple[str, str], ...]] = (
    ("id", EVENT_ID),
    ("target", TARGET),
    ("principal", USER_ID),
    ("status", STATUS),
    ("org_id", ORG_ID),
    ("org_name", ORG_NAME),
    ("workspace_id", WORKSPACE_ID),
    ("workspace_name", WORKSPACE_NAME),
    ("client_ip", CLIENT_ADDRESS),
    ("peer_ip", PEER_ADDRESS),
)

#: OpenTelemetry severity numbers (the Logs data model): INFO for an action that
#: happened, WARN for one recorded as failed (``@audited(record_failure=True)``).
SEVERITY_INFO: Final = (9, "INFO")
SEVERITY_WARN: Final = (13, "WARN")


def log_attributes(record: Mapping[str, Any]) -> dict[str, str | int]:
    """The log record attributes of an audit record (a stored record or
    ``AuditEvent.to_dict()``)."""
    attributes: dict[str, str | int] = {SCHEMA: record.get("v", SCHEMA_VERSION)}
    for field, name in ATTRIBUTES:
        value = record.get(field)
        if value:
            attributes[name] = value
    return attributes


def severity(record: Mapping[str, Any]) -> tuple[int, str]:
    status = record.get("status")
    if isinstance(status, str) and status.startswith("failed"):
        return SEVERITY_WARN
    return SEVERITY_INFO


def log_body(record: Mapping[str, Any]) -> str:
    """The record as one JSON object: the schema fields in order (and ``peer_ip`` when
    set), without the collector's storage fields."""
    body = {name: record[name] for name in FIELDS if name in record}
    if record.get("peer_ip"):
        body["peer_ip"] = record["peer_ip"]
    return orjson.dumps(body).decode()
