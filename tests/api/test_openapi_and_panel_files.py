"""The OpenAPI description (valid, and covering every API route) and the panel's files:
served under a strict Content-Security-Policy, no inline script or style, and no code
path that parses data as HTML."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

from collector.api.app import ROUTES
from collector.api.context import STATIC_DIR
from collector.api.headers import CSP
from tests.api.conftest import Env


def test_the_openapi_description_is_valid_openapi_3_1(env: Env) -> None:
    spec = env.get("/api/v1/openapi.json").json()
    validate(spec)
    assert spec["openapi"].startswith("3.1")


def test_every_api_route_and_method_is_described(env: Env) -> None:
    spec = env.get("/api/v1/openapi.json").json()
    described = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    served = {(route.path, method) for route in ROUTES
              if getattr(route, "path", "").startswith("/api/") and route.path != "/api/v1/openapi.json"
              for method in (route.methods or ()) if method != "HEAD"}
    assert served == described


def test_every_filter_of_the_page_endpoint_is_documented(env: Env) -> None:
    from collector.api.params import FILTER_PARAMS

    spec = env.get("/api/v1/openapi.json").json()
    params = {p["name"] for p in spec["paths"]["/api/v1/audit-logs"]["get"]["parameters"]}
    assert params == {*FILTER_PARAMS, "order", "limit", "cursor"}


@pytest.mark.parametrize("path", ["/admin/audit-logs", "/static/panel.js", "/static/panel.css",
                                  "/api/v1/audit-logs", "/nowhere"])
def test_every_response_carries_the_security_headers(env: Env, path: str) -> None:
    headers = env.get(path).headers
    assert headers["content-security-policy"] == CSP
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"


def test_the_csp_allows_nothing_inline_and_nothing_foreign() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["default-src"] == "'self'"
    for name in ("script-src", "style-src", "connect-src"):
        assert directives[name] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert "unsafe" not in CSP


def test_the_panel_page_has_no_inline_script_or_style() -> None:
    html = (STATIC_DIR / "panel.html").read_text()
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag
    assert re.search(r"<script\b[^>]*>\s*[^<\s]", html) is None  # no inline body
    assert "<style" not in html and " style=" not in html
    assert re.search(r"\son[a-z]+=", html) is None  # no inline event handlers


def test_the_panel_script_never_parses_data_as_html() -> None:
    script = (STATIC_DIR / "panel.js").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("//"))
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute(\"on", "srcdoc"):
        assert sink not in code, sink


def test_the_root_and_admin_paths_lead_to_the_audit_logs_tab(env: Env) -> None:
    for path in ("/", "/admin"):
        response = env.client.get(path, follow_redirects=False)
        assert response.status_code == 307
        assert response.headers["location"] == "/admin/audit-logs"
    page = env.get("/admin/audit-logs")
    assert page.headers["content-type"].startswith("text/html")
    assert ">Audit logs<" in page.text


def test_an_unexpected_error_carries_the_security_headers_too(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Starlette answers an unhandled exception outside the middleware stack: the 500
    must carry the headers all the same (and say nothing of the error)."""
    from starlette.testclient import TestClient

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the index went away: secret detail")

    monkeypatch.setattr(env.client.app.state.api.pool, "run", broken)
    with TestClient(env.client.app, raise_server_exceptions=False) as client:
        response = client.get("/api/v1/event-types",
                              headers={"Authorization": f"Bearer {env.root}"})
    assert response.status_code == 500
    assert response.json()["error"] == "internal"
    assert "secret detail" not in response.text
    headers = response.headers
    assert headers["content-security-policy"] == CSP
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"


def test_every_operation_taking_a_readers_credentials_documents_two_authorizations(
        env: Env) -> None:
    """A request with two Authorization headers is answered 400 wherever a reader's
    credentials are checked (``auth.bearer_token``); the description said 400 was for a
    parameter only, and the losses listing and "who is signed in" listed no 400 at all.
    Each such operation is asked so, and its description names the answer."""
    spec = env.get("/api/v1/openapi.json").json()
    two = [("Authorization", f"Bearer {env.root}"), ("Authorization", f"Bearer {env.root}")]
    checked = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if op.get("security", spec["security"]) != spec["security"] or "{" in path:
                continue  # its own token (HTTP ingest), none (sign-in), or a template
            answer = env.client.request(method.upper(), path, headers=two)
            assert answer.status_code == 400, (method, path, answer.text)
            assert "more than one authorization header" in (
                op["responses"]["400"]["description"].lower()), (method, path)
            checked.append((method, path))
    assert ("get", "/api/v1/sources/losses") in checked
    assert ("get", "/api/v1/session") in checked
