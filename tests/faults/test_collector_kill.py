"""SIGKILL the collector at random moments while several app processes emit through the
real shipper: after the last restart every acknowledged event id is in the segments and
in the index exactly once, and nothing the apps emitted is missing.

Kills land anywhere: mid group commit, mid rotation (small segments), mid compression
of a sealed segment, and during start-up itself (while the previous kill is being
repaired).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.fleet import App, Collector, Stored, report, rng, scaled, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(scaled(300, 3600))]

KILLS = scaled(6, 60)
APPS = scaled(3, 4)
DELIVER = scaled(120, 900)  # seconds the apps may take to deliver their backlog at the end


def test_sigkill_at_random_moments_loses_no_acknowledged_event(tmp: Path) -> None:
    r = rng("collector kill")
    collector = Collector(tmp / "data", "--max-segment-bytes", "256KiB",
                          "--compress-sealed", "true")
    collector.start()
    # About 2,000 events a second each: more than the collector can take while it is
    # down and restarting (the spools absorb it), less than it can catch up with.
    apps = [App(f"app{n}", collector.url, tmp / f"spool{n}", tmp / "logs", burst=20,
                pause=0.01, deliver_timeout=DELIVER) for n in range(APPS)]
    kills = during_start = repaired = 0
    try:
        for _ in range(KILLS):
            before = sum(a.acknowledged_count() for a in apps)
            wait_for(lambda b=before: sum(a.acknowledged_count() for a in apps) > b, 60,
                     "the apps' events to be acknowledged again")
            time.sleep(r.uniform(0.0, 0.6))  # a random moment, under load
            collector.sigkill()
            kills += 1
            if kills < KILLS and r.random() < 0.25:
                collector.spawn()  # killed again while it repairs what the last kill left
                time.sleep(r.uniform(0.0, 0.5))
                collector.sigkill()
                kills += 1
                during_start += 1
            collector.start()
            repaired += collector.repair_line().endswith("nothing to repair") is False
    finally:
        if not collector.alive:
            collector.start()
        for app in apps:
            app.stop()
        results = [a.finish(timeout=DELIVER + 60) for a in apps]
        assert collector.stop() == 0, "".join(collector.output)

    stored = Stored.read(collector.data_dir)
    acknowledged = {i for a in apps for i in a.acknowledged()}
    lost = stored.missing(acknowledged)
    emitted = sum(res["emitted"] for res in results)
    report("collector SIGKILL under load", kills=kills, during_startup=during_start,
           restarts_that_repaired=repaired, apps=len(apps), emitted=emitted,
           acknowledged=len(acknowledged), stored=len(stored.in_segments), lost=len(lost))
    assert lost == []
    stored.check_exactly_once()
    assert all(res["delivered"] and res["dropped"] == 0 for res in results), results
    targets = {rec["target"] for rec in stored.records}
    never_stored = [f"{a.name}-{n}" for a, res in zip(apps, results)
                    for n in range(res["emitted"]) if f"{a.name}-{n}" not in targets]
    assert never_stored == []
    assert len(stored.in_segments) == emitted
