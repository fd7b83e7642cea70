"""Who may read and who may write, tried against a real collector: every route of the API
(listed from the app itself, so a new endpoint is covered the day it lands) with no
credentials, a wrong token, a malformed header, a forged session cookie and a reader
that is not root; the ingest endpoints (HTTP and wire, unix socket and TCP) with none,
wrong and misplaced tokens, and from another user on the machine.

A refusal is 401 (who are you?) or 403 (not root) and says nothing about the logs."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.routing import Route

from audit_middleware.wire import ErrorCode, Hello
from tests.e2e.harness import ROOT, RawClient, short_tmp
from tests.environment import require_root
from tests.faults.fleet import Collector, report

MARKER = "secret-principal-7f3a"  # stored in an event: no refusal may ever show it
INGEST_TOKEN = "ingest-token-for-access-tests"
#: Routes anyone may call, and why.
PUBLIC = {
    ("GET", "/api/v1/openapi.json"): "the API description",
    ("GET", "/"): "a redirect to the panel",
    ("GET", "/admin"): "a redirect to the panel",
    ("GET", "/admin/audit-logs"): "the panel's page (it signs in through the API)",
    ("POST", "/api/v1/session"): "signing in (with a token in the body)",
    ("DELETE", "/api/v1/session"): "signing out",
    ("GET", "/metrics"): "counters only (no record content): checked below",
    ("GET", "/healthz"): "ready or not, with a fixed reason (a probe's): checked below",
}
#: Routes any valid reader may call (not only root): they say who you are, not what
#: is in the logs.
ANY_READER = {("GET", "/api/v1/session")}
#: Routes that take the collector's ingest token, not a reader's.
INGEST = {("POST", "/api/v1/events")}
#: What a route needs beside credentials to answer 200 (a route missing here is asked
#: with no body).
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/sources/acknowledge-losses"): {
        "content": b'{"reason": "the access test"}',
        "headers": {"Content-Type": "application/json"}},
}


def add_reader(data_dir: Path, name: str, root: bool) -> str:
    return subprocess.run([sys.executable, "-m", "collector", "users", "add", name,
                           *(["--root"] if root else []), "--data-dir", str(data_dir)],
                          cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


@dataclass
class Served:
    collector: Collector
    url: str
    root: str
    reader: str
    event_id: str
    tcp_port: int


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with short_tmp() as tmp:
        data = tmp / "data"
        data.mkdir()
        root, reader = add_reader(data, "ops", True), add_reader(data, "viewer", False)
        collector = Collector(data, "--tcp", "127.0.0.1:0", api=True,
                              env={"AUDIT_TOKEN": INGEST_TOKEN}).start()
        try:
            yield serve(collector, root, reader)
        finally:
            collector.kill()


def serve(collector: Collector, root: str, reader: str) -> Served:
    """Store one event whose fields are the MARKER."""
    url = collector.api_url()
    event_id = str(uuid.uuid4())
    event = {"v": 1, "id": event_id, "type": "credentials_accessed", "target": MARKER,
             "principal": MARKER, "status": "", "org_id": MARKER, "org_name": MARKER,
             "workspace_id": "", "workspace_name": "", "client_ip": "",
             "created": "2026-11-26T01:07:10.123456Z", "trace_id": "", "span_id": ""}
    stored = httpx.post(f"{url}/api/v1/events", content=orjson.dumps(event),
                        headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
    assert stored.status_code == 200 and stored.json()["written"] == [event_id]
    match = re.search(r"tcp:127\.0\.0\.1:(\d+)", collector.ready_line)
    assert match, collector.ready_line
    port = int(match[1])
    return Served(collector, url, root, reader, event_id, port)


def api_routes(event_id: str) -> list[tuple[str, str]]:
    """(method, path) of every route the collector's API app serves."""
    from collector.api.app import create_app
    from collector.api.context import ApiSettings

    with short_tmp() as tmp:
        app = create_app(ApiSettings(data_dir=tmp), store=None)  # type: ignore[arg-type]
        routes = [r for r in app.routes if isinstance(r, Route)]
        app.state.api.close()
    found = []
    for route in routes:
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                found.append((method, route.path.replace("{event_id}", event_id)))
    return found


CREDENTIALS = {
    "none": {},
    "wrong token": {"Authorization": "Bearer ac_0123456789abcdef_" + "A" * 43},
    "not a bearer": {"Authorization": "Basic b3BzOm9wcw=="},
    "empty bearer": {"Authorization": "Bearer"},
    "forged session": {"Cookie": "audit_session=" + "A" * 43},
}


def ask(served: Served, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    """``method path`` with ``headers``, and the body the route needs (``BODIES``)."""
    body = BODIES.get((method, path.replace(served.event_id, "{event_id}")), {})
    return httpx.request(method, served.url + path, content=body.get("content"),
                         headers={**body.get("headers", {}), **headers})


def test_every_read_endpoint_refuses_without_root(served: Served) -> None:
    tried = 0
    for method, path in api_routes(served.event_id):
        key = (method, path.replace(served.event_id, "{event_id}"))
        if key in PUBLIC or key in INGEST:
            continue
        for name, headers in CREDENTIALS.items():
            response = ask(served, method, path, headers)
            tried += 1
            assert response.status_code == 401, (method, path, name, response.text)
            assert MARKER not in response.text
            assert response.headers.get("www-authenticate", "").startswith("Bearer")
        response = ask(served, method, path, {"Authorization": f"Bearer {served.reader}"})
        tried += 1
        expected = 200 if key in ANY_READER else 403
        assert response.status_code == expected, (method, path, response.text)
        assert MARKER not in response.text
        ok = ask(served, method, path, {"Authorization": f"Bearer {served.root}"})
        assert ok.status_code == 200, (method, path, ok.text)
    report("unauthenticated / wrong-token / non-root reads", attempts=tried, allowed=0)
    assert tried >= 8 * 6


def test_public_endpoints_show_no_record_content(served: Served) -> None:
    for method, path in PUBLIC:
        if method == "GET":
            response = httpx.get(served.url + path)
            assert response.status_code in (200, 307), (path, response.status_code)
            assert MARKER not in response.text and served.event_id not in response.text


def test_signing_in_needs_a_root_token_and_the_session_ends_with_the_reader(
        served: Served) -> None:
    session = f"{served.url}/api/v1/session"
    assert httpx.post(session, json={"token": served.reader}).status_code == 403
    assert httpx.post(session, json={"token": "nope"}).status_code == 401
    assert httpx.post(session, json={"token": served.root},
                      headers={"Origin": "https://evil.example"}).status_code == 403
    data = served.collector.data_dir
    temp = add_reader(data, "temp", True)
    with httpx.Client() as browser:
        assert browser.post(session, json={"token": temp}).status_code == 200
        assert browser.get(f"{served.url}/api/v1/audit-logs").status_code == 200
        subprocess.run([sys.executable, "-m", "collector", "users", "remove", "temp",
                        "--data-dir", str(data)], cwd=ROOT, check=True, capture_output=True)
        # Revoked at once: the session and the token stop working, no restart.
        assert browser.get(f"{served.url}/api/v1/audit-logs").status_code == 401
    assert httpx.get(f"{served.url}/api/v1/audit-logs",
                     headers={"Authorization": f"Bearer {temp}"}).status_code == 401


def test_http_ingest_takes_only_the_ingest_token(served: Served) -> None:
    body = b'{"v":1}'
    tried = 0
    for name, headers in {**CREDENTIALS,
                          "a root reader's token": {"Authorization": f"Bearer {served.root}"},
                          "the token in the query": {}}.items():
        url = f"{served.url}/api/v1/events"
        if name == "the token in the query":
            url += f"?token={INGEST_TOKEN}"
        response = httpx.post(url, content=body, headers=headers)
        tried += 1
        assert response.status_code == 401, (name, response.text)
    assert httpx.post(f"{served.url}/api/v1/events", content=body, headers={
        "Authorization": f"Bearer {INGEST_TOKEN}"}).status_code == 422  # in, and rejected
    report("unauthenticated / wrong-token ingest (HTTP)", attempts=tried, allowed=0)


def test_tcp_ingest_refuses_a_missing_wrong_or_reader_token(served: Served) -> None:
    tried = 0
    for token in (None, "", "wrong", served.root, INGEST_TOKEN.upper(), INGEST_TOKEN + " "):
        conn = RawClient(tcp=("127.0.0.1", served.tcp_port))
        conn.send(Hello("intruder:1:ab", token=token).encode())
        assert conn.error().code == ErrorCode.UNAUTHORIZED, token
        conn.close()
        tried += 1
    report("unauthenticated / wrong-token ingest (wire, TCP)", attempts=tried, allowed=0)


def test_another_user_cannot_reach_the_unix_socket(served: Served) -> None:
    """The socket is 0600 in a 0750 directory: a process of another user (here
    ``nobody``, with the system's Python) cannot connect."""
    require_root("to run a process as another user")
    probe = ("import socket, sys\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(13)\n")
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "/usr/bin/python3", "-c", probe, str(served.collector.socket)],
                          capture_output=True, text=True, check=False, timeout=30)
    report("another user connecting to the unix socket", attempts=1, allowed=0)
    assert done.returncode == 13, done.stderr
