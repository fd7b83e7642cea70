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

from .event import DENIED_STATUS_PREFIXES, FIELDS, SCHEMA_VERSION

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
#: happened, WARN for one recorded as failed (``@audited(record_failure=True)``) and for
#: a denied request (``denied_event``: ``HTTP 403 on DELETE``), so that a 403 is a
#: warning whether or not its handler was ``@audited``.
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
    if isinstance(status, str) and status.startswith(("failed", *DENIED_STATUS_PREFIXES)):
        return SEVERITY_WARN
    return SEVERITY_INFO


def log_body(record: Mapping[str, Any]) -> str:
    """The record as one JSON object: the schema fields in order (and ``peer_ip`` when
    set), without the collector's storage fields."""
    body = {name: record[name] for name in FIELDS if name in record}
    if record.get("peer_ip"):
        body["peer_ip"] = record["peer_ip"]
    return orjson.dumps(body).decode()


# -- the shipper's counters as OpenTelemetry metrics ------------------------------------------
#: (instrument name, kind, stats key, unit, description) of ``audit_middleware.stats()``.
SHIPPER_METRICS: Final[tuple[tuple[str, str, str, str, str], ...]] = (
    ("audit.shipper.queue.depth", "gauge", "queued", "{event}",
     "Events waiting in the shipper's queue"),
    ("audit.shipper.events.emitted", "counter", "submitted", "{event}",
     "Events emitted by this process"),
    ("audit.shipper.events.acknowledged", "counter", "delivered", "{event}",
     "Events durably stored by the collector (or the sink) and acknowledged"),
    ("audit.shipper.events.spooled", "counter", "spooled", "{event}",
     "Events written to the local spool while the collector was unreachable"),
    ("audit.shipper.events.replayed", "counter", "replayed", "{event}",
     "Spooled events sent again"),
    ("audit.shipper.events.dropped", "counter", "dropped", "{event}",
     "Events lost (queue or spool full, spool corrupt); each drop is also logged"),
    ("audit.shipper.events.retried", "counter", "retried", "{event}",
     "Events whose sending failed and was retried"),
    ("audit.shipper.events.rejected", "counter", "rejected", "{event}",
     "Events the collector refused, with a reason"),
    ("audit.shipper.spool.size", "gauge", "spool_bytes", "By", "Bytes in the local spool"),
    ("audit.shipper.spool.corrupt", "counter", "spool_corrupt_bytes", "By",
     "Spooled bytes found torn or corrupt when replayed (lost; logged)"),
    ("audit.shipper.spool.unread", "gauge", "spool_unread_files", "{file}",
     "Spool files held aside because the disk refused to read them (logged; retried)"),
    ("audit.shipper.spool.unusable", "gauge", "spool_unusable", "1",
     "1 while this process's user cannot spool in spool_dir (logged, with what to do)"),
)


def register_metrics(meter_provider: Any = None) -> None:
    """Report the configured sink's counters (``audit_middleware.stats()``) as
    OpenTelemetry observable instruments on ``meter_provider`` (default: the global one).
    Call once at start-up, after ``configure()``; a counter the sink does not keep is
    not reported."""
    from opentelemetry.metrics import CallbackOptions, Observation, get_meter

    from .emitter import stats

    meter = get_meter(SCOPE_NAME, meter_provider=meter_provider)
    for name, kind, key, unit, description in SHIPPER_METRICS:
        def callback(options: CallbackOptions, key: str = key) -> list[Observation]:
            value = stats().get(key)
            return [Observation(value)] if isinstance(value, int) else []

        create = (meter.create_observable_counter if kind == "counter"
                  else meter.create_observable_gauge)
        create(name, callbacks=[callback], unit=unit, description=description)
