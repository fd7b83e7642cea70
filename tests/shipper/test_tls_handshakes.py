"""The collector's TLS listener under clients that do not finish their handshake: failures
logged without a flood, probes counted apart, unfinished handshakes counted against and
closed for max_connections, and ended without a traceback at a stop."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from audit_middleware.wire import ErrorCode, ErrorReply, FrameType, parse_header
from collector.ingest import IngestSettings
from tests.certificates import self_signed_certificate
from tests.e2e.harness import RawClient, wait_until
from tests.shipper.sink_helpers import Collector, SinkFactory, collector_says, emit_many


def _tls_collector(collector: Collector, root: Path, **options: Any) -> tuple[Any, int, Path]:
    """The collector on TCP with TLS and the token (``options``: its other settings): its
    server, its port and its certificate."""
    cert, key = self_signed_certificate(root)
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret",
                             tls_cert=cert, tls_key=key, **options)
    port = server.server.tcp_port()
    assert port is not None
    return server, port, cert


def test_failed_tls_handshakes_are_logged_per_host_without_a_flood(
        collector: Collector, make_sink: SinkFactory, root: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Silent clients (a port scanner, a client hung before its hello) time out in the
    handshake: each is counted, and a host's 1st, 2nd, 4th... failure logged. The
    listener serves a client that gets it right all the while."""
    import socket

    server, port, cert = _tls_collector(collector, root, handshake_timeout=0.3)
    with caplog.at_level(logging.WARNING, "collector.ingest"):
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
                assert silent.recv(1) == b""  # closed by the collector after its timeout
        sink = make_sink(url=f"tcp://127.0.0.1:{port}", token="s3cret", tls=True,
                         tls_ca=cert)
        ids = emit_many(5)
        assert sink.flush(timeout=10)
    assert collector.ids() == ids
    assert server.server.stats()["tls_handshake_failures"] == 5
    logged = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(logged) == 3, logged  # the 1st, 2nd and 4th
    assert all("said nothing in time" in m for m in logged), logged


def test_a_tcp_probe_of_the_tls_port_is_counted_apart_and_not_logged_as_a_failure(
        collector: Collector, root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A client that connects and closes without a word (a load balancer's TCP health
    check, a port probe) was a failed handshake: counted with the clients that fail TLS
    and logged as a warning, so a health check every few seconds read as a client in
    trouble. It is counted as a probe, at debug level only."""
    import socket

    server, port, _ = _tls_collector(collector, root)
    with caplog.at_level(logging.DEBUG, "collector.ingest"):
        for _ in range(3):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        deadline = time.monotonic() + 10
        while (server.server.stats().get("tls_probes", 0) < 3
               and time.monotonic() < deadline):
            time.sleep(0.02)
        # A client that does send a hello and then gives up still counts as a failure.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert plain.recv(1) == b""
        # Closed before the handshake's task counts and logs it: its warning, the last
        # thing the collector's thread does of it, waited for (its count comes first).
        assert collector_says(caplog, "TLS handshake with", "failed")
    stats = server.server.stats()
    assert stats["tls_probes"] == 3 and stats["tls_handshake_failures"] == 1, stats
    warned = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.WARNING and "TLS" in r.getMessage()]
    assert len(warned) == 1 and "plain TCP" in warned[0], warned
    assert collector_says(caplog, "closed the connection before its TLS hello")


def test_unfinished_tls_handshakes_count_against_max_connections(
        collector: Collector, make_sink: SinkFactory, root: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Before, a TLS handshake under way was not counted against max_connections: any
    number of silent connections held a file each until handshake_timeout. Now they
    count, the oldest is closed at once to make room for a new connection, and a
    shipper that speaks gets in (the newest silent one stays: within the limit)."""
    server, port, cert = _tls_collector(collector, root, max_connections=2, handshake_timeout=60.0)
    with caplog.at_level(logging.WARNING, "collector.ingest"):
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5)
                  for _ in range(3)]
        try:
            assert silent[0].recv(1) == b""  # closed (by the third) long before 60 s
            wait_until(lambda: server.server.stats()["tls_handshakes_pending"] == 2, 10,
                       "the two newest handshakes under way")
            sink = make_sink(url=f"tcp://127.0.0.1:{port}", token="s3cret", tls=True,
                             tls_ca=cert)
            ids = emit_many(3)
            assert sink.wait_for_delivery(timeout=10)
            assert silent[1].recv(1) == b""  # the oldest under way made room for it
        finally:
            for sock in silent:
                sock.close()
    assert collector.ids() == ids
    stats = server.server.stats()
    assert stats["tls_handshakes_evicted"] == 2, stats
    assert collector_says(caplog, "TLS handshake with 127.0.0.1:",
                          "closed unfinished to make room", "max_connections is 2")


def test_a_tls_handshake_under_way_is_not_closed_for_a_silent_connection(
        collector: Collector, root: Path) -> None:
    """At max_connections the oldest unfinished handshake was closed, even one whose
    client had sent its ClientHello and was one round trip from done, while newer
    connections that had sent nothing stayed: under a flood, a shipper further away
    than the flood's next few connections never got in. Now a connection that has
    sent nothing is closed first."""
    import ssl

    from audit_middleware.wire import Hello

    server, port, cert = _tls_collector(collector, root, max_connections=2, handshake_timeout=60.0)
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    honest = socket.create_connection(("127.0.0.1", port), timeout=5)
    silent: list[socket.socket] = []
    try:
        honest.sendall(outgoing.read())  # its ClientHello...
        incoming.write(honest.recv(65536))  # ...answered: the collector waits for it
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5)
                  for _ in range(2)]
        wait_until(lambda: server.server.stats().get("tls_handshakes_evicted") == 1, 10,
                   "one handshake closed to make room for the second silent connection")
        assert silent[0].recv(1) == b""  # the oldest that had said nothing
        while True:  # the honest client's handshake ends (its reply read late)
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                honest.sendall(outgoing.read())
                data = honest.recv(65536)
                assert data, "the collector closed the honest client's handshake"
                incoming.write(data)
        tls.write(Hello(source="honest", token="s3cret").encode())
        honest.sendall(outgoing.read())
        wait_until(lambda: server.server.stats()["connections_open"] == 1, 10,
                   "the honest client's connection open")
    finally:
        honest.close()
        for sock in silent:
            sock.close()


class _TLSByHand:
    """A TLS client driven by hand over a plain socket: the test reads what comes on the
    wire, and the client never answers the collector's close (its close_notify), as a
    flood's client does not."""

    def __init__(self, port: int, cert: Path) -> None:
        import ssl

        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def handshake(self) -> None:
        import ssl

        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                self.incoming.write(self.sock.recv(65536))
        self.sock.sendall(self.outgoing.read())  # its Finished; then not a word

    def received_until_closed(self) -> tuple[ErrorReply, bool]:
        """The error the collector sent before it ended the TCP connection (a recv that
        times out fails the test: the collector kept the connection), and whether it
        said close_notify first."""
        import ssl

        received = b""
        while chunk := self.sock.recv(65536):  # until the collector's FIN
            received += chunk
        self.incoming.write(received)
        self.incoming.write_eof()
        plain, notified = b"", True
        try:
            while data := self.tls.read(65536):
                plain += data
        except ssl.SSLError:  # the end without a close_notify: an abort
            notified = False
        kind, length = parse_header(plain[:5], 1 << 20)
        assert kind is FrameType.ERROR
        return ErrorReply.decode(plain[5:5 + length]), notified

    def close(self) -> None:
        self.sock.close()


def test_a_tls_connection_closed_before_its_hello_to_make_room_is_aborted(
        collector: Collector, root: Path) -> None:
    """A TLS connection past its handshake that had not said hello, closed to make room
    for a new one, was closed politely: close_notify sent, and its socket (a file) kept
    until the client answered, up to asyncio's 30 s; a flood's client never answers.
    Now it is aborted once its error is sent: the client's TCP connection ends at once."""
    server, port, cert = _tls_collector(collector, root, max_connections=1, handshake_timeout=60.0)
    silent = _TLSByHand(port, cert)
    honest: RawClient | None = None
    try:
        silent.handshake()
        wait_until(lambda: server.server.stats()["connections_open"] == 1, 10,
                   "the silent connection past its TLS handshake")
        honest = _tls_raw_client(port, cert)
        honest.hello(token="s3cret")  # at the limit: room made for it
        error, notified = silent.received_until_closed()
    finally:
        silent.close()
        if honest is not None:
            honest.close()
    assert error.code == ErrorCode.TOO_MANY_CONNECTIONS
    assert not notified  # an abort sends no close_notify
    assert server.server.stats()["connections_evicted"] == 1


def test_a_tls_connection_refused_at_the_limit_is_not_kept_for_its_close_notify(
        collector: Collector, root: Path) -> None:
    """A TLS connection refused at max_connections was closed politely and kept until its
    client answered close_notify, up to asyncio's 30 s, out of the count of connections:
    a flood refused at the limit held a file each that long, the files the limit keeps
    for the store. Now a connection the client has not let go of within a second of its
    close is aborted."""
    server, port, cert = _tls_collector(collector, root, max_connections=1)
    honest = _tls_raw_client(port, cert)
    refused: _TLSByHand | None = None
    try:
        honest.hello(token="s3cret")  # the one slot, greeted: not closed to make room
        refused = _TLSByHand(port, cert)
        refused.handshake()
        error, _ = refused.received_until_closed()
    finally:
        honest.close()
        if refused is not None:
            refused.close()
    assert error.code == ErrorCode.TOO_MANY_CONNECTIONS
    assert server.server.stats()["connections_refused_too_many_connections"] == 1


def _tls_raw_client(port: int, cert: Path) -> RawClient:
    import ssl

    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    client = RawClient(tcp=("127.0.0.1", port))
    client.sock = context.wrap_socket(client.sock)
    return client


def _client_hello() -> bytes:
    """The bytes a TLS client sends first (its ClientHello)."""
    import ssl

    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize(("client", "probe"), [
    ("connects and resets", True),
    ("sends half a hello and closes", False),
    ("sends its hello, reads the reply and closes", False),
])
def test_what_a_client_sent_before_closing_tells_a_probe_from_a_failed_handshake(
        collector: Collector, root: Path, caplog: pytest.LogCaptureFixture, client: str,
        probe: bool) -> None:
    """asyncio ends a handshake at any EOF with the same bare ConnectionResetError: a
    client that sent half a hello, or read the collector's hello and went without an
    alert (a client that does not trust the certificate, or gave up), was counted as a
    probe and logged at debug level only; and a probe that resets (as load balancers'
    health checks do) was warned about as a failed handshake."""
    import socket
    import struct

    server, port, _ = _tls_collector(collector, root)
    hello = _client_hello()
    with caplog.at_level(logging.DEBUG, "collector.ingest"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            if client == "connects and resets":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif client == "sends half a hello and closes":
                sock.sendall(hello[:len(hello) // 2])
                time.sleep(0.2)
            else:
                sock.sendall(hello)
                assert sock.recv(65536)  # the collector's hello: the client goes
        # Each is counted, then logged: its log line, the last thing the collector's
        # thread does of it, waited for (a count seen first may be ahead of its line).
        assert collector_says(caplog, "closed the connection before its TLS hello"
                              if probe else "TLS handshake with")
    stats = server.server.stats()
    warned = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.WARNING and "TLS" in r.getMessage()]
    if probe:
        assert (stats.get("tls_probes"), stats.get("tls_handshake_failures")) == (1, None), \
            stats
        assert warned == [], warned
    else:
        assert (stats.get("tls_probes"), stats.get("tls_handshake_failures")) == (None, 1), \
            stats
        assert len(warned) == 1 and "in the middle of the handshake" in warned[0], warned


def test_a_stop_ends_the_tls_handshakes_under_way_without_a_traceback(
        root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Clients silent in the TLS handshake (a scanner, a hung client) when the collector
    stops: their handshakes end with the shutdown, not in asyncio.run's final cancel,
    where each logged an "Exception in callback ... CancelledError" traceback."""
    import asyncio
    import socket

    from collector.ingest import IngestServer

    cert, key = self_signed_certificate(root)

    async def main() -> tuple[list[socket.socket], int]:
        server = IngestServer(object(), IngestSettings(  # type: ignore[arg-type]
            socket_path=None, tcp_host="127.0.0.1", token="s3cret", tls_cert=cert,
            tls_key=key, handshake_timeout=30))
        await server.start()
        port = server.tcp_port()
        assert port is not None
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5)
                  for _ in range(3)]
        await asyncio.sleep(0.3)  # accepted: their handshakes under way
        await server.shutdown(drain_timeout=1.0)
        return silent, len(asyncio.all_tasks()) - 1

    with caplog.at_level(logging.WARNING):
        silent, left = asyncio.run(main())
    try:
        assert left == 0  # nothing left for asyncio.run to cancel
        assert all(s.recv(1) == b"" for s in silent)  # closed by the shutdown
    finally:
        for s in silent:
            s.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], errors
