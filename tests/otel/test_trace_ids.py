"""Every event emitted inside an active span carries that span's trace and span ids:
with the SDK's tracer provider directly, and with ``opentelemetry-instrumentation-asgi``
wrapping the example platform (the server span of each request)."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import version

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind
from starlette.testclient import TestClient

import audit_middleware as audit
from audit_middleware.testing import capture_audit_events, reset_configuration
from examples.platform import create_app
from examples.platform.auth import ALICE


@pytest.fixture
def events() -> Iterator[list[audit.AuditEvent]]:
    with capture_audit_events() as captured:
        yield captured
    reset_configuration()


def hex_ids(span) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


# -- the SDK's tracer provider --------------------------------------------------------------
def test_an_event_emitted_in_a_span_carries_its_trace_and_span_ids(events) -> None:
    tracer = TracerProvider().get_tracer("tests")
    with tracer.start_as_current_span("job") as span:
        audit.emit("run_dropped", "run-1")
    assert (events[0].trace_id, events[0].span_id) == hex_ids(span)
    line = events[0].to_json_line()
    assert f'"trace_id":"{hex_ids(span)[0]}","span_id":"{hex_ids(span)[1]}"'.encode() in line


def test_the_innermost_active_span_is_the_one_recorded(events) -> None:
    tracer = TracerProvider().get_tracer("tests")
    with tracer.start_as_current_span("request") as outer:
        with tracer.start_as_current_span("db") as inner:
            audit.emit("run_dropped", "run-1")
        audit.emit("run_dropped", "run-2")
    assert [(e.trace_id, e.span_id) for e in events] == [hex_ids(inner), hex_ids(outer)]
    assert hex_ids(inner)[0] == hex_ids(outer)[0]


def test_an_event_outside_any_span_has_empty_ids(events) -> None:
    audit.emit("run_dropped", "run-1")
    assert (events[0].trace_id, events[0].span_id) == ("", "")


def test_an_unsampled_span_still_correlates_the_event(events) -> None:
    # Logs and audit records are kept whether or not the trace was sampled; the ids
    # still join them to the rest of the request's telemetry.
    tracer = TracerProvider(sampler=ALWAYS_OFF).get_tracer("tests")
    with tracer.start_as_current_span("request") as span:
        audit.emit("run_dropped", "run-1")
    assert not span.is_recording()
    assert (events[0].trace_id, events[0].span_id) == hex_ids(span)


def test_ids_are_resolved_from_the_span_active_at_emit_not_at_serialization(events) -> None:
    tracer = TracerProvider().get_tracer("tests")
    with tracer.start_as_current_span("request") as span:
        audit.emit("run_dropped", "run-1")
    with tracer.start_as_current_span("later"):
        assert (events[0].trace_id, events[0].span_id) == hex_ids(span)


# -- opentelemetry-instrumentation-asgi around the example platform ---------------------------
@pytest.fixture
def traced(events) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = OpenTelemetryMiddleware(create_app(), tracer_provider=provider)
    with TestClient(app, client=("203.0.113.7", 50123),
                    headers={"Authorization": f"Bearer {ALICE.token}"}) as client:
        yield client, exporter


def server_spans(exporter: InMemorySpanExporter) -> list:  # type: ignore[type-arg]
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


def test_each_request_event_carries_the_server_span_of_its_request(traced, events) -> None:
    client, exporter = traced
    org = client.post("/orgs", json={"name": "acme"}).json()["id"]
    client.post(f"/orgs/{org}/workspaces", json={"name": "genomics"})
    spans = server_spans(exporter)
    assert [e.type for e in events] == ["organization_created", "workspace_created"]
    assert len(spans) == 2
    assert [(e.trace_id, e.span_id) for e in events] == [hex_ids(s) for s in spans]
    assert events[0].trace_id != events[1].trace_id  # two requests, two traces


def test_an_incoming_traceparent_makes_the_event_part_of_the_callers_trace(
    traced, events
) -> None:
    client, exporter = traced
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    client.post("/orgs", json={"name": "acme"},
                headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    (span,) = server_spans(exporter)
    assert events[0].trace_id == trace_id
    assert events[0].span_id == hex_ids(span)[1] != parent
    assert f"{span.parent.span_id:016x}" == parent


# -- no SDK: the API alone ---------------------------------------------------------------------
@pytest.mark.skipif(tuple(int(n) for n in version("opentelemetry-api").split(".")[:2]) < (1, 40),
                    reason="before opentelemetry-api 1.40 the API alone keeps no span current")
def test_without_an_sdk_an_incoming_traceparent_gives_the_callers_ids(events) -> None:
    """docs/record.md said "no SDK: empty ids": the API's no-op tracer keeps the span an
    instrumentation extracted from ``traceparent`` current, so the caller's ids are
    recorded (its span id: no span of this process exists)."""
    app = OpenTelemetryMiddleware(create_app(), tracer_provider=trace.NoOpTracerProvider())
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with TestClient(app, headers={"Authorization": f"Bearer {ALICE.token}"}) as client:
        client.post("/orgs", json={"name": "acme"},
                    headers={"traceparent": f"00-{trace_id}-{parent}-01"})
        client.post("/orgs", json={"name": "other"})
    assert [(e.trace_id, e.span_id) for e in events] == [(trace_id, parent), ("", "")]
