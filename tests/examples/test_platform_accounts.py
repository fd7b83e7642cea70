"""Sign-in, users and access tokens: who acted, on whom, from where."""

from __future__ import annotations

from starlette.testclient import TestClient

from examples.platform import create_app
from examples.platform.auth import ALICE, ROOT

AS_ROOT = {"Authorization": f"Bearer {ROOT.token}"}
SIGN_IN = {"email": ALICE.email, "password": ALICE.password}


def test_sign_in_records_the_user_the_method_and_the_sign_in_ip(
    platform: TestClient, audit, nowhere
) -> None:
    platform.headers.pop("Authorization")  # nobody is signed in yet
    response = platform.post("/sign-in", json=SIGN_IN)
    assert response.status_code == 200
    assert audit.records() == [
        nowhere.expect("user_sign_in", ALICE.id, principal=ALICE.id, status="password")
    ]


def test_sign_in_behind_a_trusted_proxy_records_the_forwarded_client_ip(audit, nowhere) -> None:
    app = create_app(trusted_proxies=["10.0.0.0/8"])
    client = TestClient(app, client=("10.1.2.3", 40000))
    response = client.post("/sign-in", json=SIGN_IN,
                           headers={"X-Forwarded-For": "198.51.100.23, 10.9.9.9"})
    assert response.status_code == 200
    assert audit.records() == [nowhere.expect("user_sign_in", ALICE.id, status="password",
                                              client_ip="198.51.100.23", peer_ip="10.1.2.3")]


def test_a_forwarded_for_header_from_an_untrusted_peer_is_ignored(audit, nowhere) -> None:
    client = TestClient(create_app(), client=("203.0.113.99", 40000))
    client.post("/sign-in", json=SIGN_IN, headers={"X-Forwarded-For": "192.0.2.1"})
    assert [e.client_ip for e in audit.events] == ["203.0.113.99"]


def test_a_failed_sign_in_is_recorded_as_denied_not_as_a_sign_in(platform: TestClient,
                                                                 audit) -> None:
    """A wrong password is a failed access attempt (401): recorded as ``request_denied``,
    no principal (the email a client typed names nobody yet), never the password. A
    sign-in the body model refused (422) is bad input, not a denial: nothing."""
    platform.headers.pop("Authorization")  # not signed in yet
    response = platform.post("/sign-in", json={"email": ALICE.email, "password": "wrong"})
    assert response.status_code == 401
    assert platform.post("/sign-in", json={"email": ALICE.email,
                                            "password": ""}).status_code == 422
    assert [(e.type, e.target, e.status, e.principal) for e in audit.events] == [
        ("request_denied", "/sign-in", "HTTP 401 on POST", "")]
    assert "wrong" not in audit.events[0].to_json_line().decode()


def test_a_session_token_from_sign_in_authenticates_the_user(platform, audit, nowhere) -> None:
    token = platform.post("/sign-in", json=SIGN_IN).json()["token"]
    created = platform.post("/tokens", json={"name": "ci"},
                            headers={"Authorization": f"Bearer {token}"}).json()
    assert audit.records()[-1] == nowhere.expect("access_token_created", created["id"])


def test_root_manages_users(platform: TestClient, audit, nowhere) -> None:
    user = platform.post("/users", headers=AS_ROOT, json={
        "name": "Bob", "email": "bob@example.org", "password": "pw"}).json()["id"]
    platform.put(f"/users/{user}", headers=AS_ROOT, json={"name": "Robert"})
    platform.delete(f"/users/{user}", headers=AS_ROOT)
    assert audit.records() == [
        nowhere.expect(t, user, principal=ROOT.id)
        for t in ("user_created", "user_updated", "user_deleted")
    ]


def test_a_user_who_is_not_root_cannot_add_users_and_the_attempt_is_recorded(
    platform: TestClient, audit
) -> None:
    response = platform.post("/users", json={"name": "Eve", "email": "e@x", "password": "p"})
    assert response.status_code == 403
    assert [(e.type, e.target, e.status, e.principal) for e in audit.events] == [
        ("request_denied", "/users", "HTTP 403 on POST", ALICE.id)]


def test_access_tokens_are_recorded_by_id(platform: TestClient, audit, nowhere) -> None:
    created = platform.post("/tokens", json={"name": "ci"}).json()
    platform.delete(f"/tokens/{created['id']}")
    assert audit.records() == [nowhere.expect("access_token_created", created["id"]),
                               nowhere.expect("access_token_deleted", created["id"])]


def test_a_deleted_token_no_longer_authenticates(platform: TestClient, audit) -> None:
    created = platform.post("/tokens", json={"name": "ci"}).json()
    platform.delete(f"/tokens/{created['id']}")
    response = platform.post("/orgs", json={"name": "x"},
                             headers={"Authorization": f"Bearer {created['token']}"})
    assert response.status_code == 401
    assert audit.types() == ["access_token_created", "access_token_deleted", "request_denied"]
    assert audit.events[-1].principal == ""  # the deleted token names nobody any more
