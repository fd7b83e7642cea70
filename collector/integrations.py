"""What ``serve`` runs to fit the collector into other pipelines: the OTLP forwarder
(when ``forward_endpoint`` is set), ``POST /api/v1/events`` (HTTP ingest, with the
shared ``token``), ``GET /metrics`` and ``GET /healthz`` on the API port, and the
collector's counters as OpenTelemetry metrics (on the global meter provider: exported
when the process runs under an OpenTelemetry SDK, e.g. ``opentelemetry-instrument
audit-collector serve``).

    integrations = Integrations(store, ingest_server, config)
    integrations.start(out)
    integrations.attach(api_server)   # the API's app serves the three routes
    ...
    integrations.stop()
"""

from __future__ import annotations

from typing import Any, TextIO

from .config import CollectorConfig, ConfigError
from .forward_checkpoint import CheckpointError
from .forward_config import forward_settings
from .forwarder import Forwarder
from .health import Health
from .http_ingest import HttpIngest, HttpIngestSettings
from .metrics import Metrics
from .single_flight import SingleFlight


class Integrations:
    def __init__(self, store: Any, ingest_server: Any, config: CollectorConfig) -> None:
        self.metrics = Metrics()
        self.metrics_auth = config.metrics_auth
        self.metrics.add("ingest", ingest_server.stats)
        if ingest_server.tls is not None:
            # The same function under a second name: the rows of ingest's TLS read it,
            # so that without TLS they are absent rather than zeros that look healthy.
            self.metrics.add("ingest_tls", ingest_server.stats)
        # The store's stats read its disk: one reading at a time, shared by /metrics, the
        # OpenTelemetry reader and serve's stats task (collector/single_flight.py).
        self.store_stats: SingleFlight[dict[str, Any]] = SingleFlight(store.stats,
                                                                      "audit-store-stats")
        self.metrics.add_shared("store", self.store_stats)
        self.metrics.add("integrity", store.integrity_stats)
        self.http_ingest = HttpIngest(store, HttpIngestSettings(
            token=config.token, max_body=config.max_frame,
            max_field_length=config.max_field_length, read_timeout=config.read_timeout),
            ingest_server.budget)
        self.metrics.add("http", self.http_ingest.stats)
        self.health = Health(store)
        self.api: Any = None  # the query API's ApiServer, once attached
        self.forwarder: Forwarder | None = None
        if config.forward_endpoint:
            try:
                self.forwarder = Forwarder(config.data_dir, forward_settings(config))
            except CheckpointError as exc:
                raise ConfigError(str(exc)) from None
            self.metrics.add("forwarder", self.forwarder.stats)

    def start(self, out: TextIO) -> None:
        self.metrics.register_otel()
        if self.forwarder is not None:
            # As the forwarder read its checkpoint, before its thread moves it: not the
            # file read again (beside the thread, a read of it could take back the
            # records skipped that a save of the thread had just added).
            position = self.forwarder.position
            self.forwarder.start()
            print(f"audit-collector: forwarding stored events to "
                  f"{self.forwarder.settings.shown_endpoint} (OTLP/HTTP) "
                  + (f"after seq {position}" if position is not None else
                     f"from the {self.forwarder.settings.start}"), file=out, flush=True)

    def attach(self, api: Any) -> None:
        """Serve ``POST /api/v1/events``, ``GET /metrics`` and ``GET /healthz`` from the
        query API (an ``ApiServer``: its app's routes find these objects in
        ``app.state``), and count its connection protection, its queries refused and its
        exports cut among the metrics and stats."""
        self.api = api
        self.metrics.add("api", api.stats)
        if api.tls is not None:
            self.metrics.add("api_tls", api.tls.stats)
        app = api.app
        # The queries refused and the exports cut: the app's own, apart from the
        # server's connections (their table in docs/api.md is apart too).
        self.metrics.add("api_queries", app.state.api.stats)
        app.state.http_ingest = self.http_ingest
        app.state.metrics = self.metrics
        app.state.metrics_auth = self.metrics_auth
        app.state.health = self.health
        # The losses listing reads the store's stats too: the same single flight, so
        # that a hung disk holds one thread for it, /metrics and the stats task.
        app.state.api.store_stats = self.store_stats

    def stats(self) -> dict[str, Any]:
        """For the live stats file (``audit-collector stats``)."""
        stats: dict[str, Any] = {"http": self.http_ingest.stats()}
        if self.api is not None:
            stats["api"] = {**self.api.stats(), **self.api.app.state.api.stats()}
        if self.forwarder is not None:
            stats["forwarder"] = self.forwarder.stats()
        return stats

    def stop(self, timeout: float = 10.0) -> None:
        if self.forwarder is not None:
            self.forwarder.stop(timeout)
