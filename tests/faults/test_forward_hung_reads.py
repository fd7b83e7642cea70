"""A real collector's forwarder on a hung data disk (``hung_reads``: a record's read from
a segment blocks): the forwarder reads the records it exports from the store, and a
read() the disk never answers held its thread without a word (``state`` went on saying
"forwarding", the lag stood still) and held the stop for the whole ``drain_timeout``.
Now the operator is told once that forwarding waits on the disk (the log, ``stats``,
``/metrics``), the stop leaves the read behind, ingest goes on, and once the disk
answers every record is forwarded once, in order."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.forward_reads import READ_STALL
from tests.collector.storage_helpers import event
from tests.faults.fleet import Collector, HungReadsCollector, wait_for
from tests.faults.hung_reads import SEGMENT_READS_GATE, segment_read_hung
from tests.otel.otlp_receiver import OTLPReceiver, attributes
from tests.shipping.test_serve_integrations import TOKEN, metric, send

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

#: Seconds a test waits for what must come: a bound on a failure, not a timing.
BOUND = 60
WAITING = "forwarder: a read of the data directory has not returned for"


@contextlib.contextmanager
def forwarding(tmp: Path, receiver: OTLPReceiver, *args: str,
               ) -> Iterator[tuple[Collector, Path]]:
    """A started collector forwarding to ``receiver``, its segment reads hanging while the
    gate exists (not made here; removed at the end)."""
    gate = tmp / "disk-hangs"
    collector = HungReadsCollector(
        tmp / "data", "--forward-endpoint", receiver.endpoint, "--forward-batch", "2",
        "--forward-backoff-max", "0.2", *args, api=True,
        env={SEGMENT_READS_GATE: str(gate), "AUDIT_TOKEN": TOKEN,
             "AUDIT_CONFIG": ""}).start()
    try:
        yield collector, gate
    finally:
        gate.unlink(missing_ok=True)
        collector.kill()


def stored_while_the_forwarders_read_hangs(collector: Collector, gate: Path,
                                           events: list[dict[str, Any]]) -> str:
    """``events`` stored with the disk answering no segment read: the forwarder's read
    of them hangs. Returns the API's URL."""
    url = collector.api_url()
    gate.touch()
    reply = send(url, events)
    assert reply.status_code == 200, reply.text
    wait_for(segment_read_hung(gate).exists, BOUND, "the forwarder's read to hang")
    return url


def output(collector: Collector) -> str:
    return "".join(collector.output)


def test_a_hung_read_is_said_once_ingest_goes_on_and_nothing_is_lost_or_sent_twice(
        tmp: Path) -> None:
    events = [event(i) for i in range(1, 8)]
    with OTLPReceiver() as receiver, forwarding(tmp, receiver) as (collector, gate):
        url = stored_while_the_forwarders_read_hangs(collector, gate, events[:3])
        # Ingest does not wait on the forwarder's read.
        reply = send(url, events[3:])
        assert reply.status_code == 200, reply.text
        wait_for(lambda: WAITING in output(collector), READ_STALL + BOUND,
                 "the log to say the forwarder waits on the disk")
        assert metric(url, "audit_collector_forward_disk_waiting") == 1
        assert metric(url, "audit_collector_forward_disk_hung_total") == 1
        # Said once, not at every poll: the forwarder makes no second read meanwhile.
        assert output(collector).count(WAITING) == 1
        assert receiver.seqs() == []

        gate.unlink()  # the disk answers again
        wait_for(lambda: len(receiver.seqs()) >= 7, BOUND, "the records to be forwarded")
        wait_for(lambda: metric(url, "audit_collector_forward_lag") == 0, BOUND, "no lag")
        assert metric(url, "audit_collector_forward_disk_waiting") == 0
        assert metric(url, "audit_collector_forward_disk_hung_total") == 1
        assert receiver.seqs() == list(range(1, 8))  # in order, each once
        uids = [attributes(r)["log.record.uid"] for r in receiver.log_records()]
        assert uids == [e["id"] for e in events]
        assert "forwarder: the data directory answered again after" in output(collector)
        assert collector.stop() == 0


def test_the_stop_does_not_wait_for_the_forwarders_hung_read(tmp: Path) -> None:
    """A ``drain_timeout`` far beyond the test's bound: the forwarder's stop waited for
    its thread that long, in the read, and so did the process's exit."""
    with (OTLPReceiver() as receiver,
          forwarding(tmp, receiver, "--drain-timeout", "600") as (collector, gate)):
        stored_while_the_forwarders_read_hangs(collector, gate, [event(1)])
        assert collector.proc is not None
        collector.proc.send_signal(signal.SIGTERM)
        assert collector.proc.wait(BOUND) == 0  # the disk still hangs
    assert "audit-collector: stopped\n" in collector.output
    assert receiver.seqs() == []
