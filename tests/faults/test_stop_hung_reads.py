"""A real collector's query API and stop on a hung data disk (``hung_reads``): queries
stuck in a read hold every query thread, and the unix socket's file cannot be removed.
The stop waited for those threads with no bound (its process never exited), later
queries queued behind them with no bound, and the socket's removal held the event loop
during the stop's drain (answers of requests in progress included)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from collector.api.queries import DEFAULT_THREADS
from tests.api.served import add_reader
from tests.faults.fleet import Collector, HungReadsCollector, wait_for
from tests.faults.hung_reads import (
    READS_GATE,
    UNLINK_GATE,
    find_hung,
    unlink_hung,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

#: Seconds a test waits for what must come: a bound on a failure, not a timing.
BOUND = 60
EVENT = "019ac3f2-5e1a-7c3d-9a41-0f6d2b7e8c11"


@contextlib.contextmanager
def hung_reads(tmp: Path, *args: str) -> Iterator[tuple[Collector, Path, Path]]:
    """A started collector whose lookups hang while the first gate exists, and its socket
    file's removal while the second one does (both removed at the end)."""
    reads, unlink = tmp / "reads-hang", tmp / "unlink-hangs"
    collector = HungReadsCollector(tmp / "data", *args, api=True, env={
        READS_GATE: str(reads), UNLINK_GATE: str(unlink)}).start()
    try:
        yield collector, reads, unlink
    finally:
        reads.unlink(missing_ok=True)
        unlink.unlink(missing_ok=True)
        collector.kill()


def lookup(url: str, token: str) -> httpx.Response:
    return httpx.get(f"{url}/api/v1/audit-logs/{EVENT}", timeout=BOUND,
                     headers={"Authorization": f"Bearer {token}"})


def test_queries_stuck_in_reads_do_not_hold_the_stop(tmp: Path) -> None:
    """Past drain_timeout their requests are cancelled; their threads, still in the read,
    are left (daemon threads): the stop was joining them, and the process never exited.
    (A query that finds every thread held: tests/api/test_queries_hung_disk.py.)"""
    with (hung_reads(tmp, "--drain-timeout", "1") as (collector, reads, _),
          concurrent.futures.ThreadPoolExecutor(DEFAULT_THREADS) as clients):
        url, token = collector.api_url(), add_reader(tmp / "data", "alice", root=True)
        reads.touch()
        stuck = [clients.submit(lookup, url, token) for _ in range(DEFAULT_THREADS)]
        wait_for(find_hung(reads, DEFAULT_THREADS).exists, BOUND,
                 "every query thread to hang in a read")

        assert collector.proc is not None
        collector.proc.send_signal(signal.SIGTERM)
        # The disk still hangs: the threads in it are left, the stop goes on.
        assert collector.proc.wait(BOUND) == 0
        for client in stuck:  # cut at drain_timeout: the collector stopped
            with contextlib.suppress(httpx.HTTPError):
                client.result(BOUND)
    assert "query thread(s) still in a query at the stop" in "".join(collector.output)
    assert "audit-collector: stopped\n" in collector.output


def test_a_hung_socket_removal_leaves_the_loop_to_answer_requests_in_progress(
        tmp: Path) -> None:
    with (hung_reads(tmp, "--drain-timeout", str(BOUND)) as (collector, reads, unlink),
          concurrent.futures.ThreadPoolExecutor(1) as clients):
        url, token = collector.api_url(), add_reader(tmp / "data", "alice", root=True)
        reads.touch()
        unlink.touch()
        in_progress = clients.submit(lookup, url, token)
        wait_for(find_hung(reads, 1).exists, BOUND, "the lookup to hang in a read")
        assert collector.proc is not None
        collector.proc.send_signal(signal.SIGTERM)
        wait_for(unlink_hung(unlink).exists, BOUND, "the socket file's removal to hang")
        reads.unlink()  # the lookup's read ends: its answer needs the event loop
        answer = in_progress.result(BOUND)
        assert answer.status_code == 404, answer.text  # answered: no such event
        assert collector.proc.wait(BOUND) == 0  # the removal still hangs
    output = "".join(collector.output)
    assert "collector.sock was not removed" in output
    assert "audit-collector: stopped\n" in collector.output
