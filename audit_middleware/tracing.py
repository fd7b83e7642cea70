"""OpenTelemetry correlation: the trace and span active where an event was emitted.

On the request path only the current OpenTelemetry ``Context`` is captured (one
contextvar read; a Context is immutable); the span in it and its hex ids are looked up
when the event is serialized, usually on a sink's background thread.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context


def _context_getter() -> Callable[[], Context]:
    """``otel_context.get_current``, or, with the SDK's default runtime context (a
    contextvar), that contextvar's own C-level ``get``: the same value without two Python
    calls on every event. Any other runtime context keeps the public function."""
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if type(runtime).__name__ == "ContextVarsRuntimeContext" and isinstance(var, ContextVar):
        return var.get
    return otel_context.get_current


current_context = _context_getter()

#: A Context that says "no span": pass it where no span was active. An empty Context
#: does not say it: the API's ``LogRecord`` takes an empty (falsy) one for "the current
#: Context" of the thread making it, and a sink's worker thread started inside a request
#: span (threads inheriting their context: Python 3.14's free-threaded build, the
#: OpenTelemetry threading instrumentation) put every spanless event in that trace.
NO_SPAN: Final[Context] = trace.set_span_in_context(trace.INVALID_SPAN, Context())


def trace_ids(context: Context | None) -> tuple[str, str]:
    """(trace_id, span_id) in lowercase hex of the span active in ``context``, or empty."""
    if not context:  # None, or an empty Context: no span was active
        return ("", "")
    span = trace.get_current_span(context).get_span_context()
    if not span.is_valid:
        return ("", "")
    return (f"{span.trace_id:032x}", f"{span.span_id:016x}")
