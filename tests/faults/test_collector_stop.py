"""SIGSTOP the collector under HTTP load (30 s in the full run, a few in CI): the app's
requests do not wait for it (latency stays bounded: p50/p99 reported against the
undisturbed run), memory stays bounded on both sides, the app's spool absorbs the
backlog, and after SIGCONT everything arrives, exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.fleet import (
    Collector,
    HttpApp,
    Load,
    Stored,
    percentile,
    report,
    scaled,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(scaled(300, 3600))]

UNDISTURBED = scaled(2.0, 20.0)  # seconds of load before the stop, for comparison
STOPPED = scaled(3.0, 30.0)
#: The app's queue. The shipper's defaults otherwise (10 s ack timeout): the stop lasts
#: longer than the queue takes to fill, so it is the spool that must absorb the backlog.
MAX_QUEUE = scaled(2_000, 10_000)
#: Memory the app and the collector may grow by while the collector is stopped (the
#: app's queue is bounded, the backlog goes to disk).
GROWTH_KIB = 64 * 1024


def test_sigstop_under_load_latency_and_memory_stay_bounded(tmp: Path) -> None:
    collector = Collector(tmp / "data").start()
    app = HttpApp(collector.url, tmp / "spool", max_queue=MAX_QUEUE)
    with Load(lambda: app.base_url, threads=4) as load:
        load.phase = "undisturbed"
        time.sleep(UNDISTURBED)
        app_before, collector_before = app.memory(), collector.memory()
        load.phase = "stopped"
        collector.pause()
        try:
            time.sleep(STOPPED)
            # Until the spool has taken some: the queue (MAX_QUEUE) fills at the load's
            # rate, which a slow or busy machine makes slower than the stop (CI once
            # spooled nothing in its 3 s: the assertion below, not the product, failed).
            wait_for(lambda: app.stats()["spooled"] > 0, 120,
                     "the app's queue to fill and its spool to take the rest")
            app_stopped = app.memory()
            during = app.stats()
        finally:
            collector.resume()
        load.phase = "resumed"
        wait_for(lambda: app.stats()["replayed"] >= during["spooled"], 120,
                 "the spool to be replayed")
    wait_for(lambda: (s := app.stats())["acknowledged"] + s["dropped"] >= s["emitted"]
             and s["spool_bytes"] == 0, 120, "every event to be acknowledged (or dropped)")
    stats = app.stats()
    assert stats["dropped"] == 0, f"the app dropped events while the collector hung: {stats}"
    collector_after = collector.memory()
    app.stop()
    assert collector.stop() == 0

    undisturbed, stopped = load.latencies("undisturbed"), load.latencies("stopped")
    stored = Stored.read(collector.data_dir)
    targets = {rec["target"] for rec in stored.records}
    succeeded = [str(q.n) for q in load.requests if q.status == 201]
    lost = [n for n in succeeded if n not in targets]
    report("collector SIGSTOP under HTTP load", stopped_seconds=STOPPED,
           requests=len(load.requests), succeeded=len(succeeded),
           p50_ms_undisturbed=round(percentile(undisturbed, 50) * 1000, 1),
           p99_ms_undisturbed=round(percentile(undisturbed, 99) * 1000, 1),
           p50_ms_stopped=round(percentile(stopped, 50) * 1000, 1),
           p99_ms_stopped=round(percentile(stopped, 99) * 1000, 1),
           max_ms_stopped=round(max(stopped) * 1000, 1),
           spooled_while_stopped=during["spooled"],
           app_rss_mib=f"{app_before.rss_kib // 1024}->{app_stopped.rss_kib // 1024}",
           collector_rss_mib=f"{collector_before.rss_kib // 1024}->"
                             f"{collector_after.rss_kib // 1024}",
           acknowledged=stats["acknowledged"], stored=len(stored.in_segments),
           lost=len(lost))
    assert {q.status for q in load.requests} == {201}
    assert lost == []
    stored.check_exactly_once()
    assert len(stored.in_segments) == len(succeeded)
    # No request waited for the stopped collector: one that did would take the stop.
    assert max(stopped) < STOPPED / 2
    assert len(stopped) > 0.25 * len(undisturbed) * STOPPED / UNDISTURBED
    assert during["spooled"] > 0, "the spool absorbed nothing while the collector was stopped"
    assert app_stopped.rss_kib - app_before.rss_kib < GROWTH_KIB
    assert collector_after.rss_kib - collector_before.rss_kib < GROWTH_KIB
