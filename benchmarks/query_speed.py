"""Query speed: over 1,000,000 stored events, a selective query (one principal in one
organization over one hour) through the collector's index, against ``rg`` and ``jq``
scanning the same JSON-lines segment files.

Target (issue 3): the query API takes at most 1/100 of the ``rg`` time. Also reported:
the index's size as a share of the segment bytes, table by table.

Cases (each returns the matching event ids; all must return the same non-empty set):

- ``search``: ``collector.query.search(data_dir, Filters(...))``, every page, with the
  per-thread reader it keeps open (a query service's steady state).
- ``search_cold``: a new ``collector.query.Reader`` per query (open the index, query,
  close).
- ``cli``: ``python -m collector query ... --all --format jsonl`` as a subprocess
  (interpreter start-up included: what a person at a shell waits for).
- ``rg``: one regex on principal, organization and the hour's common ``created``
  prefix (the fields are in a fixed order), then each hit checked exactly in Python;
  the fastest form of the search a user would write.
- ``jq``: ``select(.principal == $p and .org_id == $o and .created >= $a and
  .created < $b)``.

Every file is in the page cache for every case (the dataset was just read or built):
these are warm-cache numbers for all of them.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

import orjson

from collector.query import Filters, Page, Reader, search

from . import _dataset
from . import _harness as h
from ._collector import ROOT, scratch_dir
from ._rounds import fixed_rounds

NAME = "query_speed"
TITLE = "Query speed: one principal in one organization over one hour, index vs rg and jq"

LIMIT: Final = 0.01  # search / rg
EVENTS: Final = 1_000_000
SMOKE_EVENTS: Final = 20_000
MAX_ROUNDS: Final = 5
WALL: Final = "wall"
PAGE: Final = 1000

CASES: Final = {
    "search": "collector.query.search(), reader kept open",
    "search_cold": "collector.query.Reader opened per query",
    "cli": "python -m collector query --all --format jsonl (subprocess)",
    "rg": "rg regex prefilter + exact check (subprocess)",
    "jq": "jq select(...) (subprocess)",
}
SIZES: Final = {"search": 200, "search_cold": 50, "cli": 3, "rg": 5, "jq": 1}


def run(options: h.Options) -> h.Report:
    tools = {tool: shutil.which(tool) for tool in ("rg", "jq")}
    missing = [tool for tool, path in tools.items() if path is None]
    if missing and not options.quick:
        raise h.BenchmarkError(
            f"{' and '.join(missing)} not installed: `make bench` installs them as root "
            f"(apt-get install ripgrep jq), or install them yourself")
    if options.quick:
        with scratch_dir("bench-query-") as tmp, _dataset.temporary(SMOKE_EVENTS, tmp) as data:
            return _run(options, data, tools)
    started = time.monotonic()
    data = _dataset.cached(EVENTS)
    if not data.cached:
        print(f"query_speed: built the {EVENTS:,}-event dataset in "
              f"{time.monotonic() - started:.0f}s (cached in {data.data_dir})")
    return _run(options, data, tools)


def _run(options: h.Options, data: _dataset.Dataset,
         tools: dict[str, str | None]) -> h.Report:
    sel = data.selection
    filters = Filters(principal=sel.principal, org=sel.org, since=sel.since, until=sel.until)
    files = [str(p) for p in data.segment_files]
    found: dict[str, set[str]] = {}

    def timed(name: str, query: Callable[[], set[str]]) -> h.CaseRun:
        def run_case(n: int) -> dict[str, int]:
            start = time.perf_counter_ns()
            for _ in range(n):
                ids = query()
            elapsed = time.perf_counter_ns() - start
            found[name] = ids
            return {WALL: elapsed}
        return run_case

    def query_search() -> set[str]:
        return _all_pages(lambda cursor: search(data.data_dir, filters, limit=PAGE,
                                                cursor=cursor))

    def query_cold() -> set[str]:
        reader = Reader(data.data_dir)
        try:
            return _all_pages(lambda cursor: reader.search(filters, limit=PAGE, cursor=cursor))
        finally:
            reader.close()

    def query_cli() -> set[str]:
        out = _run_tool([sys.executable, "-m", "collector", "query", "--data-dir",
                         str(data.data_dir), "--principal", sel.principal, "--org", sel.org,
                         "--since", sel.since, "--until", sel.until, "--all",
                         "--format", "jsonl"], cwd=ROOT)
        return {orjson.loads(line)["id"] for line in out.splitlines()}

    def query_rg() -> set[str]:
        pattern = (f'"principal":"{_literal(sel.principal)}".*"org_id":"{_literal(sel.org)}"'
                   f'.*"created":"{_literal(created_prefix(sel.since, sel.until))}')
        out = _run_tool([str(tools["rg"]), "--no-config", "--no-filename", "--no-line-number",
                         "-e", pattern, *files], ok=(0, 1))
        return {r["id"] for r in map(orjson.loads, out.splitlines()) if _matches(r, sel)}

    def query_jq() -> set[str]:
        out = _run_tool([str(tools["jq"]), "-r", "--arg", "p", sel.principal, "--arg", "o",
                         sel.org, "--arg", "a", sel.since, "--arg", "b", sel.until,
                         ("select(.principal == $p and .org_id == $o and .created >= $a "
                         "and .created < $b) | .id"), *files])
        return set(out.decode().split())

    queries = {"search": query_search, "search_cold": query_cold, "cli": query_cli,
               "rg": query_rg, "jq": query_jq}
    names = [name for name in CASES if name not in ("rg", "jq") or tools[name]]
    sizes = {name: 1 if options.quick else SIZES[name] for name in names}
    query_search()  # opens the per-thread reader: the steady state is what is timed
    m = fixed_rounds([h.Case(name, timed(name, queries[name])) for name in names], sizes,
                     min(options.rounds, MAX_ROUNDS), WALL)
    checked = _check(found, data, sel)
    skipped = [name for name in CASES if name not in names]
    return _report(m, data, checked, sizes, skipped, options)


def _all_pages(page_of: Callable[[str | None], Page]) -> set[str]:
    ids: set[str] = set()
    cursor = None
    while True:
        page = page_of(cursor)
        ids.update(r["id"] for r in page.records)
        cursor = page.next_cursor
        if cursor is None:
            return ids


def _run_tool(command: list[str], *, cwd: Path | None = None,
              ok: tuple[int, ...] = (0,)) -> bytes:
    done = subprocess.run(command, cwd=cwd, capture_output=True, timeout=600, check=False)
    if done.returncode not in ok:
        raise h.BenchmarkError(f"{Path(command[0]).name} exited {done.returncode}: "
                               f"{done.stderr.decode(errors='replace')[-500:]}")
    return done.stdout


def _literal(value: str) -> str:
    """``value`` as a regex both Rust (rg) and Python read literally."""
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", value):
        raise h.BenchmarkError(f"the selection value {value!r} needs regex escaping this "
                               f"benchmark does not do: use plain ids")
    return value.replace(".", r"\.")


def created_prefix(since: str, until: str) -> str:
    """What every RFC 3339 ``created`` in [since, until) starts with: for one whole
    hour, '2026-11-14T00:'. Both bounds in the schema's form (microseconds, Z)."""
    last = datetime.fromisoformat(until) - timedelta(microseconds=1)
    return os.path.commonprefix([since, last.strftime("%Y-%m-%dT%H:%M:%S.%fZ")])


def _matches(record: dict[str, object], sel: _dataset.Selection) -> bool:
    created = record.get("created")
    return (record.get("principal") == sel.principal and record.get("org_id") == sel.org
            and isinstance(created, str) and sel.since <= created < sel.until)


def _check(found: dict[str, set[str]], data: _dataset.Dataset,
           sel: _dataset.Selection) -> str:
    """Every case found the same events, and there are some: a query that matched
    nothing (or something else) must not look fast."""
    reference = found["search"]
    if not reference:
        raise h.BenchmarkError(f"the selection {sel} matched nothing in {data.data_dir}: "
                               f"the dataset is broken; delete it to rebuild")
    differ = {name: len(ids) for name, ids in found.items() if ids != reference}
    if differ:
        raise h.BenchmarkError(f"the cases disagree: search found {len(reference)} events, "
                               f"but {differ}")
    return (f"results verified: every case found the same {len(reference)} events "
            f"(principal {sel.principal}, org {sel.org}, {sel.since} to {sel.until})")


def index_breakdown(index_path: Path) -> list[tuple[str, int]]:
    """Bytes per table or index of the SQLite index, largest first; empty when this
    SQLite lacks the dbstat table."""
    con = sqlite3.connect(f"file:{index_path}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()
    except sqlite3.Error:
        return []
    finally:
        con.close()
    return sorted(((name, int(size)) for name, size in rows), key=lambda kv: -kv[1])


def _times(ratio: float) -> str:
    return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.2f}x"


def _report(m: h.Measurements, data: _dataset.Dataset, checked: str, sizes: dict[str, int],
            skipped: list[str], options: h.Options) -> h.Report:
    names = list(sizes)
    base = "rg" if "rg" in names else None
    rows = []
    for name in names:
        ms = m.median_ns(name, WALL) / 1e6
        versus = h.fmt_ratio(m.ratio(name, base, WALL)) if base else "-"
        speedup = _times(m.ratio(base, name, WALL)) if base else "-"
        rows.append([CASES[name], f"{sizes[name]}", f"{ms:.3f}", versus, speedup,
                     f"{m.spread(name, WALL) * 100:.1f}%"])
    rounds = len(m.per_op_ns[names[0]][WALL])
    table = h.Table(f"Milliseconds per query, median of {rounds} interleaved rounds",
                    ["query", "queries/round", "ms/query", "vs rg", "rg / this", "IQR"], rows)
    segment_bytes, index_bytes = data.segment_bytes, data.index_bytes
    storage = [["events stored", f"{data.events:,}"],
               ["segment files", f"{len(data.segment_files)}"],
               ["segment bytes", (f"{segment_bytes / 2**20:,.1f} MiB "
                                 f"({segment_bytes / data.events:.0f} B/event)")],
               ["index bytes (index.sqlite*)", (f"{index_bytes / 2**20:,.1f} MiB "
                                               f"({index_bytes / data.events:.0f} B/event)")],
               ["index / segment bytes", f"{index_bytes / segment_bytes * 100:.1f}%"]]
    storage += [[f"  {name}", (f"{size / 2**20:,.1f} MiB ({size / segment_bytes * 100:.1f}% "
                              f"of segment bytes)")]
                for name, size in index_breakdown(data.data_dir / "index.sqlite")
                if size >= index_bytes / 100]
    tables = [table, h.Table("Storage", ["measure", "value"], storage)]
    targets = []
    if base:
        targets.append(h.Target("collector.query.search() time / rg time",
                                m.ratio("search", base, WALL), LIMIT, "x"))
    notes = [
        checked,
        ("warm page cache for every case; subprocess rows include process start-up "
         "(rg and jq start in milliseconds, Python in tens of them)."),
        (f"dataset: {'cached' if data.cached else 'built for this run'} in "
         f"{data.data_dir} (built in {data.build_seconds:.0f}s through "
         f"collector.store.Store)."),
    ]
    if skipped:
        notes.insert(0, f"{', '.join(skipped)} not installed: those rows and the target "
                        "are missing (a smoke run allows it; a real run refuses)")
    return h.Report(NAME, TITLE, tables, targets, notes, m,
                    {"rounds": rounds, "sizes": sizes, "events": data.events,
                     "selection": asdict(data.selection), "cpu_count": os.cpu_count()})
