"""No secret ever reaches a stored byte. The full example (``python -m examples.run``:
the collector, the platform shipping to it, the tour through every catalogue event) runs
in a temporary directory; on top of the tour, requests carry a cookie, an API-key header
and a query string with secret markers, and the admin panel is signed into with the demo
root reader's token. Then every byte under ``audit-data/`` (segments, plain and
compressed, index, WAL, quarantine, spool, digests, logs) is searched for every bearer
token, password, key, cookie value and marker the traffic used."""

from __future__ import annotations

import gzip
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from examples.platform.auth import ALICE, ROOT
from tests.e2e.harness import ROOT as REPO
from tests.faults.fleet import report

#: Secrets the tour itself sends (examples/platform/tour.py, auth.py).
TOUR_SECRETS = [ROOT.token, ALICE.token, ROOT.password, ALICE.password, "bob-password",
                "AKIADEMO", "demo-secret-key", "demo-ncbi-key", "demo-ncbi-key-2"]
#: Issued platform tokens and collector reader tokens, whatever their value.
TOKEN_PATTERNS = [re.compile(rb"tok_[A-Za-z0-9_-]{32}"),
                  re.compile(rb"ac_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stored_bytes(data_dir: Path) -> dict[str, bytes]:
    found = {}
    for path in sorted(data_dir.rglob("*")):
        if path.is_file() and not path.is_socket():
            data = path.read_bytes()
            if path.suffix == ".gz":
                data = gzip.decompress(data)
            found[str(path.relative_to(data_dir))] = data
    return found


def test_no_token_password_or_cookie_value_is_stored_anywhere(tmp: Path) -> None:
    port = free_port()
    markers = {name: f"{name}-{secrets.token_hex(8)}" for name in (
        "cookie", "api-key", "query", "body", "panel-cookie")}
    proc = subprocess.Popen([sys.executable, "-m", "examples.run"], cwd=tmp,
                            env={**os.environ, "PORT": str(port), "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends (and the test fails) if the process dies
            seen.append(line)
            if "Serving until Ctrl-C" in line:
                break
        output = "".join(seen)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, cookies={"session": markers["cookie"]},
                          headers={"X-Api-Key": markers["api-key"],
                                   "Authorization": f"Bearer {ALICE.token}"}) as client:
            org = client.post("/orgs", params={"next": markers["query"]},
                              json={"name": "scan", "note": markers["body"]})
            assert org.status_code == 201, org.text
            assert client.delete(f"/orgs/{org.json()['id']}").status_code in (200, 204)
        panel = re.search(r"Admin panel \(Audit logs tab\): (\S+)", output)
        reader = re.search(r"demo root reader's token: (\S+)", output)
        if panel and reader:  # the panel's port was free: sign in, read, sign out
            api = panel[1].split("/admin")[0]
            with httpx.Client(base_url=api) as browser:
                assert browser.post("/api/v1/session",
                                    json={"token": reader[1]}).status_code == 200
                markers["panel-cookie"] = browser.cookies["audit_session"]
                assert browser.get("/api/v1/audit-logs").status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    secrets_used = [*TOUR_SECRETS, *markers.values(), *([reader[1]] if reader else [])]
    files = stored_bytes(tmp / "audit-data")
    leaks = [(name, secret) for name, data in files.items() for secret in secrets_used
             if secret.encode() in data]
    leaks += [(name, m.group().decode()) for name, data in files.items()
              for pattern in TOKEN_PATTERNS for m in pattern.finditer(data)]
    report("secrets in stored bytes after the full example run", files=len(files),
           bytes=sum(map(len, files.values())), secrets_searched=len(secrets_used) + 2,
           leaks=len(leaks))
    # The scan looks where the records are: the org the extra traffic created is there.
    assert any(b'"org_name":"scan"' in data for name, data in files.items()
               if name.startswith("segments/"))
    assert leaks == []
