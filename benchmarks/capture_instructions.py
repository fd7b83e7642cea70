"""The request path in CPU instructions: each case of ``_instructions_child`` runs under
``valgrind --tool=callgrind`` with instrumentation on for exactly its batch of requests.

Timings on a shared two-core machine move by 10-30 % from run to run; instruction counts
repeat to within a percent whatever else runs, so this is the benchmark to aim an
optimization with (``request_path`` is the one the targets are judged by, in time). The
cases separate the pieces: the bare route, a pass-through middleware (the floor of any
ASGI layer), the floor of a capture middleware of this design (a context object, a
contextvar and a ``send`` wrapper, nothing else), ``AuditMiddleware`` alone, with a bare ``async`` wrapper around the handler
(the floor of any decorator), with ``@audited`` minus its event, and the whole capture.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

from . import _harness as h
from ._callgrind import parse_totals
from ._instructions_child import CASES
from .request_path import LIMITS  # the same targets, in instructions

NAME = "capture_instructions"
TITLE = "Capture cost in CPU instructions per request (callgrind, deterministic)"

REQUESTS: Final = {"starlette": 1000, "fastapi": 300}
SMOKE_REQUESTS: Final = 5
ROOT: Final = Path(__file__).resolve().parent.parent


def instructions(case: str, n: int, *, callgrind: bool) -> int | None:
    """Instructions the case's ``n`` requests executed (None when not under callgrind,
    for smoke runs: the child still runs and checks its events)."""
    command = [sys.executable, "-m", "benchmarks._instructions_child", case, str(n)]
    # A fixed hash seed: string hashing decides dict and set probing, so a random one
    # moves the count by a fraction of a percent from run to run.
    env = {**os.environ, "AUDIT_BENCH_UNDER_CALLGRIND": "1" if callgrind else "0",
           "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        if callgrind:
            command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                       f"--callgrind-out-file={out}", *command]
        done = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True,
                              timeout=1800)
        if done.returncode != 0 or b"ok " not in done.stdout:
            raise h.BenchmarkError(f"{case}: the child failed ({done.returncode}): "
                                   f"{(done.stdout + done.stderr)[-600:].decode(errors='replace')}")
        if not callgrind:
            return None
        return parse_totals(out.read_bytes())


def _floor_notes(per_request: dict[str, float]) -> list[str]:
    """What the Starlette target leaves for the audit record once the design's floor is
    paid: the floor middleware's cost plus a bare decorator layer's (the wrapper case
    less the middleware case)."""
    bare = per_request["starlette/bare"]
    middleware_floor = per_request["starlette/floor-middleware"] - bare
    wrapper_floor = per_request["starlette/middleware+wrapper"] - per_request[
        "starlette/middleware"]
    floor = middleware_floor + wrapper_floor
    budget = bare * LIMITS["starlette"] / 100
    ours = per_request["starlette/ours"] - bare
    return [(f"The design's floor on the Starlette route: {middleware_floor:,.0f} (a context "
            f"object, a contextvar, a send wrapper) + {wrapper_floor:,.0f} (a bare async "
            f"decorator layer) = {floor:,.0f} instructions, {floor / bare * 100:.1f}% of the "
            f"bare route. The {LIMITS['starlette']:g}% target ({budget:,.0f}) leaves "
            f"{budget - floor:,.0f} for everything else (configuration, the success "
            f"check, the event's fields, its time and queue); ours spends "
            f"{ours - floor:,.0f} on it.")]


def run(options: h.Options) -> h.Report:
    callgrind = not options.quick
    if callgrind and shutil.which("valgrind") is None:
        raise h.BenchmarkError("valgrind not found: install Debian's valgrind package "
                               "(apt-get install valgrind)")
    per_request: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for case in CASES:
        framework = case.split("/")[0]
        n = SMOKE_REQUESTS if options.quick else REQUESTS[framework]
        sizes[case] = n
        # Two runs, n and 3n requests: what switching callgrind on and off costs (a
        # subprocess each way, millions of instructions) is in both and cancels out.
        short = instructions(case, n, callgrind=callgrind)
        if not callgrind:  # a smoke run: each child ran and checked its events once
            per_request[case] = 0.0
            continue
        long = instructions(case, 3 * n, callgrind=callgrind)
        per_request[case] = ((long or 0) - (short or 0)) / (2 * n)
    rows, targets = [], []
    for case in CASES:
        framework = case.split("/")[0]
        bare = per_request[f"{framework}/bare"]
        added = per_request[case] - bare
        rows.append([case, f"{per_request[case]:,.0f}", f"{added:+,.0f}",
                     f"{added / bare * 100:+.1f}%" if bare else "n/a"])
    for framework, limit in LIMITS.items():
        bare = per_request[f"{framework}/bare"]
        ours = per_request[f"{framework}/ours"]
        targets.append(h.Target(
            f"{framework}: AuditMiddleware + @audited adds to the bare route (instructions)",
            (ours / bare - 1) * 100 if bare else 0.0, limit, "%"))
    notes = _floor_notes(per_request) if callgrind else []
    notes += [
        ("Counted by callgrind with instrumentation switched on around the batch only "
        "(callgrind_control), so imports, start-up and warm-up are not in it; each case "
        "runs twice, n and 3n requests, and the difference is divided by 2n, so the cost "
        "of switching cancels out. The event sink's writer never wakes during the batch: "
        "only the request thread counts. The cyclic GC is off during the batch and the "
        "hash seed fixed, so the count repeats from run to run."),
        ("Instructions are not time (a cache miss costs more than an add), but they repeat "
        "to within a percent from run to run; request_path gives the time."),
        "smoke run: nothing measured (no valgrind)" if options.quick else
        f"requests per case (n): {sizes}",
    ]
    table = h.Table("Instructions per request", ["case", "instructions", "vs bare",
                                                 "% of bare"], rows)
    return h.Report(NAME, TITLE, [table], targets if callgrind else [], notes, None,
                    {"requests": sizes, "callgrind": callgrind})
