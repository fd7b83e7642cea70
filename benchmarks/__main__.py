"""``python -m benchmarks [NAME ...]``: run the benchmarks, print their tables, and write
``benchmarks/results/<name>-<YYYYmmdd-HHMMSS>.{json,md}``."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from types import ModuleType

from . import MODULES
from ._harness import RESULTS_DIR, BenchmarkError, Options, machine_info, render_text, write_report


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(MODULES)})")
    parser.add_argument("--rounds", type=int, default=Options.rounds,
                        help="interleaved rounds per benchmark (default %(default)s)")
    parser.add_argument("--min-batch", type=float, default=Options.min_batch_seconds,
                        help="seconds one batch of a case lasts at least (default %(default)s)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny batches, 2 rounds: checks that everything runs; the "
                             "numbers mean nothing")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR,
                        help="where result files go (default %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a target is missed")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in MODULES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(MODULES)}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"{__package__}.{name}")


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    options = (Options.smoke() if args.smoke
               else Options(rounds=args.rounds, min_batch_seconds=args.min_batch))
    machine = machine_info()
    print(f"{machine['cpu_model']}, {machine['cores']} cores, {machine['python']}, "
          f"load {machine['load_average']}, {machine['date']}")
    missed = 0
    for name in args.names or MODULES:
        started = time.monotonic()
        try:
            report = _load(name).run(options)
        except BenchmarkError as exc:
            print(f"\n{name}: FAILED: {exc}", file=sys.stderr)
            return 2
        if args.smoke:
            report.notes.insert(0, "SMOKE RUN (--smoke): tiny batches, two rounds; the "
                                   "numbers and verdicts mean nothing.")
            report.settings["smoke"] = True
        print()
        print(render_text(report))
        print(f"({name}: {time.monotonic() - started:.1f}s)")
        if not args.no_write:
            json_path, md_path = write_report(report, machine, args.results)
            print(f"results: {json_path} and {md_path.name}")
        missed += sum(not t.passed for t in report.targets)
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
