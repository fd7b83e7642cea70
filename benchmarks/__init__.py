"""The project's measured claims (DESIGN.md, "Quality bars").

Each benchmark is a module of this package with ``NAME``, ``TITLE`` and
``run(options) -> Report``; list it in ``MODULES`` and ``python -m benchmarks`` runs it
with the others (``python -m benchmarks NAME ...`` runs only those). Shared machinery
(interleaved rounds, medians, targets, result files) is in ``_harness``.
"""

from __future__ import annotations

#: Run order of ``python -m benchmarks``. The collector benchmarks (issue 3: durable
#: throughput, query, memory) are added here as further modules.
MODULES: tuple[str, ...] = ("request_path", "emit_cost", "capture_breakdown")
