"""The collector as a real process with its query API on an ephemeral loopback port
(shared by the serve and browser tests), and its API app as served, in process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
from starlette.applications import Starlette

from collector.api import ApiSettings, create_app, queries, unavailable
from collector.api.export_cuts import CUT_REASONS
from collector.config import load
from collector.frame_budget import DEFAULT_MAX_INFLIGHT_BYTES, FrameBudget
from collector.integrations import Integrations
from collector.storage.time_limit import QUERY_TIMEOUT
from collector.store import Store
from tests.e2e.harness import ROOT, CollectorProcess


def api_url(collector: CollectorProcess) -> str:
    """The API's base URL, from the ready line (``... http://127.0.0.1:PORT``)."""
    for word in collector.ready_line.split():
        if word.startswith(("http://", "https://")):
            return word
    raise AssertionError(f"no API address in the ready line: {collector.ready_line!r}")


@contextmanager
def serving(data_dir: Path, *args: str, process: type[CollectorProcess] = CollectorProcess
            ) -> Iterator[tuple[CollectorProcess, str]]:
    """A started collector (``process``: a test's wrapper of its command line) and the
    URL of its query API."""
    with process(data_dir, "--api-listen", "127.0.0.1:0", *args,
                 env={"AUDIT_CONFIG": ""}) as collector:
        yield collector, api_url(collector)


def metric(url: str, name: str) -> float:
    """The value of the unlabelled metric ``name`` in ``GET /metrics`` (no token)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    [sample] = [s for s in text.splitlines() if s.startswith(f"{name} ")]
    return float(sample.split()[1])


def add_reader(data_dir: Path, name: str, *, root: bool) -> str:
    """``audit-collector users add``, as an operator runs it; returns the token."""
    done = subprocess.run(
        [sys.executable, "-m", "collector", "users", "add", name, *(["--root"] if root else []),
         "--data-dir", str(data_dir)],
        cwd=ROOT, text=True, capture_output=True, timeout=60, check=False,
        env={**os.environ, "AUDIT_CONFIG": ""})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def served_app(data: Path, store: Store, *, query_timeout: float | None = QUERY_TIMEOUT,
               **environ: str) -> Starlette:
    """The query API's app with serve's integrations attached (``/metrics``, ``/healthz`` as served),
    with ``environ``'s options (``AUDIT_METRICS_AUTH="reader"``)."""
    app = create_app(ApiSettings(data_dir=data, query_timeout=query_timeout), store)
    # The ingest server as the integrations read it: its stats, its TLS, and the frame
    # budget HTTP ingest shares with it.
    ingest = SimpleNamespace(stats=dict, tls=None,
                             budget=FrameBudget(DEFAULT_MAX_INFLIGHT_BYTES))
    integrations = Integrations(store, ingest, load(None, {
        "AUDIT_DATA_DIR": str(data), **environ}))
    integrations.attach(SimpleNamespace(app=app, stats=dict, tls=None))
    return app


async def closed_at_once(timeout: float) -> int:
    """``Api.aclose`` of a stand-in API (what ``ApiServer.shutdown`` closes): no query
    thread to wait for."""
    return 0


def client_of(app: Starlette, token: str | None = None, **headers: str) -> httpx.AsyncClient:
    """An in-process client of ``app`` (no socket), as ``token``'s reader if given."""
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             base_url="http://localhost", headers=headers)


async def refusals(client: httpx.AsyncClient) -> dict[str, float]:
    """The query API's refusal counters as ``GET /metrics`` serves them (no labels:
    ``audit_collector_api_queries_refused_busy_total`` and the like)."""
    answer = await client.get("/metrics")
    assert answer.status_code == 200, answer.text
    return {name: float(value) for name, value in
            (line.split() for line in answer.text.splitlines()
             if line.startswith(("audit_collector_api_queries_refused",
                                 "audit_collector_api_exports_cut")))}


def counters(**refused: int) -> dict[str, float]:
    """The refusal counters as ``refusals`` reads them, ``refused`` by reason (the
    pool's, ``queries.REFUSALS``, or the API's other 503s, ``unavailable.REASONS``),
    every other one 0 (no export was cut)."""
    reasons = queries.REFUSALS + unavailable.REASONS
    assert set(refused) <= set(reasons), refused
    served = {f"audit_collector_api_queries_refused_{reason}_total": float(refused.get(
        reason, 0)) for reason in reasons}
    served["audit_collector_api_queries_refused_total"] = float(sum(refused.values()))
    served["audit_collector_api_exports_cut_total"] = 0.0
    served |= {f"audit_collector_api_exports_cut_{reason}_total": 0.0
               for reason in CUT_REASONS}
    return served
