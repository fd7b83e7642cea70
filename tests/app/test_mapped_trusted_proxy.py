"""A trusted proxy written in IPv4-mapped IPv6 form (``::ffff:10.0.0.1``, as a dual-stack
listener reports an IPv4 proxy) is trusted, through the ASGI and the WSGI middleware."""

from __future__ import annotations

import pytest
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from werkzeug.test import Client

from audit_middleware import AuditMiddleware, WSGIAuditMiddleware, audited
from audit_middleware.client_ip import TrustedProxies
from audit_middleware.event import AuditEvent

PEER = "::ffff:10.0.0.1"
CLIENT = "198.51.100.7"


@audited("bucket_created", target="bucket")
async def create_bucket(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def asgi_event(trusted: list[str], peer: str, xff: str,
               events: list[AuditEvent]) -> tuple[str, str]:
    app = AuditMiddleware(Starlette(routes=[Route("/b/{bucket}", create_bucket,
                                                  methods=["POST"])]),
                          trusted_proxies=trusted)
    client = TestClient(app, client=(peer, 4711))
    assert client.post("/b/b1", headers={"X-Forwarded-For": xff}).status_code == 200
    return events[-1].client_ip, events[-1].peer_ip


def wsgi_event(trusted: list[str], peer: str, xff: str,
               events: list[AuditEvent]) -> tuple[str, str]:
    app = Flask(__name__)

    @app.post("/b/<bucket>")
    @audited("bucket_created", target="bucket")
    def create(bucket: str) -> str:
        return "ok"

    app.wsgi_app = WSGIAuditMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, trusted_proxies=trusted)
    response = Client(app).post("/b/b1", headers={"X-Forwarded-For": xff},
                                environ_base={"REMOTE_ADDR": peer})
    assert response.status_code == 200
    return events[-1].client_ip, events[-1].peer_ip


MIDDLEWARES = pytest.mark.parametrize("request_through", [asgi_event, wsgi_event],
                                      ids=["asgi", "wsgi"])


@MIDDLEWARES
@pytest.mark.parametrize("trusted", [
    ["10.0.0.1"], ["::ffff:10.0.0.1"], ["::ffff:10.0.0.0/104"], ["::ffff:10.0.0.1/128"],
    ["10.0.0.0/8"],
])
def test_mapped_peer_of_a_trusted_proxy_in_any_form(
        request_through, trusted: list[str], events: list[AuditEvent]) -> None:  # type: ignore[no-untyped-def]
    assert request_through(trusted, PEER, CLIENT, events) == (CLIENT, PEER)
    # The same proxy seen over IPv4, and a mapped trusted hop skipped.
    assert request_through(trusted, "10.0.0.1", f"{CLIENT}, ::ffff:10.0.0.1",
                           events) == (CLIENT, "10.0.0.1")


@MIDDLEWARES
def test_mapped_entry_trusts_no_more_than_its_ipv4_network(
        request_through, events: list[AuditEvent]) -> None:  # type: ignore[no-untyped-def]
    trusted = ["::ffff:10.0.0.0/104"]
    assert request_through(trusted, "::ffff:11.0.0.1", CLIENT, events) == (
        "::ffff:11.0.0.1", "")
    assert request_through(trusted, "2001:db8::1", CLIENT, events) == ("2001:db8::1", "")


@MIDDLEWARES
def test_a_wide_ipv6_block_trusts_ipv6_peers_only(
        request_through, events: list[AuditEvent]) -> None:  # type: ignore[no-untyped-def]
    """::/0 and ::/64 hold the IPv4-mapped block, yet trust no IPv4 peer: trust is never
    wider than what the operator wrote as such (IPv4 proxies are trusted as IPv4)."""
    for trusted in (["::/0"], ["::/64"]):
        assert request_through(trusted, PEER, CLIENT, events) == (PEER, "")  # mapped IPv4
        assert request_through(trusted, "10.0.0.1", CLIENT, events) == ("10.0.0.1", "")
    assert request_through(["::/0"], "2001:db8::1", CLIENT, events) == (
        CLIENT, "2001:db8::1")


def test_mapped_entries_are_kept_as_their_ipv4_networks() -> None:
    assert repr(TrustedProxies(["::ffff:10.0.0.1", "::ffff:10.0.0.0/104", "2001:db8::/32"])) \
        == "TrustedProxies(['10.0.0.1/32', '10.0.0.0/8', '2001:db8::/32'])"
