"""Stored records as OpenTelemetry log records (the mapping of ``audit_middleware.otel``,
plus ``audit.collector.seq``), and how many of them one export can carry."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.context import Context
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from audit_middleware import otel
from audit_middleware.tracing import NO_SPAN
from collector.formats import failed
from collector.storage.records import created_micros

__all__ = ["MAX_EXPORT_BYTES", "to_log_records", "utf8_size", "within_budget"]

#: What one export may carry, by a generous estimate of its encoded size (each field is
#: sent twice, as an attribute and in the JSON body, where a control character takes six
#: bytes). The OTLP exporter drops a request over 64 MiB on its own, and the same batch
#: then failed forever: a batch is cut below this instead (one record at least).
MAX_EXPORT_BYTES: Final = 8 << 20
_MAX_TIMESTAMP_NS: Final = (1 << 63) - 1

_SEVERITY = {number: SeverityNumber(number) for number, _ in (otel.SEVERITY_INFO,
                                                               otel.SEVERITY_WARN)}


def _context(record: Mapping[str, Any]) -> Context:
    trace_id, span_id = record.get("trace_id"), record.get("span_id")
    if not trace_id:
        return NO_SPAN  # (an empty Context is the forwarder thread's current one)
    # A trace id without a span id (the collector takes one, and OTLP carries it alone)
    # keeps its trace: the log record takes the ids of this span context, valid or not.
    span = SpanContext(int(trace_id, 16), int(span_id or "0", 16), is_remote=True,
                       trace_flags=TraceFlags(TraceFlags.DEFAULT))
    return set_span_in_context(NonRecordingSpan(span), Context())


def to_log_records(records: Sequence[Mapping[str, Any]], resource: Resource,
                   scope: InstrumentationScope) -> list[ReadableLogRecord]:
    """Stored records as SDK log records ready for an exporter."""
    observed = time.time_ns()
    out = []
    for record in records:
        # The collector's own refusals of reads are warnings, as the app's denials are.
        number, text = otel.SEVERITY_WARN if failed(record) else otel.severity(record)
        attributes = otel.log_attributes(record)
        attributes[otel.COLLECTOR_SEQ] = record["seq"]
        timestamp: int | None = created_micros(record["created"]) * 1000
        if not 0 <= timestamp <= _MAX_TIMESTAMP_NS:  # type: ignore[operator]
            # Stored by a version that took any year: OTLP cannot carry it (the batch
            # failed to encode, forever). The body still holds ``created``.
            timestamp = None
        log_record = LogRecord(
            timestamp=timestamp,
            observed_timestamp=observed,
            context=_context(record),
            severity_number=_SEVERITY[number],
            severity_text=text,
            body=otel.log_body(record),
            attributes=attributes,
            event_name=record["type"],
        )
        out.append(ReadableLogRecord(log_record, resource, scope))
    return out


def within_budget(batch: Sequence[ReadableLogRecord], budget: int = MAX_EXPORT_BYTES) -> int:
    """How many of ``batch``'s first records one export can carry (at least one)."""
    total = 0
    for n, readable in enumerate(batch):
        body = readable.log_record.body
        total += 2 * utf8_size(body if isinstance(body, str) else str(body)) + 1024
        if total > budget:
            return max(n, 1)
    return len(batch)


def utf8_size(text: str) -> int:
    """``text``'s size in UTF-8 bytes. Its length in characters was taken for it: text
    outside ASCII is up to 4 bytes a character, and a batch of it passed the budget up
    to four times over. ``isascii`` costs nothing (CPython keeps it as a flag): only
    other text is encoded to be measured."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
