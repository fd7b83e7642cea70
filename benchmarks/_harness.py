"""Shared machinery of the benchmarks: interleaved rounds, medians, targets, reports.

Every benchmark compares cases side by side in one process. A round runs each case once
(one batch of operations), in an order rotated from round to round, so slow drift of the
machine (the other core busy, frequency changes) hits every case alike; ratios are taken
within a round and the median over rounds is reported. Nothing here knows what is being
measured: a case is a callable that runs ``n`` operations and returns how long named
parts took.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

#: Metric every case reports: the time spent on the caller's (request) thread.
REQUEST: Literal["request"] = "request"

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class BenchmarkError(RuntimeError):
    """A benchmark could not produce a trustworthy result (its setup is broken, or what it
    measured did not do the work it claims). The message names what to fix."""


#: Runs ``n`` operations; returns elapsed nanoseconds per metric (always ``REQUEST``,
#: optionally more, e.g. the time including a background export).
CaseRun = Callable[[int], Mapping[str, int]]


@dataclass(frozen=True)
class Case:
    name: str
    run: CaseRun


@dataclass(frozen=True)
class Options:
    """How hard to measure. ``quick`` is for smoke tests: tiny batches, results meaningless."""

    rounds: int = 11
    min_batch_seconds: float = 0.08
    quick: bool = False

    @classmethod
    def smoke(cls) -> Options:
        return cls(rounds=2, min_batch_seconds=0.0, quick=True)


@dataclass
class Measurements:
    """Per case, per metric: nanoseconds per operation, one value per round."""

    batch_sizes: dict[str, int]
    per_op_ns: dict[str, dict[str, list[float]]]

    def median_ns(self, case: str, metric: str = REQUEST) -> float:
        return statistics.median(self.per_op_ns[case][metric])

    def ratio(self, case: str, baseline: str, metric: str = REQUEST) -> float:
        """Median over rounds of ``case / baseline`` measured in the same round."""
        return statistics.median(
            c / b for c, b in zip(self.per_op_ns[case][metric],
                                  self.per_op_ns[baseline][metric], strict=True)
        )

    def difference_ns(self, case: str, baseline: str, metric: str = REQUEST) -> float:
        """Median over rounds of ``case - baseline`` (ns per op) measured in the same round."""
        return statistics.median(
            c - b for c, b in zip(self.per_op_ns[case][metric],
                                  self.per_op_ns[baseline][metric], strict=True)
        )

    def spread(self, case: str, metric: str = REQUEST) -> float:
        """Relative interquartile range over rounds: how much to trust the median."""
        values = self.per_op_ns[case][metric]
        if len(values) < 4:
            return (max(values) - min(values)) / statistics.median(values)
        q1, _, q3 = statistics.quantiles(values, n=4)
        return (q3 - q1) / statistics.median(values)

    def to_json(self) -> dict[str, Any]:
        return {
            case: {
                metric: {"median_ns": statistics.median(values), "per_round_ns": values}
                for metric, values in metrics.items()
            }
            for case, metrics in self.per_op_ns.items()
        } | {"batch_sizes": self.batch_sizes}


def rotation(names: Sequence[str], round_index: int) -> list[str]:
    """The order of the cases in one round: rotated by one each round, so no case is
    always first (cold caches) or always right after the same neighbour."""
    k = round_index % len(names)
    return list(names[k:]) + list(names[:k])


def _timed(case: Case, n: int) -> dict[str, int]:
    gc.collect()  # garbage of the previous batch is not this batch's cost
    result = dict(case.run(n))
    if REQUEST not in result:
        raise BenchmarkError(f"case {case.name!r} returned {sorted(result)}, without "
                             f"{REQUEST!r}: every case must time its caller-side work")
    return result


def calibrate(case: Case, min_seconds: float, *, start: int = 16, limit: int = 1 << 22) -> int:
    """The batch size that makes one batch of ``case`` take at least ``min_seconds``
    (also warms the case up: imports, caches, lazily started threads)."""
    n = start
    while True:
        elapsed = _timed(case, n)[REQUEST] / 1e9
        if elapsed >= min_seconds or n >= limit:
            return n
        factor = min_seconds / elapsed if elapsed > 0 else 10.0
        n = min(limit, max(n * 2, int(n * factor * 1.2)))


def measure(cases: Sequence[Case], options: Options) -> Measurements:
    """Calibrate each case, then run ``options.rounds`` interleaved rounds."""
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise BenchmarkError(f"duplicate case names in {names}")
    by_name = {c.name: c for c in cases}
    sizes = {c.name: calibrate(c, options.min_batch_seconds, start=4 if options.quick else 16)
             for c in cases}
    if options.quick:
        sizes = {name: min(n, 8) for name, n in sizes.items()}
    per_op: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for r in range(options.rounds):
        for name in rotation(names, r):
            n = sizes[name]
            for metric, ns in _timed(by_name[name], n).items():
                per_op[name].setdefault(metric, []).append(ns / n)
    return Measurements(sizes, per_op)


# -- targets and reports ----------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A measured claim: ``value`` must be at most ``limit`` (or at least, when
    ``higher_is_better``)."""

    name: str
    value: float
    limit: float
    unit: str = ""
    higher_is_better: bool = False

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed, "verdict": self.verdict}


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Report:
    name: str
    title: str
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    measurements: Measurements | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def fmt_us(ns: float) -> str:
    return f"{ns / 1000:.2f}"


def fmt_ratio(r: float) -> str:
    return f"{r:.3f}x"


def fmt_pct(fraction: float) -> str:
    return f"{fraction * 100:+.1f}%"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(directory: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                             cwd=directory, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(directory: Path = RESULTS_DIR.parent) -> tuple[str | None, bool | None]:
    """The checkout's commit and whether tracked files differ from it. A commit alone
    named code the run did not measure when the working tree had uncommitted edits
    (an experiment run before its commit); new untracked files (results) do not count."""
    commit = _git(directory, "rev-parse", "--short", "HEAD")
    changes = _git(directory, "status", "--porcelain", "--untracked-files=no")
    return (commit.strip() or None if commit else None,
            None if changes is None else bool(changes.strip()))


def machine_info() -> dict[str, Any]:
    commit, dirty = git_state()
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": {d: _version(d) for d in ("starlette", "fastapi", "orjson",
                                              "opentelemetry-sdk", "anyio")},
    }


def render_text(report: Report) -> str:
    lines = [f"== {report.title} =="]
    for table in report.tables:
        lines.append("")
        lines.append(table.title)
        widths = [max(len(str(x)) for x in col) for col in zip(table.columns, *table.rows)]
        lines.append("  ".join(c.ljust(w) for c, w in zip(table.columns, widths)))
        for row in table.rows:
            lines.append("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    if report.targets:
        lines.append("")
        for t in report.targets:
            lines.append(f"[{t.verdict}] {t.name}: {_fmt_value(t)} (limit {_fmt_limit(t)})")
    for note in report.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _fmt_value(t: Target) -> str:
    return f"{t.value:.3f}{t.unit}"


def _fmt_limit(t: Target) -> str:
    return f"{'>=' if t.higher_is_better else '<='} {t.limit:.3f}{t.unit}"


def render_markdown(report: Report, machine: Mapping[str, Any]) -> str:
    out = [f"# {report.title}", ""]
    out.append(f"- date: {machine['date']}")
    out.append(f"- CPU: {machine['cpu_model']}, {machine['cores']} cores "
               f"({machine['usable_cores']} usable), load average {machine['load_average']}")
    out.append(f"- {machine['python']} on {machine['platform']}")
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v)
    out.append(f"- packages: {packages}")
    if machine.get("git_commit"):
        dirty = " plus uncommitted changes" if machine.get("git_dirty") else ""
        out.append(f"- commit: {machine['git_commit']}{dirty}")
    if report.settings:
        out.append("- settings: " + ", ".join(f"{k}={v}" for k, v in report.settings.items()))
    for table in report.tables:
        out += ["", f"## {table.title}", ""]
        out.append("| " + " | ".join(table.columns) + " |")
        out.append("|" + "---|" * len(table.columns))
        out += ["| " + " | ".join(str(x) for x in row) + " |" for row in table.rows]
    if report.targets:
        out += ["", "## Targets", "", "| target | measured | limit | result |", "|---|---|---|---|"]
        out += [f"| {t.name} | {_fmt_value(t)} | {_fmt_limit(t)} | **{t.verdict}** |"
                for t in report.targets]
    if report.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(out) + "\n"


def write_report(report: Report, machine: Mapping[str, Any],
                 directory: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """``<name>-<YYYYmmdd-HHMMSS>.json`` and ``.md`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = directory / f"{report.name}-{stamp}"
    data = {
        "benchmark": report.name,
        "title": report.title,
        "machine": dict(machine),
        "settings": report.settings,
        "tables": [asdict(t) for t in report.tables],
        "targets": [t.to_json() for t in report.targets],
        "notes": report.notes,
        "measurements": report.measurements.to_json() if report.measurements else None,
    }
    json_path = base.with_suffix(".json")
    md_path = base.with_suffix(".md")
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report, machine), encoding="utf-8")
    return json_path, md_path

