"""SIGKILL an app process: whatever the collector acknowledged to it is stored, whatever
it had fsynced into its spool is replayed by the next process on that spool, and with
``fail_closed`` no request that got a success response lacks its event."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.fleet import (
    App,
    Collector,
    HttpApp,
    Load,
    Stored,
    report,
    rng,
    scaled,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(scaled(300, 3600))]

CYCLES = scaled(3, 20)
HTTP_KILLS = scaled(3, 20)


def test_a_killed_app_loses_nothing_acknowledged_or_spooled(tmp: Path) -> None:
    """Each cycle kills an app while the collector is up, then kills the collector and,
    while it is down, kills the app that is spooling; the next app on the same spool
    directory adopts the dead one's spool files and replays them."""
    r = rng("app kill")
    collector = Collector(tmp / "data").start()
    logs = tmp / "logs"
    steady = App("steady", collector.url, tmp / "spool-steady", logs)
    generation = 0
    victims = [App("victim0", collector.url, tmp / "spool-victim", logs)]

    def next_victim() -> App:
        nonlocal generation
        generation += 1
        app = App(f"victim{generation}", collector.url, tmp / "spool-victim", logs)
        victims.append(app)
        return app

    app_kills = 0
    try:
        for _ in range(CYCLES):
            victim = victims[-1]
            wait_for(lambda v=victim: v.acknowledged_count() > 0, 60, "acknowledgements")
            time.sleep(r.uniform(0.0, 0.3))
            victim.sigkill()  # the collector is up: some batches were in flight
            app_kills += 1
            victim = next_victim()
            wait_for(lambda v=victim: v.acknowledged_count() > 0, 60, "acknowledgements")
            collector.sigkill()
            wait_for(lambda v=victim: len(v.spooled()) > 0, 60, "the app to spool")
            time.sleep(r.uniform(0.0, 0.3))
            victim.sigkill()  # dies holding a spool: maybe in the middle of appending
            app_kills += 1
            collector.start()
            next_victim()  # adopts the orphaned spool files, replays them
    finally:
        if not collector.alive:
            collector.start()
        steady.stop()
        victims[-1].stop()
        survivors = [steady.finish(), victims[-1].finish()]
        assert collector.stop() == 0

    stored = Stored.read(collector.data_dir)
    killed = victims[:-1]
    acknowledged = {i for a in [steady, *victims] for i in a.acknowledged()}
    spooled = {i for a in killed for i in a.spooled()}
    lost = stored.missing(acknowledged | spooled)
    report("app SIGKILL (with and without a spool)", app_kills=app_kills,
           collector_kills=CYCLES, acknowledged=len(acknowledged),
           spooled_by_killed_apps=len(spooled), stored=len(stored.in_segments),
           lost=len(lost))
    assert lost == []
    stored.check_exactly_once()
    assert all(s["delivered"] and s["dropped"] == 0 for s in survivors), survivors
    assert spooled, "no killed app had spooled anything: the spool replay went untested"


def test_fail_closed_no_success_response_lacks_its_event(tmp: Path) -> None:
    """HTTP load against a fail_closed app that is SIGKILLed (and restarted on the
    same spool) at random moments; once the collector is SIGKILLed too."""
    r = rng("fail_closed app kill")
    collector = Collector(tmp / "data").start()
    options = {"fail_closed": True, "fail_closed_timeout": 2.0, "ack_timeout": 2.0}
    app = HttpApp(collector.url, tmp / "spool", **options)
    current = [app]
    kills = 0
    with Load(lambda: current[0].base_url, threads=4) as load:
        for k in range(HTTP_KILLS):
            done = load.count(201)
            wait_for(lambda d=done: load.count(201) > d + 20, 60, "successful requests")
            time.sleep(r.uniform(0.0, 0.3))
            current[0].sigkill()
            kills += 1
            if k == HTTP_KILLS // 2:  # once, the collector goes too: 503s, then recovery
                collector.sigkill()
                current[0] = HttpApp(collector.url, tmp / "spool", **options)
                refused = load.count(503)
                wait_for(lambda r=refused: load.count(503) > r, 60, "503 while it is down")
                collector.start()
            else:
                current[0] = HttpApp(collector.url, tmp / "spool", **options)
        done = load.count(201)
        wait_for(lambda: load.count(201) > done + 20, 60, "successful requests again")
    current[0].stop()
    assert collector.stop() == 0

    stored = Stored.read(collector.data_dir)
    targets = {rec["target"] for rec in stored.records}
    succeeded = [str(q.n) for q in load.requests if q.status == 201]
    lost = sorted(n for n in succeeded if n not in targets)
    report("app SIGKILL with fail_closed (HTTP)", app_kills=kills, collector_kills=1,
           requests=len(load.requests), succeeded=len(succeeded), refused_503=load.count(503),
           no_response=load.count(0), stored=len(stored.in_segments), lost=len(lost))
    assert lost == []
    stored.check_exactly_once()
    assert {q.status for q in load.requests} <= {201, 503, 0}
