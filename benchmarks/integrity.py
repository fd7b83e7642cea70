"""Tamper evidence: how fast ``verify`` re-hashes a store, against ``sha256sum`` over the
same segment files, and what chaining every record costs the store's durable ingest
rate, against the same store with chaining (and digests) off.

Targets (issue 5): verify at least 0.5x the MB/s of ``sha256sum``; chaining costs at
most 10 % of the durable events per second.

- ``verify``: ``collector.integrity.verify.verify(data_dir)`` over a store written by
  ``collector.store.Store`` (several sealed segments and the active one): every
  record's chain link, every segment's SHA-256, every digest's signature. It hashes each
  byte twice (the record chain, then the segment), the second on a worker thread.
- ``sha256sum``: ``sha256sum`` of the same segment files (one pass, one core): what a
  user checking files against a list of hashes would run.
- ``chained`` / ``unchained``: events/s that ``Store.submit`` turns into fsynced,
  indexed records, fed as the ingest server feeds it (``orjson.loads`` of a 1,000-event
  frame, then ``submit``; at most 32 frames in flight), into a store with
  ``chain=True`` (the default: chain hash per record, digests at seal and stop) and one
  with ``chain=False``. Each round gets fresh events (new ids: nothing deduplicated).

All files are in the page cache for both hashing cases (the store was just written).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Final

import orjson

from collector.integrity.verify import verify
from collector.store import StorageSettings, Store, WriteResult

from . import _harness as h
from ._collector import scratch_dir
from ._events import Population
from ._rounds import fixed_rounds

NAME = "integrity"
TITLE = ("Tamper evidence: verify MB/s vs sha256sum over the same segments, and the "
         "durable ingest cost of chaining")

VERIFY_LIMIT: Final = 0.5  # verify MB/s / sha256sum MB/s, at least
COST_LIMIT: Final = 0.10  # 1 - chained events/s / unchained events/s, at most
WALL: Final = "wall"
FRAME: Final = 1000
IN_FLIGHT: Final = 32
MAX_ROUNDS: Final = 5
DATASET: Final = 200_000  # events in the verified store (~90 MB)
SEGMENT_BYTES: Final = 16 * 1024 * 1024
INGEST: Final = 60_000  # events per ingest round and case
SMOKE: Final = {"dataset": 3_000, "ingest": 2_000, "segment_bytes": 256 * 1024}
START_NS: Final = 1_795_650_000_000_000_000


def run(options: h.Options) -> h.Report:
    if shutil.which("sha256sum") is None:
        raise h.BenchmarkError("sha256sum is not installed (GNU coreutils): the verify "
                               "speed is measured against it")
    with scratch_dir("bench-integrity-") as tmp:
        return _run(options, tmp)


def _run(options: h.Options, tmp: Path) -> h.Report:
    rounds = min(options.rounds, MAX_ROUNDS)
    dataset = SMOKE["dataset"] if options.quick else DATASET
    segment_bytes = SMOKE["segment_bytes"] if options.quick else SEGMENT_BYTES
    ingest = SMOKE["ingest"] if options.quick else INGEST
    population = Population()

    data_dir = tmp / "verified"
    _fill(data_dir, population, dataset, segment_bytes)
    files = sorted(str(p) for p in (data_dir / "segments").glob("segment-*.jsonl"))
    size = sum(Path(f).stat().st_size for f in files)
    checked = _check_verify(data_dir, dataset, files)

    def run_verify(_: int) -> dict[str, int]:
        start = time.perf_counter_ns()
        report = verify(data_dir)
        elapsed = time.perf_counter_ns() - start
        if not report.valid:
            raise h.BenchmarkError("verify found the untouched store INVALID")
        return {WALL: elapsed}

    def run_sha256sum(_: int) -> dict[str, int]:
        start = time.perf_counter_ns()
        done = subprocess.run(["sha256sum", *files], capture_output=True, check=False)
        elapsed = time.perf_counter_ns() - start
        if done.returncode != 0 or done.stdout.count(b"\n") != len(files):
            raise h.BenchmarkError(f"sha256sum failed: {done.stderr.decode()[:200]}")
        return {WALL: elapsed}

    stores = {name: Store(StorageSettings(tmp / name, chain=(name == "chained")))
              for name in ("chained", "unchained")}
    for store in stores.values():
        store.open()
    fed = dict.fromkeys(stores, 0)
    seeds = iter(range(100, 10_000))

    def ingest_case(name: str) -> h.CaseRun:
        def run_ingest(n: int) -> dict[str, int]:
            frames = _frames(population, n, next(seeds))  # made before the clock starts
            start = time.perf_counter_ns()
            written = _feed(stores[name], frames)
            elapsed = time.perf_counter_ns() - start
            if written != n:
                raise h.BenchmarkError(f"{name}: {written} of {n} events written")
            fed[name] += n
            return {WALL: elapsed}
        return run_ingest

    try:
        m = fixed_rounds(
            [h.Case("verify", run_verify), h.Case("sha256sum", run_sha256sum),
             h.Case("chained", ingest_case("chained")),
             h.Case("unchained", ingest_case("unchained"))],
            {"verify": size, "sha256sum": size, "chained": ingest, "unchained": ingest},
            rounds, WALL)
        stats = {name: store.stats() for name, store in stores.items()}
    finally:
        for store in stores.values():
            store.close()
    _check_ingest(stats, fed)
    return _report(m, rounds, size, len(files), dataset, ingest, checked, stats)


def _fill(data_dir: Path, population: Population, n: int, segment_bytes: int) -> None:
    with Store(StorageSettings(data_dir, max_segment_bytes=segment_bytes)) as store:
        futures = [store.submit(batch) for batch in
                   population.records(n, START_NS, 3600 * 10**9, batch=FRAME)]
        for future in futures:
            future.result()


def _check_verify(data_dir: Path, dataset: int, files: list[str]) -> str:
    report = verify(data_dir)
    records = sum(r.records for r in report.files if r.kind == "segment")
    if not report.valid or records != dataset or len(files) < 2:
        raise h.BenchmarkError(f"the dataset is not what verify must check: valid="
                               f"{report.valid}, {records} of {dataset} records, "
                               f"{len(files)} segment files")
    return (f"verify checked {records:,} records in {len(files)} segment files and "
            f"{report.digests} digests: all valid")


def _frames(population: Population, n: int, seed: int) -> list[bytes]:
    """``n`` fresh events as the ingest server receives them: 1,000-event JSON frames."""
    out = []
    for batch in population.records(n, START_NS + seed * 10**12, 60 * 10**9, seed=seed,
                                    batch=FRAME):
        out.append(orjson.dumps(batch))
    return out


def _feed(store: Store, frames: list[bytes]) -> int:
    """Submit ``frames`` with at most IN_FLIGHT unacknowledged; events written."""
    slots = threading.Semaphore(IN_FLIGHT)
    futures: list[Future[WriteResult]] = []
    for frame in frames:
        slots.acquire()
        future = store.submit(orjson.loads(frame))
        future.add_done_callback(lambda _: slots.release())
        futures.append(future)
    return sum(len(f.result().written) for f in futures)


def _check_ingest(stats: dict[str, dict[str, Any]], fed: dict[str, int]) -> None:
    for name, s in stats.items():
        if s["written"] != fed[name] or s["write_errors"]:
            raise h.BenchmarkError(f"{name}: fed {fed[name]} events, the store wrote "
                                   f"{s['written']} ({s['write_errors']} write errors)")
    if stats["chained"]["integrity"] is None or stats["unchained"]["integrity"] is not None:
        raise h.BenchmarkError("the chained store must chain and the unchained one not")


def _report(m: h.Measurements, rounds: int, size: int, files: int, dataset: int,
            ingest: int, checked: str, stats: dict[str, dict[str, Any]]) -> h.Report:
    def mb_s(case: str) -> float:
        return 1e3 / m.median_ns(case, WALL)  # ns per byte -> MB/s

    def events_s(case: str) -> float:
        return 1e9 / m.median_ns(case, WALL)

    speed = m.ratio("sha256sum", "verify", WALL)  # verify MB/s / sha256sum MB/s
    kept = m.ratio("unchained", "chained", WALL)  # chained events/s / unchained events/s
    hashing = h.Table(f"Hashing {size / 1e6:.0f} MB of segments ({files} files, "
                      f"{dataset:,} records), median of {rounds} interleaved rounds",
                      ["case", "MB/s", "vs sha256sum", "IQR"],
                      [["audit-collector verify (records + segments + digests)",
                        f"{mb_s('verify'):.0f}", h.fmt_ratio(speed),
                        f"{m.spread('verify', WALL) * 100:.1f}%"],
                       ["sha256sum (segments)", f"{mb_s('sha256sum'):.0f}", "1.000x",
                        f"{m.spread('sha256sum', WALL) * 100:.1f}%"]])
    ingesting = h.Table(f"Durable ingest, {ingest:,} events per round and case",
                        ["store", "events/s", "vs unchained", "IQR"],
                        [["chain=True (default)", f"{events_s('chained'):,.0f}",
                          h.fmt_ratio(kept), f"{m.spread('chained', WALL) * 100:.1f}%"],
                         ["chain=False", f"{events_s('unchained'):,.0f}", "1.000x",
                          f"{m.spread('unchained', WALL) * 100:.1f}%"]])
    targets = [
        h.Target("verify MB/s / sha256sum MB/s", speed, VERIFY_LIMIT, "x",
                 higher_is_better=True),
        h.Target("durable events/s lost to chaining", 1 - kept, COST_LIMIT),
    ]
    notes = [
        checked,
        ("verify reads each segment once and hashes every byte twice: the record chain on "
         "the calling thread, the segment's SHA-256 on a worker thread (hashlib releases "
         "the GIL on large buffers), so it uses two cores where sha256sum uses one."),
        ("ingest: fed like the ingest server feeds the store (orjson.loads of a frame, "
         "submit, 32 frames in flight); both stores run in this process, one after the "
         "other within a round."),
        (f"the chained store wrote {stats['chained']['integrity']['written']} digests "
         f"(start, seals; the interval is 5 minutes) and "
         f"{stats['chained']['events_per_fsync']} events per fsync; the unchained "
         f"{stats['unchained']['events_per_fsync']}."),
    ]
    settings = {"rounds": rounds, "dataset": dataset, "segment_bytes": size // files,
                "ingest_per_round": ingest}
    return h.Report(NAME, TITLE, [hashing, ingesting], targets, notes, m, settings)
