"""The request path's shortcuts give exactly what the general code gives.

``request_fields`` reads the scope directly when no resolver or proxy is configured
(``CaptureConfig.plain``), ``emit_in_request`` skips keyword handling, and
``tracing.current_context`` reads the SDK's contextvar itself: each is checked here
against the general path it stands in for."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import audit_middleware
from audit_middleware import _config, tracing
from audit_middleware.context import CaptureConfig, RequestContext, current, set_principal
from audit_middleware.emitter import emit_in_request, record_in_request, request_fields
from audit_middleware.errors import AuditConfigurationError, UnknownEventTypeError
from audit_middleware.event import AuditEvent
from audit_middleware.shipper import CollectorSink
from audit_middleware.sinks.jsonl_file import JsonlFileSink
from audit_middleware.testing import capture_audit_events, reset_configuration


class _User:
    is_authenticated = True

    def __init__(self, identity: str) -> None:
        self.identity = identity


def _scope(user: Any = None, client: tuple[str, int] | None = ("203.0.113.9", 4711)) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "http", "headers": [], "client": client,
                             "path_params": {}}
    if user is not None:
        scope["user"] = user
    return scope


def _general(ctx: RequestContext, cap: int) -> tuple[str, ...]:
    """The same fields through the general branch (a resolver makes the config not plain)."""
    config = CaptureConfig(principal=lambda c: None)
    assert not config.plain
    return request_fields(RequestContext(config, ctx.scope), cap)


@pytest.mark.parametrize("user", [None, _User("u-1"), _User("system"), _User("x" * 300)])
@pytest.mark.parametrize("client", [("203.0.113.9", 4711), None, ("2001:db8::1", 1)])
def test_plain_request_fields_equal_the_general_path(user: Any, client: Any) -> None:
    ctx = RequestContext(CaptureConfig(), _scope(user, client))
    assert ctx.config.plain
    assert request_fields(ctx, 64) == _general(ctx, 64)


def test_config_with_any_resolver_or_proxy_is_not_plain() -> None:
    assert CaptureConfig().plain
    assert not CaptureConfig(trusted_proxies=["10.0.0.0/8"]).plain  # type: ignore[arg-type]
    assert not CaptureConfig(org=lambda c: "o-1").plain
    assert not CaptureConfig(workspace=lambda c: "w-1").plain


def test_set_principal_is_honoured_on_a_plain_config() -> None:
    with capture_audit_events() as events:
        ctx = RequestContext(CaptureConfig(), _scope(_User("u-1")))
        token = current.set(ctx)
        try:
            emit_in_request("credentials_created", "c-1", None, ctx)
            set_principal("u-2")
            emit_in_request("credentials_created", "c-2", None, ctx)
        finally:
            current.reset(token)
    assert [e.principal for e in events] == ["u-1", "u-2"]
    reset_configuration()


def test_emit_in_request_caps_and_converts_like_emit() -> None:
    audit_middleware.configure(max_field_length=24)
    try:
        with capture_audit_events() as events:
            ctx = RequestContext(CaptureConfig(), _scope())
            token = current.set(ctx)
            try:
                fast = emit_in_request("credentials_created", "t" * 60, 7, ctx)
                slow = audit_middleware.emit("credentials_created", "t" * 60, status=7)
            finally:
                current.reset(token)
        assert len(events) == 2
        for name in ("target", "status", "principal", "client_ip", "org_id"):
            assert getattr(fast, name) == getattr(slow, name), name
        assert fast.target != "t" * 60 and len(fast.target) <= 24
        assert fast.status == "7"
    finally:
        reset_configuration()


def test_emit_in_request_still_refuses_unknown_types_and_missing_sink() -> None:
    ctx = RequestContext(CaptureConfig(), _scope())
    reset_configuration()
    with pytest.raises(AuditConfigurationError, match="no audit sink configured"):
        emit_in_request("credentials_created", "c-1", None, ctx)
    with capture_audit_events(), pytest.raises(UnknownEventTypeError):
        emit_in_request("credentials_creatd", "c-1", None, ctx)
    reset_configuration()


def test_current_context_is_the_public_current_context() -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    assert tracing.current_context() is otel_context.get_current()
    with tracer.start_as_current_span("outer") as span:
        captured = tracing.current_context()
        assert captured is otel_context.get_current()
        assert trace.get_current_span(captured) is span
        event = AuditEvent("credentials_created", "c", "u", "", "", "", "", "", "", 0, captured)
        assert event.trace_id == f"{span.get_span_context().trace_id:032x}"
    assert tracing.current_context() is otel_context.get_current()


def test_other_runtime_contexts_keep_the_public_function(monkeypatch: pytest.MonkeyPatch) -> None:
    class OtherRuntime:
        _current_context = None

    monkeypatch.setattr(otel_context, "_RUNTIME_CONTEXT", OtherRuntime())
    assert tracing._context_getter() is otel_context.get_current


def test_pending_events_are_written_like_eager_ones(tmp_path: Any) -> None:
    """``record_in_request`` hands a file sink a tuple (the event is built on its
    thread); the line it writes equals the one ``emit_in_request`` builds on the spot."""
    sink = JsonlFileSink(tmp_path / "audit.jsonl", fsync=False)
    audit_middleware.configure(sink=sink)
    try:
        assert _config.settings.submit_pending is not None
        queued: list[Any] = []
        real = _config.settings.submit_pending

        def spy(item: Any) -> None:
            queued.append(item)
            real(item)

        _config.settings.submit_pending = spy
        ctx = RequestContext(CaptureConfig(), _scope(_User("u-1")))
        token = current.set(ctx)
        try:
            record_in_request("credentials_created", "c-1", "ok", ctx)
            emit_in_request("credentials_created", "c-1", "ok", ctx)
            record_in_request("credentials_created", "c-1", None, ctx)
            record_in_request("credentials_created", "x" * 5000, None, ctx)  # too long
        finally:
            current.reset(token)
        assert sink.flush(10.0)
    finally:
        reset_configuration()
        sink.close()
    assert [type(item) for item in queued] == [tuple, tuple]  # the long target went eager
    lines = [orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    assert len(lines) == 4
    volatile = ("id", "created")
    pending, eager = ({k: v for k, v in rec.items() if k not in volatile} for rec in lines[:2])
    assert pending == eager
    assert pending["principal"] == "u-1" and pending["client_ip"] == "203.0.113.9"
    assert lines[2]["status"] == ""
    assert len(lines[3]["target"]) < 5000 and lines[0]["id"] != lines[1]["id"]


def test_only_sinks_that_build_events_later_get_tuples(tmp_path: Any) -> None:
    with capture_audit_events():  # MemorySink: tests read events, never tuples
        assert _config.settings.submit_pending is None
    sink = CollectorSink("unix://" + str(tmp_path / "none.sock"), spool_dir=tmp_path / "s")
    audit_middleware.configure(sink=sink)
    try:
        assert _config.settings.submit_pending == sink.submit_pending
    finally:
        reset_configuration()
        sink.close(timeout=0.5)


def test_a_sink_that_overrides_submit_sees_every_event(tmp_path: Any) -> None:
    """A subclass that filters or counts in ``submit``, and a wrapper that forwards
    attributes to an inner sink, get no tuples: every event goes through their submit."""
    seen: list[str] = []

    class Counting(JsonlFileSink):
        def submit(self, event: AuditEvent) -> None:
            seen.append(event.target)
            super().submit(event)

    class Forwarding:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def submit(self, event: AuditEvent) -> None:
            seen.append(event.target)
            self.inner.submit(event)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    for sink in (Counting(tmp_path / "a.jsonl"),
                 Forwarding(JsonlFileSink(tmp_path / "b.jsonl"))):
        audit_middleware.configure(sink=sink)
        try:
            assert _config.settings.submit_pending is None
            ctx = RequestContext(CaptureConfig(), _scope())
            token = current.set(ctx)
            try:
                record_in_request("credentials_created", "via-decorator", None, ctx)
                audit_middleware.emit("credentials_created", "via-emit")
            finally:
                current.reset(token)
            assert sink.flush(5.0)
        finally:
            reset_configuration()
            sink.close()
    assert seen == ["via-decorator", "via-emit"] * 2


def test_a_lone_surrogate_is_written_escaped_not_lost(tmp_path: Any) -> None:
    """``os.fsdecode`` turns undecodable bytes into lone surrogates, which no UTF-8
    encoder accepts: the event is still one valid line, the bad character visible as
    its escape, on the sink's thread (the tuple path) and from ``to_json_line``."""
    sink = JsonlFileSink(tmp_path / "audit.jsonl", fsync=False)
    audit_middleware.configure(sink=sink)
    try:
        ctx = RequestContext(CaptureConfig(), _scope())
        token = current.set(ctx)
        try:
            record_in_request("bucket_file_uploaded", "reports/\udcffq3.csv", None, ctx)
            record_in_request("bucket_file_uploaded", "fine.csv", None, ctx)
        finally:
            current.reset(token)
        assert sink.flush(5.0)
        stats = sink.stats()
    finally:
        reset_configuration()
        sink.close()
    lines = (tmp_path / "audit.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["target"] for line in lines] == ["reports/\\udcffq3.csv",
                                                                "fine.csv"]
    assert stats["failed"] == 0 and stats["delivered"] == 2
    event = AuditEvent("credentials_created", "\udc80", "u", "", "", "", "", "", "", 0)
    assert orjson.loads(event.to_json_line())["target"] == "\\udc80"


def test_a_client_host_that_is_not_a_str_is_recorded_as_its_text() -> None:
    import ipaddress

    ctx = RequestContext(CaptureConfig(), _scope(client=(ipaddress.ip_address("10.0.0.9"),
                                                         1)))  # type: ignore[arg-type]
    assert request_fields(ctx, 64)[1] == "10.0.0.9"


def test_a_display_name_is_never_taken_for_the_principal() -> None:
    """A display name is often its user's to change: a user who renamed themselves
    'admin' must not be recorded as the principal 'admin'."""
    from audit_middleware.context import principal_from_user

    class NamedOnly:
        is_authenticated = True
        display_name = "admin"

    class WithUsername(NamedOnly):
        username = "u-42"

    assert principal_from_user(NamedOnly()) is None
    assert principal_from_user(WithUsername()) == "u-42"
