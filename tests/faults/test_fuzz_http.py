"""The collector's HTTP endpoints fuzzed with Hypothesis against a real collector: the
read API (every route, with root, non-root, wrong and missing credentials, fuzzed query
strings and ids) and ``POST /api/v1/events`` (fuzzed bodies and headers). Never a 500,
never a crash, never an acknowledged id it was not sent, never a malformed record."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.api.params import FILTER_PARAMS
from tests.e2e.harness import ROOT
from tests.faults.fleet import (
    Collector,
    Stored,
    check_stored_records,
    memory_dir,
    report,
    scaled,
)
from tests.faults.wire_strategies import NASTY_TEXT, event_lines, valid_event

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(scaled(300, 3600))]

REQUESTS = scaled(600, 30_000)
ROUND = 200
TOKEN = "http-fuzz-ingest-token"
ALLOWED = {200, 204, 307, 400, 401, 403, 404, 405, 413, 422}

HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=80).map(
    str.strip)  # h11 refuses surrounding whitespace in a header value
QUERY_TEXT = (st.text(max_size=40) | NASTY_TEXT | st.sampled_from([
    "run_*", "*", "10.0.0.0/8", "::/0", "2001:db8::1", "24h", "-1h", "0", "1", "1000",
    "1001", "\u00b2", "\u0661", "1e3", "99999999999999999999", "2026-11-26-01-07-10",
    "2026-11-26T01:07:10.123456Z", "newest", "oldest", "%00", "' OR 1=1 --"])
).map(lambda value: value[:2000])  # httpx refuses a query string over 64 KiB


def add_reader(data_dir: Path, name: str, root: bool) -> str:
    done = subprocess.run([sys.executable, "-m", "collector", "users", "add", name,
                           *(["--root"] if root else []), "--data-dir", str(data_dir)],
                          cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


@st.composite
def read_requests(draw: st.DrawFn, event_ids: list[str]) -> tuple[str, str, dict[str, Any]]:
    path = draw(st.sampled_from([
        "/api/v1/audit-logs", "/api/v1/audit-logs/export.csv",
        "/api/v1/audit-logs/export.jsonl", "/api/v1/audit-logs/export.ocsf.jsonl",
        "/api/v1/audit-logs/export.ecs.jsonl", "/api/v1/event-types", "/api/v1/session",
        "/api/v1/openapi.json", "/metrics", "/admin/audit-logs", "/", "id", "random"]))
    if path == "id":
        path = "/api/v1/audit-logs/" + draw(st.sampled_from(event_ids) | st.text(
            st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters="/?#"),
            min_size=1, max_size=60))
    elif path == "random":
        # Not "//..." at the start: httpx reads that as a host ("//::" raised InvalidURL in
        # the client, before any request was sent).
        path = "/" + draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e,
                                                exclude_characters="?#"), max_size=40)
                          ).lstrip("/")
    names = st.sampled_from([*FILTER_PARAMS, "order", "limit", "cursor"]) | st.text(max_size=8)
    params = draw(st.lists(st.tuples(names, QUERY_TEXT), max_size=5))
    method = draw(st.sampled_from(["GET"] * 8 + ["POST", "DELETE", "PUT", "HEAD"]))
    return method, path, {"params": params}


@st.composite
def ingest_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str], list[str]]:
    lines = draw(st.lists(event_lines(), max_size=20))
    shape = draw(st.sampled_from(["lines", "lines", "array", "raw", "empty"]))
    if shape == "array":
        items = []
        for line in lines:
            try:
                items.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                items.append(line.decode(errors="replace"))
        body = orjson.dumps(items)
    elif shape == "raw":
        body = draw(st.binary(max_size=500))
    elif shape == "empty":
        body = b""
    else:
        body = b"\n".join(lines) + draw(st.sampled_from([b"\n", b"", b"\r\n", b"\n\n"]))
    headers = {"content-type": draw(st.sampled_from(
        ["application/x-ndjson", "application/json", "text/plain", "", "multipart/form-data"]))}
    source = draw(st.none() | st.just("fuzz-http") | HEADER_TEXT)
    if source is not None:
        headers["x-audit-source"] = source
    ids = []
    for line in lines:
        try:
            record = orjson.loads(line)
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                ids.append(record["id"])
        except orjson.JSONDecodeError:
            pass
    return body, headers, ids


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with memory_dir() as path:
        yield path / "data"


def test_fuzzed_http_requests_never_crash_the_collector_nor_get_a_500(data_dir: Path
                                                                       ) -> None:
    data_dir.mkdir(parents=True)
    tokens = {"root": add_reader(data_dir, "fuzzroot", root=True),
              "reader": add_reader(data_dir, "fuzzreader", root=False),
              "wrong": "ac_0123456789abcdef_" + "x" * 43}
    collector = Collector(data_dir, api=True, env={"AUDIT_TOKEN": TOKEN}).start()
    base = collector.api_url()
    start = collector.memory()
    client = httpx.Client(base_url=base, timeout=30)
    seed_ids = [valid_event()["id"] for _ in range(3)]
    seeded = client.post("/api/v1/events", content=b"\n".join(
        orjson.dumps({**valid_event(), "id": i}) for i in seed_ids),
        headers={"Authorization": f"Bearer {TOKEN}"})
    assert seeded.status_code == 200, seeded.text
    counts: dict[str, Any] = {"requests": 0, "statuses": {}, "peak_kib": start.rss_kib}
    acked: set[str] = set()

    def check(response: httpx.Response) -> None:
        counts["requests"] += 1
        counts["statuses"][response.status_code] = \
            counts["statuses"].get(response.status_code, 0) + 1
        assert response.status_code in ALLOWED, (response.request.method,
                                                 str(response.request.url), response.status_code,
                                                 response.text[:500])
        if response.headers.get("content-type", "").startswith("application/json") \
                and response.request.method != "HEAD":
            orjson.loads(response.content)
        assert collector.alive, "".join(collector.output[-30:])

    @settings(max_examples=ROUND, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(read_requests(seed_ids), st.sampled_from(["root"] * 6 + [
        "reader", "wrong", "garbage", "none", "basic", "cookie"]))
    def read(request: tuple[str, str, dict[str, Any]], who: str) -> None:
        method, path, options = request
        headers: dict[str, str | bytes] = {}
        if who in tokens:
            headers["Authorization"] = f"Bearer {tokens[who]}"
        elif who == "garbage":
            headers["Authorization"] = "Bearer \u00e9t\u00e9 \u00ff".encode("latin-1")
        elif who == "basic":
            headers["Authorization"] = "Basic Zm9vOmJhcg=="
        elif who == "cookie":
            headers["Cookie"] = "audit_session=forged-session-id"
        check(client.request(method, path, headers=headers, **options))

    @settings(max_examples=ROUND, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(ingest_requests(), st.sampled_from(["token"] * 6 + ["none", "wrong", "reader"]))
    def ingest(request: tuple[bytes, dict[str, str], list[str]], who: str) -> None:
        body, headers, ids = request
        token = {"token": TOKEN, "wrong": TOKEN + "x", "reader": tokens["root"]}.get(who)
        if token is not None:
            headers = {**headers, "Authorization": f"Bearer {token}"}
        response = client.post("/api/v1/events", content=body, headers=headers)
        check(response)
        if who != "token":
            assert response.status_code == 401, response.text
        if response.status_code in (200, 422):
            result = response.json()
            unknown = set(result["written"] + result["duplicates"]) - set(ids)
            assert not unknown, f"acknowledged ids it was not sent: {unknown}"
            acked.update(result["written"])

    try:
        while counts["requests"] < REQUESTS:
            read()
            ingest()
            counts["peak_kib"] = max(counts["peak_kib"], collector.memory().rss_kib)
    finally:
        client.close()
        alive = collector.alive
        code = collector.stop() if alive else None
    assert alive and code == 0, "".join(collector.output[-50:])
    log = "".join(collector.output)
    assert "Traceback" not in log, log[-5000:]
    stored = Stored.read(collector.data_dir)
    check_stored_records(collector.data_dir)
    missing = stored.missing(acked)
    report("HTTP endpoints fuzzed (Hypothesis)", requests=counts["requests"],
           statuses=dict(sorted(counts["statuses"].items())), acknowledged=len(acked),
           stored=len(stored.in_segments), lost=len(missing),
           collector_rss_mib=f"{start.rss_kib // 1024}->{counts['peak_kib'] // 1024} (peak)")
    assert missing == []
    stored.check_exactly_once()
    assert counts["peak_kib"] - start.rss_kib < 256 * 1024


def test_limit_with_a_superscript_digit_is_a_400(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    token = add_reader(data_dir, "root", root=True)
    with Collector(data_dir, api=True) as collector:
        response = httpx.get(f"{collector.api_url()}/api/v1/audit-logs",
                             params={"limit": "\u00b2"},
                             headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 400, response.text
