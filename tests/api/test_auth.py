"""Who may read: no token and a wrong token get 401, a reader that is not root gets 403,
root reads; none of the refusals says anything about the logs, and none is recorded."""

from __future__ import annotations

import orjson
import pytest

from collector.api.auth import SESSION_COOKIE, Sessions
from tests.api.conftest import Env

EVENT_ID = "019ac3f2-5e1a-7c3d-9a41-0f6d2b7e8c11"
READ_ENDPOINTS = ["/api/v1/audit-logs", "/api/v1/audit-logs/export.csv",
                  "/api/v1/audit-logs/export.jsonl", f"/api/v1/audit-logs/{EVENT_ID}",
                  "/api/v1/event-types"]


def assert_says_nothing_about_logs(response, env: Env) -> None:  # type: ignore[no-untyped-def]
    body = response.json()
    assert set(body) == {"error", "message"}
    text = response.text
    for row in env.rows[:10]:
        assert row["principal"] not in text and row["id"] not in text


@pytest.mark.parametrize("path", READ_ENDPOINTS)
def test_no_token_is_401_with_a_bearer_challenge(env: Env, path: str) -> None:
    response = env.get(path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="audit-collector"'
    assert_says_nothing_about_logs(response, env)


@pytest.mark.parametrize("path", READ_ENDPOINTS)
@pytest.mark.parametrize("token", [
    "wrong",
    "ac_0123456789abcdef_" + "A" * 43,  # well-formed, unknown key id
    "",  # "Bearer " with nothing after it
])
def test_a_wrong_token_is_401(env: Env, path: str, token: str) -> None:
    response = env.client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert_says_nothing_about_logs(response, env)


def test_a_right_key_id_with_a_wrong_secret_is_401(env: Env) -> None:
    forged = env.root[:-5] + ("AAAAA" if not env.root.endswith("AAAAA") else "BBBBB")
    assert env.get("/api/v1/audit-logs", forged).status_code == 401


@pytest.mark.parametrize("header", ["Basic cm9vdDpyb290", "bearer", "Token abc", "x" * 8000])
def test_other_authorization_schemes_are_401(env: Env, header: str) -> None:
    response = env.client.get("/api/v1/audit-logs", headers={"Authorization": header})
    assert response.status_code == 401


@pytest.mark.parametrize("order", ["root first", "root last", "root twice"])
def test_more_than_one_authorization_header_is_refused_whichever_comes_first(
        env: Env, order: str) -> None:
    """Authorization holds one credential (RFC 9110 allows no list of them). Of two, the
    API read the first: a proxy in front that checks or adds the last one saw another
    credential than the one the collector acted on. Refused, whatever the order."""
    root, wrong = f"Bearer {env.root}", "Bearer ac_0123456789abcdef_" + "A" * 43
    values = {"root first": [root, wrong], "root last": [wrong, root],
              "root twice": [root, root]}[order]
    response = env.client.get("/api/v1/audit-logs",
                              headers=[("Authorization", value) for value in values])
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
    assert "one Authorization header" in response.json()["message"]
    assert 'error="invalid_request"' in response.headers["www-authenticate"]
    assert_says_nothing_about_logs(response, env)
    assert [e["type"] for e in env.read_events()] == ["audit_log_access_denied"]


def test_two_authorization_headers_do_not_fall_back_to_the_session(env: Env) -> None:
    """Not taken for "no credential": the signed-in panel's cookie does not decide."""
    assert env.client.post("/api/v1/session", json={"token": env.root}).status_code == 200
    response = env.client.get("/api/v1/audit-logs", headers=[
        ("Authorization", "Basic cm9vdDpyb290"), ("Authorization", f"Bearer {env.root}")])
    assert response.status_code == 400


@pytest.mark.parametrize("path", READ_ENDPOINTS)
def test_a_reader_that_is_not_root_is_403(env: Env, path: str) -> None:
    response = env.get(path, env.plain)
    assert response.status_code == 403
    assert "root" in response.json()["message"]
    assert_says_nothing_about_logs(response, env)


@pytest.mark.parametrize("path", READ_ENDPOINTS[:3] + READ_ENDPOINTS[4:])
def test_root_reads(env: Env, path: str) -> None:
    assert env.get(path, env.root).status_code == 200


def test_authentication_comes_before_parameter_checks(env: Env) -> None:
    # A caller without a root token must not learn which parameters are valid.
    assert env.get("/api/v1/audit-logs", since="nonsense").status_code == 401
    assert env.get("/api/v1/audit-logs", env.plain, since="nonsense").status_code == 403
    assert env.get("/api/v1/audit-logs", env.root, since="nonsense").status_code == 400


def test_refused_requests_are_not_recorded_as_reads(env: Env) -> None:
    env.get("/api/v1/audit-logs")
    env.get("/api/v1/audit-logs", "wrong")
    env.get("/api/v1/audit-logs", env.plain)
    # Not reads; the two with credentials are recorded as refused attempts instead
    # (tests/api/test_denials_recorded.py).
    assert [e["type"] for e in env.read_events()] == ["audit_log_access_denied"] * 2


def test_removing_a_reader_revokes_its_token_at_once(env: Env) -> None:
    assert env.get("/api/v1/audit-logs", env.root).status_code == 200
    env.readers.remove("root-reader")
    assert env.get("/api/v1/audit-logs", env.root).status_code == 401


def test_the_panel_shell_and_the_api_description_need_no_token(env: Env) -> None:
    # They hold no audit data: the sign-in form and the OpenAPI document.
    assert env.get("/admin/audit-logs").status_code == 200
    assert env.get("/api/v1/openapi.json").status_code == 200


# -- panel sessions ------------------------------------------------------------------------
def sign_in(env: Env, token: str, **headers: str):  # type: ignore[no-untyped-def]
    return env.client.post("/api/v1/session", json={"token": token}, headers=headers)


def test_root_signs_in_to_an_httponly_strict_session_cookie(env: Env) -> None:
    response = sign_in(env, env.root)
    assert response.status_code == 200
    assert response.json() == {"name": "root-reader", "root": True}
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert env.root not in cookie  # the session id is not the token
    assert env.client.get("/api/v1/audit-logs").status_code == 200


def test_a_reader_that_is_not_root_gets_no_session(env: Env) -> None:
    response = sign_in(env, env.plain)
    assert response.status_code == 403
    assert "set-cookie" not in response.headers
    assert env.client.get("/api/v1/audit-logs").status_code == 401


def test_a_wrong_token_gets_no_session(env: Env) -> None:
    response = sign_in(env, "ac_0123456789abcdef_" + "A" * 43)
    assert response.status_code == 401
    assert "set-cookie" not in response.headers


def test_sign_in_from_another_origin_is_refused(env: Env) -> None:
    response = sign_in(env, env.root, Origin="https://evil.example")
    assert response.status_code == 403
    assert "set-cookie" not in response.headers


def test_behind_a_tls_proxy_sign_in_accepts_the_public_origin(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A reverse proxy ends TLS and forwards plain HTTP: the browser's Origin is the
    public https one, not the URL the collector sees. With api_public_url set, that
    origin may sign in, and the cookie is Secure; any other still may not."""
    from tests.api.conftest import make_env

    public = "https://audit.example.com"
    for proxied in make_env(tmp_path / "data", public_origin=public):
        assert sign_in(proxied, proxied.root, Origin="https://evil.example").status_code == 403
        response = sign_in(proxied, proxied.root, Origin=public)
        assert response.status_code == 200
        assert "Secure" in response.headers["set-cookie"]


def test_without_a_public_url_a_proxied_sign_in_is_refused_and_says_what_to_set(
        env: Env) -> None:
    response = sign_in(env, env.root, Origin="https://audit.example.com")
    assert response.status_code == 403
    assert "api_public_url" in response.json()["message"]


@pytest.mark.parametrize("body", [b"", b"not json", b'{"token": 5}', b"[]",
                                  b'{"token": "' + b"a" * 5000 + b'"}'])
def test_a_malformed_sign_in_is_400(env: Env, body: bytes) -> None:
    response = env.client.post("/api/v1/session", content=body,
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "token" in response.json()["message"]


def test_signing_out_ends_the_session(env: Env) -> None:
    sign_in(env, env.root)
    sid = env.client.cookies[SESSION_COOKIE]
    assert env.client.delete("/api/v1/session").status_code == 204
    env.client.cookies.set(SESSION_COOKIE, sid)  # replaying the old cookie does not help
    assert env.client.get("/api/v1/audit-logs").status_code == 401


@pytest.mark.parametrize("path", READ_ENDPOINTS + ["/api/v1/session"])
@pytest.mark.parametrize("site", ["same-site", "cross-site"])
def test_the_session_does_not_act_for_another_page(env: Env, path: str, site: str) -> None:
    """Browsers keep cookies per host, not per port, and SameSite=Strict counts every port
    of the host as the same site: a page of another service on the collector's host
    could otherwise start exports as the signed-in reader (<img src=.../export.csv>).
    Its request says where it comes from (Sec-Fetch-Site), and is refused and recorded."""
    sign_in(env, env.root)
    response = env.client.get(path, headers={"Sec-Fetch-Site": site})
    assert response.status_code == 403
    assert "panel's own pages" in response.json()["message"]
    assert_says_nothing_about_logs(response, env)
    denied = [e for e in env.read_events() if e["type"] == "audit_log_access_denied"]
    assert len(denied) == 1 and "another site" in denied[0]["status"]
    assert not [e for e in env.read_events() if e["type"] != "audit_log_access_denied"]
    # The panel's own requests, a typed URL or bookmark, and clients that say nothing
    # (older browsers, scripts) go on as before.
    for own in ({"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {}):
        assert env.client.get("/api/v1/audit-logs", headers=own).status_code == 200


@pytest.mark.parametrize("site", ["same-site", "cross-site"])
def test_a_link_from_another_site_does_not_choose_the_panels_selection(
        env: Env, site: str) -> None:
    """The panel runs the selection in its URL as the signed-in reader, and records it
    as their read: a link from elsewhere gets the panel without it."""
    response = env.client.get("/admin/audit-logs?principal=chosen-elsewhere",
                              headers={"Sec-Fetch-Site": site}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/audit-logs"
    for own in ({"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {}):
        kept = env.client.get("/admin/audit-logs?principal=mine", headers=own,
                              follow_redirects=False)
        assert kept.status_code == 200 and "text/html" in kept.headers["content-type"]


@pytest.mark.parametrize("path", ["/static/panel.html", "/static/panel.html?principal=x",
                                  "/static/./panel.html?principal=x",
                                  "/static/%70anel.html?principal=x"])
def test_the_panel_page_is_not_served_beside_its_assets(env: Env, path: str) -> None:
    """Under /static the page skipped the check above: a link from another site to
    /static/panel.html?principal=x ran that selection as the signed-in reader. Only
    /admin/audit-logs serves the page; /static serves its script and style."""
    sign_in(env, env.root)
    response = env.client.get(path, headers={"Sec-Fetch-Site": "cross-site"},
                              follow_redirects=False)
    assert response.status_code == 404
    assert "<html" not in response.text.lower()
    for asset, kind in (("/static/panel.js", "javascript"), ("/static/panel.css", "text/css")):
        served = env.client.get(asset)
        assert served.status_code == 200 and kind in served.headers["content-type"]


def test_another_page_cannot_sign_the_reader_out(env: Env) -> None:
    sign_in(env, env.root)
    refused = env.client.delete("/api/v1/session", headers={"Sec-Fetch-Site": "same-site"})
    assert refused.status_code == 403
    assert env.client.get("/api/v1/audit-logs").status_code == 200  # still signed in
    own = env.client.delete("/api/v1/session", headers={"Sec-Fetch-Site": "same-origin"})
    assert own.status_code == 204


def test_a_bearer_token_is_not_a_browser_session(env: Env) -> None:
    """Fetch Metadata matters only for the cookie: a token in a header is no ambient
    credential another page could make the browser send."""
    response = env.client.get("/api/v1/audit-logs", headers={
        "Authorization": f"Bearer {env.root}", "Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 200


def test_removing_a_reader_ends_its_sessions(env: Env) -> None:
    sign_in(env, env.root)
    env.readers.remove("root-reader")
    assert env.client.get("/api/v1/audit-logs").status_code == 401


def test_a_forged_session_cookie_is_401(env: Env) -> None:
    env.client.cookies.set(SESSION_COOKIE, "forged")
    assert env.client.get("/api/v1/audit-logs").status_code == 401


def test_who_am_i_needs_credentials(env: Env) -> None:
    assert env.client.get("/api/v1/session").status_code == 401
    assert env.get("/api/v1/session", env.plain).json() == {"name": "viewer", "root": False}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_when_idle_and_at_their_maximum_age() -> None:
    from collector.api.auth import SESSION_IDLE, SESSION_MAX_AGE
    from collector.readers import Reader

    clock = FakeClock()
    sessions = Sessions(clock)
    reader = Reader("r", True, "0123456789abcdef", "0" * 64, "2026-11-26T00:00:00Z")
    idle = sessions.start(reader)
    clock.now += SESSION_IDLE + 1
    assert sessions.get(idle) is None

    busy = sessions.start(reader)
    for _ in range(int(SESSION_MAX_AGE // (SESSION_IDLE / 2))):
        clock.now += SESSION_IDLE / 2
        sessions.get(busy)
    clock.now += 1
    assert sessions.get(busy) is None


def test_a_damaged_reader_file_refuses_every_read(env: Env) -> None:
    env.readers.path.write_text("{damaged")
    response = env.get("/api/v1/audit-logs", env.root)
    assert response.status_code == 503
    assert "cannot check credentials" in response.json()["message"]
    assert env.rows[0]["principal"] not in response.text


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_damaged_reader_file_is_explained_in_the_log_not_to_the_caller(
        env: Env, method: str, caplog: pytest.LogCaptureFixture) -> None:
    """Anyone with any token reaches this (the accounts are read to check it): the
    answer must not tell the data directory's absolute path."""
    env.readers.path.write_text("{damaged")
    response = env.client.request(method, "/api/v1/session", json={"token": "wrong"},
                                  headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 503
    assert set(response.json()) == {"error", "message"}
    assert str(env.readers.path) not in response.text
    assert str(env.readers.data_dir) not in response.text
    assert "readers.json" not in response.text
    assert f"{env.readers.path} cannot be read" in caplog.text  # for the operator


@pytest.mark.parametrize("root", ["false", "no", 1, None])
def test_a_reader_is_root_only_by_a_json_true(env: Env, root: object) -> None:
    """``"root": "false"`` in a hand-edited readers.json made the reader root (bool of
    a non-empty string): anything but true or false is a damaged file, refused."""
    data = orjson.loads(env.readers.path.read_bytes())
    for entry in data["readers"]:
        if entry["name"] == "viewer":
            entry["root"] = root
    env.readers.path.write_bytes(orjson.dumps(data))
    response = env.get("/api/v1/audit-logs", env.plain)
    assert response.status_code == 503
    assert "records" not in response.json()
