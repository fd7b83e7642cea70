"""Where the capture's time goes: each piece of the request path timed in isolation
(interleaved rounds, like the others), so an optimization can be aimed and its gain seen.

Pieces run in a tight loop are warmer (caches, specialized bytecode) than inside a real
request, where the same code typically costs 1.5-2x more: read the ``request_path``
benchmark for the end-to-end cost and this one for the proportions.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from starlette.requests import Request
from starlette.responses import JSONResponse

import audit_middleware
from audit_middleware import AuditMiddleware, audited
from audit_middleware.context import CaptureConfig, RequestContext, current
from audit_middleware.event import AuditEvent
from audit_middleware.sinks import BatchingQueue
from audit_middleware.tracing import current_context

from . import _harness as h
from ._asgi import CLIENT, http_scope
from ._sinks import DEFERRED, audit_file_sink

NAME = "capture_breakdown"
TITLE = "Capture breakdown: cost of each piece of the request path, in isolation"

EVENT = "credentials_deleted"
TARGET = "c-42"

_START = {"type": "http.response.start", "status": 200, "headers": []}
_BODY = {"type": "http.response.body", "body": b"{}"}


def _step(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (everything here is in-memory) to completion,
    without an event loop, so the loop's own cost is not part of the piece."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise h.BenchmarkError("a benchmark coroutine suspended; it must complete in one step")


async def _inner_app(scope: Any, receive: Any, send: Any) -> None:
    await send(_START)
    await send(_BODY)


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    return None


def _resolve_all() -> object:
    ctx = current.get()
    assert ctx is not None
    return ctx.resolution(), ctx.principal(), ctx.org(), ctx.workspace()


def _loop(body: Callable[[], object]) -> Callable[[int], dict[str, int]]:
    def run(n: int) -> dict[str, int]:
        start = time.perf_counter_ns()
        for _ in range(n):
            body()
        return {h.REQUEST: time.perf_counter_ns() - start}
    return run


def _per_request(make: Callable[[], RequestContext],
                 body: Callable[[], object]) -> Callable[[int], dict[str, int]]:
    """``body`` once per fresh request context (made before the clock starts)."""
    set_context = current.set

    def run(n: int) -> dict[str, int]:
        contexts = [make() for _ in range(n)]
        token = set_context(None)
        start = time.perf_counter_ns()
        for ctx in contexts:
            set_context(ctx)
            body()
        elapsed = time.perf_counter_ns() - start
        current.reset(token)
        return {h.REQUEST: elapsed}
    return run


def run(options: h.Options) -> h.Report:
    with tempfile.TemporaryDirectory(prefix="bench-breakdown-") as tmp:
        return _run(options, Path(tmp))


def _run(options: h.Options, tmp: Path) -> h.Report:
    # Sixteen small cases whose untimed setup (fresh contexts, flushing the queue) is as
    # long as their timed part: shorter batches keep this module to a few seconds.
    options = dataclasses.replace(options, min_batch_seconds=options.min_batch_seconds / 4)
    sink = audit_file_sink(tmp / "audit.jsonl")
    audit_middleware.configure(sink=sink)
    scope = http_scope("DELETE", f"/credentials/{TARGET}")
    scope["path_params"] = {"credentials_id": TARGET}
    config = CaptureConfig()
    middleware = AuditMiddleware(_inner_app)
    queue: BatchingQueue[AuditEvent] = BatchingQueue(lambda batch: None, name="bench-breakdown", **DEFERRED)
    tracer = TracerProvider().get_tracer("benchmarks.capture_breakdown")
    response = JSONResponse({"deleted": TARGET})
    request = Request(scope)
    emit = audit_middleware.emit

    async def handler(request: Request) -> JSONResponse:
        return response

    decorated = audited(EVENT, target="credentials_id")(handler)

    def fresh() -> RequestContext:
        return RequestContext(config, scope=scope)

    def event() -> AuditEvent:
        return AuditEvent(EVENT, TARGET, "", "", "", "", "", "", CLIENT[0],
                          time.time_ns(), None, "")

    sample_events = [event() for _ in range(512)]

    def export_512() -> None:
        b"".join([e.to_json_line() for e in sample_events])
        for e in sample_events:  # formatted values are cached: start from scratch
            e._id = None
            e._trace = None

    def emit_cached_run(n: int) -> dict[str, int]:
        token = current.set(fresh())
        try:
            return _loop(lambda: emit(EVENT, TARGET))(n)
        finally:
            current.reset(token)

    def span_run(n: int) -> dict[str, int]:
        with tracer.start_as_current_span("request"):
            return _loop(current_context)(n)

    def emit_span_run(n: int) -> dict[str, int]:
        with tracer.start_as_current_span("request"):
            return _per_request(fresh, lambda: emit(EVENT, TARGET))(n)

    def flushed(run: Callable[[int], dict[str, int]]) -> Callable[[int], dict[str, int]]:
        def wrapped(n: int) -> dict[str, int]:
            result = run(n)
            sink.flush(60.0)  # untimed: keeps queued events from piling up
            return result
        return wrapped

    pieces: dict[str, tuple[str, Callable[[int], dict[str, int]]]] = {
        "asgi_inner": ("inner ASGI app alone (start + body)",
                       _loop(lambda: _step(_inner_app(scope, _receive, _send)))),
        "asgi_mw": ("AuditMiddleware around it",
                    _loop(lambda: _step(middleware(scope, _receive, _send)))),
        "context": ("RequestContext() + contextvar set/reset",
                    _loop(lambda: current.reset(current.set(fresh())))),
        "resolve": ("resolve client IP + principal + org + workspace (fresh context)",
                    _per_request(fresh, _resolve_all)),
        "handler": ("plain async handler", _per_request(fresh, lambda: _step(handler(request)))),
        "decorated": ("@audited async handler (emits once)",
                      flushed(_per_request(fresh, lambda: _step(decorated(request))))),
        "emit": ("emit(), first event of a request", flushed(_per_request(fresh, lambda: emit(
            EVENT, TARGET)))),
        "emit_again": ("emit(), later event of the same request", flushed(emit_cached_run)),
        "emit_system": ("emit() outside a request (system)",
                        flushed(_loop(lambda: emit(EVENT, TARGET)))),
        "emit_span": ("emit(), first event, active OpenTelemetry span", flushed(emit_span_run)),
        "event": ("AuditEvent() construction", _loop(event)),
        "submit": ("BatchingQueue.submit()", flushed(_loop(lambda: queue.submit(
            sample_events[0])))),
        "span_none": ("current_context(), no span", _loop(current_context)),
        "span_active": ("current_context(), active SDK span", span_run),
        "time_ns": ("time.time_ns()", _loop(time.time_ns)),
        "export": ("background: to_json_line() per event (batches of 512)", _loop(export_512)),
    }
    try:
        m = h.measure([h.Case(name, run) for name, (_, run) in pieces.items()], options)
        # One operation of the export case is 512 events: report per event.
        m.per_op_ns["export"][h.REQUEST] = [v / 512 for v in m.per_op_ns["export"][h.REQUEST]]
        _check_queue(queue)
    finally:
        audit_middleware.configure(sink=None)
        queue.close(60.0)
    return _report(m, {name: label for name, (label, _) in pieces.items()}, options)


def _check_queue(queue: BatchingQueue[AuditEvent]) -> None:
    counts = queue.counts()
    if counts["dropped"]:
        raise h.BenchmarkError(f"the submit() case dropped events ({counts}); raise its "
                               f"max_queue so it measures enqueueing, not dropping")


def _report(m: h.Measurements, labels: dict[str, str], options: h.Options) -> h.Report:
    rows = [[labels[name], h.fmt_us(m.median_ns(name)), f"{m.spread(name) * 100:.1f}%"]
            for name in labels]
    derived = [
        ("AuditMiddleware per request (around a trivial app)",
         m.difference_ns("asgi_mw", "asgi_inner")),
        ("@audited wrapper, excluding emit()",
         m.median_ns("decorated") - m.median_ns("handler") - m.median_ns("emit")),
        ("emit(): first event minus later event (lazy context resolution)",
         m.difference_ns("emit", "emit_again")),
        ("emit(): active span minus none", m.difference_ns("emit_span", "emit")),
    ]
    tables = [
        h.Table(f"Pieces, us per call, median of {options.rounds} interleaved rounds",
                ["piece", "us", "IQR"], rows),
        h.Table("Derived", ["piece", "us"], [[label, h.fmt_us(ns)] for label, ns in derived]),
    ]
    notes = [
        ("Isolated pieces run warm in a tight loop; inside a real request the same code "
        "costs more (see request_path for end-to-end numbers)."),
        "Coroutines are stepped directly (no event loop) since nothing here suspends.",
    ]
    return h.Report(NAME, TITLE, tables, [], notes, m,
                    {"rounds": options.rounds, "batch_sizes": m.batch_sizes})
