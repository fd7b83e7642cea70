"""`audit-collector serve` as a real process with the integrations on: events sent with
POST /api/v1/events reach a real OTLP/HTTP receiver through the forwarder, /metrics
counts them, and after kill -9 the forwarder resumes from its checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import orjson
import pytest

from collector.forward_checkpoint import CHECKPOINT_FILE
from tests.collector.storage_helpers import event
from tests.e2e.harness import CollectorProcess, wait_until
from tests.otel.otlp_receiver import OTLPReceiver, attributes

pytestmark = pytest.mark.e2e
TOKEN = "ingest-token-for-tests"


def collector(root: Path, receiver: OTLPReceiver, *args: str) -> CollectorProcess:
    return CollectorProcess(root / "data", "--api-listen", "127.0.0.1:0",
                            "--forward-endpoint", receiver.endpoint, "--forward-batch", "2",
                            "--forward-backoff-max", "0.2", *args,
                            env={"AUDIT_TOKEN": TOKEN, "AUDIT_CONFIG": ""})


def api_url(process: CollectorProcess) -> str:
    match = re.search(r"(http://127\.0\.0\.1:\d+)", process.ready_line)
    assert match, process.ready_line
    return match[1]


def send(url: str, events: list[dict[str, object]]) -> httpx.Response:
    body = b"".join(orjson.dumps(e) + b"\n" for e in events)
    return httpx.post(f"{url}/api/v1/events", content=body, timeout=10,
                      headers={"Authorization": f"Bearer {TOKEN}",
                               "Content-Type": "application/x-ndjson"})


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else -1.0


def test_http_ingest_forwarding_and_metrics_in_one_serve(root: Path) -> None:
    with OTLPReceiver() as receiver, collector(root, receiver) as process:
        assert f"forwarding stored events to {receiver.endpoint}" in "".join(process.output)
        url = api_url(process)
        events = [event(i) for i in range(1, 6)]
        reply = send(url, events)
        assert reply.status_code == 200, reply.text
        assert reply.json()["written"] == [e["id"] for e in events]
        received = receiver.wait_for(5)
        assert [attributes(r)["log.record.uid"] for r in received] == [e["id"] for e in events]
        assert [r.event_name for r in received] == ["credentials_created"] * 5
        wait_until(lambda: metric(url, "audit_collector_forward_lag") == 0, 20, "no lag")
        assert metric(url, "audit_collector_http_events_acknowledged_total") == 5
        assert metric(url, "audit_collector_forward_events_total") == 5
        assert metric(url, "audit_collector_store_written_total") == 5
    stats = orjson.loads((root / "data" / "ingest-stats.json").read_bytes())
    assert stats["forwarder"]["checkpoint_seq"] == 5
    assert stats["http"]["events_written"] == 5


def test_a_record_the_receiver_always_refuses_is_skipped_when_told_and_stays_skipped(
        root: Path) -> None:
    """forward_on_refused = skip: the record refused alone is given up, said in the log
    and on /metrics, and the records after it arrive; a restart goes on after it."""
    events = [event(i) for i in range(1, 7)]
    with OTLPReceiver() as receiver:
        receiver.poison, receiver.poison_reason = {3}, "cannot decode log record"
        with collector(root, receiver, "--forward-on-refused", "skip") as first:
            url = api_url(first)
            assert send(url, events[:5]).status_code == 200
            receiver.wait_for(4)
            wait_until(lambda: metric(url, "audit_collector_forward_skipped_refused_total")
                       == 1, 20, "the skip counted")
        said = "".join(first.output)
        assert f"at seq 3 (event {events[2]['id']})" in said
        assert "cannot decode log record" in said
        with collector(root, receiver, "--forward-on-refused", "skip") as second:
            assert send(api_url(second), events[5:]).status_code == 200
            receiver.wait_for(5)
    assert receiver.seqs() == [1, 2, 4, 5, 6]  # none twice, and 3 never


def forwarded_through_four(root: Path, receiver: OTLPReceiver, serving: CollectorProcess) -> None:
    """Events 1-4 sent to the collector ``serving``, at the receiver, and checkpointed."""
    send(api_url(serving), [event(i) for i in range(1, 5)])
    receiver.wait_for(4)
    wait_until(lambda: orjson.loads((root / "data" / CHECKPOINT_FILE).read_bytes())[
        "seq"] == 4, 20, "checkpoint at 4")


def test_after_kill_9_the_forwarder_resumes_from_its_checkpoint(root: Path) -> None:
    with OTLPReceiver() as receiver:
        first = collector(root, receiver).start()
        try:
            forwarded_through_four(root, receiver, first)
        finally:
            first.kill()
        receiver.stop()  # and the receiver is down while the collector comes back
        second = collector(root, receiver).start()
        try:
            assert send(api_url(second), [event(i) for i in range(5, 8)]).status_code == 200
            receiver.start()
            receiver.wait_for(7)
        finally:
            second.stop()
    seqs = receiver.seqs()
    assert sorted(set(seqs)) == list(range(1, 8))
    assert seqs == sorted(seqs)
    assert seqs[:4] == [1, 2, 3, 4] and len(seqs) == 7  # nothing before the checkpoint again


def test_a_kill_9_between_the_receivers_200_and_the_checkpoint_resends_that_batch_only(
        root: Path) -> None:
    """At least once, as documented: the records of the batch the receiver kept but
    whose answer the collector never read come again (same log.record.uid, so a receiver
    can drop them); none is missing, and nothing before that batch comes twice."""
    import threading

    with OTLPReceiver() as receiver:
        first = collector(root, receiver).start()
        try:
            forwarded_through_four(root, receiver, first)
            receiver.answer_held = threading.Event()
            send(api_url(first), [event(i) for i in range(5, 7)])
            assert receiver.holding.wait(20), "the batch of seq 5-6 not sent"
        finally:
            first.kill()  # the records are at the receiver, the 200 not read
            if receiver.answer_held is not None:
                receiver.answer_held.set()
        receiver.answer_held = None
        second = collector(root, receiver).start()
        try:
            send(api_url(second), [event(i) for i in range(7, 9)])
            wait_until(lambda: len(receiver.seqs()) == 10, 20, "the batch again, then 7-8")
        finally:
            second.stop()
    assert receiver.seqs() == [1, 2, 3, 4, 5, 6, 5, 6, 7, 8]
    uids = [attributes(r)["log.record.uid"] for r in receiver.log_records()]
    assert uids[4:6] == uids[6:8]  # the same event ids: a receiver can drop the second


def test_metrics_can_require_a_readers_token(root: Path) -> None:
    """metrics_auth = reader: counts change with each read of the logs, which is
    activity; the scraper then needs a reader's token (a non-root one will do)."""
    from tests.api.served import add_reader, serving

    with serving(root / "data", "--metrics-auth", "reader") as (_, url):
        scraper = add_reader(root / "data", "prometheus", root=False)
        refused = httpx.get(f"{url}/metrics", timeout=10)
        assert refused.status_code == 401
        assert "Bearer" in refused.headers["www-authenticate"]
        assert "audit_collector" not in refused.text
        wrong = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer nope"},
                          timeout=10)
        assert wrong.status_code == 401
        scraped = httpx.get(f"{url}/metrics", timeout=10,
                            headers={"Authorization": f"Bearer {scraper}"})
        assert scraped.status_code == 200
        assert "audit_collector_store_written_total" in scraped.text


def test_metrics_auth_takes_none_or_reader() -> None:
    from collector.config import ConfigError, load

    assert load(None, {}).metrics_auth == "none"
    assert load(None, {"AUDIT_METRICS_AUTH": "reader"}).metrics_auth == "reader"
    with pytest.raises(ConfigError, match="metrics_auth"):
        load(None, {"AUDIT_METRICS_AUTH": "root"})


def test_a_credential_in_the_endpoints_query_string_is_never_shown(root: Path) -> None:
    """Some OTLP receivers take their key in the URL (``?api_key=...``). The userinfo form
    is refused, but a query's key was printed in the start-up summary, the forwarding
    line, every export failure, ``ingest-stats.json`` and the checkpoint file. Each shows
    the names only (``?api_key=***``); the receiver still gets the key."""
    secret = "k3y-0f-the-0tlp-rece1ver"
    with OTLPReceiver() as receiver:
        receiver.refuse_next(1, 400)  # a failure (not retried by the exporter), logged
        endpoint = f"{receiver.endpoint}?api_key={secret}&tenant=t1"
        process = CollectorProcess(root / "data", "--api-listen", "127.0.0.1:0",
                                   "--forward-endpoint", endpoint,
                                   "--forward-backoff-max", "0.2",
                                   env={"AUDIT_TOKEN": TOKEN, "AUDIT_CONFIG": ""})
        with process:
            assert send(api_url(process), [event(1)]).status_code == 200
            receiver.wait_for(1)
            wait_until(lambda: orjson.loads((root / "data" / CHECKPOINT_FILE).read_bytes())[
                "seq"] == 1, 20, "checkpoint at 1")
        assert receiver.queries == [f"api_key={secret}&tenant=t1"]
    output = "".join(process.output)
    assert "export to " in output and "failed" in output  # the failure was logged
    assert f"forward_endpoint    = {receiver.endpoint}?api_key=***&tenant=***" in output
    assert f"forwarding stored events to {receiver.endpoint}?api_key=***&tenant=***" in output
    for path in (root / "data" / "ingest-stats.json", root / "data" / CHECKPOINT_FILE):
        assert secret not in path.read_text(), path
    assert secret not in output, output
