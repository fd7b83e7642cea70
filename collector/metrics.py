"""The collector's counters as metrics: OpenTelemetry instruments and the Prometheus text
format of ``GET /metrics``, from one table.

Every figure already exists as a counter somewhere (the ingest server, the Store, the
HTTP ingest endpoint, the forwarder, the query API's server and TLS listener); this
module only names them. A ``Metrics`` registry holds the live objects' ``stats``
functions (``serve`` adds them); each scrape or OpenTelemetry collection calls them once
and reads the table's keys. A source that is not running (no forwarder configured, no
TLS on a port) is simply absent from the output.

    metrics = Metrics()
    metrics.add("ingest", server.stats)
    metrics.add_shared("store", SingleFlight(store.stats, "audit-store-stats"))
    metrics.add("api", api_server.stats)
    text = await metrics.scraped()                 # GET /metrics
    metrics.register_otel(meter_provider)          # OpenTelemetry metrics

The stats functions added by ``add`` read memory only, and are called wherever the
metrics are read (the event loop, for a scrape). A source whose stats read the disk (the
store's) is added by ``add_shared``: one thread at a time reads it, off the loop's
thread pool, and a scrape that waits longer than ``SHARED_WAIT`` for it answers 503.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from audit_middleware.wire import ErrorCode

from .disk_calls import DiskLate, retry_after
from .forward_reads import READ_STALL
from .frame_rate import RULE as FRAME_RATE_RULE
from .ingest import REFUSALS
from .single_flight import SingleFlight, Unanswered

log = logging.getLogger("collector.metrics")

StatsFunction = Callable[[], Mapping[str, Any]]
PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds a scrape (or an OpenTelemetry collection, or serve's stats task) waits for a
#: shared source's stats: a healthy store answers in milliseconds, and a scrape must
#: answer within Prometheus' default scrape_timeout (10 s), saying why, rather than hold
#: a connection (and the scraper's patience) for as long as a disk hangs.
SHARED_WAIT: Final = 5.0


@dataclass(frozen=True)
class Metric:
    name: str  # OpenTelemetry name; the Prometheus name derives from it
    kind: Literal["counter", "gauge"]
    source: str  # the registered stats function it reads
    key: str  # the key in that function's dict; dotted, in a dict in it ("segments.count")
    unit: str  # UCUM, as OpenTelemetry wants it: "{event}", "s", "By" ("1" is a ratio)
    help: str

    @property
    def prometheus_name(self) -> str:
        name = self.name.replace(".", "_")
        if self.unit == "s" and not name.endswith("_seconds"):
            name += "_seconds"
        elif self.unit == "By" and not name.endswith("_bytes"):
            name += "_bytes"
        return name + "_total" if self.kind == "counter" else name


def _m(name: str, kind: Literal["counter", "gauge"], source: str, key: str, unit: str,
       help: str) -> Metric:
    return Metric(name, kind, source, key, unit, help)


#: The wire errors that end a connection, each counted by the ingest server as
#: ``error_<code>``. ``storage_unavailable`` concerns one batch, which ``storage_errors``
#: counts.
_CLOSING_ERRORS: Final = tuple(code for code in ErrorCode
                               if code != ErrorCode.STORAGE_UNAVAILABLE)

#: The query API's refusals (``collector.api.queries.REFUSALS``, then
#: ``collector.api.unavailable.REASONS``), said.
_QUERY_REFUSALS: Final = {
    "busy": "Queries refused for every query thread staying busy for 10 s (overloaded, "
            "or a hung disk not yet past query_timeout)",
    "hung": "Queries refused for a query thread held in a read past query_timeout and "
            "10 s: the disk under the store does not answer (alert on this one)",
    "query_timeout": "Queries stopped past query_timeout (503 query_timeout)",
    # answered 503 for the store's or the data disk's state (collector.api.unavailable)
    "index": "Requests answered 503 for the index unable to answer (a rebuild, a repair, "
             "a damaged or out-of-date index: the log says which)",
    "segment": "Requests answered 503 for a segment that cannot be read",
    "not_recorded": "Reads and acknowledgements answered 503 for their audit record not "
                    "written (nothing was sent or made)",
    "storage": "Requests answered 503 for the store refusing (full disk, closing, another "
               "acknowledgement of losses under way)",
    "disk": "Requests answered 503 for the data disk not answering in time (the losses "
            "listing, an acknowledgement, /metrics' store figures)",
    "readers": "Requests answered 503 for a readers file that cannot be read (damaged, "
               "unreadable: credentials cannot be checked)",
    "readers_late": "Requests answered 503 for the readers file not read in time (a hung "
                    "data disk)",
}
#: Why exports are cut (``collector.api.export_cuts.CUT_REASONS``), said.
_CUTS: Final = {
    "query_timeout": "a page stopped past query_timeout",
    "hung": "a page waited for a read the disk does not answer",
    "busy": "a page found every query thread busy",
    "index": "the index could not answer",
    "segment": "a segment could not be read",
    "fault": "an unexpected error (see the log)",
}

METRICS: Final[tuple[Metric, ...]] = (
    # ingest server (unix socket / TCP)
    _m("audit.collector.ingest.connections", "counter", "ingest", "connections", "{connection}",
       "Connections accepted by the ingest server"),
    _m("audit.collector.ingest.connections.open", "gauge", "ingest", "connections_open",
       "{connection}", "Shipper connections open now"),
    _m("audit.collector.ingest.batches", "counter", "ingest", "batches", "{batch}",
       "Batches received over the wire protocol"),
    _m("audit.collector.ingest.events.received", "counter", "ingest", "events_received",
       "{event}", "Events received over the wire protocol"),
    _m("audit.collector.ingest.events.acknowledged", "counter", "ingest", "events_written",
       "{event}", "Events stored and acknowledged over the wire protocol"),
    _m("audit.collector.ingest.events.duplicate", "counter", "ingest", "events_duplicate",
       "{event}", "Events acknowledged as duplicates (already stored)"),
    _m("audit.collector.ingest.events.rejected", "counter", "ingest", "events_rejected",
       "{event}", "Events refused by validation (a reason was sent back)"),
    _m("audit.collector.ingest.storage_errors", "counter", "ingest", "storage_errors",
       "{batch}", "Batches not acknowledged because the store failed"),
    _m("audit.collector.ingest.connections.limit", "gauge", "ingest", "max_connections",
       "{connection}", "The ingest server's connection limit in force (max_connections; "
       "unless set, a quarter of the open-files limit)"),
    _m("audit.collector.ingest.connections.refused", "counter", "ingest",
       "connections_refused", "{connection}",
       "Connections refused at max_connections or while stopping (told to retry later; "
       "by reason: connections.refused.<code>)"),
    *(_m(f"audit.collector.ingest.connections.refused.{code}", "counter", "ingest",
         f"connections_refused_{code}", "{connection}",
         f"Connections refused at once with the {code} error (docs/protocol.md, "
         "Connection limits)")
      for code in REFUSALS),
    _m("audit.collector.ingest.connections.evicted", "counter", "ingest",
       "connections_evicted", "{connection}",
       "Connections closed before their hello to make room at max_connections"),
    _m("audit.collector.ingest.internal_errors", "counter", "ingest", "internal_errors",
       "{connection}", "Connections closed by an unexpected error (see the log)"),
    _m("audit.collector.ingest.accept_errors", "counter", "ingest", "accept_errors",
       "{error}", "Failed accepts on the unix socket or the TCP port (out of files, most "
       "often: the oldest unfinished TLS handshake or silent connection is closed to make "
       "room)"),
    # unauthorized: TCP clients with a missing or wrong token (the ingest stats'
    # "unauthorized" too); too_many_connections: the evicted ones
    *(_m(f"audit.collector.ingest.errors.{code}", "counter", "ingest", f"error_{code}",
         "{connection}", f"Connections closed with the {code} error (docs/protocol.md)"
         + (f"; those refused at once count in connections.refused.{code}"
            if code in REFUSALS else ""))
      for code in _CLOSING_ERRORS),
    # the frame budget (max_inflight_bytes), shared by the socket's frames and HTTP bodies
    _m("audit.collector.ingest.inflight", "gauge", "ingest", "inflight_bytes", "By",
       "Bytes of batch frames and HTTP ingest bodies being read or waiting to be stored "
       "now (at most max_inflight_bytes)"),
    _m("audit.collector.ingest.inflight.peak", "gauge", "ingest", "inflight_peak_bytes",
       "By", "The most bytes of frames and bodies held at once since start"),
    _m("audit.collector.ingest.inflight.limit", "gauge", "ingest", "max_inflight_bytes",
       "By", "The frame budget (max_inflight_bytes)"),
    _m("audit.collector.ingest.inflight.waiting", "gauge", "ingest", "inflight_waiting",
       "{frame}", "Frames and HTTP bodies waiting for room in the budget now, unread"),
    _m("audit.collector.ingest.inflight.waits", "counter", "ingest", "inflight_waits",
       "{frame}", "Frames and HTTP bodies that waited for room in the budget (their "
       "clients held back by TCP meanwhile)"),
    _m("audit.collector.ingest.inflight.wait_timeouts", "counter", "ingest",
       "inflight_wait_timeouts", "{frame}", "Frames on the socket closed with timeout "
       "after waiting read_timeout for room (sent again by the shipper; HTTP: "
       "http.busy)"),
    _m("audit.collector.ingest.inflight.too_slow", "counter", "ingest",
       "inflight_too_slow", "{frame}", "Frames on the socket closed with timeout for "
       f"arriving under the minimum rate ({FRAME_RATE_RULE}) while others waited for room "
       "in the budget (sent again by the shipper)"),
    # ingest TLS (only when the TCP listener has a certificate)
    _m("audit.collector.ingest.tls.handshakes.pending", "gauge", "ingest_tls",
       "tls_handshakes_pending", "{connection}",
       "TLS handshakes under way on the ingest port (not yet in connections.open; they "
       "count against max_connections)"),
    _m("audit.collector.ingest.tls.handshake_failures", "counter", "ingest_tls",
       "tls_handshake_failures", "{connection}",
       "Failed TLS handshakes on the ingest port (a client without the CA, plain TCP, an "
       "old TLS version, a timeout)"),
    _m("audit.collector.ingest.tls.probes", "counter", "ingest_tls", "tls_probes",
       "{connection}", "Ingest connections closed before any TLS hello (port probes, "
       "health checks)"),
    _m("audit.collector.ingest.tls.handshakes_evicted", "counter", "ingest_tls",
       "tls_handshakes_evicted", "{connection}",
       "Unfinished TLS handshakes on the ingest port closed to make room for new "
       "connections (a flood)"),
    # HTTP ingest (POST /api/v1/events)
    _m("audit.collector.http.requests", "counter", "http", "requests", "{request}",
       "POST /api/v1/events requests"),
    _m("audit.collector.http.events.acknowledged", "counter", "http", "events_written",
       "{event}", "Events stored and acknowledged over HTTP"),
    _m("audit.collector.http.events.duplicate", "counter", "http", "events_duplicate",
       "{event}", "Events acknowledged over HTTP as duplicates"),
    _m("audit.collector.http.events.rejected", "counter", "http", "events_rejected",
       "{event}", "Events refused by validation over HTTP"),
    _m("audit.collector.http.unauthorized", "counter", "http", "unauthorized", "{request}",
       "HTTP ingest requests without the right token"),
    _m("audit.collector.http.bad_requests", "counter", "http", "bad_requests", "{request}",
       "HTTP ingest requests refused whole as malformed (400 bad_source: a bad "
       "X-Audit-Source; 400 bad_body; 413 too_many_events)"),
    _m("audit.collector.http.too_large", "counter", "http", "too_large", "{request}",
       "HTTP ingest requests refused for their size (413)"),
    _m("audit.collector.http.disconnected", "counter", "http", "disconnected", "{request}",
       "HTTP ingest requests whose client went away before the body ended (nothing "
       "stored; the sender retries)"),
    _m("audit.collector.http.busy", "counter", "http", "busy", "{request}",
       "HTTP ingest requests answered 503 busy: no room in max_inflight_bytes within "
       "read_timeout (the sender retries)"),
    _m("audit.collector.http.timeouts", "counter", "http", "timeouts", "{request}",
       "HTTP ingest requests answered 503 timeout: the body did not arrive within read_timeout"),
    _m("audit.collector.http.inflight.too_slow", "counter", "http", "inflight_too_slow",
       "{request}", "HTTP ingest requests answered 503 timeout for a body arriving under "
       f"the minimum rate ({FRAME_RATE_RULE}) while others waited for room in the budget "
       "(the sender retries)"),
    _m("audit.collector.http.events.received", "counter", "http", "events_received",
       "{event}", "Events received over HTTP, before validation"),
    _m("audit.collector.http.storage_errors", "counter", "http", "storage_errors",
       "{request}", "HTTP ingest batches the store could not write (503: the app retries)"),
    # the query API and admin panel (api_listen): its connection protection
    _m("audit.collector.api.connections.open", "gauge", "api", "connections_open",
       "{connection}", "Query API connections open now (over TLS: past their handshake)"),
    _m("audit.collector.api.connections.limit", "gauge", "api", "max_connections",
       "{connection}", "The query API's connection limit in force (a quarter of the "
       "open-files limit): above it, idle connections and unfinished TLS handshakes are "
       "closed"),
    _m("audit.collector.api.connections.closed_by_guard", "counter", "api",
       "closed_by_guard", "{connection}",
       "Query API connections closed by the guard: idle or a sign-in body stalled past "
       "its deadline, or closed to keep within the limit"),
    _m("audit.collector.api.connections.refused", "counter", "api", "connections_refused",
       "{connection}", "New query API connections closed at once: at the limit, every "
       "connection had a request in progress (plain HTTP)"),
    _m("audit.collector.api.accept_errors", "counter", "api", "accept_errors", "{error}",
       "Failed accepts on the query API's port (out of files, most often: the connection "
       "nearest its deadline is closed to make room)"),
    _m("audit.collector.api.internal_errors", "counter", "api", "internal_errors",
       "{error}", "Query API connections closed by an unexpected error (see the log)"),
    # the query API's refusals (docs/api.md, "Refusals in /metrics"): each counted
    # once, whether answered 503 or (the pool's) cutting an export; and the exports cut
    _m("audit.collector.api.queries.refused", "counter", "api_queries", "queries_refused",
       "{query}", "Query API requests answered 503, and the query pool's refusals "
       "cutting an export under way (by reason: queries.refused.<reason>)"),
    *(_m(f"audit.collector.api.queries.refused.{reason}", "counter", "api_queries",
         f"queries_refused_{reason}", "{query}", help)
      for reason, help in _QUERY_REFUSALS.items()),
    _m("audit.collector.api.exports.cut", "counter", "api_queries", "exports_cut",
       "{export}", "Exports cut after their first bytes, their download failed (by "
       "reason: exports.cut.<reason>)"),
    *(_m(f"audit.collector.api.exports.cut.{reason}", "counter", "api_queries",
         f"exports_cut_{reason}", "{export}", f"Exports cut after their first bytes: {why}")
      for reason, why in _CUTS.items()),
    # the query API's TLS listener (only when api_tls_cert is set)
    _m("audit.collector.api.tls.handshakes.pending", "gauge", "api_tls",
       "tls_handshakes_pending", "{connection}",
       "TLS handshakes under way on the query API port (they count against the limit)"),
    _m("audit.collector.api.tls.handshake_failures", "counter", "api_tls",
       "tls_handshake_failures", "{connection}",
       "Failed TLS handshakes on the query API port (a client without the CA, plain HTTP, "
       "a timeout, closed to make room)"),
    _m("audit.collector.api.tls.probes", "counter", "api_tls", "tls_probes", "{connection}",
       "Query API connections closed before any TLS hello (port probes, health checks)"),
    _m("audit.collector.api.tls.handshakes_evicted", "counter", "api_tls",
       "tls_handshakes_evicted", "{connection}",
       "Unfinished TLS handshakes closed to make room for new connections (a flood)"),
    # the store
    _m("audit.collector.store.events", "gauge", "store", "events", "{event}",
       "Events stored (after retention)"),
    _m("audit.collector.store.written", "counter", "store", "written", "{event}",
       "Events written, fsynced and indexed"),
    _m("audit.collector.store.duplicates", "counter", "store", "duplicates", "{event}",
       "Events dropped by the store because their id was already stored"),
    _m("audit.collector.store.queue.depth", "gauge", "store", "pending", "{event}",
       "Events waiting for the next group commit"),
    _m("audit.collector.store.ingest_rate", "gauge", "store", "ingest_rate", "{event}/s",
       "Events written per second (recent window)"),
    _m("audit.collector.store.fsyncs", "counter", "store", "fsyncs", "{fsync}",
       "Group commits (one fsync each)"),
    _m("audit.collector.store.events_per_fsync", "gauge", "store", "events_per_fsync",
       "{event}", "Average events sharing one fsync"),
    _m("audit.collector.store.fsync.duration", "counter", "store", "fsync_seconds_total", "s",
       "Time spent in fsync (divide by fsyncs for the mean latency)"),
    _m("audit.collector.store.fsync.max_duration", "gauge", "store", "fsync_seconds_max", "s",
       "Longest fsync since start"),
    _m("audit.collector.store.commit.wait", "gauge", "store", "commit_wait_seconds", "s",
       "How long the oldest batch not yet written has waited for the commit thread (0: "
       "none waiting); past write_stall_timeout, GET /healthz says write_stalled"),
    _m("audit.collector.store.write_errors", "counter", "store", "write_errors", "{error}",
       "Failed appends or fsyncs (nothing of them acknowledged)"),
    _m("audit.collector.store.rejected", "counter", "store", "rejected", "{rejection}",
       "Submissions the store refused whole (events it cannot store, bad source numbers: "
       "none of them stored), and events it left out alone as unencodable; each sender "
       "was told why"),
    _m("audit.collector.store.quarantined", "gauge", "store", "quarantined", "{file}",
       "Torn tails moved to quarantine/"),
    _m("audit.collector.store.quarantined.size", "gauge", "store", "quarantined_bytes", "By",
       "Bytes of the files in quarantine/ (torn tails cut off at start-up, kept for "
       "review: an operator deletes them)"),
    _m("audit.collector.store.sources.known", "gauge", "store", "sources_total", "{source}",
       "Sources (app processes, each numbering its events) the store knows now"),
    _m("audit.collector.store.sources.forgotten", "counter", "store", "sources_forgotten",
       "{source}", "Sources forgotten since start: none of their records was left once "
       "retention deleted segments"),
    _m("audit.collector.store.sources.gap_events", "gauge", "store", "gap_events", "{event}",
       "Events numbered by their source that never arrived, before one that did (lost)"),
    _m("audit.collector.store.sources.unreceived_tail_events", "gauge", "store",
       "unreceived_tail_events", "{event}",
       "Events a source announced after its last stored one: in flight, or lost if the "
       "source is gone"),
    _m("audit.collector.store.sources.unacknowledged_gap_events", "gauge", "store",
       "unacknowledged_gap_events", "{event}",
       "Gap events no operator has acknowledged yet (alert on this one)"),
    _m("audit.collector.store.sources.unacknowledged_tail_events", "gauge", "store",
       "unacknowledged_tail_events", "{event}",
       "Unreceived tail events no operator has acknowledged yet"),
    # the store's size: what an operator alerts on before the retention_bytes cap (it
    # counts the sealed segments) or the full disk
    _m("audit.collector.store.segments", "gauge", "store", "segments.count", "{segment}",
       "Segment files in the store (the sealed ones and the one being written)"),
    _m("audit.collector.store.segments.size", "gauge", "store", "segments.bytes", "By",
       "Bytes of the segment files (sealed and active; compressed ones at their "
       "compressed size)"),
    _m("audit.collector.store.segments.sealed", "gauge", "store", "segments.sealed",
       "{segment}", "Sealed segments (retention deletes them, oldest first)"),
    _m("audit.collector.store.segments.compressed", "gauge", "store",
       "segments.compressed", "{segment}", "Sealed segments compressed (.gz)"),
    _m("audit.collector.store.index.size", "gauge", "store", "index_bytes", "By",
       "Bytes of the index (index.sqlite with its -wal and -shm; not capped by "
       "retention_bytes)"),
    _m("audit.collector.store.disk.free", "gauge", "store", "disk_free_bytes", "By",
       "Bytes still free to the collector on the data directory's file system (left out "
       "when it cannot be asked)"),
    _m("audit.collector.store.retention_deleted", "counter", "store", "retention_deleted",
       "{segment}", "Sealed segments deleted by retention"),
    _m("audit.collector.store.index.unindexed_chunks", "gauge", "store", "unindexed_chunks",
       "{chunk}", "Closed index chunks waiting for their postings (queries scan them)"),
    _m("audit.collector.store.index.segments_dropping", "gauge", "store",
       "segments_dropping", "{segment}",
       "Segments retention deleted whose index rows are still being dropped"),
    # tamper evidence (docs/integrity.md): present while the store keeps its hash chain
    _m("audit.collector.integrity.unsigned_records", "gauge", "integrity",
       "unsigned_records", "{record}",
       "Records written since the newest signed digest (it covers them within "
       "digest_interval; alert when it stays above 0 for longer)"),
    _m("audit.collector.integrity.pending_digests", "gauge", "integrity", "pending_digests",
       "{digest}", "Signed digests not yet written to disk (retried; a full or failing "
       "disk)"),
    _m("audit.collector.integrity.digests_written", "counter", "integrity", "written",
       "{digest}", "Signed digests written since start"),
    _m("audit.collector.integrity.digest_write_failures", "counter", "integrity",
       "write_failures", "{error}",
       "Failed digest writes (each retried; stats' integrity.last_error says why)"),
    # the forwarder (OTLP/HTTP)
    _m("audit.collector.forward.lag", "gauge", "forwarder", "lag_events", "{event}",
       "Stored events not yet acknowledged by the OTLP endpoint"),
    _m("audit.collector.forward.lag.age", "gauge", "forwarder", "lag_seconds", "s",
       "Age of the oldest event not yet forwarded"),
    _m("audit.collector.forward.events", "counter", "forwarder", "forwarded", "{event}",
       "Events acknowledged by the OTLP endpoint"),
    _m("audit.collector.forward.failures", "counter", "forwarder", "failures", "{request}",
       "Failed exports (each retried with backoff)"),
    _m("audit.collector.forward.skipped", "counter", "forwarder", "skipped", "{event}",
       "Events deleted by retention before they could be forwarded"),
    _m("audit.collector.forward.rejected", "counter", "forwarder", "rejected", "{event}",
       "Events the OTLP receiver answered as rejected (partial success); not retried"),
    _m("audit.collector.forward.skipped_refused", "counter", "forwarder", "skipped_refused",
       "{event}", "Events the OTLP receiver refused alone with HTTP 400, skipped "
       "(forward_on_refused = skip)"),
    _m("audit.collector.forward.checkpoint", "gauge", "forwarder", "checkpoint_seq", "{seq}",
       "Sequence number of the last forwarded event"),
    _m("audit.collector.forward.disk_waiting", "gauge", "forwarder", "disk_waiting", "{state}",
       f"1 while the forwarder waits on a read of the data directory that has not "
       f"returned for {READ_STALL:g} s or more (a hung disk), else 0"),
    _m("audit.collector.forward.disk_hung", "counter", "forwarder", "disk_hung", "{read}",
       f"Reads of the data directory by the forwarder that did not return within "
       f"{READ_STALL:g} s"),
)


class Metrics:
    def __init__(self, metrics: Iterable[Metric] = METRICS) -> None:
        self.metrics = tuple(metrics)
        self._sources: dict[str, StatsFunction] = {}
        self._shared: dict[str, SingleFlight[Mapping[str, Any]]] = {}
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[Metric, float] | None] = (0.0, None)

    def add(self, source: str, stats: StatsFunction) -> None:
        with self._lock:
            self._sources[source] = stats

    def add_shared(self, source: str, stats: SingleFlight[Mapping[str, Any]]) -> None:
        """A source whose stats a hung disk can hold: a scrape reads it through ``stats``
        (see ``scraped``), an OpenTelemetry collection too, waiting ``SHARED_WAIT``."""
        self.add(source, lambda: stats.read_blocking(SHARED_WAIT))
        with self._lock:
            self._shared[source] = stats

    def remove(self, source: str) -> None:
        with self._lock:
            self._sources.pop(source, None)
            self._shared.pop(source, None)

    async def scraped(self) -> str:
        """``prometheus()`` on the event loop, the shared sources' stats awaited (each
        shared with the readers already waiting for them): ``Unanswered`` when one takes
        longer than ``SHARED_WAIT``."""
        with self._lock:
            shared = dict(self._shared)
        read: dict[str, Mapping[str, Any] | None] = {}
        for name, stats in shared.items():
            try:
                read[name] = await stats.read(SHARED_WAIT)
            except Unanswered:
                raise
            except Exception:
                log.exception("metrics: stats of %s failed", name)
                read[name] = None  # left out, and not asked again on the loop
        return self.prometheus(read)

    def snapshot(self, read: Mapping[str, Mapping[str, Any] | None] | None = None
                 ) -> dict[Metric, float]:
        """The current value of every metric whose source is registered and reports it;
        ``read``: sources' stats read already (``scraped``; None: failed). A source whose
        stats function fails is left out (and logged): a scrape never fails because one
        part of the collector is unwell."""
        with self._lock:
            sources = dict(self._sources)
        stats: dict[str, Mapping[str, Any] | None] = dict(read or {})
        for name, function in sources.items():
            if name in stats:
                continue
            try:
                stats[name] = function()
            except Unanswered as exc:  # no traceback: it says all there is to say
                log.warning("metrics: %s; its figures are left out", exc)
            except Exception:
                log.exception("metrics: stats of %s failed", name)
        values: dict[Metric, float] = {}
        for metric in self.metrics:
            source = stats.get(metric.source)
            if source is None:
                continue
            value = _figure(source, metric.key)
            if value is None and metric.kind == "counter":
                # Counted by collections.Counter, a key exists from its first increment:
                # a counter of a source that reports starts at 0, so an alert on it (or
                # on its rate) works before anything was ever rejected.
                value = 0
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                values[metric] = value
        return values

    # -- Prometheus ---------------------------------------------------------------------
    def prometheus(self, read: Mapping[str, Mapping[str, Any] | None] | None = None) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []
        for metric, value in self.snapshot(read).items():
            name = metric.prometheus_name
            lines.append(f"# HELP {name} {_escape_help(metric.help)}")
            lines.append(f"# TYPE {name} {metric.kind}")
            lines.append(f"{name} {_number(value)}")
        return "\n".join(lines) + "\n"

    # -- OpenTelemetry ------------------------------------------------------------------
    def register_otel(self, meter_provider: Any = None) -> None:
        """Observable instruments on ``meter_provider`` (or the global one). The
        instruments of one collection share one snapshot (taken at most once a second)."""
        from opentelemetry.metrics import CallbackOptions, Observation, get_meter

        meter = get_meter("audit_collector", meter_provider=meter_provider)
        for metric in self.metrics:
            def callback(options: CallbackOptions, metric: Metric = metric) -> list[Any]:
                snapshot = self._recent_snapshot()
                return [Observation(snapshot[metric])] if metric in snapshot else []

            create = (meter.create_observable_counter if metric.kind == "counter"
                      else meter.create_observable_gauge)
            create(metric.name, callbacks=[callback], unit=metric.unit,
                   description=metric.help)

    def _recent_snapshot(self, max_age: float = 1.0) -> dict[Metric, float]:
        now = time.monotonic()
        with self._lock:
            taken, values = self._cached
        if values is None or now - taken > max_age:
            values = self.snapshot()
            with self._lock:
                # Stamped once taken: a snapshot that waited SHARED_WAIT for a hung disk
                # must still serve the collection's other instruments (each would wait).
                self._cached = (time.monotonic(), values)
        return values


def _figure(stats: Mapping[str, Any], key: str) -> Any:
    """The value at ``key`` in ``stats``; a dotted key walks nested dicts (the store's
    ``segments`` figures). None where any part is missing or not a dict."""
    value: Any = stats
    for part in key.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


# -- GET /metrics ----------------------------------------------------------------------------
async def _endpoint(request: Any) -> Any:
    from starlette.responses import PlainTextResponse

    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    if metrics is None:
        return PlainTextResponse("metrics are not enabled on this collector\n", 404)
    from collector.api.auth import ReadersLate

    try:
        refused = (getattr(request.app.state, "metrics_auth", "none") == "reader"
                   and not await _a_reader(request))
    except ReadersLate as exc:
        _count_unavailable(request, ReadersLate)
        return PlainTextResponse(f"{exc}\n", 503, headers=retry_after())
    if refused:
        # Counts only, but their changes show activity, such as each read of the logs.
        return PlainTextResponse(
            "send a reader's token: Authorization: Bearer <token> (metrics_auth = reader; "
            "`audit-collector users add NAME` makes one)\n", 401,
            headers={"WWW-Authenticate": 'Bearer realm="audit-collector-metrics"'})
    try:
        text = await metrics.scraped()
    except Unanswered:
        # The losses listing's answer for the same late stats (a DiskLate): "disk".
        _count_unavailable(request, DiskLate)
        # Nothing rather than figures without the store's: a scrape that lacks them
        # would read as the store's gauges gone, not as a disk that does not answer.
        return PlainTextResponse(
            "the store's figures did not come in time: its disk does not answer (a hung "
            "disk, a frozen network file system); try again once it does (the collector's "
            "log says more)\n", 503, headers=retry_after())
    return PlainTextResponse(text, media_type=PROMETHEUS_CONTENT_TYPE)


def _count_unavailable(request: Any, kind: type[BaseException]) -> None:
    """A scrape answered 503 is one of the API's, counted as its others are
    (``collector.api.unavailable``): seen at the next scrape that is answered."""
    api = getattr(request.app.state, "api", None)
    if api is not None:
        api.count_unavailable(kind)


async def _a_reader(request: Any) -> bool:
    """Whether the request carries the token of a reader (any: root or not);
    ``ReadersLate`` when the readers file is not read within ``SHARED_WAIT``."""
    from collector.api.auth import bearer_token

    token = bearer_token(request)
    api = getattr(request.app.state, "api", None)
    # readers.json is on the data disk: the API's one reading of it for every request
    # that waits, off the loop (Api.fresh_readers), then the token checked on the loop.
    return token is not None and api is not None and await api.token_reader(token) is not None


def routes() -> list[Any]:
    """``GET /metrics`` (Prometheus text). It finds its ``Metrics`` at
    ``app.state.metrics``. Counters only: no audit record content is exposed."""
    from starlette.routing import Route

    return [Route("/metrics", _endpoint, methods=["GET"])]
