"""TLS on the query API's port, against ``audit-collector serve`` as a real process:
connections that never finish (or never start) their handshake are closed at
``handshake_timeout`` and count against the API's connection limit, so a flood of them
cannot keep an honest client out; a plain-HTTP client is told to use https.

Raw sockets play the attacker; the honest client is httpx with the test certificate."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from collector import api_client
from tests.api.served import serving
from tests.certificates import self_signed_certificate
from tests.e2e.harness import (
    CollectorProcess,
    closed_by_peer,
    host_and_port,
    lower_file_limit,
    wait_until,
)

pytestmark = pytest.mark.e2e


@contextmanager
def tls_api(root: Path, *args: str) -> Iterator[tuple[CollectorProcess, str, Path]]:
    cert, key = self_signed_certificate(root)
    with serving(root / "data", "--api-tls-cert", str(cert), "--api-tls-key", str(key),
                 *args) as (collector, url):
        assert url.startswith("https://")
        yield collector, url, cert


def _client_hello() -> bytes:
    """The first flight of a real TLS client (its ClientHello record)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing,
                                                server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[0] == 0x16 and len(hello) > 100  # a handshake record
    return hello


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` (FIN or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def _honest_get(url: str, cert: Path) -> int:
    with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)),
                      timeout=10.0) as client:
        return client.get(f"{url}/api/v1/audit-logs").status_code


def test_unfinished_handshakes_are_closed_at_the_handshake_timeout(root: Path) -> None:
    """Before: asyncio's default of 60 s held each of these sockets for a minute."""
    with tls_api(root, "--handshake-timeout", "1s") as (collector, url, cert), \
            ExitStack() as stack:
        silent = stack.enter_context(socket.create_connection(host_and_port(url)))
        half = stack.enter_context(socket.create_connection(host_and_port(url)))
        hello = _client_hello()
        half.sendall(hello[:len(hello) // 2])
        assert _closed_by_server(silent, 20.0), "a silent connection was held"
        assert _closed_by_server(half, 20.0), "half a ClientHello was held"
        assert _honest_get(url, cert) == 401  # the port still serves, over TLS
        wait_until(lambda: "with 127.0.0.1" in "".join(collector.output), 10,
                   "the failed handshakes logged")
        output = "".join(collector.output)
    assert "query API: TLS handshake with 127.0.0.1" in output
    assert "handshake_timeout" in output  # the hint names the option to change
    assert "Traceback" not in output


def test_a_flood_of_unfinished_handshakes_cannot_lock_out_an_honest_client(
        root: Path) -> None:
    """With the collector's file limit lowered to 128 (so the API's connection limit is
    32), 300 connections that never start their handshake: before, each held a file
    for 60 s uncounted by the guard, the process ran out of files and the honest client
    was not even accepted. Now the oldest unfinished handshakes are closed to make room."""
    with tls_api(root) as (collector, url, cert), ExitStack() as stack:
        lower_file_limit(collector, 128)
        held = [stack.enter_context(socket.create_connection(host_and_port(url), timeout=5))
                for _ in range(300)]
        assert _honest_get(url, cert) == 401
        # The oldest were closed to make room (the newest may still be open: they are
        # within the limit, and the handshake timeout is 10 s).
        wait_until(lambda: sum(map(closed_by_peer, held[:200])) == 200, 30,
                   "the oldest 200 unfinished handshakes closed")
        # A stop with handshakes still unfinished is clean.
        assert collector.stop() == 0
    output = "".join(collector.output)
    failures = [line for line in output.splitlines() if "TLS handshake with" in line]
    # Logged at this host's 1st, 2nd, 4th... failure (9 lines for 300 closed to make
    # room), not once per connection.
    assert 1 <= len(failures) <= 12, failures
    assert "closed unfinished to make room" in failures[0]
    assert "out of system resource" not in output and "Too many open files" not in output
    assert "Traceback" not in output and "Exception in callback" not in output


def test_out_of_files_the_oldest_unfinished_handshakes_still_make_room(root: Path) -> None:
    """A file limit so low that accept() fails (4 files above what the collector holds
    idle) before the connection limit (at least 16) is reached: each failure closes the
    oldest unfinished handshake, and the listener goes on accepting."""
    with tls_api(root) as (collector, url, cert), ExitStack() as stack:
        lower_file_limit(collector, above_idle=4)
        for _ in range(30):
            stack.enter_context(socket.create_connection(host_and_port(url), timeout=5))
        assert _honest_get(url, cert) == 401
    output = "".join(collector.output)
    assert "query API: cannot accept a connection: [Errno 24]" in output
    assert "Traceback" not in output


def test_plain_http_to_the_tls_port_is_told_to_use_https(root: Path) -> None:
    with tls_api(root) as (collector, url, cert):
        http_url = url.replace("https://", "http://")
        reply = httpx.get(f"{http_url}/api/v1/audit-logs", timeout=10.0)
        assert reply.status_code == 400
        assert f"{url}/" in reply.text and "https" in reply.text
        assert reply.headers["connection"] == "close"
        assert _honest_get(url, cert) == 401  # TLS clients are still served
        wait_until(lambda: "plain HTTP" in "".join(collector.output), 10,
                   "the plain-HTTP client logged")
        output = "".join(collector.output)
    assert "Traceback" not in output


def test_a_port_probe_is_not_logged_as_a_failed_handshake(root: Path) -> None:
    """A TCP health check (connect, close) is no client failing TLS."""
    with tls_api(root) as (collector, url, cert):
        for _ in range(3):
            socket.create_connection(host_and_port(url)).close()
        assert _honest_get(url, cert) == 401
    output = "".join(collector.output)  # the collector has stopped: its log is complete
    assert "TLS handshake with" not in output


@pytest.mark.parametrize(("flaws", "host", "client_hint", "collector_hint"), [
    pytest.param({"starts_in": -7200, "ends_in": -3600}, "127.0.0.1",
                 "certificate has expired: renew it", "finds this certificate expired",
                 id="expired"),
    pytest.param({}, "localhost", "does not hold the name or address used to reach it",
                 "the alert does not say why", id="host-name-mismatch"),
])
def test_a_refused_api_certificate_is_named_by_its_cause_on_both_ends(
        root: Path, flaws: dict[str, object], host: str, client_hint: str,
        collector_hint: str) -> None:
    """The CLI's API client said "not trusted: set api_tls_cert" of any refused
    certificate (the one it had, expired), and the API's log "give it the CA" of a
    bad_certificate alert (nothing of an expired one)."""
    cert, key = self_signed_certificate(root, **flaws)
    with serving(root / "data", "--api-tls-cert", str(cert), "--api-tls-key", str(key)
                 ) as (collector, url):
        access = api_client.ApiAccess(url=url.replace("127.0.0.1", host), token="t",
                                      tls_cert=cert)
        with pytest.raises(api_client.ApiClientError) as refused:
            api_client.post_json(access, "/api/v1/loss-acks", {})
        wait_until(lambda: "query API: TLS handshake with" in "".join(collector.output), 10,
                   "the failed handshake logged")
        output = "".join(collector.output)
    said = str(refused.value)
    assert client_hint in said and "api_tls_cert" not in said, said
    assert collector_hint in output and "give it the CA" not in output, output
