"""DNS rebinding: a page on any site can make its own name resolve to 127.0.0.1 and then
read what the collector's loopback API answers without credentials (``/metrics``, the
sign-in as a token oracle) as its own origin. Its requests still carry its name in
``Host``: an API listening on loopback answers only to localhost, an IP address or the
host of ``api_public_url`` (``collector.api.hosts``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from collector.api.app import create_app
from collector.api.context import ApiSettings
from collector.api.hosts import host_name
from tests.api.served import serving
from tests.collector.storage_helpers import open_store
from tests.e2e.harness import short_tmp


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    with open_store(tmp_path / "data"):
        pass
    yield tmp_path / "data"


def client(data: Path, host: str, **settings: object) -> TestClient:
    app = create_app(ApiSettings(data_dir=data, **settings), store=None)  # type: ignore[arg-type]
    return TestClient(app, base_url=f"http://{host}")


@pytest.mark.parametrize("host", ["localhost:8080", "LOCALHOST", "localhost.",
                                  "panel.localhost:8080", "127.0.0.1:8080", "127.0.0.2",
                                  "[::1]:8080", "192.0.2.10:8080", "audit.example.com"])
def test_loopback_answers_localhost_ip_addresses_and_the_public_host(data: Path,
                                                                     host: str) -> None:
    with client(data, host, loopback=True,
                public_origin="https://audit.example.com") as c:
        assert c.get("/api/v1/openapi.json").status_code == 200


@pytest.mark.parametrize("host", ["evil.example:8080", "evil.example", "localhost.evil.example",
                                  "127.0.0.1.nip.io", "example.com:80", "audit.example.com.evil"])
def test_loopback_refuses_any_other_name_with_421_and_says_what_to_open(data: Path,
                                                                         host: str) -> None:
    with client(data, host, loopback=True,
                public_origin="https://audit.example.com") as c:
        for path in ("/metrics", "/healthz", "/admin/audit-logs", "/api/v1/session"):
            answer = c.get(path)
            assert answer.status_code == 421, (path, answer.status_code)
            assert "http://localhost:<port>/" in answer.text
            assert answer.headers["content-security-policy"].startswith("default-src")
            assert answer.headers["cache-control"] == "no-store"


def test_two_host_headers_are_refused(data: Path) -> None:
    with client(data, "localhost", loopback=True) as c:
        answer = c.get("/metrics", headers=[("host", "localhost"), ("host", "evil.example")])
        assert answer.status_code == 421


def test_an_api_not_on_loopback_answers_any_name(data: Path) -> None:
    with client(data, "audit.internal:8443", loopback=False) as c:
        assert c.get("/api/v1/openapi.json").status_code == 200


@pytest.mark.parametrize(("header", "name"), [
    ("localhost:8080", "localhost"), ("[::1]:8080", "::1"), ("[::1]", "::1"), ("::1", "::1"),
    ("Example.COM", "example.com"), ("[bad", "[bad"), ("", "")])
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.e2e
def test_serve_on_loopback_refuses_a_rebound_name() -> None:
    with short_tmp() as root, serving(root / "data") as (_, url):
        port = url.rsplit(":", 1)[1]
        assert httpx.get(f"{url}/metrics").status_code == 200
        assert httpx.get(f"http://localhost:{port}/metrics").status_code == 200
        rebound = httpx.get(f"{url}/metrics", headers={"Host": f"evil.example:{port}"})
        assert rebound.status_code == 421 and "api_public_url" in rebound.text


@pytest.mark.parametrize("host", ["audit.example.com", "audit.example.com.",
                                  "audit.example.com:443"])
def test_a_public_url_with_a_trailing_dot_is_the_same_name(data: Path, host: str) -> None:
    with client(data, host, loopback=True, public_origin="https://audit.example.com.") as c:
        assert c.get("/api/v1/openapi.json").status_code == 200
