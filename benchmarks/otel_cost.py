"""OpenTelemetry costs: the OTel log sink per event against the in-memory sink, and the
collector's forwarder throughput to a local OTLP/HTTP receiver.

Part 1, per event, inside an active span (SDK tracer and logger providers, the SDK's
``BatchLogRecordProcessor`` into an in-memory exporter):
- ``memory``: ``emit()`` into ``MemorySink`` (the floor: an append);
- ``otel_sink``: ``emit()`` into ``OTelLogSink`` (the request thread enqueues; the log
  record is built and handed to the Logs API on the sink's thread);
- ``otel_direct``: what a user would otherwise write: the same log record emitted
  through the SDK logger on the request thread.
Reported on the request thread and including the export (flush of the sink and the
SDK processor), each as a ratio to ``memory``. Target: the OTel sink costs the request
thread at most half of emitting the log record there by hand (``otel_direct``): moving
the work to the sink's thread must pay. (With two cores and one GIL, the sink's thread
still slows the request thread somewhat while it works: that is in the figures.)

Part 2, forwarder throughput: stored records exported by ``Forwarder`` (index read,
conversion, OTLP/HTTP protobuf request, checkpoint fsync per batch of 512) to a local
receiver that decodes each ``ExportLogsServiceRequest``; against the exporter alone
(``OTLPLogExporter.export`` of ready-made SDK records, same batches, same receiver).
Target: the forwarder reaches at least 0.5x the exporter alone's rate.
"""

from __future__ import annotations

import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, InMemoryLogRecordExporter
from opentelemetry.sdk.trace import TracerProvider

import audit_middleware
from audit_middleware import _config, otel
from audit_middleware.sinks.memory import MemorySink
from audit_middleware.sinks.otel import OTelLogSink

from . import _harness as h
from ._rounds import fixed_rounds

NAME = "otel_cost"
TITLE = "OpenTelemetry: OTel log sink vs in-memory sink per event; forwarder throughput"

SINK_LIMIT: Final = 0.5  # otel_sink / otel_direct, request thread
FORWARD_LIMIT: Final = 0.5  # forwarder events/s / exporter-alone events/s
WITH_EXPORT: Final = "with_export"
WALL: Final = "wall"
BATCH: Final = 512
QUEUE: Final = 1 << 22  # the calibration's largest batch

CASES: Final = {
    "memory": "emit() -> MemorySink",
    "otel_sink": "emit() -> OTelLogSink (Logs API on the sink's thread)",
    "otel_direct": "SDK logger.emit(...) of the same record on the request thread",
}


def run(options: h.Options) -> h.Report:
    sink_report = _sink_cost(options)
    with tempfile.TemporaryDirectory(prefix="bench-otel-") as tmp:
        forward = _forward_throughput(options, Path(tmp))
    return h.Report(NAME, TITLE, [sink_report[0], forward[0]],
                    [sink_report[1], forward[1]], sink_report[2] + forward[2],
                    sink_report[3], {"rounds": options.rounds, "batch": BATCH})


# -- part 1: per event ----------------------------------------------------------------------
def _sink_cost(options: h.Options) -> tuple[h.Table, h.Target, list[str], h.Measurements]:
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider()
    # Queues that hold a whole calibrated batch: the benchmark measures cost, not drops.
    provider.add_log_record_processor(BatchLogRecordProcessor(
        exporter, max_queue_size=QUEUE, max_export_batch_size=BATCH))
    logger = provider.get_logger(otel.SCOPE_NAME)
    tracer = TracerProvider().get_tracer("benchmarks.otel_cost")
    memory = MemorySink()
    sink = OTelLogSink(logger_provider=provider, max_queue=QUEUE)
    settings = _config.settings
    previous = settings.sink
    counts = {"exported": 0, "memory": 0}
    emit = audit_middleware.emit

    def emit_batch(n: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(n):
            emit("credentials_deleted", "c-42", principal="u-7", client_ip="198.51.100.7",
                 org_id="o-1", workspace_id="w-1")
        return time.perf_counter_ns() - start

    def run_memory(n: int) -> dict[str, int]:
        settings.sink = memory
        with tracer.start_as_current_span("request"):
            request_ns = emit_batch(n)
        counts["memory"] += len(memory.events)
        memory.clear()
        return {h.REQUEST: request_ns, WITH_EXPORT: request_ns}

    def run_otel_sink(n: int) -> dict[str, int]:
        settings.sink = sink
        with tracer.start_as_current_span("request"):
            request_ns = emit_batch(n)
        start = time.perf_counter_ns()
        if not sink.flush(60.0):
            raise h.BenchmarkError("OTelLogSink did not flush within 60 s")
        export_ns = time.perf_counter_ns() - start
        counts["exported"] += _drain(exporter, n)
        return {h.REQUEST: request_ns, WITH_EXPORT: request_ns + export_ns}

    def run_otel_direct(n: int) -> dict[str, int]:
        record = audit_middleware.AuditEvent(
            "credentials_deleted", "c-42", "u-7", "", "o-1", "", "w-1", "", "198.51.100.7",
            time.time_ns()).to_dict()
        with tracer.start_as_current_span("request"):
            start = time.perf_counter_ns()
            for _ in range(n):
                # What the OTel sink does, done on the request thread by hand.
                logger.emit(timestamp=time.time_ns(), severity_number=SeverityNumber.INFO,
                            severity_text="INFO", body=otel.log_body(record),
                            attributes=otel.log_attributes(record),
                            event_name="credentials_deleted")
            request_ns = time.perf_counter_ns() - start
        start = time.perf_counter_ns()
        provider.force_flush(60_000)
        export_ns = time.perf_counter_ns() - start
        _drain(exporter, n)
        return {h.REQUEST: request_ns, WITH_EXPORT: request_ns + export_ns}

    try:
        m = h.measure([h.Case("memory", run_memory), h.Case("otel_sink", run_otel_sink),
                       h.Case("otel_direct", run_otel_direct)], options)
    finally:
        settings.sink = previous
        sink.close(10.0)
        provider.shutdown()
    rows = [[label, h.fmt_us(m.median_ns(name)), h.fmt_ratio(m.ratio(name, "memory")),
             h.fmt_us(m.median_ns(name, WITH_EXPORT)),
             h.fmt_ratio(m.ratio(name, "memory", WITH_EXPORT))]
            for name, label in CASES.items()]
    table = h.Table(f"Microseconds per event in an active span, median of {options.rounds} "
                    "interleaved rounds", ["case", "us/event (request thread)", "vs memory",
                                           "us/event incl. export", "vs memory incl. export"],
                    rows)
    target = h.Target("OTelLogSink / SDK logger.emit on the request thread, per event",
                      m.ratio("otel_sink", "otel_direct"), SINK_LIMIT, "x")
    notes = [
        (f"OTelLogSink against the in-memory sink: "
         f"{h.fmt_ratio(m.ratio('otel_sink', 'memory'))} on the request thread "
         f"({m.difference_ns('otel_sink', 'memory') / 1000:+.2f} us per event), "
         f"{h.fmt_ratio(m.ratio('otel_sink', 'memory', WITH_EXPORT))} including the "
         "export (the SDK's batch processor and exporter)."),
        (f"records verified: {counts['exported']} log records exported by the SDK for the "
         f"otel_sink events, each with the active span; {counts['memory']} in the memory "
         "sink."),
    ]
    return table, target, notes, m


def _drain(exporter: InMemoryLogRecordExporter, expected: int) -> int:
    logs = exporter.get_finished_logs()
    exporter.clear()
    if len(logs) != expected:
        raise h.BenchmarkError(f"{len(logs)} log records exported for {expected} events")
    if any(not r.log_record.trace_id for r in logs):
        raise h.BenchmarkError("a log record lost the active span's trace id")
    return len(logs)


# -- part 2: forwarder throughput ------------------------------------------------------------
class _Receiver:
    """A local OTLP/HTTP logs receiver that decodes every request and counts records."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceRequest,
            ExportLogsServiceResponse,
        )

        self.records = 0
        lock = threading.Lock()
        receiver = self
        reply = ExportLogsServiceResponse().SerializeToString()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = ExportLogsServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
                n = sum(len(s.log_records) for r in request.resource_logs
                        for s in r.scope_logs)
                with lock:
                    receiver.records += n
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/logs"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _forward_throughput(options: h.Options, tmp: Path
                        ) -> tuple[h.Table, h.Target, list[str]]:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs.export import LogRecordExportResult
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from collector.forward_checkpoint import CHECKPOINT_FILE
    from collector.forward_config import ForwardSettings
    from collector.forwarder import Forwarder
    from collector.otlp_records import to_log_records
    from collector.query import iter_records
    from collector.store import StorageSettings, Store

    from ._events import Population

    count = 1024 if options.quick else 20_480
    rounds = 1 if options.quick else max(3, options.rounds // 2)
    data = tmp / "data"
    with Store(StorageSettings(data_dir=data)) as store:
        for batch in Population().records(count, time.time_ns() - 3_600 * 10**9,
                                          3_600 * 10**9, batch=1024):
            store.write(batch)
    stored = list(iter_records(data))
    receiver = _Receiver()
    settings = ForwardSettings(endpoint=receiver.endpoint, batch_size=BATCH)
    exporter = OTLPLogExporter(endpoint=receiver.endpoint)
    prepared = [to_log_records(stored[i:i + BATCH], Resource.create({}),
                               InstrumentationScope(otel.SCOPE_NAME))
                for i in range(0, len(stored), BATCH)]

    def run_forwarder(n: int) -> dict[str, int]:
        (data / CHECKPOINT_FILE).unlink(missing_ok=True)
        before = receiver.records
        forwarder = Forwarder(data, settings)
        start = time.perf_counter_ns()
        while forwarder.step():
            pass
        elapsed = time.perf_counter_ns() - start
        forwarder.stop()
        if receiver.records - before != n or forwarder.stats()["lag_events"] != 0:
            raise h.BenchmarkError(f"the receiver got {receiver.records - before} of {n}")
        return {WALL: elapsed}

    def run_exporter(n: int) -> dict[str, int]:
        before = receiver.records
        start = time.perf_counter_ns()
        for batch in prepared:
            if exporter.export(batch) is not LogRecordExportResult.SUCCESS:
                raise h.BenchmarkError("the local receiver refused an export")
        elapsed = time.perf_counter_ns() - start
        if receiver.records - before != n:
            raise h.BenchmarkError(f"the receiver got {receiver.records - before} of {n}")
        return {WALL: elapsed}

    try:
        m = fixed_rounds([h.Case("forwarder", run_forwarder),
                          h.Case("exporter", run_exporter)],
                         {"forwarder": count, "exporter": count}, rounds, WALL)
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]
        receiver.close()
    rate = {name: 1e9 / m.median_ns(name, WALL) for name in ("forwarder", "exporter")}
    ratio = 1 / m.ratio("forwarder", "exporter", WALL)
    table = h.Table(f"OTLP/HTTP export of {count} stored events in batches of {BATCH} to a "
                    f"local receiver, median of {rounds} rounds",
                    ["case", "events/s", "us/event", "vs exporter alone"],
                    [["Forwarder (read index, convert, export, checkpoint)",
                      f"{rate['forwarder']:,.0f}", h.fmt_us(m.median_ns("forwarder", WALL)),
                      h.fmt_ratio(ratio)],
                     ["OTLPLogExporter.export of ready-made records",
                      f"{rate['exporter']:,.0f}", h.fmt_us(m.median_ns("exporter", WALL)),
                      "1.000x"]])
    target = h.Target("forwarder events/s / exporter-alone events/s", ratio, FORWARD_LIMIT,
                      "x", higher_is_better=True)
    notes = [(f"records verified: the receiver decoded {count} log records per round and "
              "case; the forwarder caught up (lag 0) each round.")]
    return table, target, notes
