"""``GET /healthz`` of a real collector whose commit hangs (a segment fsync that does not
return, ``hung_fsync``): 503 ``write_stalled`` once a batch has waited past
``write_stall_timeout``, and ready again once the commit completes."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from audit_middleware.wire import FrameType, Result
from tests.api.served import api_url, metric
from tests.e2e.harness import RawClient, wire_line
from tests.faults.fleet import Collector, wait_for
from tests.faults.hung_fsync import GATE_VARIABLE, stats_hung

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

#: ``--write-stall-timeout`` here: short, so the test waits little past it.
STALL_AFTER = 0.2


class HungFsyncCollector(Collector):
    module = "tests.faults.hung_fsync"


def healthz(url: str) -> httpx.Response:
    return httpx.get(f"{url}/healthz", timeout=10)


def commit_wait(url: str) -> float:
    return metric(url, "audit_collector_store_commit_wait_seconds")


@contextlib.contextmanager
def hung_collector(tmp: Path, gate: Path) -> Iterator[tuple[RawClient, str]]:
    """A started collector, its API listening, whose disk hangs while ``gate`` exists:
    a client that said hello, and the API's URL. The gate is removed at the end."""
    collector = HungFsyncCollector(tmp / "data", "--write-stall-timeout", str(STALL_AFTER),
                                   api=True, env={GATE_VARIABLE: str(gate)}).start()
    client = RawClient(collector.socket)
    try:
        client.hello()
        yield client, api_url(collector)
    finally:
        gate.unlink(missing_ok=True)
        client.close()
        collector.stop()


def test_a_hung_fsync_makes_the_probe_say_write_stalled_until_the_commit_completes(
        tmp: Path) -> None:
    gate = tmp / "fsync-hangs"
    with hung_collector(tmp, gate) as (client, url):
        kind, _ = client.batch(1, [wire_line(1)], [1])
        assert kind is FrameType.RESULT
        time.sleep(STALL_AFTER * 2)  # idle past the timeout: nothing waits, so ready
        assert healthz(url).status_code == 200
        assert commit_wait(url) == 0.0

        gate.touch()
        client.send_batch(2, [wire_line(2)], [2])
        wait_for(lambda: healthz(url).status_code == 503, 60, "the probe to say 503")
        assert healthz(url).json()["reason"] == "write_stalled"
        assert commit_wait(url) > STALL_AFTER

        gate.unlink()
        reply = client.frame()
        assert reply is not None and reply[0] is FrameType.RESULT
        assert len(Result.decode(reply[1]).written) == 1
        assert healthz(url).status_code == 200


def test_the_probe_answers_while_the_live_stats_file_write_hangs(tmp: Path) -> None:
    """The live stats file was written on the event loop (every 5 s): on a hung disk its
    write hung the loop, and with it ingest and GET /healthz, which a probe saw time out
    instead of answering 503 write_stalled."""
    gate = tmp / "disk-hangs"
    with hung_collector(tmp, gate) as (client, url):
        gate.touch()
        wait_for(stats_hung(gate).exists, 60, "the live stats file's write to hang")
        client.send_batch(1, [wire_line(1)], [1])
        wait_for(lambda: healthz(url).status_code == 503, 60, "the probe to say 503")
        assert healthz(url).json()["reason"] == "write_stalled"
        gate.unlink()
        reply = client.frame()
        assert reply is not None and reply[0] is FrameType.RESULT


def test_a_stop_ends_while_the_live_stats_file_write_hangs(tmp: Path) -> None:
    """The stop's last write of the live stats file was made on the event loop: on a hung
    disk the stop waited there for good, the API's and ingest's ends with it. It is
    waited for a bounded time, as the periodic ones, then said and left."""
    gate = tmp / "disk-hangs"
    collector = HungFsyncCollector(tmp / "data", api=True,
                                   env={GATE_VARIABLE: str(gate)}).start()
    proc = collector.proc
    assert proc is not None
    try:
        gate.touch()
        wait_for(stats_hung(gate).exists, 60, "the live stats file's write to hang")
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: any("the final ingest-stats.json not written" in line
                             for line in collector.output), 60,
                 "the stop to give up on the final stats")
        gate.unlink()  # the store's close may sync the active segment
        assert proc.wait(60) == 0
    finally:
        gate.unlink(missing_ok=True)
        collector.kill()
    assert "audit-collector: stopped\n" in collector.output
