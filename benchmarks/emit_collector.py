"""The emit call on the request thread with the production sink: ``CollectorSink``
connected to a live collector subprocess, against ``logger.info(json.dumps(event))``
through a stdlib ``FileHandler`` (as in ``emit_cost``, whose queue-sink row is repeated
here for comparison in the same run).

Target (issue 3): ``emit()`` costs at most 1/5 of the logging call.

The sink runs with its defaults. Events are emitted in slices of ``SLICE`` (below the
4,096 queued events that wake its sender early), each followed by ``flush()``, which is
timed apart: the request-thread column is what ``emit()`` costs a request while the
sender mostly sleeps (as between requests of a real app, where the sender wakes every
50 ms); "incl. delivery" adds the wait until the collector acknowledged the slice
(fsynced and indexed), spread over its events.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Final

import audit_middleware
from audit_middleware.context import CaptureConfig, RequestContext, current
from audit_middleware.shipper import CollectorSink
from collector.query import Filters, search

from . import _harness as h
from ._asgi import CLIENT, http_scope
from ._collector import Collector, indexed_events, scratch_dir
from ._sinks import audit_file_sink, read_lines
from .emit_cost import EVENT, TARGET, _event_dict, _stdlib_logger

NAME = "emit_collector"
TITLE = "Emit cost with the collector sink: emit() -> CollectorSink vs logger.info(json.dumps)"

LIMIT: Final = 0.2  # emit / logging, request thread
SLICE: Final = 1024
DELIVERY: Final = "with_delivery"

CASES: Final = {
    "emit_collector": "emit() in a request context, CollectorSink to a live collector",
    "emit_queue": "emit() in a request context, queue sink (as in emit_cost)",
    "logging": "logger.info(json.dumps(event)), stdlib FileHandler",
}


def run(options: h.Options) -> h.Report:
    with scratch_dir("bench-emc-") as tmp, Collector(tmp / "data") as collector:
        return _run(options, tmp, collector)


def _run(options: h.Options, tmp: Path, collector: Collector) -> h.Report:
    sink = CollectorSink(collector.url, spool_dir=tmp / "spool")
    queue_sink = audit_file_sink(tmp / "audit.jsonl")
    logger, handler = _stdlib_logger(tmp / "logging.jsonl")
    config = CaptureConfig()
    scope = http_scope("DELETE", f"/credentials/{TARGET}")
    counts = dict.fromkeys(CASES, 0)
    switch = _Switch(sink)
    audit_middleware.configure(sink=switch)
    emit, set_context = audit_middleware.emit, current.set

    def emit_slice(n: int) -> int:
        # One request per event, its context made before the clock starts; a slice at a
        # time, so they are still in the cache, as a request finds its own (emit_cost
        # makes each just before its emit instead, and subtracts that).
        contexts = [RequestContext(config, scope=scope) for _ in range(n)]
        token = set_context(None)
        start = time.perf_counter_ns()
        for ctx in contexts:
            set_context(ctx)
            emit(EVENT, TARGET)
        elapsed = time.perf_counter_ns() - start
        current.reset(token)
        return elapsed

    def emitting(name: str, target: Any) -> h.CaseRun:
        def run_case(n: int) -> dict[str, int]:
            switch.use(target)
            request = delivery = 0
            for first in range(0, n, SLICE):
                ns = emit_slice(min(SLICE, n - first))
                start = time.perf_counter_ns()
                if not target.flush(60.0):
                    raise h.BenchmarkError(f"{name}: the sink did not flush within 60 s")
                request += ns
                delivery += ns + time.perf_counter_ns() - start
            counts[name] += n
            return {h.REQUEST: request, DELIVERY: delivery}
        return run_case

    def run_logging(n: int) -> dict[str, int]:
        counts["logging"] += n
        info, dumps, event = logger.info, json.dumps, _event_dict()
        start = time.perf_counter_ns()
        for _ in range(n):
            info(dumps(event))
        elapsed = time.perf_counter_ns() - start
        return {h.REQUEST: elapsed, DELIVERY: elapsed}

    try:
        m = h.measure([h.Case("emit_collector", emitting("emit_collector", sink)),
                       h.Case("emit_queue", emitting("emit_queue", queue_sink)),
                       h.Case("logging", run_logging)], options)
        sink.close(30.0)
        queue_sink.close(30.0)
        acknowledged = sink.stats()["acknowledged"]
        sample = search(collector.data_dir, Filters(target=TARGET), limit=1).records
        collector.stop()
        indexed = indexed_events(collector.data_dir)
    finally:
        audit_middleware.configure(sink=None)
        logger.removeHandler(handler)
        handler.close()
    checked = _check(counts, acknowledged, indexed, sample,
                     len(read_lines(tmp / "audit.jsonl")), len(read_lines(tmp / "logging.jsonl")))
    return _report(m, checked, options)


class _Switch:
    """One configured sink whose ``submit`` is the current target's own bound method:
    ``configure(sink=...)`` closes the sink it replaces, and a forwarding call would add
    to every emit."""

    def __init__(self, target: Any) -> None:
        self.use(target)

    def use(self, target: Any) -> None:
        self.target = target
        self.submit = target.submit

    def flush(self, timeout: float | None = None) -> bool:
        return bool(self.target.flush(timeout))

    def close(self, timeout: float | None = None) -> None:
        """The targets are closed by the benchmark itself."""

    def stats(self) -> dict[str, int]:
        return dict(self.target.stats())


def _check(counts: dict[str, int], acknowledged: int, indexed: int, sample: list[dict[str, object]],
           queued: int, logged: int) -> str:
    """Every emit reached its sink (the collector: acknowledged and indexed, with the
    request's fields); every logging call wrote its line."""
    expected = counts["emit_collector"]
    if not acknowledged == indexed == expected:
        raise h.BenchmarkError(f"{expected} emit() calls to the collector sink, "
                               f"{acknowledged} acknowledged, {indexed} indexed")
    if not sample or (sample[0]["type"], sample[0]["client_ip"]) != (EVENT, CLIENT[0]):
        raise h.BenchmarkError(f"the collector's record {sample[:1]} lacks the request's "
                               f"type {EVENT} or client IP {CLIENT[0]}")
    if queued != counts["emit_queue"] or logged != counts["logging"]:
        raise h.BenchmarkError(f"{queued} queue-sink records for {counts['emit_queue']} "
                               f"emits, {logged} logged lines for {counts['logging']} calls")
    return (f"records verified: {acknowledged} emitted to the collector = acknowledged = "
            f"indexed (audit-collector stats), {queued} through the queue sink, {logged} "
            f"logged")


def _report(m: h.Measurements, checked: str, options: h.Options) -> h.Report:
    rows = [
        [label, h.fmt_us(m.median_ns(name)), h.fmt_ratio(m.ratio(name, "logging")),
         f"{m.spread(name) * 100:.1f}%", h.fmt_us(m.median_ns(name, DELIVERY)),
         h.fmt_ratio(m.ratio(name, "logging", DELIVERY))]
        for name, label in CASES.items()
    ]
    table = h.Table(f"Microseconds per call, median of {options.rounds} interleaved rounds",
                    ["call", "us/call", "vs logging", "IQR", "us/call incl. delivery",
                     "vs logging incl. delivery"], rows)
    targets = [h.Target("emit() to CollectorSink / logger.info(json.dumps(event)) "
                        "(request thread)", m.ratio("emit_collector", "logging"), LIMIT, "x")]
    notes = [
        (f"emit() to the collector sink: {h.fmt_ratio(m.ratio('emit_collector', 'emit_queue'))}"
         f" of emit() to the queue sink ({m.difference_ns('emit_collector', 'emit_queue') / 1000:+.2f}"
         f" us): CollectorSink.submit numbers the event, then the same queue append."),
        (f"emitted in slices of {SLICE} (below the 4,096 that wake the sender early), each "
         "followed by flush(): 'incl. delivery' for the collector sink is emit + encode + "
         "send + the collector's fsync, index and acknowledgement, per event; for the "
         "queue sink emit + serialization + write (no fsync)."),
        ("emit: each call runs in a fresh request context (client IP resolved as for a "
         "request's first event). The logging call gets a ready-made event dict."),
        checked,
    ]
    return h.Report(NAME, TITLE, [table], targets, notes, m,
                    {"rounds": options.rounds, "batch_sizes": m.batch_sizes, "slice": SLICE})

