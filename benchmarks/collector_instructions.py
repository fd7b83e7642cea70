"""The collector's CPU per event in instructions: a real ``python -m collector serve``
under ``valgrind --tool=callgrind``, its instrumentation on for exactly one batch of
events (shipped by ``CollectorSink`` from this process, acknowledged, indexed, the
partition left open built and checkpointed), every thread of the collector counted.

``durable_throughput`` gives the collector's CPU time per 1,000 events from ``/proc``,
which moves by 30 % or more from run to run on a shared two-core machine (and by 2-3x on
a slow day); an instruction count repeats to within a few percent whatever else runs:
this is the benchmark to aim a change of the collector's per-event cost with (issue 3's
target itself is judged in time, by ``durable_throughput``). Two runs, ``n`` and ``3n``
events, each in a collector of its own; the difference over ``2n`` is the cost of an
event: start-up and warm-up are outside the counted window, and what is fixed inside it
(the switching, the wait for the store to idle) cancels out. What the collector does
by the clock while the window is open (its housekeeping pass every 0.5 s) is counted
and grows with the longer run's wall time: a few passes' work, against ~3 billion
instructions of events.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path
from typing import Final

import audit_middleware
from audit_middleware.shipper import CollectorSink

from . import _harness as h
from ._callgrind import by_part, parse_totals, self_cost_by_object
from ._collector import Collector, scratch_dir
from ._events import Draw, Population

NAME = "collector_instructions"
TITLE = "Collector CPU per event in instructions (callgrind, all threads, deterministic)"

EVENTS: Final = 10_000
SMOKE_EVENTS: Final = 200
WARMUP: Final = 2_000
#: Under valgrind the collector runs tens of times slower, its start-up included.
START_TIMEOUT: Final = 600.0
#: Events emitted before waiting for their acknowledgement: the sink's queue stays below
#: half full (5,000), where a collector slowed down by valgrind would be taken for a
#: stalled one and the events spooled.
STEP: Final = 2_000
TOTAL: Final = "all of the collector"


def _control(pid: int, on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(pid)],
                   check=True, capture_output=True, timeout=120)


def instructions(tmp: Path, n: int, *, callgrind: bool) -> dict[str, int] | None:
    """Instructions a fresh collector spent on ``n`` events (all its threads), from the
    first event sent to the open partition's index built and the store idle again: in
    all (``TOTAL``) and by part (``_callgrind.PARTS``). None when not under callgrind
    (smoke runs: the path still runs and is checked)."""
    out = tmp / f"callgrind-{n}.out"
    wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
               f"--callgrind-out-file={out}"] if callgrind else []
    # A fixed hash seed: dict and set probing, and so the count, repeat from run to run.
    collector = Collector(tmp / f"data-{n}", wrapper=wrapper, env={"PYTHONHASHSEED": "0"})
    collector.start(START_TIMEOUT if callgrind else 30.0)
    rng = random.Random(5)
    population = Population()
    sink = CollectorSink(collector.url, spool_dir=tmp / f"spool-{n}")
    audit_middleware.configure(sink=sink)
    try:
        _emit(population.draw(WARMUP, rng), sink)
        _delivered(sink, WARMUP)
        collector.wait_idle(quiet=0.2, timeout=START_TIMEOUT)
        if callgrind:
            _control(collector.pid, True)
        _emit(population.draw(n, rng), sink)
        _delivered(sink, WARMUP + n)
        collector.wait_indexed(START_TIMEOUT)
        collector.deferred_build_ns(START_TIMEOUT)
        collector.wait_idle(quiet=0.2, timeout=START_TIMEOUT)
        if callgrind:
            _control(collector.pid, False)
        sink.close(30.0)
        collector.stop(START_TIMEOUT)
    finally:
        audit_middleware.configure(sink=None)
        collector.kill()
    stored = collector.read_store_stats()["written"]
    if stored != WARMUP + n:
        raise h.BenchmarkError(f"the collector stored {stored} events, expected {WARMUP + n}")
    if not callgrind:
        return None
    data = out.read_bytes()
    parts = by_part(self_cost_by_object(data))
    total = parse_totals(data)
    if sum(parts.values()) != total:
        raise h.BenchmarkError(f"the parts of {out} sum to {sum(parts.values())}, its "
                               f"totals line says {total}: the file was misread")
    return {TOTAL: total, **parts}


def _emit(draws: list[Draw], sink: CollectorSink) -> None:
    emit = audit_middleware.emit
    for start in range(0, len(draws), STEP):
        for (kind, target, principal, status, org_id, org_name, ws_id, ws_name,
             client_ip) in draws[start:start + STEP]:
            emit(kind, target, principal=principal, status=status, org_id=org_id,
                 org_name=org_name, workspace_id=ws_id, workspace_name=ws_name,
                 client_ip=client_ip)
        if not sink.flush(START_TIMEOUT):
            raise h.BenchmarkError(f"the collector did not acknowledge {STEP} events "
                                   f"within {START_TIMEOUT} s")


def _delivered(sink: CollectorSink, total: int) -> None:
    if not sink.flush(START_TIMEOUT):
        raise h.BenchmarkError(f"the collector did not acknowledge {total} events within "
                               f"{START_TIMEOUT} s")
    counts = sink.stats()
    if counts["acknowledged"] != total or counts["spooled"] or counts["dropped"]:
        raise h.BenchmarkError(f"{total} events emitted, the sink reports {counts}: the "
                               f"count would not be the cost of {total} stored events")


def run(options: h.Options) -> h.Report:
    callgrind = not options.quick
    if callgrind and shutil.which("valgrind") is None:
        raise h.BenchmarkError("valgrind not found: install Debian's valgrind package "
                               "(apt-get install valgrind)")
    n = SMOKE_EVENTS if options.quick else EVENTS
    with scratch_dir("bench-ci-") as tmp:
        short = instructions(tmp, n, callgrind=callgrind)
        long = instructions(tmp, 3 * n, callgrind=callgrind)
    notes = [
        ("Counted by callgrind in the collector process, every thread (ingest, commit, "
         "index builds, housekeeping), instrumentation on from the first event of the "
         "batch to the store idle again with the batch's partition indexed; two fresh "
         f"collectors ({n:,} and {3 * n:,} events after {WARMUP:,} of warm-up each), the "
         f"difference divided by {2 * n:,}. valgrind runs one thread at a time: how the "
         "events fall into group commits differs from a native run, so this is the work "
         "per event, not its wall time; durable_throughput gives that."),
        "smoke run: nothing measured (no valgrind)" if not callgrind else
        "the events: benchmarks/_events.py's population, as durable_throughput's",
    ]
    rows = []
    if short is not None and long is not None:
        per_event = {part: (long.get(part, 0) - short.get(part, 0)) / (2 * n)
                     for part in {*short, *long}}
        total = per_event.pop(TOTAL)
        rows = [[TOTAL, f"{total:,.0f}", "100.0%"]]
        rows += [[part, f"{count:,.0f}", f"{count / total * 100:.1f}%"]
                 for part, count in sorted(per_event.items(), key=lambda kv: -kv[1])]
        notes.insert(0, f"in all: {short[TOTAL]:,} instructions for {n:,} events, "
                        f"{long[TOTAL]:,} for {3 * n:,}")
    table = h.Table("Instructions per event, by where they ran",
                    ["part", "instructions per event", "share"], rows)
    return h.Report(NAME, TITLE, [table], [], notes, None,
                    {"events": n, "warmup": WARMUP, "callgrind": callgrind})
