"""Collector memory: the peak resident memory of ``python -m collector serve`` while it
ingests 1,000,000 events from ``emit()`` through ``CollectorSink``, read from
``/proc/PID/status`` (``VmHWM`` at the end; ``VmRSS`` sampled throughout, tagged with how
many events the collector had acknowledged).

Target (issue 3): memory stays bounded while ingesting: the peak must stay under
``LIMIT_MIB``, and the second half of the run may not grow the resident set by more than
``GROWTH_LIMIT_MIB`` (memory that grows with the events stored would cross any bound
on a longer run).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Final

import audit_middleware
from audit_middleware.shipper import CollectorSink

from . import _harness as h
from ._collector import Collector, RssSampler, indexed_events, scratch_dir, status_kib
from ._events import Population
from .durable_throughput import emit_windowed

NAME = "collector_memory"
TITLE = "Collector memory: peak RSS of the collector process while ingesting 1,000,000 events"

EVENTS: Final = 1_000_000
SMOKE_EVENTS: Final = 5_000
SLICE: Final = 50_000  # emit() arguments drawn at a time (keeps this process small too)
LIMIT_MIB: Final = 300.0
GROWTH_LIMIT_MIB: Final = 32.0
MARKS: Final = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)  # progress points shown in the table


def run(options: h.Options) -> h.Report:
    with scratch_dir("bench-mem-") as tmp, Collector(tmp / "data") as collector:
        return _run(options, tmp, collector, SMOKE_EVENTS if options.quick else EVENTS)


def _run(options: h.Options, tmp: Path, collector: Collector, events: int) -> h.Report:
    population = Population()
    rng = random.Random(5)
    start_kib = status_kib(collector.pid, "VmRSS")
    sink = CollectorSink(collector.url, spool_dir=tmp / "spool")
    audit_middleware.configure(sink=sink)
    try:
        with RssSampler(collector.pid, interval=0.1) as sampler:
            started = time.monotonic()
            for first in range(0, events, SLICE):
                emit_windowed(population.draw(min(SLICE, events - first), rng), sink,
                              progress=sampler)
            if not sink.flush(120.0):
                raise h.BenchmarkError("the collector sink did not flush within 120 s")
            elapsed = time.monotonic() - started
            sampler.progress = sink.stats()["acknowledged"]
            time.sleep(0.3)  # a last sample or two after the final acknowledgement
        peak_kib = status_kib(collector.pid, "VmHWM")
        end_kib = status_kib(collector.pid, "VmRSS")
        stats = sink.stats()
        audit_middleware.configure(sink=None)
        collector.stop()
        indexed = indexed_events(collector.data_dir)
    finally:
        audit_middleware.configure(sink=None)
    if not stats["acknowledged"] == indexed == events or stats["dropped"] or stats["spooled"]:
        raise h.BenchmarkError(f"{events} events emitted, sink {stats}, {indexed} indexed: "
                               f"the collector did not store them all, so its memory while "
                               f"doing so means nothing")
    return _report(sampler, events, start_kib, peak_kib, end_kib, elapsed, options)


def rss_at(samples: list[tuple[float, int, int]], progress: int) -> int:
    """The largest RSS (KiB) sampled up to the moment ``progress`` events were reached."""
    before = [kib for _, done, kib in samples if done <= progress]
    return max(before) if before else 0


def _report(sampler: RssSampler, events: int, start_kib: int, peak_kib: int, end_kib: int,
            elapsed: float, options: h.Options) -> h.Report:
    samples = sampler.samples
    rows = [[f"{int(mark * 100)}%", f"{int(mark * events):,}",
             f"{rss_at(samples, int(mark * events)) / 1024:.1f}"] for mark in MARKS]
    table = h.Table("Collector RSS (MiB): the largest sample up to each point of the run",
                    ["progress", "events acknowledged", "max RSS so far (MiB)"], rows)
    half = rss_at(samples, events // 2)
    growth_mib = (rss_at(samples, events) - half) / 1024
    summary = h.Table("Summary", ["measure", "value"], [
        ["RSS at start (idle, empty store)", f"{start_kib / 1024:.1f} MiB"],
        ["peak RSS (VmHWM)", f"{peak_kib / 1024:.1f} MiB"],
        ["RSS at the end", f"{end_kib / 1024:.1f} MiB"],
        ["growth over the second half", f"{growth_mib:+.1f} MiB"],
        ["events (time includes drawing them)",
         f"{events:,} in {elapsed:.1f}s ({events / elapsed:,.0f}/s)"],
        ["RSS samples", f"{len(samples)} (every {sampler.interval}s)"],
    ])
    targets = [
        h.Target("collector peak RSS (VmHWM)", peak_kib / 1024, LIMIT_MIB, " MiB"),
        h.Target("collector RSS growth over the second half of the events", growth_mib,
                 GROWTH_LIMIT_MIB, " MiB"),
    ]
    notes = [
        (f"all {events:,} events acknowledged by the collector and indexed "
         "(audit-collector stats); emitted with at most a window of events unacknowledged, "
         "as in durable_throughput."),
        ("VmHWM is the kernel's high-water mark of the resident set: it catches peaks "
        "between samples."),
    ]
    return h.Report(NAME, TITLE, [table, summary], targets, notes, None,
                    {"events": events, "limit_mib": LIMIT_MIB,
                     "growth_limit_mib": GROWTH_LIMIT_MIB, "smoke": options.quick})
