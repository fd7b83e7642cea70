"""Collector and shipper counters as OpenTelemetry metrics (SDK in-memory reader) and as
the Prometheus text format of GET /metrics."""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from starlette.applications import Starlette
from starlette.testclient import TestClient

import audit_middleware as audit
from audit_middleware.otel import SHIPPER_METRICS, register_metrics
from audit_middleware.testing import reset_configuration
from audit_middleware.wire import ErrorCode
from collector.ingest import REFUSALS
from collector.metrics import METRICS, PROMETHEUS_CONTENT_TYPE, Metric, Metrics, routes
from collector.storage.errors import StorageError
from collector.store import StorageSettings, Store
from tests.collector.storage_helpers import event
from tests.doc_tables import ROOT, table_rows

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*) (-?[0-9.e+-]+|NaN|[+-]Inf)")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(StorageSettings(data_dir=tmp_path / "data")) as opened:
        yield opened


def parse_prometheus(text: str) -> dict[str, tuple[str, float]]:
    """name -> (type, value); asserts the exposition format line by line."""
    assert text.endswith("\n")
    found: dict[str, tuple[str, float]] = {}
    lines = text.splitlines()
    assert len(lines) % 3 == 0
    for help_line, type_line, sample in zip(lines[::3], lines[1::3], lines[2::3], strict=True):
        name = help_line.split(" ")[2]
        assert help_line.startswith(f"# HELP {name} ") and len(help_line) > len(name) + 8
        kind = type_line.removeprefix(f"# TYPE {name} ")
        assert kind in ("counter", "gauge")
        match = _SAMPLE.fullmatch(sample)
        assert match and match[1] == name, sample
        if kind == "counter":
            assert name.endswith("_total")
        found[name] = (kind, float(match[2]))
    return found


def test_the_store_counters_are_prometheus_metrics(store: Store) -> None:
    store.write([event(1), event(2)])
    metrics = Metrics()
    metrics.add("store", store.stats)
    found = parse_prometheus(metrics.prometheus())
    assert found["audit_collector_store_written_total"] == ("counter", 2)
    assert found["audit_collector_store_events"] == ("gauge", 2)
    assert found["audit_collector_store_fsyncs_total"][1] >= 1
    assert found["audit_collector_store_queue_depth"] == ("gauge", 0)
    assert found["audit_collector_store_sources_gap_events"] == ("gauge", 0)
    assert found["audit_collector_store_sources_unreceived_tail_events"] == ("gauge", 0)
    assert "audit_collector_forward_lag" not in found  # no forwarder registered


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_every_figure_of_the_store_stats_is_published(store: Store) -> None:
    """Before, the refused submissions, the quarantine's size and the sources known and
    forgotten were in ``stats`` only, and the store's size (its ``segments`` figures)
    too: a scrape could not alert on them (a store near its retention_bytes cap was
    watched with ``du``). The figures nested in ``segments`` count, by dotted key."""
    published = {m.key for m in METRICS if m.source == "store"}
    stats = store.stats()
    figures = {key for key, value in stats.items() if _numeric(value)}
    figures |= {f"segments.{key}" for key, value in stats["segments"].items()
                if _numeric(value)}
    assert {"segments.count", "segments.bytes"} <= figures
    # How many sources the stats' own listing leaves out: about the listing, not the store.
    assert sorted(figures - published - {"sources_omitted"}) == []


def test_the_stores_size_and_its_disks_free_space_are_prometheus_gauges(
        tmp_path: Path) -> None:
    """The segment count, their bytes (what retention_bytes caps, with the active one),
    the sealed and compressed ones, the index's bytes and the data disk's free bytes: an
    operator alerts on a store near its cap or a disk filling from ``/metrics``."""
    from tests.collector.storage_helpers import events, open_store, wait_until

    with open_store(tmp_path / "data", max_segment_bytes=4096,
                    compress_sealed=True) as opened:
        for _ in range(4):
            opened.write(events(10))
        # Compressed in the background: settled, the figures hold still for the scrape.
        wait_until(lambda: 1 <= opened.stats()["segments"]["compressed"]
                   == opened.stats()["segments"]["sealed"])
        metrics = Metrics()
        metrics.add("store", opened.stats)
        found = parse_prometheus(metrics.prometheus())
        stats = opened.stats()
    segments = stats["segments"]
    assert segments["sealed"] >= 1
    assert found["audit_collector_store_segments"] == ("gauge", segments["count"])
    assert found["audit_collector_store_segments_size_bytes"] == ("gauge", segments["bytes"])
    assert found["audit_collector_store_segments_sealed"] == ("gauge", segments["sealed"])
    assert found["audit_collector_store_segments_compressed"] == (
        "gauge", segments["compressed"])
    assert found["audit_collector_store_index_size_bytes"][0] == "gauge"
    assert found["audit_collector_store_index_size_bytes"][1] > 0
    kind, free = found["audit_collector_store_disk_free_bytes"]
    assert kind == "gauge" and 0 < free <= shutil.disk_usage(tmp_path).total


def test_a_free_space_the_file_system_does_not_tell_is_left_out(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A statvfs that fails (an I/O error, a file system gone) read as 0 free bytes: the
    scrape said the disk was full, the same figure as a disk that is, and an alert on
    it paged for a full disk that had room. Left out now, as any figure not known
    (``absent()`` alerts on it), and null in ``stats``."""
    data_dir = store.settings.data_dir
    statvfs = os.statvfs

    def failing(path: Any) -> os.statvfs_result:
        if Path(path) == data_dir:
            raise OSError(errno.EIO, "injected")
        return statvfs(path)

    monkeypatch.setattr(os, "statvfs", failing)
    assert store.stats()["disk_free_bytes"] is None
    metrics = Metrics()
    metrics.add("store", store.stats)
    found = parse_prometheus(metrics.prometheus())
    assert "audit_collector_store_disk_free_bytes" not in found
    assert "audit_collector_store_index_size_bytes" in found  # the rest as ever


def test_a_nested_figure_a_source_does_not_report_is_left_out() -> None:
    metrics = Metrics()
    metrics.add("store", lambda: {"segments": "not a dict", "events": 3})
    found = parse_prometheus(metrics.prometheus())
    assert found["audit_collector_store_events"] == ("gauge", 3)
    assert not [name for name in found if "segments" in name]


def test_the_stores_refusals_quarantine_and_sources_are_prometheus_metrics(
        store: Store) -> None:
    with pytest.raises(StorageError):
        store.write([{"id": "not an event"}])
    store.write([event(1)], "app:1:x", [1])
    (store.quarantine_dir / "segment-torn.jsonl").write_bytes(b"x" * 1234)
    metrics = Metrics()
    metrics.add("store", store.stats)
    found = parse_prometheus(metrics.prometheus())
    assert found["audit_collector_store_rejected_total"] == ("counter", 1)
    assert found["audit_collector_store_quarantined_size_bytes"] == ("gauge", 1234)
    assert found["audit_collector_store_sources_known"] == ("gauge", 1)
    assert found["audit_collector_store_sources_forgotten_total"] == ("counter", 0)


def test_the_signers_figures_are_metrics_and_a_failed_digest_write_is_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, they were in ``stats`` only: a signer failing on a full disk (records no
    signed digest vouches for) could not be alerted on from Prometheus."""
    from collector.integrity import digests
    from tests.collector.storage_helpers import events, open_store, wait_until

    real, failures = digests.append, [OSError(28, "No space left on device")]

    def full_once(*args: Any) -> Path:
        if failures:
            raise failures.pop()
        return real(*args)

    with open_store(tmp_path, digest_interval=0.1) as opened:
        metrics = Metrics()
        metrics.add("integrity", opened.integrity_stats)
        before = parse_prometheus(metrics.prometheus())
        assert before["audit_collector_integrity_digest_write_failures_total"] == (
            "counter", 0)
        monkeypatch.setattr(digests, "append", full_once)
        opened.write(events(2))
        wait_until(lambda: not failures and opened.stats()["integrity"]["pending_digests"] == 0
                   and opened.stats()["integrity"]["unsigned_records"] == 0)
        metrics = Metrics()  # a fresh snapshot (one is reused for a second)
        metrics.add("integrity", opened.integrity_stats)
        after = parse_prometheus(metrics.prometheus())
    assert after["audit_collector_integrity_digest_write_failures_total"] == ("counter", 1)
    assert after["audit_collector_integrity_digests_written_total"][1] > \
        before["audit_collector_integrity_digests_written_total"][1]
    assert after["audit_collector_integrity_pending_digests"] == ("gauge", 0)
    assert after["audit_collector_integrity_unsigned_records"] == ("gauge", 0)


def test_no_signer_figures_for_a_store_without_a_hash_chain(tmp_path: Path) -> None:
    with Store(StorageSettings(data_dir=tmp_path / "data", chain=False)) as opened:
        metrics = Metrics()
        metrics.add("integrity", opened.integrity_stats)
        metrics.add("store", opened.stats)
        values = metrics.snapshot()
    assert any(metric.source == "store" for metric in values)
    assert not any(metric.source == "integrity" for metric in values)


def test_every_metric_has_a_distinct_valid_prometheus_name() -> None:
    names = [m.prometheus_name for m in METRICS]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", n) for n in names)
    lag = next(m for m in METRICS if m.key == "lag_seconds")
    assert lag.prometheus_name == "audit_collector_forward_lag_age_seconds"
    # UCUM "1" is a ratio: OpenTelemetry's Prometheus exporter names such a metric
    # ..._ratio. None of ours is one (the forwarder's checkpoint was, by mistake).
    assert [m.name for m in METRICS if m.unit == "1"] == []


def test_forward_lag_and_ingest_counters_appear_when_registered() -> None:
    metrics = Metrics()
    metrics.add("forwarder", lambda: {"lag_events": 12, "lag_seconds": 3.5, "forwarded": 40,
                                      "failures": 2, "skipped_refused": 1,
                                      "state": "retrying"})
    metrics.add("ingest", lambda: {"events_received": 7, "connections_open": 1})
    found = parse_prometheus(metrics.prometheus())
    assert found["audit_collector_forward_lag"] == ("gauge", 12)
    assert found["audit_collector_forward_lag_age_seconds"] == ("gauge", 3.5)
    assert found["audit_collector_forward_events_total"] == ("counter", 40)
    assert found["audit_collector_forward_skipped_refused_total"] == ("counter", 1)
    assert found["audit_collector_ingest_events_received_total"] == ("counter", 7)


def test_a_failing_source_is_left_out_not_fatal() -> None:
    metrics = Metrics()
    metrics.add("store", lambda: 1 / 0)  # type: ignore[arg-type, return-value]
    metrics.add("ingest", lambda: {"batches": 3})
    found = parse_prometheus(metrics.prometheus())
    assert not [name for name in found if "_store_" in name]
    assert found["audit_collector_ingest_batches_total"] == ("counter", 3)


def test_a_counter_of_a_reporting_source_starts_at_zero() -> None:
    """Counters kept in a collections.Counter exist from their first increment: the
    rejected and storage-error counters were missing from /metrics until something was
    rejected, so an alert on them could not fire on the first one (a docs review)."""
    metrics = Metrics()
    metrics.add("ingest", lambda: {"connections": 1})
    found = parse_prometheus(metrics.prometheus())
    assert found["audit_collector_ingest_events_rejected_total"] == ("counter", 0)
    assert found["audit_collector_ingest_connections_total"] == ("counter", 1)
    assert "audit_collector_ingest_connections_open" not in found  # a gauge: not invented
    assert not [name for name in found if "_forward_" in name]  # not registered: absent


def test_get_metrics_serves_the_text_format(store: Store) -> None:
    app = Starlette(routes=routes())
    app.state.metrics = Metrics()
    app.state.metrics.add("store", store.stats)
    reply = TestClient(app).get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == PROMETHEUS_CONTENT_TYPE
    assert "audit_collector_store_written_total 0" in reply.text


def otel_values(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    return {m.name: m.data.data_points[0].value
            for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


def test_the_collector_counters_are_opentelemetry_metrics(store: Store) -> None:
    store.write([event(1)])
    reader = InMemoryMetricReader()
    metrics = Metrics()
    metrics.add("store", store.stats)
    metrics.register_otel(MeterProvider(metric_readers=[reader]))
    values = otel_values(reader)
    assert values["audit.collector.store.written"] == 1
    assert values["audit.collector.store.events"] == 1


def test_the_shipper_counters_are_opentelemetry_metrics() -> None:
    reader = InMemoryMetricReader()
    audit.configure(sink=audit.MemorySink())
    try:
        register_metrics(MeterProvider(metric_readers=[reader]))
        audit.emit("run_dropped", "run-1")
        audit.emit("run_dropped", "run-2")
        values = otel_values(reader)
    finally:
        reset_configuration()
    assert values["audit.shipper.events.emitted"] == 2
    assert values["audit.shipper.events.acknowledged"] == 2
    assert values["audit.shipper.events.dropped"] == 0
    assert "audit.shipper.spool.size" not in values  # a MemorySink keeps no spool
    assert {name for name, *_ in SHIPPER_METRICS} >= set(values)


def _counted_keys(module: Path) -> set[str]:
    """The keys a module increments in its ``counters`` (``counters["key"] += ...``)."""
    return set(re.findall(r'counters\["(\w+)"\] \+=', module.read_text()))


def test_every_counter_of_ingest_and_of_the_api_connections_is_published() -> None:
    """Before, the ingest server's refusals (connections refused and evicted, TLS
    failures and probes, protocol errors by code) and all of the query API's connection
    protection (the guard's closes, the TLS listener's counters) were counted but not
    published: a connection flood or clients without the CA showed only in the log."""
    collector = Path(__file__).resolve().parents[2] / "collector"
    rows = {(m.source, m.key): m for m in METRICS}
    # The ingest server's module and those of the parts it inherits (ingest_*.py).
    ingest: set[str] = set()
    for path in collector.glob("ingest*.py"):
        ingest |= _counted_keys(path)
    ingest -= {"unauthorized"}  # == errors.unauthorized
    accepting = _counted_keys(collector / "accepting.py")  # every port's accept loop
    ingest |= accepting
    ingest |= {f"error_{code}" for code in ErrorCode if code != ErrorCode.STORAGE_UNAVAILABLE}
    ingest |= {f"connections_refused_{code}" for code in REFUSALS}  # counted by reason
    tls = {"tls_probes", "tls_handshake_failures", "tls_handshakes_evicted"}
    wanted = {("ingest_tls" if key in tls else "ingest", key) for key in ingest}
    # The API's own accept loop (plain HTTP) and the TLS listener's count the same keys
    # where they share them (the accept loop's): published whether or not it has TLS.
    # The API server's module and those of the parts it inherits (server_*.py).
    api = set(accepting)
    for path in (collector / "api").glob("server*.py"):
        api |= _counted_keys(path)
    assert "connections_refused" in api  # the connection limit's own (server_limit.py)
    wanted |= {("api", key) for key in api}
    wanted |= {("api_tls", key) for key in _counted_keys(collector / "api" / "tls.py") - api}
    wanted.add(("api", "closed_by_guard"))
    # HTTP ingest's too: its refusals (bad requests, too large, storage errors) were not.
    wanted |= {("http", key) for key in _counted_keys(collector / "http_ingest.py")}
    assert len(wanted) > 20  # the scan found the counters
    assert sorted(wanted - set(rows)) == []
    assert all(rows[key].kind == "counter" for key in wanted)
    # What is open now, and the limit in force, are gauges.
    for key in [("api", "connections_open"), ("api", "max_connections"),
                ("api_tls", "tls_handshakes_pending"), ("ingest", "max_connections"),
                ("ingest_tls", "tls_handshakes_pending")]:
        assert rows[key].kind == "gauge" and rows[key].unit == "{connection}", key


def test_the_api_connection_figures_are_prometheus_and_opentelemetry_metrics() -> None:
    api = {"connections_open": 3, "max_connections": 32, "closed_by_guard": 5}
    tls = {"tls_handshake_failures": 2, "tls_handshakes_pending": 4}
    metrics = Metrics()
    metrics.add("api", lambda: api)
    found = parse_prometheus(metrics.prometheus())
    assert found["audit_collector_api_connections_open"] == ("gauge", 3)
    assert found["audit_collector_api_connections_limit"] == ("gauge", 32)
    assert found["audit_collector_api_connections_closed_by_guard_total"] == ("counter", 5)
    assert not [name for name in found if "_api_tls_" in name]  # no TLS: absent, not 0
    metrics.add("api_tls", lambda: tls)
    found = parse_prometheus(metrics.prometheus())
    assert found["audit_collector_api_tls_handshake_failures_total"] == ("counter", 2)
    assert found["audit_collector_api_tls_handshakes_pending"] == ("gauge", 4)
    assert found["audit_collector_api_tls_probes_total"] == ("counter", 0)
    assert found["audit_collector_api_accept_errors_total"] == ("counter", 0)
    reader = InMemoryMetricReader()
    metrics.register_otel(MeterProvider(metric_readers=[reader]))
    values = otel_values(reader)
    assert values["audit.collector.api.connections.closed_by_guard"] == 5
    assert values["audit.collector.api.tls.handshake_failures"] == 2
    assert values["audit.collector.api.tls.handshakes.pending"] == 4


def test_the_api_page_lists_every_query_api_metric_with_its_type_and_stats_key() -> None:
    """docs/api.md's table of the query API's connection metrics is the list an
    operator alerts from: every one of them, named, typed and keyed as served."""
    assert documented_metrics("docs/api.md", "### Connections") == served_metrics(
        lambda m: m.source in ("api", "api_tls"))


def test_every_query_refusal_and_export_cut_reason_is_published() -> None:
    """The query API's 503s (every thread busy, threads held by a hung disk, the time
    limit) and the exports they cut were log lines only: an operator could not alert on
    a hung data disk or on panel users refused. Every reason the code counts by has its
    counter, read from the API's own stats (``Api.stats``); so has every other reason
    the API answers 503 for (the index, the readers file, a slow disk: ``unavailable``),
    once log lines only too."""
    from collector.api import unavailable
    from collector.api.export_cuts import CUT_REASONS
    from collector.api.queries import REFUSALS

    rows = {m.key: m for m in METRICS if m.source == "api_queries"}
    wanted = {"queries_refused", "exports_cut"}
    wanted |= {f"queries_refused_{reason}" for reason in REFUSALS + unavailable.REASONS}
    wanted |= {f"exports_cut_{reason}" for reason in CUT_REASONS}
    assert sorted(rows) == sorted(wanted)
    assert all(m.kind == "counter" for m in rows.values())
    metrics = Metrics()
    metrics.add("api_queries", lambda: {"queries_refused": 2, "queries_refused_hung": 2})
    found = parse_prometheus(metrics.prometheus())
    assert found["audit_collector_api_queries_refused_hung_total"] == ("counter", 2)
    assert found["audit_collector_api_queries_refused_busy_total"] == ("counter", 0)
    assert found["audit_collector_api_exports_cut_fault_total"] == ("counter", 0)
    reader = InMemoryMetricReader()
    metrics.register_otel(MeterProvider(metric_readers=[reader]))
    values = otel_values(reader)
    assert values["audit.collector.api.queries.refused.hung"] == 2
    assert values["audit.collector.api.exports.cut"] == 0


def test_the_api_page_lists_every_query_refusal_and_export_cut_metric() -> None:
    """docs/api.md's table under the 503s is the list an operator alerts from (a hung
    disk, panel users refused, downloads failing): every one, named, typed and keyed
    as served."""
    assert documented_metrics("docs/api.md", "#### Refusals in `/metrics`") == (
        served_metrics(lambda m: m.source == "api_queries"))


def test_the_metrics_page_lists_every_store_size_gauge_with_its_stats_key() -> None:
    """docs/shipping.md's table of the store's size is what an operator alerts on before
    the retention_bytes cap or a full disk: every one of those gauges, named, typed and
    keyed as served."""
    size_keys = {"index_bytes", "disk_free_bytes"}
    assert documented_metrics("docs/shipping.md", "### The store's size") == served_metrics(
        lambda m: m.key.startswith("segments.") or m.key in size_keys)


def documented_metrics(doc: str, heading: str) -> dict[str, tuple[str, str]]:
    """A doc's metrics table: {Prometheus name: (type, stats key)}."""
    return {row[0].strip("`"): (row[1], row[2].strip("`")) for row in table_rows(doc, heading)}


def served_metrics(chosen: Callable[[Metric], bool]) -> dict[str, tuple[str, str]]:
    return {m.prometheus_name: (m.kind, m.key) for m in METRICS if chosen(m)}


def test_the_protocol_page_lists_every_frame_budget_metric_with_its_stats_key() -> None:
    """docs/protocol.md's Memory bound table is where an operator learns whether the
    budget (max_inflight_bytes) holds frames back: every one of its figures, served."""
    budget_keys = {"busy", "timeouts"}  # HTTP ingest's answers when the budget is in the way
    assert documented_metrics("docs/protocol.md", "### Memory bound") == served_metrics(
        lambda m: "inflight" in m.key or (m.source == "http" and m.key in budget_keys))


#: The pages an operator reads metric names from (and copies them into alert rules).
_PAGES: Final = ["README.md", *sorted(p.relative_to(ROOT).as_posix()
                                      for p in (ROOT / "docs").glob("*.md")),
                 "examples/deploy/README.md"]
#: A metric name as written in prose; one followed by ``<`` is a family
#: (``audit_collector_ingest_errors_<code>_total``).
_NAMED = re.compile(r"audit_collector_[a-z0-9_]*(<?)")


def documented_names(page: str) -> tuple[set[str], set[str]]:
    """The exact metric names ``page`` mentions, and the prefixes of the families it
    mentions by a ``<placeholder>``."""
    text = (ROOT / page).read_text(encoding="utf-8")
    exact = {m[0] for m in _NAMED.finditer(text) if not m[1]}
    families = {m[0].removesuffix("<") for m in _NAMED.finditer(text) if m[1]}
    return exact, families


@pytest.mark.parametrize("page", _PAGES)
def test_every_metric_name_a_page_mentions_is_one_the_collector_serves(page: str) -> None:
    """An alert rule copied from the docs (docs/operations.md's tables above all) with a
    misspelt or renamed metric never fires, and nothing says so: every name a page
    gives is one /metrics serves, and every family it names has members."""
    served = {m.prometheus_name for m in METRICS}
    exact, families = documented_names(page)
    assert sorted(exact - served) == []
    assert [f for f in sorted(families) if not any(n.startswith(f) for n in served)] == []


def test_the_operations_page_names_metrics_and_app_stats_keys_that_exist() -> None:
    """docs/operations.md is where alerts are set from: its tables name metrics (checked
    above, not vacuously) and, for the app, keys of ``audit_middleware.stats()`` that the
    shipper reports (and ``register_metrics`` publishes)."""
    exact, _ = documented_names("docs/operations.md")
    assert len(exact) > 20, exact
    keys = {row[0].strip("`") for row in table_rows("docs/operations.md", "### In the app")}
    assert keys and sorted(keys - {key for _, _, key, _, _ in SHIPPER_METRICS}) == []
