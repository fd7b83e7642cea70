"""The API's options: loopback by default, TLS off loopback, a trace link template that
can only make http(s) links."""

from __future__ import annotations

import pytest

from collector.config import ConfigError, load


def test_the_api_listens_on_loopback_by_default_and_can_be_turned_off() -> None:
    assert load(None, {}).api_address == ("127.0.0.1", 8080)
    assert load(None, {"AUDIT_API_LISTEN": ""}).api_address is None


@pytest.mark.parametrize("address", ["0.0.0.0:8080", "[::]:8080", "192.0.2.1:8080"])
def test_a_non_loopback_api_needs_tls(address: str) -> None:
    with pytest.raises(ConfigError, match="set api_tls_cert and api_tls_key"):
        load(None, {"AUDIT_API_LISTEN": address})


def test_api_tls_needs_both_files() -> None:
    with pytest.raises(ConfigError, match="both api_tls_cert and api_tls_key"):
        load(None, {"AUDIT_API_TLS_CERT": "/etc/cert.pem"})


@pytest.mark.parametrize("template", [
    "https://jaeger.example/trace/{trace_id}",
    "http://localhost:16686/trace/{trace_id}?uiFind={span_id}",
])
def test_a_trace_url_template_is_an_http_url_with_the_trace_id(template: str) -> None:
    assert load(None, {"AUDIT_TRACE_URL_TEMPLATE": template}).trace_url_template == template


@pytest.mark.parametrize("template", [
    "javascript:alert(1)//{trace_id}",
    "https://jaeger.example/trace/",
    "https://jaeger.example/{trace_id}/{user}",
    'https://jaeger.example/"><script>/{trace_id}',
    "//jaeger.example/{trace_id}",
])
def test_other_trace_url_templates_are_refused(template: str) -> None:
    with pytest.raises(ConfigError, match="trace_url_template"):
        load(None, {"AUDIT_TRACE_URL_TEMPLATE": template})


@pytest.mark.parametrize(("given", "origin"), [
    ("https://audit.example.com", "https://audit.example.com"),
    ("https://Audit.Example.com:8443/", "https://audit.example.com:8443"),
    ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    # as browsers send Origin: no default port, the host in punycode
    ("https://audit.example.com:443", "https://audit.example.com"),
    ("https://bücher.example", "https://xn--bcher-kva.example"),
    ("https://[::1]:8443", "https://[::1]:8443"),
])
def test_the_public_url_is_an_origin(given: str, origin: str) -> None:
    assert load(None, {"AUDIT_API_PUBLIC_URL": given}).api_public_url == origin


@pytest.mark.parametrize("given", [
    "audit.example.com", "ftp://audit.example.com", "https://audit.example.com/panel",
    "https://audit.example.com/?x=1", "https://user@audit.example.com",
    "https://audit.example.com:port", "https://", "https://audit.example.com:",
    "https://audit.example.com:70000",
    # plain http off loopback: the token in clear, and no Fetch Metadata from browsers
    "http://audit.example.com", "http://192.0.2.1:8080",
])
def test_a_public_url_that_is_not_an_origin_is_refused(given: str) -> None:
    with pytest.raises(ConfigError, match="api_public_url"):
        load(None, {"AUDIT_API_PUBLIC_URL": given})


def test_a_public_url_needs_the_api() -> None:
    with pytest.raises(ConfigError, match="api_listen is empty"):
        load(None, {"AUDIT_API_PUBLIC_URL": "https://audit.example.com",
                    "AUDIT_API_LISTEN": ""})


def test_query_timeout_is_30_s_by_default_and_must_be_above_0() -> None:
    assert load(None, {}).query_timeout == 30.0
    assert load(None, {"AUDIT_QUERY_TIMEOUT": "2m"}).query_timeout == 120.0
    with pytest.raises(ConfigError, match="query_timeout must be greater than 0"):
        load(None, {"AUDIT_QUERY_TIMEOUT": "0"})
