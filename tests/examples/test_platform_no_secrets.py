"""No record ever contains a token, password, cookie, header, query string or request
body: each is sent with a marker string, and no JSON line may contain one."""

from __future__ import annotations

from starlette.testclient import TestClient

from examples.platform.auth import ALICE, ROOT
from examples.platform.tour import run_tour

AS_ROOT = {"Authorization": f"Bearer {ROOT.token}"}


def test_no_record_contains_a_secret_sent_in_any_part_of_a_request(
    platform: TestClient, audit, place
) -> None:
    platform.cookies.set("session", "cookie-MARKER")
    platform.headers["X-Api-Key"] = "header-MARKER"
    secrets_seen = [ALICE.token, ROOT.token, ALICE.password]

    user = platform.post("/users", headers=AS_ROOT, json={
        "name": "Mallory", "email": "m@example.org", "password": "password-MARKER"}).json()
    platform.put(f"/users/{user['id']}", headers=AS_ROOT, json={"name": "edit-MARKER"})
    session = platform.post("/sign-in", params={"next": "query-MARKER"}, json={
        "email": "m@example.org", "password": "password-MARKER"}).json()["token"]
    as_mallory = {"Authorization": f"Bearer {session}"}
    token = platform.post("/tokens", json={"name": "body-MARKER"}, headers=as_mallory).json()
    secrets_seen += [session, token["token"]]

    base = place.path
    creds = platform.post(f"{base}/credentials", json={
        "name": "body-MARKER", "provider": "aws", "keys": {"secret_key": "key-MARKER"}},
        headers={"Authorization": f"Bearer {token['token']}"}).json()["id"]
    platform.put(f"{base}/credentials/{creds}", json={"keys": {"secret_key": "edit-MARKER"}})
    secret = platform.post(f"{base}/pipeline-secrets",
                           json={"name": "N", "value": "secret-MARKER"}).json()["id"]
    platform.put(f"{base}/pipeline-secrets/{secret}", json={"value": "edit-MARKER"})
    bucket = platform.post(f"{base}/data-links", json={
        "name": "body-MARKER", "uri": "s3://b", "credentials_id": creds}).json()["id"]
    platform.put(f"{base}/data-links/{bucket}/files/f.txt", content=b"file-MARKER")
    platform.get(f"{base}/data-links/{bucket}/preview/f.txt", params={"q": "query-MARKER"})
    run_tour(platform)  # every event type, each request with the cookie and header

    lines = audit.lines()
    assert len(set(audit.types())) == 45 and len(lines) > 60
    leaks = [(s, line) for line in lines for s in secrets_seen if s.encode() in line]
    leaks += [("MARKER", line) for line in lines if b"MARKER" in line]
    assert leaks == []
