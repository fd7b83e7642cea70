"""The project's measured claims (DESIGN.md, "Quality bars").

Each benchmark is a module of this package with ``NAME``, ``TITLE`` and
``run(options) -> Report``; list it in ``MODULES`` and ``python -m benchmarks`` runs it
with the others (``python -m benchmarks NAME ...`` runs only those). Shared machinery
(interleaved rounds, medians, targets, result files) is in ``_harness``.
"""

from __future__ import annotations

#: Run order of ``python -m benchmarks``: the capture benchmarks (issue 2), then the
#: collector's (issue 3). ``query_speed`` is last: it needs ``rg`` and ``jq`` and refuses
#: to run without them, and a refusal stops the run.
MODULES: tuple[str, ...] = ("request_path", "emit_cost", "capture_breakdown",
                            "capture_instructions", "emit_collector", "durable_throughput",
                            "collector_instructions", "collector_memory",
                            "store_age", "panel_latency", "otel_cost", "integrity", "query_speed")
