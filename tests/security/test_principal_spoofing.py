"""Principal spoofing through headers: every header some stack takes the user from
(``X-User``, ``X-Forwarded-User``, ``Remote-User``, ...) is sent with the root user's id
on every request of the example platform's full tour. The recorded principal is still
who authenticated (Starlette's ``scope["user"]``), an anonymous request records nobody
it claims to be, and the collector's own reads record the reader, not a header."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
from starlette.testclient import TestClient

from audit_middleware.testing import capture_audit_events
from examples.platform import create_app
from examples.platform.auth import ALICE, ROOT
from examples.platform.tour import run_tour
from tests.e2e.harness import ROOT as REPO
from tests.faults.fleet import Collector, Stored, report

IMPERSONATED = ROOT.id
SPOOF = {name: IMPERSONATED for name in (
    "x-user", "x-user-id", "x-principal", "x-forwarded-user", "x-remote-user", "remote-user",
    "x-auth-request-user", "x-authenticated-user", "x-ms-client-principal-name",
    "x-goog-authenticated-user-email", "x-amzn-oidc-identity", "x-webauth-user",
    "x-consumer-username", "x-audit-principal")}


def test_no_header_makes_the_platform_record_another_principal() -> None:
    with capture_audit_events() as events:
        client = TestClient(create_app(), client=("203.0.113.7", 50123), headers=SPOOF)
        tour = run_tour(client)  # Alice signs in and works; root manages users
        client.headers.pop("authorization", None)
        # Without a token: refused, and recorded in nobody's name.
        anonymous = client.post(f"/orgs/{tour.ids['org']}/teams", json={"name": "x"})
        forged = client.post("/orgs", json={"name": "forged"},
                             headers={"Authorization": "Bearer forged-token"})
    # The two refusals are recorded as denied, in nobody's name (no header names one).
    denied = [(e.principal, e.target) for e in events if e.type == "request_denied"]
    assert denied == [("", f"/orgs/{tour.ids['org']}/teams"), ("", "/orgs")], denied
    principals = {e.principal for e in events if e.type != "request_denied"}
    report("principal spoofing through headers", attempts=len(events) * len(SPOOF) + 2,
           spoofed=sum(e.principal == IMPERSONATED for e in events
                       if e.type not in ("user_created", "user_updated", "user_deleted",
                                         "run_status_changed", "run_completed")))
    assert anonymous.status_code == 401 and forged.status_code == 401
    assert principals <= {ALICE.id, ROOT.id, "system"}
    # Root acts only where the tour acts as root: user management and the run backend.
    as_root = {e.type for e in events if e.principal == IMPERSONATED}
    assert as_root <= {"user_created", "user_updated", "user_deleted"}, as_root
    assert len(events) > 40 and not any(e.target == "forged" for e in events)


def test_the_collectors_reads_record_the_reader_not_a_header(tmp: Path) -> None:
    data = tmp / "data"
    data.mkdir()
    token = subprocess.run([sys.executable, "-m", "collector", "users", "add", "auditor",
                            "--root", "--data-dir", str(data)], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.strip()
    collector = Collector(data, api=True).start()
    headers = {**SPOOF, "Authorization": f"Bearer {token}", "X-Forwarded-For": "6.6.6.6"}
    response = httpx.get(f"{collector.api_url()}/api/v1/audit-logs", headers=headers)
    assert response.status_code == 200
    assert collector.stop() == 0
    reads = [r for r in Stored.read(data).records if r["type"].startswith("audit_log")]
    assert [(r["principal"], r["client_ip"]) for r in reads] == [("auditor", "127.0.0.1")]
