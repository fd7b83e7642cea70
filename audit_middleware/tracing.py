"""OpenTelemetry correlation: the active span of the emitting code, if any.

Only the ``SpanContext`` object is captured on the request path; its ids are formatted
as hex when the event is serialized (see ``AuditEvent.trace_id``).
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import SpanContext

_get_current_span = trace.get_current_span


def current_span_context() -> SpanContext | None:
    ctx = _get_current_span().get_span_context()
    return ctx if ctx.is_valid else None
