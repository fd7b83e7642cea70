"""Client IP spoofing, attempted against every proxy configuration: no trusted proxy, one
proxy, a CIDR of proxies (a chain), IPv6 and IPv4-mapped peers, ``X-Forwarded-For``
and RFC 7239 ``Forwarded``. A client reaches a request with whatever headers it likes;
the recorded ``client_ip`` is still the first hop nobody trusted wrote, through the ASGI
and the WSGI middleware alike, and through a real uvicorn server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.test import Client as WSGIClient

from audit_middleware import AuditMiddleware, WSGIAuditMiddleware, audited, emit
from audit_middleware.testing import capture_audit_events
from tests.faults.fleet import Collector, HttpApp, Stored, report

ATTACKER = "6.6.6.6"
CLIENT = "198.51.100.7"
PROXY = "10.0.0.1"
#: Headers some stacks trust for the client address; none of them may ever count.
NEVER_TRUSTED = ("x-real-ip", "true-client-ip", "cf-connecting-ip", "x-client-ip",
                 "x-cluster-client-ip", "client-ip", "fastly-client-ip", "x-originating-ip")

# (name, trusted proxies, header kind, socket peer, request headers, client_ip, peer_ip)
Case = tuple[str, list[str], str, str, list[tuple[str, str]], str, str]
CASES: list[Case] = [
    ("no proxy: X-Forwarded-For ignored", [], "x-forwarded-for", CLIENT,
     [("x-forwarded-for", ATTACKER)], CLIENT, ""),
    ("no proxy: Forwarded ignored", [], "forwarded", CLIENT,
     [("forwarded", f"for={ATTACKER}")], CLIENT, ""),
    ("a direct client naming the proxy in XFF", [PROXY], "x-forwarded-for", ATTACKER,
     [("x-forwarded-for", f"{PROXY}, {CLIENT}")], ATTACKER, ""),
    ("behind the proxy: a prepended hop is not believed", [PROXY], "x-forwarded-for", PROXY,
     [("x-forwarded-for", f"{ATTACKER}, {CLIENT}")], CLIENT, PROXY),
    ("behind the proxy: two XFF header lines", [PROXY], "x-forwarded-for", PROXY,
     [("x-forwarded-for", ATTACKER), ("x-forwarded-for", CLIENT)], CLIENT, PROXY),
    ("behind the proxy: the client claims to be the proxy", [PROXY], "x-forwarded-for",
     PROXY, [("x-forwarded-for", f"{PROXY}, {CLIENT}")], CLIENT, PROXY),
    ("behind the proxy: Forwarded sent, XFF configured", [PROXY], "x-forwarded-for", PROXY,
     [("forwarded", f"for={ATTACKER}")], PROXY, ""),
    ("behind the proxy: an unattributable hop", [PROXY], "x-forwarded-for", PROXY,
     [("x-forwarded-for", f"{ATTACKER}, unknown")], "", PROXY),
    ("behind the proxy: 5000 forged hops", [PROXY], "x-forwarded-for", PROXY,
     [("x-forwarded-for", f"{ATTACKER}, " * 5000 + CLIENT)], CLIENT, PROXY),
    ("behind the proxy: garbage", [PROXY], "x-forwarded-for", PROXY,
     [("x-forwarded-for", "\x00\x7f;;,,[[::]]:x, ' OR 1=1")], "", PROXY),
    ("a chain of proxies (CIDR)", ["10.0.0.0/8"], "x-forwarded-for", "10.0.0.2",
     [("x-forwarded-for", f"{ATTACKER}, {CLIENT}, 10.0.0.3")], CLIENT, "10.0.0.2"),
    ("IPv6 proxies", ["2001:db8::/32"], "x-forwarded-for", "2001:db8::1",
     [("x-forwarded-for", f"{ATTACKER}, 2400:cb00::7")], "2400:cb00::7", "2001:db8::1"),
    ("an IPv4-mapped IPv6 peer", ["10.0.0.0/8"], "x-forwarded-for", "::ffff:10.0.0.1",
     [("x-forwarded-for", f"{ATTACKER}, {CLIENT}")], CLIENT, "::ffff:10.0.0.1"),
    ("Forwarded: a prepended element is not believed", [PROXY], "forwarded", PROXY,
     [("forwarded", f'for={ATTACKER}, for="[2001:db8::7]:4711";proto=https')],
     "2001:db8::7", PROXY),
    ("Forwarded configured: XFF ignored", [PROXY], "forwarded", PROXY,
     [("x-forwarded-for", ATTACKER), ("forwarded", f"for={CLIENT}")], CLIENT, PROXY),
    ("Forwarded: an obfuscated identifier", [PROXY], "forwarded", PROXY,
     [("forwarded", f"for={ATTACKER}, for=_hidden")], "", PROXY),
    ("Forwarded: a quote left open", [PROXY], "forwarded", PROXY,
     [("forwarded", f'for="{ATTACKER}')], "", PROXY),
]


def asgi_app(trusted: list[str], kind: str) -> AuditMiddleware:
    @audited("credentials_accessed", target="id")
    async def read(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return AuditMiddleware(Starlette(routes=[Route("/c/{id}", read)]), trusted_proxies=trusted,
                           forwarded_header=kind, principal=lambda ctx: "u-1")  # type: ignore[arg-type]


def wsgi_app(trusted: list[str], kind: str) -> WSGIAuditMiddleware:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        emit("credentials_accessed", "c-1", principal="u-1")
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    return WSGIAuditMiddleware(app, trusted_proxies=trusted, forwarded_header=kind)  # type: ignore[arg-type]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_asgi_client_ip_cannot_be_spoofed(case: Case) -> None:
    _, trusted, kind, peer, headers, client_ip, peer_ip = case
    spoof = [(name, ATTACKER) for name in NEVER_TRUSTED]
    with TestClient(asgi_app(trusted, kind), client=(peer, 4711)) as client, \
            capture_audit_events() as events:
        assert client.get("/c/c-1", headers=httpx.Headers(headers + spoof)).status_code == 200
    assert [(e.client_ip, e.peer_ip) for e in events] == [(client_ip, peer_ip)]


@pytest.mark.parametrize("case", [c for c in CASES if len({h for h, _ in c[4]}) == len(c[4])],
                         ids=lambda c: c[0])
def test_wsgi_client_ip_cannot_be_spoofed(case: Case) -> None:
    _, trusted, kind, peer, headers, client_ip, peer_ip = case
    environ = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers}
    environ |= {f"HTTP_{name.upper().replace('-', '_')}": ATTACKER for name in NEVER_TRUSTED}
    with capture_audit_events() as events:
        response = WSGIClient(wsgi_app(trusted, kind)).get(
            "/", environ_base={"REMOTE_ADDR": peer, **environ})
        assert response.status_code == 200
    assert [(e.client_ip, e.peer_ip) for e in events] == [(client_ip, peer_ip)]


def inside(audited: WSGIAuditMiddleware, wrap: Callable[[Any], Any]) -> WSGIAuditMiddleware:
    """``audited`` with ``wrap`` around the app it wraps (called after the middleware)."""
    audited.app = wrap(audited.app)
    return audited


# Werkzeug's ProxyFix (Flask's documented proxy set-up) puts a hop of X-Forwarded-For,
# counted from the right, in REMOTE_ADDR, whoever sent it, and edits the environ the
# audit middleware reads its peer from, wrapped outside or inside it. The peer is what
# ProxyFix replaced (it keeps it in ``werkzeug.proxy_fix.orig``), as the server gave it.
# (name, trusted proxies, socket peer, X-Forwarded-For, client_ip, peer_ip)
ProxyFixCase = tuple[str, list[str], str, str, str, str]
PROXY_FIX_CASES: list[ProxyFixCase] = [
    ("a direct client naming a trusted proxy as its last hop", [PROXY], ATTACKER,
     f"{CLIENT}, {PROXY}", ATTACKER, ""),
    ("a direct client, nothing trusted", [], ATTACKER, CLIENT, ATTACKER, ""),
    ("behind the proxy: its hop, and the proxy as the peer", [PROXY], PROXY,
     f"{ATTACKER}, {CLIENT}", CLIENT, PROXY),
]


def rewrite_remote_addr_from_xff(app: Any) -> Any:
    """A wrapper (or a Django middleware) that puts the last X-Forwarded-For hop in
    ``REMOTE_ADDR`` in place and keeps no original."""
    def rewriting(environ: dict[str, Any], start_response: Any) -> Any:
        environ["REMOTE_ADDR"] = environ["HTTP_X_FORWARDED_FOR"].rsplit(",", 1)[-1].strip()
        return app(environ, start_response)
    return rewriting


# Where the rewrites sit. Those the middleware is called before are read past too: it
# reads the peer as it is called, not at the first event (a ProxyFix inside another one
# keeps the outer one's hop as its original, which a middleware inside both cannot see
# past: docs/record.md).
LAYOUTS: dict[str, Callable[[WSGIAuditMiddleware], Any]] = {
    "ProxyFix outside": ProxyFix,
    "inside": lambda audited: inside(audited, ProxyFix),
    "outside two ProxyFix": lambda audited: inside(audited, lambda app: ProxyFix(ProxyFix(app))),
    "between two ProxyFix": lambda audited: ProxyFix(inside(audited, ProxyFix)),
    "outside a rewrite keeping no original": lambda audited: inside(
        audited, rewrite_remote_addr_from_xff),
}


@pytest.mark.parametrize("layout", LAYOUTS, ids=list(LAYOUTS))
@pytest.mark.parametrize("case", PROXY_FIX_CASES, ids=[c[0] for c in PROXY_FIX_CASES])
def test_werkzeug_proxy_fix_does_not_choose_the_peer(case: ProxyFixCase,
                                                      layout: str) -> None:
    _, trusted, peer, forwarded_for, client_ip, peer_ip = case
    app = LAYOUTS[layout](wsgi_app(trusted, "x-forwarded-for"))
    with capture_audit_events() as events:
        response = WSGIClient(app).get("/", environ_base={
            "REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": forwarded_for})
        assert response.status_code == 200
    assert [(e.client_ip, e.peer_ip) for e in events] == [(client_ip, peer_ip)]


# A proxy on the same host reaching the app over a unix socket: the server hands over no
# peer address (ASGI scope["client"] None, WSGI REMOTE_ADDR ""). Only "unix" trusts it.
# (name, trusted proxies, request headers, client_ip, peer_ip)
UnixCase = tuple[str, list[str], list[tuple[str, str]], str, str]
UNIX_CASES: list[UnixCase] = [
    ("unix peer, nothing trusted: XFF ignored", [],
     [("x-forwarded-for", ATTACKER)], "", ""),
    ("unix peer, only IPs trusted: XFF ignored", [PROXY, "0.0.0.0/0"],
     [("x-forwarded-for", ATTACKER)], "", ""),
    ("unix trusted: the proxy's hop", ["unix"],
     [("x-forwarded-for", f"{ATTACKER}, {CLIENT}")], CLIENT, "unix"),
    ("unix trusted, and a chain of proxies behind it", ["unix", "10.0.0.0/8"],
     [("x-forwarded-for", f"{ATTACKER}, {CLIENT}, 10.0.0.3")], CLIENT, "unix"),
    ("unix trusted: an unattributable hop", ["unix"],
     [("x-forwarded-for", f"{CLIENT}, unknown")], "", "unix"),
    # No client known, but the record says it came through the unix socket's proxy.
    ("unix trusted: no forwarding header", ["unix"], [], "", "unix"),
    ("unix trusted: an empty one", ["unix"], [("x-forwarded-for", "")], "", "unix"),
]


def on_a_unix_socket(app: Any) -> Any:
    """``app`` as a server on a unix socket calls it: no client, and the ASGI
    ``scope["server"]`` of a unix socket, ``[path, None]`` (uvicorn --uds)."""
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        await app({**scope, "client": None, "server": ("/run/app.sock", None)}, receive, send)
    return wrapped


@pytest.mark.parametrize("case", UNIX_CASES, ids=[c[0] for c in UNIX_CASES])
def test_a_proxy_on_a_unix_socket_is_trusted_only_as_unix(case: UnixCase) -> None:
    _, trusted, headers, client_ip, peer_ip = case
    spoof = [(name, ATTACKER) for name in NEVER_TRUSTED]
    with TestClient(on_a_unix_socket(asgi_app(trusted, "x-forwarded-for")),
                    client=None) as client, \
            capture_audit_events() as events:  # type: ignore[arg-type]
        assert client.get("/c/c-1", headers=httpx.Headers(headers + spoof)).status_code == 200
    environ = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers}
    with capture_audit_events() as wsgi_events:
        response = WSGIClient(wsgi_app(trusted, "x-forwarded-for")).get(
            "/", environ_base={"REMOTE_ADDR": "", **environ})
        assert response.status_code == 200
    assert [(e.client_ip, e.peer_ip) for e in events + wsgi_events] == [(client_ip, peer_ip)] * 2


# On a unix socket, gunicorn (sync, gthread) and Werkzeug put in REMOTE_ADDR the path the
# connecting process bound its own socket to: any text it likes, an IP too. It is no
# address; the connection is a unix socket peer's whatever the path says.
# (name, trusted proxies, REMOTE_ADDR, client_ip, peer_ip)
BoundCase = tuple[str, list[str], str, str, str]
BOUND_CASES: list[BoundCase] = [
    ("bound to a trusted proxy's IP", [PROXY], PROXY, "", ""),
    ("bound to a trusted proxy's IP, within a CIDR", ["10.0.0.0/8"], PROXY, "", ""),
    ("bound to an IP, nothing trusted: not its client IP", [], CLIENT, "", ""),
    ("bound to 'unix', nothing trusted", [], "unix", "", ""),
    ("Werkzeug's <local>, unix trusted", ["unix"], "<local>", ATTACKER, "unix"),
    ("bound to an IP, unix trusted: trusted as unix", ["unix"], CLIENT, ATTACKER, "unix"),
]


@pytest.mark.parametrize("key", ["gunicorn.socket", "werkzeug.socket"])
@pytest.mark.parametrize("case", BOUND_CASES, ids=[c[0] for c in BOUND_CASES])
def test_a_wsgi_unix_socket_peer_is_no_address_whatever_it_bound(case: BoundCase,
                                                                  key: str) -> None:
    import socket

    _, trusted, remote_addr, client_ip, peer_ip = case
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, \
            capture_audit_events() as events:
        response = WSGIClient(wsgi_app(trusted, "x-forwarded-for")).get(
            "/", environ_base={"REMOTE_ADDR": remote_addr, key: sock,
                               "HTTP_X_FORWARDED_FOR": ATTACKER})
        assert response.status_code == 200
    assert [(e.client_ip, e.peer_ip) for e in events] == [(client_ip, peer_ip)]


def test_through_werkzeug_on_a_unix_socket_a_bound_path_is_no_trusted_ip(tmp: Path) -> None:
    """The real server: a local process binds its socket to the path ``10.0.0.1`` before
    it connects to the app's unix socket; Werkzeug (as gunicorn) hands the app REMOTE_ADDR
    "10.0.0.1". Only the proxy at 10.0.0.1 is trusted: its X-Forwarded-For is its own."""
    import os
    import socket
    import threading

    from werkzeug.serving import make_server

    sock_path = tmp / "app.sock"
    server = make_server(f"unix://{sock_path}", 0, wsgi_app([PROXY], "x-forwarded-for"),
                         threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cwd = os.getcwd()
    try:
        os.chdir(tmp)  # the client's socket is bound to the relative path "10.0.0.1"
        with capture_audit_events() as events, \
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.bind(PROXY)
            client.connect(str(sock_path))
            client.sendall(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n"
                           b"X-Forwarded-For: " + ATTACKER.encode() + b"\r\n\r\n")
            client.settimeout(10)
            assert client.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        os.chdir(cwd)
        server.shutdown()
        thread.join(10)
    assert [(e.client_ip, e.peer_ip) for e in events] == [("", "")]


@contextmanager
def serving(server: Any, **run: Any) -> Iterator[None]:
    """``server`` (a ``uvicorn.Server``) running in a thread for the block: started
    before it (10 s at most), stopped after."""
    import threading
    import time

    thread = threading.Thread(target=server.run, kwargs=run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        yield
    finally:
        server.should_exit = True
        thread.join(10)


def test_through_uvicorn_on_a_unix_socket_the_proxy_s_hop_is_the_client(tmp: Path) -> None:
    """The real server: uvicorn --uds hands the app no peer address (scope["client"]
    None); with "unix" trusted, the hop the proxy appended is the client IP."""
    import uvicorn

    sock = tmp / "app.sock"
    server = uvicorn.Server(uvicorn.Config(asgi_app(["unix"], "x-forwarded-for"),
                                           uds=str(sock), proxy_headers=False,
                                           log_level="warning", lifespan="off"))
    with serving(server), capture_audit_events() as events, \
            httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as client:
        response = client.get("http://app/c/c-1",
                              headers={"x-forwarded-for": f"{ATTACKER}, {CLIENT}"})
        assert response.status_code == 200
    assert [(e.client_ip, e.peer_ip) for e in events] == [(CLIENT, "unix")]


@pytest.mark.parametrize("server", [("127.0.0.1", 8000), ("testserver", 80), ["::1", 443],
                                    ("example.org", 0)])
def test_no_peer_on_tcp_is_not_a_unix_socket_peer(server: Any) -> None:
    """An ASGI server on TCP may hand over no peer (uvicorn: a client that reset the
    connection before it was asked for its address); its scope["server"] still names a
    port. "unix" must not trust such a peer: its forwarding header is its own. The port
    may be 0: Mangum (AWS Lambda) takes scope["server"] from the request's own Host
    header (``Host: example.org:0``); only the spec's None, and granian's "0", are a
    unix socket's."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await inner({**scope, "client": None, "server": server}, receive, send)

    inner = asgi_app(["unix", PROXY], "x-forwarded-for")
    with TestClient(app) as client, capture_audit_events() as events:
        response = client.get("/c/c-1", headers={"x-forwarded-for": f"{ATTACKER}"})
        assert response.status_code == 200
    assert [(e.client_ip, e.peer_ip) for e in events] == [("", "")]


@pytest.mark.parametrize("server", [None, ("lambda.example", 443), ("/run/app.sock", None)])
def test_a_client_port_of_0_beside_a_server_of_another_kind_than_granian_s_is_kept(
        server: Any) -> None:
    """Mangum (AWS Lambda) hands over the client as (its address, 0), beside a server
    from the Host header or none; uvicorn's own proxy headers put (the forwarded client,
    0) there, on a unix socket too. Only beside granian's unix socket (its server's
    port "0") is such a client its proxy-headers wrapper believing a bound path."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await inner({**scope, "client": (CLIENT, 0), "server": server}, receive, send)

    for trusted in ([], [PROXY]):  # the per-event fast path, and the resolution
        inner = asgi_app(trusted, "x-forwarded-for")
        with TestClient(app) as client, capture_audit_events() as events:
            assert client.get("/c/c-1", headers={"x-forwarded-for": ATTACKER}).status_code \
                == 200
        assert [e.client_ip for e in events] == [CLIENT], (trusted, server)


def test_through_uvicorn_on_tcp_a_reset_client_is_not_a_unix_socket_peer() -> None:
    """The real server: uvicorn on TCP hands the app scope["client"] None when the client
    sent its request and reset the connection before uvicorn accepted it (getpeername
    fails); the request still runs. With "unix" trusted, that client's X-Forwarded-For
    must not become the client IP."""
    import socket
    import struct
    import time

    import uvicorn

    inner = asgi_app(["unix"], "x-forwarded-for")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/block":
            # Holds the event loop: the next connection waits in the backlog.
            time.sleep(1.0)  # noqa: ASYNC251
        await inner(scope, receive, send)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    address = listener.getsockname()
    server = uvicorn.Server(uvicorn.Config(app, proxy_headers=False, log_level="warning",
                                           lifespan="off"))
    with serving(server, sockets=[listener]), capture_audit_events() as events:
        blocker = socket.create_connection(address)
        blocker.sendall(b"GET /block HTTP/1.1\r\nHost: app\r\n\r\n")
        time.sleep(0.3)  # uvicorn is in the sleep now
        reset = socket.create_connection(address)
        reset.sendall(b"GET /c/c-1 HTTP/1.1\r\nHost: app\r\n"
                      b"X-Forwarded-For: " + ATTACKER.encode() + b"\r\n\r\n")
        reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset.close()  # an RST, before uvicorn accepts
        blocker.settimeout(10)
        assert blocker.recv(100).startswith(b"HTTP/1.1 404")
        blocker.close()
        deadline = time.monotonic() + 10
        while not events and time.monotonic() < deadline:
            time.sleep(0.02)
    assert [(e.client_ip, e.peer_ip) for e in events] == [("", "")]


def test_through_uvicorn_and_the_collector_forwarding_headers_change_nothing(tmp: Path
                                                                             ) -> None:
    """The real thing: uvicorn (proxy_headers off, as the examples run it: uvicorn's own
    rewriting would bypass the trusted-proxy rule), the shipper, the collector."""
    collector = Collector(tmp / "data").start()
    app = HttpApp(collector.url, tmp / "spool")
    spoof = {name: ATTACKER for name in (*NEVER_TRUSTED, "x-forwarded-for")}
    spoof["forwarded"] = f"for={ATTACKER}"
    for n in range(20):
        assert httpx.post(f"{app.base_url}/items/{n}", headers=spoof).status_code == 201
    app.stop()
    assert collector.stop() == 0
    stored = Stored.read(collector.data_dir)
    ips = {(r["client_ip"], r.get("peer_ip", "")) for r in stored.records}
    report("client IP spoofing (17 proxy setups, ASGI+WSGI, uvicorn e2e)",
           attempts=len(CASES) * 2 + 20, spoofed=0, stored=len(stored.records))
    assert ips == {("127.0.0.1", "")} and len(stored.records) == 20
