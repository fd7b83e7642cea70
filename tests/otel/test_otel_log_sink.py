"""OTelLogSink: every audit event also becomes an OpenTelemetry log record (Logs API),
named for its type, with semantic-convention attributes, correlated to the active span.
Checked with the SDK's logger provider and its in-memory exporter."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider

import audit_middleware as audit
from audit_middleware.errors import AuditArgumentTypeError
from audit_middleware.event import FIELDS
from audit_middleware.sinks.otel import OTelLogSink
from audit_middleware.testing import reset_configuration


class Setup:
    def __init__(self) -> None:
        self.exporter = InMemoryLogRecordExporter()
        self.provider = LoggerProvider()
        self.provider.add_log_record_processor(SimpleLogRecordProcessor(self.exporter))
        self.primary = audit.MemorySink()
        self.sink = OTelLogSink(self.primary, logger_provider=self.provider)
        self.tracer = TracerProvider().get_tracer("tests.otel")

    def records(self):  # type: ignore[no-untyped-def]
        assert self.sink.flush(10)
        return [r.log_record for r in self.exporter.get_finished_logs()]


@pytest.fixture
def otel() -> Iterator[Setup]:
    setup = Setup()
    audit.configure(sink=setup.sink)
    yield setup
    reset_configuration()
    setup.sink.close(5)


def test_an_event_in_a_span_is_a_log_record_named_for_its_type_in_that_span(otel: Setup) -> None:
    with otel.tracer.start_as_current_span("DELETE /credentials") as span:
        event = audit.emit("credentials_deleted", "c-42", principal="u-7", status="",
                           org_id="o-1", org_name="Acme", workspace_id="w-1",
                           workspace_name="genomics", client_ip="198.51.100.7")
    (record,) = otel.records()
    assert record.event_name == "credentials_deleted"
    assert record.timestamp == event.created_ns
    assert record.trace_id == span.get_span_context().trace_id
    assert record.span_id == span.get_span_context().span_id
    assert record.trace_flags == span.get_span_context().trace_flags
    assert (record.severity_number.value, record.severity_text) == (9, "INFO")
    assert dict(record.attributes) == {
        "log.record.uid": event.id,
        "audit.schema.version": 1,
        "user.id": "u-7",
        "client.address": "198.51.100.7",
        "audit.target.id": "c-42",
        "audit.org.id": "o-1",
        "audit.org.name": "Acme",
        "audit.workspace.id": "w-1",
        "audit.workspace.name": "genomics",
    }


def test_the_body_is_the_record_exactly_as_written_to_the_audit_file(otel: Setup) -> None:
    with otel.tracer.start_as_current_span("request"):
        event = audit.emit("run_completed", "run-1", principal="system", status="succeeded")
    (record,) = otel.records()
    assert json.loads(record.body) == json.loads(event.to_json_line())
    assert tuple(json.loads(record.body)) == FIELDS


def test_a_lone_surrogate_is_escaped_and_costs_no_other_events_log_copy(
        otel: Setup) -> None:
    """A name os.fsdecode made of undecodable bytes holds a lone surrogate: its log copy
    carries the visible escape, as the record's own line does, and the events batched
    with it still get theirs (one failed before, and took its whole batch)."""
    bad = b"report-\xff.csv".decode("utf-8", "surrogateescape")
    events = [audit.emit("bucket_file_downloaded", f"f-{i}") for i in range(4)]
    odd = audit.emit("bucket_file_downloaded", bad)
    events += [audit.emit("bucket_file_downloaded", f"g-{i}") for i in range(4)]
    records = otel.records()
    assert len(records) == 9 and otel.sink.stats()["otel_failed"] == 0
    (copy,) = [r for r in records if r.attributes["log.record.uid"] == odd.id]
    assert json.loads(copy.body) == json.loads(odd.to_json_line())
    assert json.loads(copy.body)["target"] == "report-\\udcff.csv"
    assert copy.attributes["audit.target.id"] == "report-\\udcff.csv"


def test_an_event_the_logger_refuses_is_counted_alone(otel: Setup) -> None:
    real = otel.sink._logger.emit

    def refusing(**record):  # type: ignore[no-untyped-def]
        if record["event_name"] == "run_deleted":
            raise RuntimeError("the exporter refused it")
        real(**record)

    otel.sink._logger.emit = refusing  # type: ignore[method-assign]
    audit.emit("run_created", "r-1")
    audit.emit("run_deleted", "r-1")
    audit.emit("run_created", "r-2")
    assert [r.attributes["audit.target.id"] for r in otel.records()] == ["r-1", "r-2"]
    assert (otel.sink.stats()["otel_emitted"], otel.sink.stats()["otel_failed"]) == (2, 1)


def test_a_system_event_outside_a_span_has_no_client_address_and_no_span(otel: Setup) -> None:
    audit.emit("run_dropped", "run-1")
    (record,) = otel.records()
    assert record.attributes["user.id"] == "system"
    assert "client.address" not in record.attributes
    assert "audit.status" not in record.attributes  # empty fields are left out
    assert record.trace_id == 0 and record.span_id == 0


def test_the_status_and_the_proxy_peer_are_attributes(otel: Setup) -> None:
    from audit_middleware.client_ip import TrustedProxies
    from audit_middleware.context import CaptureConfig, RequestContext, current

    scope = {"type": "http", "client": ("10.0.0.2", 1234),
             "headers": [(b"x-forwarded-for", b"192.0.2.50")]}
    token = current.set(RequestContext(
        CaptureConfig(trusted_proxies=TrustedProxies(["10.0.0.0/8"])), scope=scope))
    try:
        audit.emit("user_sign_in", "u-9", principal="u-9", status="password")
    finally:
        current.reset(token)
    (record,) = otel.records()
    assert record.attributes["audit.status"] == "password"
    assert record.attributes["client.address"] == "192.0.2.50"
    assert record.attributes["network.peer.address"] == "10.0.0.2"


def test_an_event_recorded_as_failed_is_a_warning(otel: Setup) -> None:
    audit.emit("credentials_deleted", "c-1", principal="u-1", status="failed: HTTP 500")
    (record,) = otel.records()
    assert (record.severity_number.value, record.severity_text) == (13, "WARN")


def test_a_denied_request_is_a_warning_as_its_audited_failure_is(otel: Setup) -> None:
    """A 403 recorded by the middleware's denied_event (no @audited handler: refused by
    a permission check) was INFO, while the same 403 recorded by an @audited handler
    (``failed: HTTP 403``) was WARN: an alert on warnings missed most denials."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    audit.register_resource("request", {"denied": "request_denied"})
    app = Starlette(
        routes=[Route("/admin", lambda request: PlainTextResponse("no", status_code=403),
                      methods=["DELETE"])],
        middleware=[Middleware(audit.AuditMiddleware, denied_event="request_denied")])
    with TestClient(app) as client:
        assert client.delete("/admin").status_code == 403
    (record,) = otel.records()
    assert (record.event_name, record.attributes["audit.status"]) == (
        "request_denied", "HTTP 403 on DELETE")
    assert (record.severity_number.value, record.severity_text) == (13, "WARN")


def test_the_primary_sink_gets_every_event_and_its_counters_are_the_sinks(otel: Setup) -> None:
    events = [audit.emit("run_dropped", f"run-{i}") for i in range(5)]
    otel.records()
    assert otel.primary.events == events
    stats = audit.stats()
    assert (stats["submitted"], stats["delivered"], stats["dropped"]) == (5, 5, 0)
    assert (stats["otel_emitted"], stats["otel_queued"], stats["otel_dropped"]) == (5, 0, 0)


def test_log_records_are_emitted_in_emit_order(otel: Setup) -> None:
    targets = [f"run-{i}" for i in range(50)]
    for target in targets:
        audit.emit("run_dropped", target)
    assert [r.attributes["audit.target.id"] for r in otel.records()] == targets


def test_a_fail_closed_primary_stays_fail_closed() -> None:
    class FailClosed(audit.MemorySink):
        fail_closed = True
        fail_closed_timeout = 2.5

    sink = OTelLogSink(FailClosed())
    assert (sink.fail_closed, sink.fail_closed_timeout) == (True, 2.5)
    assert OTelLogSink(audit.MemorySink()).fail_closed is False


def test_without_an_sdk_the_log_copy_is_a_no_op_and_the_primary_still_records() -> None:
    primary = audit.MemorySink()
    sink = OTelLogSink(primary)  # the global provider: the API's no-op unless an SDK is set
    audit.configure(sink=sink)
    try:
        audit.emit("run_dropped", "run-1")
        assert sink.flush(5)
        assert [e.target for e in primary.events] == ["run-1"]
    finally:
        reset_configuration()
        sink.close(5)


def test_the_log_copy_alone_counts_its_own_deliveries() -> None:
    setup = Setup()
    sink = OTelLogSink(logger_provider=setup.provider)
    audit.configure(sink=sink)
    try:
        audit.emit("run_dropped", "run-1")
        assert sink.flush(5)
        assert len(setup.exporter.get_finished_logs()) == 1
        assert {k: sink.stats()[k] for k in ("submitted", "delivered", "dropped")} == {
            "submitted": 1, "delivered": 1, "dropped": 0}
    finally:
        reset_configuration()
        sink.close(5)


def test_a_primary_that_is_not_a_sink_is_refused_with_what_it_lacks() -> None:
    """A TypeError still (as it was), and one of ours: what was passed, what to pass."""
    with pytest.raises(TypeError, match=r"primary='x' is not a sink: it needs submit\(\), "
                       r"flush\(\), close\(\) and stats\(\); pass one, e.g. "
                       r"OTelLogSink\(CollectorSink\(...\)\)") as raised:
        OTelLogSink("x")  # type: ignore[arg-type]
    assert isinstance(raised.value, AuditArgumentTypeError)
    with pytest.raises(AuditArgumentTypeError, match="primary=<object object at .*> is not"):
        OTelLogSink(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(("options", "message"), [
    # Each was accepted: a class as primary failed at the first event, a provider
    # without get_logger with an AttributeError, and a NaN or negative exit_timeout
    # at exit, where the queue's events were lost.
    ({"primary": audit.MemorySink}, "is a class: pass an instance"),
    ({"logger_provider": "otel"}, "has no get_logger"),
    ({"exit_timeout": -1}, "exit_timeout must be a number of seconds"),
    ({"exit_timeout": float("nan")}, "exit_timeout must be a number of seconds"),
    ({"max_delay": float("nan")}, "max_delay must be a number of seconds"),
    ({"max_batch": 0}, "max_batch must be a positive int"),
])
def test_bad_options_are_refused_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(audit.AuditConfigurationError, match=message):
        OTelLogSink(**options)


def _emit_three() -> None:
    for i in range(3):
        audit.emit("run_completed", f"run-{i}")


def test_a_multiprocessing_childs_log_copies_are_exported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A multiprocessing child skips atexit, the SDK's own provider shutdown included:
    closing the sink at the child's exit flushes the provider (0 of 3 were exported)."""
    import multiprocessing

    from opentelemetry.sdk._logs.export import (
        BatchLogRecordProcessor,
        LogRecordExporter,
        LogRecordExportResult,
    )

    exported = tmp_path / "exported"

    class FileExporter(LogRecordExporter):
        def export(self, batch):  # type: ignore[no-untyped-def]
            with open(exported, "a") as f:
                f.writelines(f"{data.log_record.attributes['audit.target.id']}\n"
                             for data in batch)
            return LogRecordExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

    provider = LoggerProvider()
    # A long delay: only a flush exports before the child ends.
    provider.add_log_record_processor(BatchLogRecordProcessor(
        FileExporter(), schedule_delay_millis=60_000))
    sink = OTelLogSink(audit.MemorySink(), logger_provider=provider)
    audit.configure(sink=sink)
    try:
        child = multiprocessing.get_context("fork").Process(target=_emit_three)
        child.start()
        child.join(30)
        assert child.exitcode == 0
        assert sorted(exported.read_text().split()) == ["run-0", "run-1", "run-2"]
    finally:
        reset_configuration()
        sink.close(5)


@pytest.mark.parametrize("processor", ["simple", "batch"])
def test_a_multiprocessing_child_is_not_held_past_the_exit_timeout(processor: str) -> None:
    """Closed at the child's exit as atexit would close it, bounded the same way: a
    stalled exporter must not hold the child. Simple: each emit exports (3 records at 2 s
    each held it 6 s); batch: the SDK's force_flush exports synchronously and ignores
    the time it is given (a 60 s stall held it past a minute)."""
    import multiprocessing
    import time

    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    stall = 2 if processor == "simple" else 60

    class Stalled(InMemoryLogRecordExporter):
        def export(self, batch):  # type: ignore[no-untyped-def]
            time.sleep(stall)
            return super().export(batch)

    provider = LoggerProvider()
    provider.add_log_record_processor(
        SimpleLogRecordProcessor(Stalled()) if processor == "simple"
        else BatchLogRecordProcessor(Stalled(), schedule_delay_millis=60_000))
    sink = OTelLogSink(audit.MemorySink(), logger_provider=provider, exit_timeout=0.5)
    audit.configure(sink=sink)
    child = multiprocessing.get_context("fork").Process(target=_emit_three)
    try:
        child.start()
        child.join(4)  # well past the 0.5 s bound, well short of the stall
        assert not child.is_alive()
    finally:
        child.kill()
        child.join(30)
        reset_configuration()
        sink.close(0.5)


class Blocked(InMemoryLogRecordExporter):
    """An exporter stalled until ``release`` is set (a collector that stopped reading)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def export(self, batch):  # type: ignore[no-untyped-def]
        self.release.wait()
        return super().export(batch)


def test_a_flush_keeps_to_its_timeout_with_a_stalled_exporter() -> None:
    """The SDK's batch processor exports synchronously in force_flush and ignores the
    time it is given: flush(0.5), e.g. the lifespan shutdown's, waited for the stalled
    exporter for ever, after the primary's and the queue's flush each took the whole
    timeout."""
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    exporter = Blocked()
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(BatchLogRecordProcessor(
        exporter, schedule_delay_millis=60_000))
    sink = OTelLogSink(audit.MemorySink(), logger_provider=provider)
    audit.configure(sink=sink)
    results: list[bool] = []
    flusher = threading.Thread(target=lambda: results.append(sink.flush(0.5)), daemon=True)
    try:
        audit.emit("run_dropped", "run-1")
        flusher.start()
        flusher.join(10)  # far past the 0.5 s asked for
        assert results == [False]
    finally:
        exporter.release.set()
        flusher.join(30)
        reset_configuration()
        sink.close(5)


def _flushers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "audit-otel-flush"}


def test_flushes_that_time_out_on_a_stalled_exporter_leave_one_thread_not_one_each() -> None:
    """Each flush(timeout) started a provider flush on a new thread and left it blocked
    when the exporter stalled: an app that flushes after every task (a Celery worker, a
    cron job) gained one thread per call for as long as the stall lasted."""
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    exporter = Blocked()
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(BatchLogRecordProcessor(
        exporter, schedule_delay_millis=60_000))
    sink = OTelLogSink(logger_provider=provider)
    audit.configure(sink=sink)
    before = _flushers()
    try:
        for i in range(5):
            audit.emit("run_dropped", f"run-{i}")
            assert not sink.flush(0.05)
        assert len(_flushers() - before) == 1  # not those earlier tests left to end
    finally:
        exporter.release.set()
        reset_configuration()
        sink.close(5)


def _child_stats(sink: OTelLogSink, exporter: InMemoryLogRecordExporter, out: str) -> None:
    exporter.clear()  # the parent's records, inherited with its memory
    audit.emit("run_dropped", "child")
    assert sink.flush(10)
    exported = [r.log_record.attributes["audit.target.id"]
                for r in exporter.get_finished_logs()]
    with open(out, "w") as f:
        json.dump({"stats": sink.stats(), "exported": exported}, f)


@pytest.mark.parametrize("hooks", [True, False])
def test_a_forked_child_counts_only_its_own_log_copies(tmp_path, hooks: bool) -> None:  # type: ignore[no-untyped-def]
    """A child (a gunicorn worker; uWSGI, whose fork runs no at-fork hook) reported its
    parent's otel_emitted as its own: 3 log copies of its 1 event, and, without a
    primary, 3 delivered of 1 submitted. The event its parent still had queued at the
    fork is not emitted again by the child."""
    import multiprocessing

    setup = Setup()
    sink = OTelLogSink(logger_provider=setup.provider, max_delay=60)  # woken by flush
    audit.configure(sink=sink)
    out = tmp_path / "child.json"
    try:
        for i in range(2):
            audit.emit("run_dropped", f"parent-{i}")
        assert sink.flush(10)
        audit.emit("run_dropped", "parent-queued")  # still queued at the fork
        if hooks:
            child = multiprocessing.get_context("fork").Process(
                target=_child_stats, args=(sink, setup.exporter, str(out)))
            child.start()
            child.join(30)
            assert child.exitcode == 0
        else:
            sink._queue.watch_pid = True
            sink._queue._pid = -1  # this process is now a child forked without hooks
            _child_stats(sink, setup.exporter, str(out))
        result = json.loads(out.read_text())
        assert result["exported"] == ["child"]
        assert {k: result["stats"][k] for k in ("submitted", "delivered", "otel_emitted")} == {
            "submitted": 1, "delivered": 1, "otel_emitted": 1}
    finally:
        reset_configuration()
        sink.close(5)


def test_alone_an_event_whose_log_copy_failed_counts_as_dropped() -> None:
    """Without a primary the log copy is the sink: submitted = delivered + queued +
    dropped. An event the logger refused was in none of them."""
    sink = OTelLogSink(logger_provider=Setup().provider)
    audit.configure(sink=sink)

    def refusing(**record):  # type: ignore[no-untyped-def]
        raise RuntimeError("the exporter refused it")

    sink._logger.emit = refusing  # type: ignore[method-assign]
    try:
        audit.emit("run_dropped", "run-1")
        assert sink.flush(5)
        stats = sink.stats()
        assert (stats["submitted"], stats["delivered"], stats["dropped"],
                stats["otel_failed"]) == (1, 0, 1, 1)
    finally:
        reset_configuration()
        sink.close(5)


_EXIT_ORDER = """
import os, sys
import audit_middleware as audit
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor, LogRecordExporter
from audit_middleware.sinks.otel import OTelLogSink

out = sys.argv[1]

class Stalled(LogRecordExporter):
    def export(self, batch):
        with open(out, "a") as f:
            f.write("otel-export\\n")
        # Stalled for good: the process ends here, so the file shows what ran before
        # the log copy's drain whatever the load (no wait that a slow worker outlasts).
        os._exit(0)

    def shutdown(self):
        pass

    def force_flush(self, timeout_millis=30_000):
        return True

class Primary(audit.MemorySink):
    def drain(self, timeout):
        with open(out, "a") as f:
            f.write("primary-drained\\n")
        return super().flush(timeout)

    def close(self, timeout=None):
        with open(out, "a") as f:
            f.write("primary-closed\\n")
        super().close(timeout)

provider = LoggerProvider(shutdown_on_exit=False)
provider.add_log_record_processor(SimpleLogRecordProcessor(Stalled()))
sink = OTelLogSink(Primary(), logger_provider=provider, max_delay=60, exit_timeout=30)
audit.configure(sink=sink)
audit.emit("run_dropped", "run-1")
"""


def test_at_exit_the_primary_is_drained_before_the_log_copy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """At exit the log copy's queue (its own atexit hook, registered after the
    primary's) drained first: a stalled exporter held the audit trail's close for 5 s,
    whatever exit_timeout said, time a supervisor's kill may cut short. Now the exit
    drain (the first exit hook) drains the primary, sent or spooled, before the copies."""
    import subprocess
    import sys

    out = tmp_path / "order"
    proc = subprocess.run([sys.executable, "-c", _EXIT_ORDER, str(out)], check=False, timeout=60,
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().split() == ["primary-drained", "otel-export"]


_PROVIDER_AFTER_SINK = """
import sys
import audit_middleware as audit
from opentelemetry._logs import set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult, SimpleLogRecordProcessor)
from audit_middleware.sinks.otel import OTelLogSink

out = sys.argv[1]

class FileExporter(LogRecordExporter):
    def export(self, batch):
        with open(out, "a") as f:
            f.writelines(f"{data.log_record.attributes['audit.target.id']}\\n" for data in batch)
        return LogRecordExportResult.SUCCESS

    def shutdown(self):
        pass

    def force_flush(self, timeout_millis=30_000):
        return True

# The sink first (a settings module), then the provider (a framework plugin): the
# provider's exit hook is registered last. A long delay: nothing is copied before exit.
sink = OTelLogSink(audit.MemorySink(), max_delay=60)
audit.configure(sink=sink)
provider = LoggerProvider()
provider.add_log_record_processor(
    SimpleLogRecordProcessor(FileExporter()) if sys.argv[2] == "simple"
    else BatchLogRecordProcessor(FileExporter(), schedule_delay_millis=60_000))
set_logger_provider(provider)
for i in range(5):
    audit.emit("run_completed", f"run-{i}")
"""


@pytest.mark.parametrize("processor", ["simple", "batch"])
def test_copies_queued_at_exit_reach_a_provider_set_up_after_the_sink(  # type: ignore[no-untyped-def]
        tmp_path, processor: str) -> None:
    """The provider's own atexit shutdown, registered after the sink's exit hook, ran
    first (last in, first out): the copies still queued then went to a provider shut
    down, and 0 of 5 reached the exporter."""
    import subprocess
    import sys

    out = tmp_path / "exported"
    proc = subprocess.run([sys.executable, "-c", _PROVIDER_AFTER_SINK, str(out), processor],
                          check=False, timeout=60, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    exported = out.read_text().split() if out.exists() else []
    assert sorted(exported) == [f"run-{i}" for i in range(5)]


def test_a_primary_that_takes_its_whole_drain_timeout_leaves_the_copies_a_share(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A collector that does not answer keeps CollectorSink.drain to the deadline it is
    given: the log copies were then flushed with 0 s left, and the drain failed."""
    import time
    from types import SimpleNamespace

    from audit_middleware.sinks import otel as module

    clock = SimpleNamespace(offset=0.0)  # the primary's drain moves time, not waits it
    monkeypatch.setattr(module, "time", SimpleNamespace(
        monotonic=lambda: time.monotonic() + clock.offset))

    given: list[float] = []

    class WholeTimeout(audit.MemorySink):
        def drain(self, timeout: float) -> bool:
            given.append(timeout)
            clock.offset += timeout
            return True

    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    sink = OTelLogSink(WholeTimeout(), logger_provider=provider, max_delay=60)
    audit.configure(sink=sink)
    try:
        audit.emit("run_completed", "run-1")
        assert sink.drain(10)
        assert [r.log_record.attributes["audit.target.id"]  # type: ignore[index]
                for r in exporter.get_finished_logs()] == ["run-1"]
        assert sink.drain(1)
        # docs/shipping.md: the copies keep a tenth of the timeout, at most 0.5 s
        assert given == [pytest.approx(9.5), pytest.approx(0.9)]
    finally:
        reset_configuration()
        sink.close(5)


def test_a_primary_that_overruns_its_drain_timeout_still_leaves_the_copies_their_share(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A CollectorSink waits past its drain's deadline while a spool write is under way
    (a slow disk: up to 5.5 s, ``shipper/sink_exit.py``): the log copies were then
    flushed with 0 s left (the drain failed, and uvicorn ended the process with them
    queued), though they keep their share "however long the primary takes"."""
    import time
    from types import SimpleNamespace

    from audit_middleware.shipper.sink_exit import CLOSE_GRACE, SPOOL_GRACE
    from audit_middleware.sinks import otel as module

    clock = SimpleNamespace(offset=0.0)  # the primary's drain moves time, not waits it
    monkeypatch.setattr(module, "time", SimpleNamespace(
        monotonic=lambda: time.monotonic() + clock.offset))

    class SlowSpoolDisk(audit.MemorySink):
        def drain(self, timeout: float) -> bool:
            clock.offset += timeout + CLOSE_GRACE + SPOOL_GRACE
            return True

    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    sink = OTelLogSink(SlowSpoolDisk(), logger_provider=provider, max_delay=60)
    audit.configure(sink=sink)
    try:
        audit.emit("run_completed", "run-1")
        assert sink.drain(5)
        assert [r.log_record.attributes["audit.target.id"]  # type: ignore[index]
                for r in exporter.get_finished_logs()] == ["run-1"]
    finally:
        reset_configuration()
        sink.close(5)


_STALLED_PRIMARY = """
import sys
import audit_middleware as audit
from audit_middleware.sinks.otel import OTelLogSink

out = sys.argv[1]

class Stalled(audit.MemorySink):
    def drain(self, timeout):
        with open(out, "a") as f:
            f.write(f"drain {timeout:g}\\n")
        return False  # a collector that does not answer: not all handed on in time

    def close(self, timeout=None):
        with open(out, "a") as f:
            f.write(f"close {timeout}\\n")
        super().close(timeout)

sink = OTelLogSink(Stalled(), max_delay=60, exit_timeout=7)
audit.configure(sink=sink)
audit.emit("run_dropped", "run-1")
"""


def test_at_exit_a_primary_whose_drain_stalled_is_not_waited_for_again(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The exit drain gave the primary ``exit_timeout`` and it did not finish (a
    collector that does not answer: what it held is spooled by then); its close then
    waited a second ``exit_timeout`` on the same stall, doubling the exit a supervisor
    may cut short. Now it is closed with no time to wait."""
    import subprocess
    import sys

    out = tmp_path / "calls"
    proc = subprocess.run([sys.executable, "-c", _STALLED_PRIMARY, str(out)], check=False,
                          timeout=60, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().split("\n")[:2] == ["drain 7", "close 0.0"]
