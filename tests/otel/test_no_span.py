"""An event emitted outside any span is a log record in no trace, whatever span is
current where its log record is made: the OpenTelemetry API reads an empty ``Context``
as "the current one", so the sink's worker thread (or the forwarder's) lent it its own."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

import audit_middleware as audit
from audit_middleware.sinks.otel import OTelLogSink
from audit_middleware.testing import reset_configuration
from collector.otlp_records import to_log_records
from tests.collector.storage_helpers import event

TRACER = TracerProvider().get_tracer("tests.otel")


@pytest.fixture
def threads_inherit_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads start in the context of the code that started them, as on Python 3.14's
    free-threaded build (``thread_inherit_context``) and under the OpenTelemetry
    threading instrumentation (``opentelemetry-instrument``)."""
    start, run = threading.Thread.start, threading.Thread.run

    def inheriting_start(self: threading.Thread) -> None:
        self._test_context = contextvars.copy_context()  # type: ignore[attr-defined]
        start(self)

    def inheriting_run(self: threading.Thread) -> None:
        self._test_context.run(run, self)  # type: ignore[attr-defined]

    monkeypatch.setattr(threading.Thread, "start", inheriting_start)
    monkeypatch.setattr(threading.Thread, "run", inheriting_run)


@pytest.fixture
def copies() -> Iterator[tuple[OTelLogSink, InMemoryLogRecordExporter]]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    sink = OTelLogSink(audit.MemorySink(), logger_provider=provider)
    audit.configure(sink=sink)
    yield sink, exporter
    reset_configuration()
    sink.close(5)


@pytest.mark.usefixtures("threads_inherit_context")
def test_an_event_outside_any_span_is_not_put_in_the_trace_its_sinks_thread_started_in(
        copies: tuple[OTelLogSink, InMemoryLogRecordExporter]) -> None:
    sink, exporter = copies
    with TRACER.start_as_current_span("GET /first-request") as span:
        audit.emit("credentials_deleted", "c-1", principal="u-1")  # starts the worker
    audit.emit("run_dropped", "run-1")  # a background job: no span
    assert sink.flush(10)
    first, job = (r.log_record for r in exporter.get_finished_logs())
    assert first.trace_id == span.get_span_context().trace_id
    assert (job.trace_id, job.span_id) == (0, 0)


def test_a_stored_record_without_a_trace_is_exported_in_none() -> None:
    record = {**event(1), "seq": 1}
    assert record["trace_id"] == ""
    with TRACER.start_as_current_span("collector work"):
        (log,) = to_log_records([record], Resource.create({}), InstrumentationScope("t"))
    assert (log.log_record.trace_id, log.log_record.span_id) == (0, 0)


def test_a_stored_record_with_a_trace_but_no_span_is_exported_in_that_trace() -> None:
    """The collector takes a trace id without a span id (an app in another language, a
    log whose span is unknown), and OTLP carries one alone: the export dropped it."""
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    record = {**event(1, trace_id=trace, span_id=""), "seq": 1}
    (log,) = to_log_records([record], Resource.create({}), InstrumentationScope("t"))
    assert (log.log_record.trace_id, log.log_record.span_id) == (int(trace, 16), 0)
