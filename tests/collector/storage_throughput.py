"""A quick throughput check of the Store alone (not a unit test, not the benchmark):

    .venv/bin/python -m tests.collector.storage_throughput [EVENTS]

A feeder thread does what the ingest server does with each frame (``orjson.loads`` of
1,000 events, then ``Store.submit``, at most 32 frames in flight); the store writes,
fsyncs and indexes them. Prints durable events/s, events per fsync, CPU per event of
each thread, and the index size as a share of the segment bytes. The numbers move with
whatever else the machine runs: run it a few times.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from audit_middleware.catalogue import default_catalogue
from audit_middleware.event import AuditEvent
from collector.store import StorageSettings, Store

FRAME = 1000
IN_FLIGHT = 32


def frames(count: int) -> list[bytes]:
    rnd = random.Random(7)
    types = sorted(default_catalogue.types)
    t = time.time_ns() - count * 1_000_000
    out, batch = [], []
    for _ in range(count):
        t += rnd.randint(1, 2_000_000)
        batch.append(AuditEvent(
            rnd.choice(types), f"run-{rnd.randrange(10**7)}", f"user-{rnd.randrange(1000)}",
            "", f"org-{rnd.randrange(50)}", "Org", f"ws-{rnd.randrange(200)}", "Workspace",
            f"10.{rnd.randrange(20)}.{rnd.randrange(256)}.{rnd.randrange(256)}", t).to_dict())
        if len(batch) == FRAME:
            out.append(orjson.dumps(batch))
            batch = []
    return out


def thread_cpu() -> dict[int, float]:
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        cpu[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return cpu


def main(count: int) -> None:
    data = frames(count)
    directory = Path(tempfile.mkdtemp(prefix="storage-throughput-"))
    try:
        store = Store(StorageSettings(directory))
        store.open()
        before = thread_cpu()
        slots = threading.Semaphore(IN_FLIGHT)
        futures = []
        started = time.perf_counter()
        for i, frame in enumerate(data):
            slots.acquire()
            future = store.submit(orjson.loads(frame), "check",
                                  list(range(i * FRAME + 1, (i + 1) * FRAME + 1)))
            future.add_done_callback(lambda _: slots.release())
            futures.append(future)
        written = sum(len(f.result().written) for f in futures)
        elapsed = time.perf_counter() - started
        after = thread_cpu()
        stats = store.stats()
        names = {t.native_id: t.name for t in threading.enumerate()}
        store.close()
        segments = sum(p.stat().st_size for p in (directory / "segments").iterdir())
        index = sum(p.stat().st_size for p in directory.glob("index.sqlite*"))
        print(f"{written:,} events in {elapsed:.2f} s: {written / elapsed:,.0f} events/s "
              f"fsynced and indexed; {stats['events_per_fsync']:,.0f} events per fsync")
        for tid, seconds in sorted(after.items()):
            used = seconds - before.get(tid, 0.0)
            if used > 0.01:
                print(f"  {names.get(tid, tid)!s:24} {used / written * 1e6:5.2f} us CPU per event")
        print(f"segments {segments / 1e6:.0f} MB, index {index / 1e6:.0f} MB "
              f"({index / segments:.0%} of the segment bytes)")
    finally:
        shutil.rmtree(directory)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300_000)
