"""A flood of silent connections to the ingest TCP port (TLS or not), against
``audit-collector serve`` as a real process with its file limit lowered (``prlimit``):
an honest shipper still delivers while the flood holds its sockets open.

Raw non-blocking sockets play the attacker (connecting and never saying a word); the
honest client is ``CollectorSink``. The collector runs with a handshake timeout of
60 s, so that the flood holds for the whole test, as a flood that reconnects holds for
good; the shipper is given 10 s."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from audit_middleware import configure, emit
from audit_middleware.shipper import CollectorSink
from audit_middleware.testing import reset_configuration
from tests.certificates import self_signed_certificate
from tests.e2e.harness import CollectorProcess, flooding, lower_file_limit, stored_events

pytestmark = pytest.mark.e2e

TOKEN = "s3cret-token"


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    reset_configuration()


def _collector(root: Path, *args: str, tls: bool) -> tuple[CollectorProcess, int, Path]:
    """A started collector with a TCP ingest port (TLS with a fresh certificate, or
    plain on loopback); returns it, the port and the certificate."""
    cert, key = self_signed_certificate(root)
    tls_args = ["--tls-cert", str(cert), "--tls-key", str(key)] if tls else []
    collector = CollectorProcess(root / "data", "--tcp", "127.0.0.1:0",
                                 "--handshake-timeout", "60s", *tls_args, *args,
                                 env={"AUDIT_CONFIG": "", "AUDIT_TOKEN": TOKEN})
    collector.start()
    match = re.search(r"(?:tls|tcp):127\.0\.0\.1:(\d+)", collector.ready_line)
    assert match, collector.ready_line
    return collector, int(match[1]), cert


def _flood(stack: ExitStack, port: int, count: int) -> None:
    """``count`` connections that never send a byte. Non-blocking: one the collector
    does not accept (its backlog full) must not hold up the test."""
    for _ in range(count):
        sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))


def _deliver(root: Path, port: int, cert: Path | None, *, url: str = ""
             ) -> tuple[bool, list[str]]:
    """An honest shipper sends 5 events (to the TCP ``port``, or to ``url``); whether
    they were all acknowledged within 10 s, and their ids."""
    tls = {"tls": True, "tls_ca": cert} if cert is not None else {}
    sink = CollectorSink(url or f"tcp://127.0.0.1:{port}", token=TOKEN,
                         spool_dir=root / "spool", backoff_max=0.2,
                         **tls)  # type: ignore[arg-type]
    configure(sink=sink)
    ids = [emit("access_token_created", f"tok-{i}").id for i in range(5)]
    delivered = sink.wait_for_delivery(timeout=10)
    sink.close(timeout=1)
    return delivered, ids


def _stored_ids(collector: CollectorProcess) -> list[str]:
    return [e["id"] for e in stored_events(collector.data_dir)]


def _clean(output: str) -> None:
    assert "out of system resource" not in output
    assert "Traceback" not in output and "Exception in callback" not in output


def test_a_flood_of_unfinished_tls_handshakes_cannot_lock_out_an_honest_shipper(
        root: Path) -> None:
    """File limit 128, max_connections 32, 300 connections that never start their TLS
    handshake. Before, an unfinished handshake was not counted against max_connections:
    each held a file until handshake_timeout, the process ran out of files (asyncio:
    "socket.accept() out of system resource", no accept for a while) and the shipper's
    connection was not even accepted: it spooled. Now they count, and the oldest is
    closed to make room for each new connection."""
    collector, port, cert = _collector(root, "--max-connections", "32", tls=True)
    try:
        lower_file_limit(collector, 128)
        with flooding(("127.0.0.1", port)):
            delivered, ids = _deliver(root, port, cert)
            assert delivered, "".join(collector.output)
        assert collector.stop() == 0  # a stop with handshakes unfinished is clean
    finally:
        collector.kill()
    assert _stored_ids(collector) == ids
    output = "".join(collector.output)
    _clean(output)
    failures = [line for line in output.splitlines() if "TLS handshake with" in line]
    # Logged at this host's 1st, 2nd, 4th... failure, not once per connection.
    assert 1 <= len(failures) <= 12, failures
    assert "closed unfinished to make room" in failures[0]


def _delivered_out_of_files(root: Path, *, tls: bool = False, unix: bool = False) -> str:
    """An honest shipper delivers to a collector whose file limit is 8 above what it
    holds idle, while 40 silent connections are held (accept() fails long before
    max_connections, 16, the least a quarter of it gives), on its TCP port or (``unix``)
    its unix socket: its events all stored, the log clean; returns the log."""
    collector, port, cert = _collector(root, tls=tls)
    try:
        lower_file_limit(collector, above_idle=8)
        with ExitStack() as stack:
            if unix:
                _flood_unix(stack, collector.socket, 40)
                delivered, ids = _deliver(root, 0, None, url=collector.url)
            else:
                _flood(stack, port, 40)
                delivered, ids = _deliver(root, port, cert if tls else None)
            assert delivered, "".join(collector.output)
        assert collector.stop() == 0
    finally:
        collector.kill()
    assert _stored_ids(collector) == ids
    output = "".join(collector.output)
    _clean(output)
    return output


def _flood_unix(stack: ExitStack, path: Path, count: int) -> None:
    """``_flood`` on a unix socket."""
    for _ in range(count):
        sock = stack.enter_context(socket.socket(socket.AF_UNIX))
        sock.setblocking(False)
        sock.connect_ex(str(path))


def test_out_of_files_the_oldest_unfinished_tls_handshake_makes_room(root: Path) -> None:
    """A file limit so low (8 above what the collector holds idle) that accept() fails
    long before max_connections: each failure closes the oldest unfinished handshake
    and accept() is tried again shortly, so the shipper gets in."""
    output = _delivered_out_of_files(root, tls=True)
    assert "ingest: cannot accept a connection: [Errno 24]" in output


def test_out_of_files_the_oldest_silent_plain_tcp_connection_makes_room(
        root: Path) -> None:
    """Plain TCP (loopback): a connection that has not said hello counts against
    max_connections and is closed to make room at it (as before); but with fewer files
    than max_connections, the process ran out of files first and accepted nothing more
    until the silent ones timed out. Now each failed accept() closes the oldest
    connection that has not said hello."""
    output = _delivered_out_of_files(root, tls=False)
    assert "ingest: cannot accept a connection: [Errno 24]" in output


def test_out_of_files_the_oldest_silent_unix_connection_makes_room(root: Path) -> None:
    """The apps' unix socket, out of files (the limit 8 above what the collector holds
    idle, 40 silent connections held): it was asyncio's server, which logged "socket.accept()
    out of system resource" and a traceback for each connection waiting, every second,
    and closed none: the apps were shut out until the silent ones timed out
    (handshake_timeout, 60 s here). Now it is accepted as the TCP port is: each failed
    accept() closes the oldest connection that has not said hello."""
    output = _delivered_out_of_files(root, unix=True)
    assert "ingest: cannot accept a connection: [Errno 24]" in output
