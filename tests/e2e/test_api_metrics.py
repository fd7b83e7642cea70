"""The query API's connection protection and the ingest server's refusals, seen where an
operator watches the collector: ``GET /metrics`` of ``audit-collector serve`` as a real
process. Before, none of these figures were published: a connection flood, or clients
failing TLS for want of the CA, showed only in the log."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
from contextlib import ExitStack
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from audit_middleware.wire import FrameType, encode_batch, encode_batch_body
from tests.api.served import add_reader, serving
from tests.certificates import self_signed_certificate
from tests.e2e.harness import (
    RawClient,
    closed_by_peer,
    host_and_port,
    lower_file_limit,
    wait_until,
    wire_line,
)
from tests.otel.test_metrics import parse_prometheus

pytestmark = pytest.mark.e2e
_SAMPLE = re.compile(r"^([a-z_]+) (\S+)$", re.MULTILINE)


def scrape(url: str, cert: Path | None = None) -> dict[str, float]:
    verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=str(cert))
                                     if cert is not None else True)
    reply = httpx.get(f"{url}/metrics", verify=verify, timeout=10)
    assert reply.status_code == 200, reply.text
    return {name: float(value) for name, value in _SAMPLE.findall(reply.text)}


def test_failed_tls_handshakes_probes_and_evictions_on_the_api_port_are_counted(
        root: Path) -> None:
    cert, key = self_signed_certificate(root)
    with serving(root / "data", "--api-tls-cert", str(cert), "--api-tls-key", str(key)
                 ) as (collector, url), ExitStack() as stack:
        first = scrape(url, cert)
        assert first["audit_collector_api_tls_handshake_failures_total"] == 0
        assert first["audit_collector_api_tls_probes_total"] == 0
        assert first["audit_collector_api_tls_handshakes_evicted_total"] == 0
        assert first["audit_collector_api_accept_errors_total"] == 0
        assert first["audit_collector_api_internal_errors_total"] == 0
        assert first["audit_collector_api_connections_closed_by_guard_total"] == 0
        assert first["audit_collector_api_connections_open"] >= 1  # the scrape's own
        assert first["audit_collector_api_connections_limit"] >= 16
        # A client that does not trust the certificate (the wrong CA): its handshake fails.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/metrics", timeout=10)
        wait_until(lambda: scrape(url, cert)[
            "audit_collector_api_tls_handshake_failures_total"] == 1, 10,
            "the failed handshake counted")
        # A port probe: connect, close.
        socket.create_connection(host_and_port(url)).close()
        wait_until(lambda: scrape(url, cert)["audit_collector_api_tls_probes_total"] == 1,
                   10, "the probe counted")
        # A connection that never starts its handshake is one under way.
        silent = stack.enter_context(socket.create_connection(host_and_port(url)))
        wait_until(lambda: scrape(url, cert)["audit_collector_api_tls_handshakes_pending"]
                   >= 1, 10, "the unfinished handshake shown")
        silent.close()
        # A flood of them above the limit: the oldest are evicted. The API's connection
        # limit is a quarter of the process's file limit (read at each check): 128
        # files make it 32.
        lower_file_limit(collector, 128)
        wait_until(lambda: scrape(url, cert)["audit_collector_api_connections_limit"] == 32,
                   10, "the lowered limit shown")
        flood = [stack.enter_context(socket.create_connection(host_and_port(url)))
                 for _ in range(50)]
        wait_until(lambda: sum(map(closed_by_peer, flood)) >= 18, 20, "the oldest evicted")
        after = scrape(url, cert)
        # At least 50 - 32 were closed unfinished to make room; such a handshake is
        # logged and counted as failed too (besides the wrong CA's).
        assert after["audit_collector_api_tls_handshakes_evicted_total"] >= 18
        assert after["audit_collector_api_tls_handshake_failures_total"] >= 2
        assert after["audit_collector_api_tls_handshakes_pending"] <= 32


def test_connections_closed_by_the_guard_on_a_plain_http_api_are_counted(
        root: Path) -> None:
    with serving(root / "data") as (collector, url), ExitStack() as stack:
        first = scrape(url)
        assert first["audit_collector_api_connections_closed_by_guard_total"] == 0
        assert first["audit_collector_api_connections_open"] == 1  # the scrape's own
        # No TLS on this port: no TLS figures rather than zeros that look like health.
        assert not [name for name in first if name.startswith("audit_collector_api_tls")]
        lower_file_limit(collector, 128)  # a connection limit of 32
        wait_until(lambda: scrape(url)["audit_collector_api_connections_limit"] == 32, 10,
                   "the lowered limit shown")
        held = [stack.enter_context(socket.create_connection(host_and_port(url)))
                for _ in range(40)]
        wait_until(lambda: sum(map(closed_by_peer, held)) >= 8, 20, "the guard closed the excess")
        wait_until(lambda: scrape(url)["audit_collector_api_connections_closed_by_guard_total"]
                   == sum(map(closed_by_peer, held)), 20, "each close counted")
        wait_until(lambda: scrape(url)["audit_collector_api_connections_open"]
                   == 1 + sum(not closed_by_peer(s) for s in held), 20,
                   "the open connections shown")
        closed = scrape(url)["audit_collector_api_connections_closed_by_guard_total"]
    # `audit-collector stats` reads the same figures from the live stats file (written
    # last at the stop, after the API's).
    api = orjson.loads((root / "data" / "ingest-stats.json").read_bytes())["api"]
    assert api["closed_by_guard"] >= closed >= 8
    assert api["max_connections"] == 32
    assert "tls_probes" not in api


def test_ingest_refusals_are_published(root: Path) -> None:
    with serving(root / "data") as (collector, url):
        first = scrape(url)
        assert first["audit_collector_ingest_errors_unexpected_frame_total"] == 0
        # Not a fixed 256: a quarter of the file limit, as the API's, read as it changes.
        assert (first["audit_collector_ingest_connections_limit"]
                == first["audit_collector_api_connections_limit"])
        lower_file_limit(collector, 128)
        wait_until(lambda: scrape(url)["audit_collector_ingest_connections_limit"] == 32, 10,
                   "ingest's limit lowered with the file limit")
        assert not [name for name in first if name.startswith("audit_collector_ingest_tls")]
        client = RawClient(collector.socket)
        try:  # a batch before the hello
            client.send(encode_batch(1, encode_batch_body("test:1:ab", [1], [wire_line(1)])))
            assert client.error().code == "unexpected_frame"
        finally:
            client.close()
        wait_until(lambda: scrape(url)["audit_collector_ingest_errors_unexpected_frame_total"]
                   == 1, 10, "the protocol error counted")


def test_failed_tls_handshakes_on_the_ingest_port_are_published(root: Path) -> None:
    cert, key = self_signed_certificate(root)
    with serving(root / "data", "--tcp", "127.0.0.1:0", "--token", "s3cret",
                 "--tls-cert", str(cert), "--tls-key", str(key)) as (collector, url):
        match = re.search(r"tls:127\.0\.0\.1:(\d+)", collector.ready_line)
        assert match, collector.ready_line
        port = int(match[1])
        first = scrape(url)
        assert first["audit_collector_ingest_tls_handshake_failures_total"] == 0
        assert first["audit_collector_ingest_tls_probes_total"] == 0
        assert first["audit_collector_ingest_tls_handshakes_pending"] == 0
        # A shipper without the CA: its handshake fails.
        with socket.create_connection(("127.0.0.1", port)) as raw, pytest.raises(
                ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")
        wait_until(lambda: scrape(url)["audit_collector_ingest_tls_handshake_failures_total"]
                   == 1, 10, "the failed handshake counted")
        socket.create_connection(("127.0.0.1", port)).close()
        wait_until(lambda: scrape(url)["audit_collector_ingest_tls_probes_total"] == 1, 10,
                   "the probe counted")
        with socket.create_connection(("127.0.0.1", port)):
            wait_until(lambda: scrape(url)["audit_collector_ingest_tls_handshakes_pending"]
                       == 1, 10, "the unfinished handshake shown")


def test_a_scrape_after_hostile_senders_parses_and_its_losses_are_the_apis_and_stats(
        root: Path) -> None:
    """What senders choose (sources, types) never reaches /metrics as text: no labels,
    so nothing to escape and no series per source. Read by Prometheus's own parser after
    hostile senders, the scrape parses whole, and its loss figures are the ones the
    API's loss list and `audit-collector stats` give."""
    with serving(root / "data", "--token", "s3cret") as (collector, url):
        client = RawClient(collector.socket)
        try:  # numbers 3-4 never arrive (a gap), 6-10 were given out (a tail)
            client.hello()
            client.send(encode_batch(1, encode_batch_body(
                "app:1:x", [1, 2, 5], [wire_line(n) for n in (1, 2, 5)], numbered=10)))
            assert client.frame() is not None
            client.send(encode_batch(2, encode_batch_body('evil"\\\n{a="b"} 1', [6],
                                                          [wire_line(6)])))
            assert client.error().code == "bad_batch"
        finally:
            client.close()
        ingest = f"{url}/api/v1/events"
        for source in ('a"b', "a\\b", "x{y=\"z\"}", "audit-collector-api"):
            reply = httpx.post(ingest, content=b'{"type": "x\\n\\"y"}\n', timeout=10,
                               headers={"Authorization": "Bearer s3cret",
                                        "X-Audit-Source": source})
            assert reply.json()["error"] == "bad_source"
        hostile_type = httpx.post(ingest, content=b'{"type": "x\\n# TYPE y gauge\\ny 1"}\n',
                                  headers={"Authorization": "Bearer s3cret"}, timeout=10)
        assert hostile_type.status_code == 422
        reply = httpx.get(f"{url}/metrics", timeout=10)
        assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        families = {f.name: f for f in text_string_to_metric_families(reply.text)}
        found = parse_prometheus(reply.text)  # HELP, TYPE, one sample: line by line
        assert {name.removesuffix("_total") for name in found} == set(families)
        assert found["audit_collector_http_bad_requests_total"] == ("counter", 4)
        assert found["audit_collector_http_events_rejected_total"] == ("counter", 1)
        assert found["audit_collector_ingest_errors_bad_batch_total"] == ("counter", 1)
        # The signer's figures too: a start checkpoint is signed at once, nothing failed.
        assert found["audit_collector_integrity_digests_written_total"][1] >= 1
        assert found["audit_collector_integrity_digest_write_failures_total"] == ("counter", 0)
        assert found["audit_collector_integrity_pending_digests"] == ("gauge", 0)
        assert found["audit_collector_integrity_unsigned_records"][0] == "gauge"
        # The store's figures that were in `stats` only: app:1:x is the one source.
        assert found["audit_collector_store_sources_known"] == ("gauge", 1)
        assert found["audit_collector_store_sources_forgotten_total"] == ("counter", 0)
        assert found["audit_collector_store_rejected_total"] == ("counter", 0)
        assert found["audit_collector_store_quarantined_size_bytes"] == ("gauge", 0)
        token = add_reader(root / "data", "root", root=True)
        losses = httpx.get(f"{url}/api/v1/sources/losses", timeout=10,
                           headers={"Authorization": f"Bearer {token}"}).json()
    [lost] = losses["sources"]
    assert (lost["source"], lost["gap_events"], lost["unreceived_tail_events"]) == (
        "app:1:x", 2, 5)
    live = orjson.loads((root / "data" / "ingest-stats.json").read_bytes())["store"]
    for key in ("gap_events", "unreceived_tail_events", "unacknowledged_gap_events",
                "unacknowledged_tail_events"):
        assert found[f"audit_collector_store_sources_{key}"] == ("gauge", live[key])
    for key in ("unacknowledged_gap_events", "unacknowledged_tail_events"):
        assert losses[key] == live[key]


def test_the_stores_size_and_its_disks_free_space_are_served_as_gauges(root: Path) -> None:
    """What an operator alerts on before the retention_bytes cap or a full disk, scraped
    from a served collector and read by Prometheus's own parser: before, the segments'
    count and bytes were in `audit-collector stats` only, and the index's size and the
    disk's free space nowhere (watched with `du` and `df`)."""
    with serving(root / "data", "--max-segment-bytes", "1024") as (collector, url):
        client = RawClient(collector.socket)
        try:  # several batches over 1 KiB each: each commit rotates, sealed segments
            client.hello()
            for batch_id in range(1, 4):
                seqs = list(range(batch_id * 10, batch_id * 10 + 5))
                assert client.batch(batch_id, [wire_line(n) for n in seqs], seqs)[0] \
                    is FrameType.RESULT
        finally:
            client.close()
        live_stats = root / "data" / "ingest-stats.json"

        def settled() -> bool:  # the live stats file (rewritten every 5 s) says the same
            try:
                live = orjson.loads(live_stats.read_bytes())["store"]
            except FileNotFoundError:
                return False
            return bool(live["written"] == 15 and live["segments"] == size_figures(url))

        wait_until(settled, 30, "the stats file's segments figures scraped the same")
        reply = httpx.get(f"{url}/metrics", timeout=10)
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    values = {name: (family.type, family.samples[0].value)
              for name, family in families.items()}
    segments = orjson.loads(live_stats.read_bytes())["store"]["segments"]
    assert segments["sealed"] >= 2
    assert values["audit_collector_store_segments"] == ("gauge", segments["count"])
    assert values["audit_collector_store_segments_sealed"] == ("gauge", segments["sealed"])
    assert values["audit_collector_store_segments_compressed"] == ("gauge", 0)
    assert values["audit_collector_store_segments_size_bytes"] == ("gauge", segments["bytes"])
    assert segments["bytes"] > 15 * len(wire_line(1))
    assert values["audit_collector_store_index_size_bytes"][0] == "gauge"
    assert values["audit_collector_store_index_size_bytes"][1] > 0
    kind, free = values["audit_collector_store_disk_free_bytes"]
    assert kind == "gauge" and 0 < free <= shutil.disk_usage(root).total


def size_figures(url: str) -> dict[str, float]:
    """The scrape's segments figures, keyed as `stats`' ``segments``."""
    found = scrape(url)
    return {"count": found["audit_collector_store_segments"],
            "bytes": found["audit_collector_store_segments_size_bytes"],
            "sealed": found["audit_collector_store_segments_sealed"],
            "compressed": found["audit_collector_store_segments_compressed"]}
