"""The client IP behind real WSGI servers listening on a unix socket: waitress and uWSGI.

Each server puts something in ``REMOTE_ADDR`` for a peer that has no address, and for
uWSGI's HTTP parser a local process chooses it (docs/record.md, "How the client IP is
decided", 5). The servers run for real: waitress in a thread, uWSGI as its own process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from audit_middleware.testing import capture_audit_events

from .test_client_ip_spoofing import ATTACKER, CLIENT, PROXY, wsgi_app

REQUEST = (b"GET / HTTP/1.0\r\nHost: app\r\nX-Forwarded-For: " + ATTACKER.encode() + b", "
           + CLIENT.encode() + b"\r\n\r\n")


def exchange(family: int, address: Any, data: bytes, bind: Any = None) -> bytes:
    """``data`` sent on a new connection (bound to ``bind`` first), the whole answer."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        if bind is not None:
            sock.bind(bind)
        sock.connect(address)
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1."), answer[:200]
    return answer


@contextmanager
def waitress_on(path: Path, trusted: list[str]) -> Iterator[None]:
    from waitress.server import create_server

    server = create_server(wsgi_app(trusted, "x-forwarded-for"), unix_socket=str(path),
                           clear_untrusted_proxy_headers=False)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.close()
        thread.join(10)


@pytest.mark.parametrize(("trusted", "recorded"), [
    ([], ("", "")),
    ([PROXY], ("", "")),
    (["unix"], (CLIENT, "unix")),
], ids=["nothing trusted", "a proxy's IP trusted", "unix trusted"])
def test_waitress_on_a_unix_socket_its_localhost_is_no_address(
        tmp_path: Path, trusted: list[str], recorded: tuple[str, str]) -> None:
    """waitress names every unix socket peer ``localhost``: that is no client IP (it was
    recorded as one), and with ``"unix"`` trusted the proxy's hop is the client."""
    path = tmp_path / "waitress.sock"
    with waitress_on(path, trusted), capture_audit_events() as events:
        assert exchange(socket.AF_UNIX, str(path), REQUEST).startswith(b"HTTP/1.0 200")
    assert [(e.client_ip, e.peer_ip) for e in events] == [recorded]


UWSGI_APP = """
import contextvars, json, sys
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, {root!r})
from audit_middleware import MemorySink, WSGIAuditMiddleware, configure, emit

sink = MemorySink()
configure(sink=sink)

def app(environ, start_response):
    if environ.get("QUERY_STRING") == "on-another-thread":
        # as an executor, or asgiref's async_to_sync, runs the request's context
        with ThreadPoolExecutor(1) as pool:
            pool.submit(contextvars.copy_context().run, emit, "credentials_accessed", "c-1",
                        principal="u-1").result()
    else:
        emit("credentials_accessed", "c-1", principal="u-1")
    event = sink.events.pop()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps([event.client_ip, event.peer_ip]).encode()]

application = WSGIAuditMiddleware(app, trusted_proxies={trusted!r})
"""


@contextmanager
def uwsgi_serving(tmp: Path, trusted: list[str], *listen: str,
                  env: dict[str, str] | None = None) -> Iterator[None]:
    """uWSGI (one worker) running the module above with ``listen`` options, and ``env``
    added to its environment."""
    uwsgi = shutil.which("uwsgi", path=str(Path(sys.executable).parent))
    assert uwsgi, "uWSGI is a test dependency (pip install -e '.[test]')"
    module = tmp / "uwsgi_app.py"
    module.write_text(UWSGI_APP.format(root=str(Path(__file__).parents[2]), trusted=trusted))
    log = tmp / "uwsgi.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([uwsgi, *listen, "--wsgi-file", str(module), "--master",
                                 "--processes", "1", "--need-app", "--die-on-term"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
                                env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 30
        while b"spawned uWSGI worker 1" not in log.read_bytes():
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def recorded(answer: bytes) -> tuple[str, str]:
    client_ip, peer_ip = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return client_ip, peer_ip


def uwsgi_packet(variables: dict[str, str]) -> bytes:
    """A request in the uwsgi protocol, as nginx's ``uwsgi_pass`` sends it."""
    body = b"".join(len(k).to_bytes(2, "little") + k + len(v).to_bytes(2, "little") + v
                    for k, v in ((k.encode(), v.encode()) for k, v in variables.items()))
    return bytes([0]) + len(body).to_bytes(2, "little") + bytes([0]) + body


def forged_name() -> bytes:
    """An abstract socket name that uWSGI's HTTP parser reads as the trusted proxy."""
    return b"\0A" + socket.inet_aton(PROXY) + os.urandom(4).hex().encode()


def test_uwsgi_a_local_process_cannot_name_itself_a_trusted_proxy(tmp_path: Path) -> None:
    """uWSGI's HTTP parser on a unix socket makes ``REMOTE_ADDR`` of four bytes of the
    connecting socket's name: a local process bound to the abstract name
    ``"\\0A\\x0a\\0\\0\\x01"`` was the trusted proxy 10.0.0.1, and its X-Forwarded-For
    named the client. Over the uwsgi protocol the proxy's own ``REMOTE_ADDR`` is kept,
    and on TCP the peer is the peer."""
    http_sock, uwsgi_sock = tmp_path / "http.sock", tmp_path / "uwsgi.sock"
    with socket.socket() as probe:  # a free TCP port for the third listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    forged = forged_name()
    with uwsgi_serving(tmp_path, [PROXY], "--http-socket", str(http_sock),
                       "--socket", str(uwsgi_sock), "--http-socket", f"127.0.0.1:{port}"):
        # the forger: believed before, as the proxy 10.0.0.1 forwarding for CLIENT
        assert recorded(exchange(socket.AF_UNIX, str(http_sock), REQUEST, bind=forged)) \
            == ("", "")
        # nginx's proxy_pass to the same socket (an unbound peer): no address either
        assert recorded(exchange(socket.AF_UNIX, str(http_sock), REQUEST)) == ("", "")
        # nginx's uwsgi_pass: the client it states is the client
        packet = uwsgi_packet({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "app",
                               "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.0",
                               "REMOTE_ADDR": CLIENT, "REMOTE_PORT": "50000"})
        assert recorded(exchange(socket.AF_UNIX, str(uwsgi_sock), packet)) == (CLIENT, "")
        # TCP: the peer's own address
        assert recorded(exchange(socket.AF_INET, ("127.0.0.1", port), REQUEST)) \
            == ("127.0.0.1", "")


def test_uwsgi_with_threads_an_event_emitted_on_another_thread_is_no_proxy_either(
        tmp_path: Path) -> None:
    """With ``threads``, uWSGI names a request's connection to the thread serving it
    alone: an event emitted on another thread with the request's context (an executor,
    asgiref's ``async_to_sync``) took the forger's ``REMOTE_ADDR`` for an address, the
    trusted proxy's, and believed its X-Forwarded-For."""
    http_sock = tmp_path / "http.sock"
    with uwsgi_serving(tmp_path, [PROXY], "--http-socket", str(http_sock), "--threads", "2"):
        for target in (b"/", b"/?on-another-thread"):
            request = REQUEST.replace(b"GET / ", b"GET " + target + b" ", 1)
            answer = exchange(socket.AF_UNIX, str(http_sock), request, bind=forged_name())
            assert recorded(answer) == ("", ""), target


def latin1_locale(tmp: Path) -> dict[str, str]:
    """The environment of a process in an ISO-8859-1 locale, built in ``tmp``."""
    built = subprocess.run(["localedef", "-i", "en_US", "-f", "ISO-8859-1",
                            str(tmp / "en_US.ISO-8859-1")], check=False, capture_output=True,
                           text=True)
    assert built.returncode == 0, ("building an ISO-8859-1 locale needs localedef and the "
                                   f"locale sources (apt-get install locales): {built}")
    return {"LOCPATH": str(tmp), "LC_ALL": "en_US.ISO-8859-1"}


def test_uwsgi_a_path_is_its_bytes_whatever_the_locale(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer bound to a path comes back from ``getpeername`` decoded with the
    filesystem encoding: read back as UTF-8 under ISO-8859-1, a path whose bytes 2-5 are
    a trusted proxy's address (``ab\\xc0\\xa8\\x01\\x01``: 192.168.1.1, relative to
    the forger's directory) was no longer what uWSGI had read, and was believed."""
    proxy = "192.168.1.1"
    http_sock = tmp_path / "http.sock"
    monkeypatch.chdir(tmp_path)  # the forger binds its path relative to its directory
    with uwsgi_serving(tmp_path, [proxy], "--http-socket", str(http_sock),
                       env=latin1_locale(tmp_path)):
        answer = exchange(socket.AF_UNIX, str(http_sock), REQUEST,
                          bind=b"ab" + socket.inet_aton(proxy))
    assert recorded(answer) == ("", "")
