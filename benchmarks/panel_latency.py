"""Panel and query-API latency over 1,000,000 and 10,000,000 stored events: the first
page, filtered first pages, a deep page through a cursor, one event by id; median and
p95 per request, over HTTP to a real uvicorn server, side by side with the same query
made in-process (``collector.query.Reader.search``), which shows what HTTP, the token
check and recording the read (one group-commit fsync) add.

Target (issue 4): every filtered first page under 50 ms (p95) at the largest size.

The datasets are built once through ``collector.store.Store`` in big batches and cached
under ``benchmarks/.data/panel-v<VERSION>-<events>-<digest>/``, the digest that of the
index schema and the storage code, as for ``query_speed`` (a dataset of an older
generator or storage code is rebuilt; 1M: ~1 GB, 10M: ~8 GB; sizes from
``AUDIT_BENCH_PANEL_SIZES``, e.g. ``1000000`` for the small one only). The server
records its reads into a scratch store, so the cached dataset never changes. Every file
is in the page cache (warm numbers).

    python -m benchmarks panel_latency
    python -m benchmarks.panel_latency serve DATA_DIR SCRATCH_DIR   # the server side
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import orjson

from audit_middleware.catalogue import SEED_CATALOGUE
from audit_middleware.event import AuditEvent
from collector.query import MAX_LIMIT, Filters, Reader
from collector.store import StorageSettings, Store

from . import _harness as h
from ._collector import ROOT, scratch_dir
from ._dataset import storage_digest

NAME = "panel_latency"
TITLE = "Admin panel / query API latency: first, filtered and deep pages, by id"

VERSION: Final = "2"  # 2: statuses
CACHE_DIR: Final = Path(__file__).resolve().parent / ".data"
SIZES: Final = (1_000_000, 10_000_000)
SMOKE_EVENTS: Final = 5_000
TARGET_MS: Final = 50.0
PAGE: Final = 50
START_NS: Final = 1_793_059_200 * 10**9  # 2026-10-27T00:00:00Z
SPAN_NS: Final = 30 * 24 * 3600 * 10**9
BATCH: Final = 20_000
PRINCIPALS: Final = 1000
ORGS: Final = 50
WORKSPACES: Final = 200
READY: Final = "PANEL-READY"
FAILED: Final = "failed: TimeoutError"  # one run in 200: the rare status a filter seeks


# -- the dataset ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Dataset:
    data_dir: Path
    events: int
    build_seconds: float
    bytes: int


def _status(kind: str, rng: random.Random) -> str:
    """What the seed's apps put in ``status``: a run's outcome, a sign-in's method;
    most events have none."""
    if kind in ("run_completed", "run_status_changed"):
        return FAILED if rng.randrange(200) == 0 else "succeeded"
    if kind == "user_sign_in":
        return "sso" if rng.randrange(4) == 0 else "password"
    return ""


def _population(events: int) -> Iterator[list[dict[str, Any]]]:
    """Batches of schema-v1 records in arrival order over 30 days: 1,000 principals with
    activity falling off as 1/rank, 50 organizations, 200 workspaces, every seed type,
    statuses on runs and sign-ins."""
    rng = random.Random(4)
    types = [t for actions in SEED_CATALOGUE.values() for t in actions.values()]
    weights = [1.0 / (rank + 1) for rank in range(PRINCIPALS)]
    people = rng.choices(range(PRINCIPALS), weights, k=events)
    batch: list[dict[str, Any]] = []
    for n in range(events):
        p = people[n]
        org, ws = p % ORGS, p % WORKSPACES
        kind = types[rng.randrange(len(types))]
        record = AuditEvent(
            type=kind, target=f"{kind.split('_')[0]}-{rng.randrange(events // 4 + 1)}",
            principal=f"user-{p:04d}", status=_status(kind, rng), org_id=f"org-{org:02d}",
            org_name=f"Organization {org}", workspace_id=f"ws-{ws:03d}",
            workspace_name=f"Workspace {ws}", client_ip=f"10.{p % 250}.{p // 250}.{n % 200 + 1}",
            created_ns=START_NS + n * (SPAN_NS // events),
        ).to_dict()
        if n % 2:
            record["trace_id"], record["span_id"] = f"{n:032x}", f"{n:016x}"
        batch.append(record)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def build(data_dir: Path, events: int) -> None:
    store = Store(StorageSettings(data_dir=data_dir))
    store.open()
    try:
        pending = []
        for batch in _population(events):
            pending.append(store.submit(batch, source="panel-benchmark"))
            if len(pending) >= 3:
                pending.pop(0).result()
        for future in pending:
            future.result()
    finally:
        store.close()


def cache_key(events: int) -> str:
    """The generator's version, the size and the storage code's digest (shared with
    ``query_speed``'s dataset): the index schema alone missed layout changes that keep
    it, and the queries were timed over a dataset the current code would not write."""
    return f"panel-v{VERSION}-{events}-{storage_digest()}"


def _stale(events: int, cache_dir: Path) -> list[Path]:
    """Older datasets of exactly ``events`` events (and builds left by a killed run):
    a prefix glob took the 10,000,000-event dataset (~8 GB) for one of 1,000,000 and
    deleted it."""
    name = re.compile(rf"panel-v[^-]+-(?:s\d+-)?{events}(?:-[0-9a-f]+)?(?:\.building-\d+)?")
    return [p for p in cache_dir.glob("panel-v*") if name.fullmatch(p.name)]


def cached(events: int, cache_dir: Path = CACHE_DIR) -> Dataset:
    target = cache_dir / cache_key(events)
    manifest = target / "manifest.json"
    if not manifest.exists():
        for old in _stale(events, cache_dir):
            shutil.rmtree(old, ignore_errors=True)
        building = cache_dir / f"{target.name}.building-{os.getpid()}"
        started = time.monotonic()
        print(f"panel_latency: building {events:,} events in {building} (cached for "
              f"later runs)", file=sys.stderr, flush=True)
        build(building, events)
        (building / "manifest.json").write_bytes(orjson.dumps(
            {"events": events, "build_seconds": round(time.monotonic() - started, 1)}))
        building.rename(target)
    info = orjson.loads(manifest.read_bytes())
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    return Dataset(target, info["events"], info["build_seconds"], size)


def _sizes() -> tuple[int, ...]:
    text = os.environ.get("AUDIT_BENCH_PANEL_SIZES")
    if not text:
        return SIZES
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise h.BenchmarkError(f"AUDIT_BENCH_PANEL_SIZES={text!r}: use event counts "
                               f"separated by commas, e.g. 1000000,10000000") from None


# -- the server (a subprocess: the client's timing loop must not share its GIL) ----------------
def serve(data_dir: Path, scratch: Path) -> None:
    from collector.api import ApiSettings, create_app
    from collector.api.server import ApiServer
    from collector.readers import Readers

    reads = Store(StorageSettings(data_dir=scratch / "reads"))
    reads.open()

    async def main() -> None:
        app = create_app(ApiSettings(data_dir=data_dir), reads, readers=Readers(scratch))
        server = ApiServer(app, "127.0.0.1", 0)
        print(READY, await server.start(), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.shutdown()

    try:
        asyncio.run(main())
    finally:
        reads.close()


@contextmanager
def server(data_dir: Path, scratch: Path) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.panel_latency", "serve",
                             str(data_dir), str(scratch)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith(READY):
            raise h.BenchmarkError(f"the API server did not start: {line!r}")
        yield line.split()[1]
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- the cases -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    name: str
    params: dict[str, str]
    filtered: bool
    cursor: bool = False
    event_id: str | None = None

    def filters(self) -> Filters:
        p = self.params
        return Filters(types=tuple(p["type"].split(",")) if "type" in p else (),
                       principal=p.get("principal"), target=p.get("target"),
                       status=p.get("status"), org=p.get("org"), org_name=p.get("org_name"),
                       workspace=p.get("workspace"), workspace_name=p.get("workspace_name"),
                       client_ip=p.get("client_ip"), since=p.get("since"),
                       until=p.get("until"))


def _rfc3339(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 10**9))


def queries(reader: Reader, events: int) -> list[Query]:
    """The measured requests; the deep cursor and the id are found in the data first."""
    hour = START_NS + SPAN_NS * 6 // 10
    middle = events // 2
    cursor, remaining = None, middle
    while remaining > 0:  # walk to the middle, newest first
        step = min(MAX_LIMIT, remaining)
        cursor = reader.search(Filters(), limit=step, cursor=cursor).next_cursor
        remaining -= step
    some = reader.search(Filters(principal="user-0042"), limit=1).records
    if not some or cursor is None:
        raise h.BenchmarkError("the dataset lacks the expected principal or depth: rebuild it")
    return [
        Query("first page", {}, filtered=False),
        Query("type", {"type": "run_completed"}, filtered=True),
        Query("type glob", {"type": "bucket_file_*"}, filtered=True),
        Query("principal", {"principal": "user-0042"}, filtered=True),
        Query("principal + type", {"principal": "user-0007", "type": "user_sign_in"},
              filtered=True),
        Query("org + 1 hour", {"org": "org-07", "since": _rfc3339(hour),
                               "until": _rfc3339(hour + 3600 * 10**9)}, filtered=True),
        Query("workspace", {"workspace": "ws-123"}, filtered=True),
        Query("status (1 run in 200)", {"status": FAILED}, filtered=True),
        Query("org name", {"org_name": "Organization 7"}, filtered=True),
        Query("workspace name + status", {"workspace_name": "Workspace 123",
                                          "status": "succeeded"}, filtered=True),
        Query("client IP /16", {"client_ip": "10.42.0.0/16"}, filtered=True),
        Query("rare target", {"target": some[0]["target"]}, filtered=True),
        Query("matches nothing", {"principal": "nobody"}, filtered=True),
        Query(f"deep page ({middle:,} in)", {"cursor": cursor}, filtered=False, cursor=True),
        Query("one event by id", {}, filtered=False, event_id=some[0]["id"]),
    ]


def _in_process(reader: Reader, q: Query) -> Callable[[], int]:
    if q.event_id is not None:
        return lambda: 1 if reader.find(q.event_id or "") else 0
    filters, cursor = q.filters(), q.params.get("cursor")
    return lambda: len(reader.search(filters, limit=PAGE, cursor=cursor).records)


def _over_http(client: httpx.Client, q: Query) -> Callable[[], int]:
    if q.event_id is not None:
        path = f"/api/v1/audit-logs/{q.event_id}"

        def one() -> int:
            response = client.get(path)
            if response.status_code != 200:
                raise h.BenchmarkError(f"{path}: HTTP {response.status_code} {response.text}")
            return 1
        return one
    params = {**q.params, "limit": str(PAGE)}

    def page() -> int:
        response = client.get("/api/v1/audit-logs", params=params)
        if response.status_code != 200:
            raise h.BenchmarkError(f"{q.name}: HTTP {response.status_code} {response.text}")
        return len(response.json()["records"])
    return page


def _latencies(cases: dict[str, Callable[[], int]], rounds: int, per_round: int
               ) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Milliseconds per call, cases interleaved in rotated order each round."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    counts: dict[str, int] = {}
    for name, call in cases.items():  # warm up (and note what each returns)
        counts[name] = call()
    names = list(cases)
    for r in range(rounds):
        for name in h.rotation(names, r):
            call = cases[name]
            for _ in range(per_round):
                started = time.perf_counter_ns()
                returned = call()
                times[name].append((time.perf_counter_ns() - started) / 1e6)
                if returned != counts[name]:
                    raise h.BenchmarkError(f"{name}: {returned} records, then {counts[name]}")
    return times, counts


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


# -- the run -------------------------------------------------------------------------------
def _measure(data: Dataset, rounds: int, per_round: int) -> tuple[h.Table, list[h.Target]]:
    from collector.readers import Readers

    reader = Reader(data.data_dir)
    with scratch_dir("bench-panel-") as scratch:
        token = Readers(scratch).add("bench", root=True)
        try:
            measured = queries(reader, data.events)
            with server(data.data_dir, scratch) as url, httpx.Client(
                    base_url=url, headers={"Authorization": f"Bearer {token}"},
                    timeout=60) as client:
                api, api_counts = _latencies({q.name: _over_http(client, q) for q in measured},
                                             rounds, per_round)
            local, local_counts = _latencies({q.name: _in_process(reader, q) for q in measured},
                                             rounds, per_round)
        finally:
            reader.close()
    if api_counts != local_counts:
        raise h.BenchmarkError(f"the API and the in-process query disagree: {api_counts} "
                               f"vs {local_counts}")
    rows, targets = [], []
    for q in measured:
        a, b = api[q.name], local[q.name]
        rows.append([q.name, str(api_counts[q.name]), f"{statistics.median(a):.2f}",
                     f"{p95(a):.2f}", f"{statistics.median(b):.2f}", f"{p95(b):.2f}"])
        if q.filtered:
            targets.append(h.Target(f"{data.events:,} events, filtered first page "
                                    f"'{q.name}', API p95", p95(a), TARGET_MS, "ms"))
    table = h.Table(
        f"{data.events:,} stored events: milliseconds per request ({rounds} rounds x "
        f"{per_round}, interleaved), page size {PAGE}",
        ["request", "records", "API median", "API p95", "in-process median",
         "in-process p95"], rows)
    return table, targets


def run(options: h.Options) -> h.Report:
    rounds = 2 if options.quick else max(options.rounds, 5)
    per_round = 2 if options.quick else 10
    tables, targets, notes = [], [], []
    if options.quick:
        with scratch_dir("bench-panel-data-") as tmp:
            build(tmp / "data", SMOKE_EVENTS)
            size = sum(p.stat().st_size for p in (tmp / "data").rglob("*") if p.is_file())
            data = Dataset(tmp / "data", SMOKE_EVENTS, 0.0, size)
            table, found = _measure(data, rounds, per_round)
            tables.append(table)
            targets += found
    else:
        for events in _sizes():
            data = cached(events)
            notes.append(f"{events:,} events: dataset {data.bytes / 1e9:.2f} GB on disk, "
                         f"built in {data.build_seconds:.0f} s ({data.data_dir.name})")
            table, found = _measure(data, rounds, per_round)
            tables.append(table)
            targets += found if events == max(_sizes()) else []
    notes += [
        ("API: GET over HTTP/1.1 keep-alive to uvicorn on loopback, bearer token, the read "
         "recorded (fsynced) in a scratch store before the answer, as in production."),
        ("in-process: collector.query.Reader.search / find on an open reader: the index "
         "and segment reads alone."),
        ("deep page: a cursor half-way through the store, newest first (keyset paging: "
         "its cost does not grow with depth)."),
        "Targets are checked at the largest size; smaller sizes are shown for comparison.",
    ]
    return h.Report(NAME, TITLE, tables, targets, notes,
                    settings={"rounds": rounds, "per_round": per_round, "page": PAGE,
                              "sizes": list(_sizes()) if not options.quick else [SMOKE_EVENTS]})


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit("usage: python -m benchmarks.panel_latency serve DATA_DIR SCRATCH_DIR "
                 "(the benchmark itself: python -m benchmarks panel_latency)")
