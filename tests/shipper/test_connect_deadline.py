"""``Endpoint.connect`` over TCP against real sockets on loopback: a connect that hangs
(a listener whose accept queue is full, see ``unaccepting``) ends at the exit deadline
even when that is set while it waits; a refused or completed one is as before."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable

import pytest

from audit_middleware.shipper.endpoint import Endpoint
from tests.e2e.harness import outcome_within, wait_until
from tests.shipper.unaccepting import unaccepting_port


def deadline_set_once(condition: Callable[[], bool]) -> Callable[[], float | None]:
    """An exit deadline as the sink's: None until another thread sets it, here once
    ``condition`` holds (the connection is under way), to the moment it does."""
    deadline: list[float | None] = [None]

    def set_it() -> None:
        wait_until(condition, 10, "the connection under way")
        deadline[0] = time.monotonic()

    threading.Thread(target=set_it, daemon=True).start()
    return lambda: deadline[0]


def test_a_connect_that_hangs_ends_at_a_deadline_set_while_it_waits() -> None:
    """The exit deadline bounded the connect only when it was set before the connect
    began (the socket's timeout was taken from it then): close() or a lifespan drain
    starting while the worker waited for a connect overran its bound by up to
    connect_timeout. The wait now looks at the deadline again as it goes on."""
    tracked: list[int | None] = []
    deadline = deadline_set_once(lambda: bool(tracked))  # the socket exists
    with unaccepting_port() as port:
        failure = outcome_within(10, lambda: Endpoint("tcp", host="127.0.0.1", port=port)
                                 .connect(60.0, None, tracked.append, deadline))
    assert isinstance(failure, TimeoutError), failure
    assert "shutting down" in str(failure)
    assert tracked[-1] is None  # the socket given up on was untracked, then closed


def test_a_connect_that_hangs_ends_at_the_connect_timeout() -> None:
    with unaccepting_port() as port:
        failure = outcome_within(10, lambda: Endpoint("tcp", host="127.0.0.1", port=port)
                                 .connect(0.2, None))
    assert isinstance(failure, TimeoutError), failure


def test_a_refused_connect_is_a_connection_refused_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, not listening: the port refuses
        port = unused.getsockname()[1]
        failure = outcome_within(10, lambda: Endpoint("tcp", host="127.0.0.1", port=port)
                                 .connect(5.0, None))
    assert isinstance(failure, ConnectionRefusedError), failure


def test_a_completed_connect_is_a_blocking_socket_with_the_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        sock = Endpoint("tcp", host="127.0.0.1", port=listener.getsockname()[1]).connect(
            5.0, None, deadline=lambda: time.monotonic() + 60)
        with sock:
            assert sock.gettimeout() == pytest.approx(5.0, abs=0.5)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            peer, _ = listener.accept()
            with peer:
                sock.sendall(b"x")
                assert peer.recv(1) == b"x"


def test_a_tls_handshake_that_hangs_ends_at_a_deadline_set_while_it_waits() -> None:
    """The same for the TLS handshake after the connect: a peer that takes the
    connection but never answers the ClientHello held the worker the whole
    connect_timeout, past a deadline set meanwhile."""
    tracked: list[int | None] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(10)
        port = listener.getsockname()[1]
        peers: list[socket.socket] = []

        def hello_received() -> bool:  # the handshake is under way: never answered
            if not peers:
                peers.append(listener.accept()[0])
            return bool(peers[0].recv(1))

        deadline = deadline_set_once(hello_received)
        failure = outcome_within(10, lambda: Endpoint("tcp", host="127.0.0.1", port=port)
                                 .connect(60.0, ssl.create_default_context(),
                                          tracked.append, deadline))
        for peer in peers:
            peer.close()
    assert isinstance(failure, TimeoutError), failure
    assert "shutting down" in str(failure)
    assert tracked[-1] is None



def test_a_tls_handshake_a_peer_trickles_to_ends_at_a_deadline_set_while_it_waits() -> None:
    """A peer that answers the ClientHello a byte at a time (a record header announcing
    16 KiB, then one byte every 20 ms: a stalled or broken peer, a port that is not the
    collector's) wakes each 50 ms poll before it times out, and the exit deadline was
    looked at only when a poll timed out: the handshake went on past it for the whole
    connect_timeout."""
    stop = threading.Event()
    trickling = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def trickle() -> None:
            peer = listener.accept()[0]
            with peer:
                peer.recv(4096)  # the ClientHello
                peer.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record of 16 KiB...
                trickling.set()
                while not stop.wait(0.02):
                    try:
                        peer.sendall(b"\x00")  # ...that never ends
                    except OSError:
                        return  # the client gave up

        threading.Thread(target=trickle, daemon=True).start()
        deadline = deadline_set_once(trickling.is_set)
        try:
            failure = outcome_within(10, lambda: Endpoint("tcp", host="127.0.0.1", port=port)
                                     .connect(60.0, ssl.create_default_context(),
                                              deadline=deadline))
        finally:
            stop.set()
    assert isinstance(failure, TimeoutError), failure
    assert "shutting down" in str(failure)
