"""A collector data directory holding a million realistic stored events, for the query
benchmark: built once through ``collector.store.Store`` (big batches, group commit,
its own indexer) and cached under ``benchmarks/.data/`` (gitignored), keyed by a
version string, so reruns start at once.

What is stored comes from ``_events.Population``: 1,000 principals, 50 organizations,
200 workspaces, every catalogue type, sign-in addresses, times spread over 30 days in
arrival order. The manifest names the selection the benchmark queries: one busy
principal (the tenth most active) in one of its organizations over one hour in which it
acted there.
"""

from __future__ import annotations

import calendar
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import orjson

import collector
from collector.index import INDEX_SCHEMA
from collector.store import StorageSettings, Store

from ._events import Population
from ._harness import BenchmarkError

#: Change when the generator changes (the cache key includes it, and a digest of the
#: storage code: see ``cache_key``).
VERSION: Final = "1"
CACHE_DIR: Final = Path(__file__).resolve().parent / ".data"
MANIFEST: Final = "manifest.json"
START_NS: Final = 1_793_059_200 * 10**9  # 2026-10-27T00:00:00Z
SPAN_NS: Final = 30 * 24 * 3600 * 10**9
HOUR_NS: Final = 3600 * 10**9
SELECTED_RANK: Final = 9  # the selection's principal: the tenth most active
BATCH: Final = 20_000
IN_FLIGHT: Final = 3  # submissions queued at the Store at once


@dataclass(frozen=True)
class Selection:
    principal: str
    org: str
    since: str  # RFC 3339, inclusive
    until: str  # RFC 3339, exclusive


@dataclass(frozen=True)
class Dataset:
    data_dir: Path
    events: int
    selection: Selection
    build_seconds: float
    cached: bool

    @property
    def segment_files(self) -> list[Path]:
        return sorted((self.data_dir / "segments").glob("segment-*.jsonl"))

    @property
    def segment_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.segment_files)

    @property
    def index_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.data_dir.glob("index.sqlite*"))


def cache_key(events: int) -> str:
    """The generator's version, the size, and a digest of the code that decides what a
    stored record and its index look like: a dataset built by other storage code is
    rebuilt rather than measured (its index size would be someone else's)."""
    return f"query-v{VERSION}-{events}-{storage_digest()}"


def storage_digest() -> str:
    """A digest of the index schema and of the code that lays out stored records and
    their index: part of every cached dataset's key (``panel_latency``'s too), so a
    change there rebuilds the dataset instead of timing queries over the old layout."""
    digest = hashlib.sha256(str(INDEX_SCHEMA).encode())
    for path in _storage_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _storage_sources() -> list[Path]:
    package = Path(collector.__file__).resolve().parent
    # The store is store.py and the parts it inherits (store_settings.py, ...).
    return sorted([package / "index.py", *package.glob("store*.py"),
                   *(package / "storage").glob("*.py")])


def cached(events: int, cache_dir: Path = CACHE_DIR) -> Dataset:
    """The dataset of ``events`` events from the cache, built first when missing (older
    versions in the cache are removed: each is a few hundred MB)."""
    target = cache_dir / cache_key(events)
    if (target / MANIFEST).exists():
        return _load(target, cached=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for old in cache_dir.glob("query-*"):
        shutil.rmtree(old, ignore_errors=True)
    building = cache_dir / f"{target.name}.building-{os.getpid()}"
    build(building, events)
    building.rename(target)
    return _load(target, cached=False)


@contextmanager
def temporary(events: int, parent: Path) -> Iterator[Dataset]:
    """A dataset built in ``parent`` for one run (smoke runs: not cached)."""
    directory = parent / "dataset"
    build(directory, events)
    yield _load(directory, cached=False)


def build(data_dir: Path, events: int) -> None:
    started = time.monotonic()
    population = Population()
    principal = population.members[SELECTED_RANK].principal
    selection: Selection | None = None
    store = Store(StorageSettings(data_dir=data_dir))
    store.open()
    try:
        pending = []
        for batch in population.records(events, START_NS, SPAN_NS, batch=BATCH):
            if selection is None:
                selection = _select(batch, principal, events)
            pending.append(store.submit(batch, source="benchmark-dataset"))
            if len(pending) >= IN_FLIGHT:
                pending.pop(0).result()
        for future in pending:
            future.result()
    finally:
        store.close()
    if selection is None:
        raise BenchmarkError(f"principal {principal} never acted in an organization in "
                           f"{events} events: use more events")
    manifest = {"version": VERSION, "events": events, "selection": asdict(selection),
                "build_seconds": round(time.monotonic() - started, 1)}
    (data_dir / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))


def _select(batch: list[dict[str, Any]], principal: str, events: int) -> Selection | None:
    """The hour of ``principal``'s first event in an organization at or after 60 % of
    the time span (so the hour is neither the first nor the newest)."""
    from_ns = START_NS + SPAN_NS * 6 // 10
    for record in batch:
        if record["principal"] == principal and record["org_id"] and \
                _ns(record["created"]) >= from_ns:
            hour = _ns(record["created"]) // HOUR_NS * HOUR_NS
            return Selection(principal, record["org_id"], _rfc3339(hour),
                             _rfc3339(hour + HOUR_NS))
    return None


def _ns(created: str) -> int:
    seconds = calendar.timegm(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S"))
    return seconds * 10**9 + int(created[20:26]) * 1000


def _rfc3339(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + ".000000Z"


def _load(data_dir: Path, cached: bool) -> Dataset:
    manifest = orjson.loads((data_dir / MANIFEST).read_bytes())
    return Dataset(data_dir, manifest["events"], Selection(**manifest["selection"]),
                   manifest["build_seconds"], cached)
