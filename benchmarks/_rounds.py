"""Interleaved rounds at fixed batch sizes, for cases too slow or too stateful to
calibrate (a collector subprocess, a 400 MB scan): ``_harness.measure`` grows a batch
from 16 operations until it lasts long enough, which would run ``jq`` over a million
records dozens of times, or pace a pipelined shipper in tiny steps. Here each case
names its own batch size; the rounds, their rotated order and the resulting
``Measurements`` (medians and same-round ratios) are the harness's.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence

from ._harness import BenchmarkError, Case, Measurements, rotation


def fixed_rounds(cases: Sequence[Case], sizes: Mapping[str, int], rounds: int,
                 metric: str) -> Measurements:
    """Run every case once per round with ``sizes[case]`` operations, in an order rotated
    each round; ``metric`` is the one every case must report (nanoseconds per batch)."""
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise BenchmarkError(f"duplicate case names in {names}")
    missing = [n for n in names if sizes.get(n, 0) < 1]
    if missing:
        raise BenchmarkError(f"no batch size (>= 1) for {missing}")
    if rounds < 1:
        raise BenchmarkError(f"rounds must be >= 1, got {rounds}")
    by_name = {c.name: c for c in cases}
    per_op: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for r in range(rounds):
        for name in rotation(names, r):
            gc.collect()  # the previous batch's garbage is not this batch's cost
            n = sizes[name]
            result = by_name[name].run(n)
            if metric not in result:
                raise BenchmarkError(f"case {name!r} returned {sorted(result)}, without "
                                     f"{metric!r}")
            for key, ns in result.items():
                per_op[name].setdefault(key, []).append(ns / n)
    return Measurements(dict(sizes), per_op)
