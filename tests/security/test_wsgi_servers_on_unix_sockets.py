"""The client IP behind real WSGI servers listening on a unix socket: waitress, uWSGI,
granian, cheroot and gunicorn's workers.

Each server puts something in ``REMOTE_ADDR`` for a peer that has no address, and for
uWSGI's HTTP parser a local process chooses it (docs/record.md, "How the client IP is
decided", 5). The servers run for real: waitress and cheroot in a thread, the others as their own
processes.
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
        # Closed on its own thread (through its trigger), so its loop ends with its map
        # empty: closed from here, the loop's select met a closed descriptor (EBADF, an
        # exception in the server's thread that pytest reports).
        server.trigger.pull_trigger(lambda: _close_waitress(server))
        thread.join(10)
        assert not thread.is_alive(), "waitress did not stop"


def _close_waitress(server: Any) -> None:
    from waitress import wasyncore

    server.task_dispatcher.shutdown()
    wasyncore.close_all(server._map)


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


@contextmanager
def cheroot_on(path: Path, trusted: list[str]) -> Iterator[None]:
    from cheroot.wsgi import Server

    server = Server(str(path), wsgi_app(trusted, "x-forwarded-for"))
    server.prepare()  # listening before the block begins
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.stop()
        thread.join(10)


def test_cheroot_on_a_unix_socket_names_no_peer(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """cheroot (CherryPy's server) puts an empty ``REMOTE_ADDR`` for every unix socket
    peer, one bound to the path ``10.0.0.1`` too: a unix socket peer, trusted as
    ``"unix"``."""
    path = tmp_path / "cheroot.sock"
    monkeypatch.chdir(tmp_path)  # the forger binds its path relative to its directory
    with cheroot_on(path, ["unix"]), capture_audit_events() as events:
        for bind in (PROXY, None):
            assert exchange(socket.AF_UNIX, str(path), REQUEST, bind=bind).startswith(
                b"HTTP/1.1 200")  # cheroot answers in its own version
    assert [(e.client_ip, e.peer_ip) for e in events] == [(CLIENT, "unix")] * 2


#: The app a server runs as its own process: each request answers what its event
#: recorded, ``[client_ip, peer_ip]``.
SERVED_APP = """
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
def running(tmp: Path, command: list[str], started: bytes,
            env: dict[str, str] | None = None) -> Iterator[None]:
    """``command`` running in ``tmp`` (``env`` added to its environment) for the block,
    from when its log shows ``started`` (30 s at most)."""
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
                                env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 30
        while started not in log.read_bytes():
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


def served_app(tmp: Path, trusted: list[str]) -> Path:
    """The module of ``SERVED_APP`` trusting ``trusted``, written in ``tmp``."""
    module = tmp / "served_app.py"
    module.write_text(SERVED_APP.format(root=str(Path(__file__).parents[2]), trusted=trusted))
    return module


def venv_script(name: str) -> str:
    """The path of the test dependency ``name``'s script, installed beside Python."""
    script = shutil.which(name, path=str(Path(sys.executable).parent))
    assert script, f"{name} is a test dependency (pip install -e '.[test]')"
    return script


@contextmanager
def uwsgi_serving(tmp: Path, trusted: list[str], *listen: str,
                  env: dict[str, str] | None = None) -> Iterator[None]:
    """uWSGI (one worker) running ``SERVED_APP`` with ``listen`` options, and ``env``
    added to its environment."""
    command = [venv_script("uwsgi"), *listen, "--wsgi-file", str(served_app(tmp, trusted)),
               "--master", "--processes", "1", "--need-app", "--die-on-term"]
    with running(tmp, command, b"spawned uWSGI worker 1", env):
        yield


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


@contextmanager
def granian_serving(tmp: Path, trusted: list[str], *listen: str) -> Iterator[None]:
    """granian (WSGI, one worker, one thread) running ``SERVED_APP`` with ``listen``."""
    served_app(tmp, trusted)
    command = [venv_script("granian"), "--interface", "wsgi", *listen, "--workers", "1",
               "--blocking-threads", "1", "--runtime-threads", "1", "--working-dir",
               str(tmp), "served_app:application"]
    with running(tmp, command, b"Started worker-1"):
        yield


@pytest.mark.parametrize(("trusted", "forger", "proxy"), [
    ([PROXY], ("", ""), ("", "")),
    (["unix"], (CLIENT, "unix"), (CLIENT, "unix")),
], ids=["a proxy's IP trusted", "unix trusted"])
def test_granian_on_a_unix_socket_a_bound_path_is_no_address(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trusted: list[str],
        forger: tuple[str, str], proxy: tuple[str, str]) -> None:
    """granian ``--uds`` puts in ``REMOTE_ADDR`` the path the connecting process bound its
    own socket to: a local process bound to the path ``10.0.0.1`` was the trusted proxy
    10.0.0.1, and its X-Forwarded-For named the client. A proxy that binds nothing (nginx)
    is a unix socket peer too, trusted only as ``"unix"``."""
    path = tmp_path / "granian.sock"
    monkeypatch.chdir(tmp_path)  # the forger binds its path relative to its directory
    with granian_serving(tmp_path, trusted, "--uds", str(path)):
        assert recorded(exchange(socket.AF_UNIX, str(path), REQUEST, bind=PROXY)) == forger
        assert recorded(exchange(socket.AF_UNIX, str(path), REQUEST)) == proxy


def test_granian_on_tcp_the_peer_is_the_peer(tmp_path: Path) -> None:
    """On TCP granian names the port it listens on (``SERVER_PORT``, never the ``"0"`` of
    a unix socket), and its peer's address is kept."""
    with socket.socket() as probe:  # a free TCP port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with granian_serving(tmp_path, ["unix"], "--host", "127.0.0.1", "--port", str(port)):
        assert recorded(exchange(socket.AF_INET, ("127.0.0.1", port), REQUEST)) \
            == ("127.0.0.1", "")


@pytest.mark.parametrize("worker", ["sync", "gthread", "gevent", "gevent_pywsgi"])
def test_gunicorn_workers_on_a_unix_socket_a_bound_path_is_no_address(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker: str) -> None:
    """gunicorn's sync, gthread and gevent workers put in ``REMOTE_ADDR`` the path the
    connecting process bound its own socket to (``10.0.0.1`` here) and hand the app the
    connection (``gunicorn.socket``, gevent's own socket object for the gevent worker);
    the ``gevent_pywsgi`` worker (gevent's ``pywsgi``) puts no ``REMOTE_ADDR`` at all.
    Either way the peer is a unix socket peer, trusted as ``"unix"``."""
    path = tmp_path / "gunicorn.sock"
    monkeypatch.chdir(tmp_path)  # the forger binds its path relative to its directory
    served_app(tmp_path, ["unix"])
    command = [venv_script("gunicorn"), "--worker-class", worker, "--workers", "1",
               "--bind", f"unix:{path}", "--chdir", str(tmp_path), "served_app:application"]
    with running(tmp_path, command, b"Booting worker"):
        for bind in (PROXY, None):
            assert recorded(exchange(socket.AF_UNIX, str(path), REQUEST, bind=bind)) \
                == (CLIENT, "unix"), bind


#: The ASGI app granian runs as its own process, answering as ``SERVED_APP`` does.
SERVED_ASGI_APP = """
import json, sys
sys.path.insert(0, {root!r})
from audit_middleware import AuditMiddleware, MemorySink, configure, emit

sink = MemorySink()
configure(sink=sink)

async def app(scope, receive, send):
    emit("credentials_accessed", "c-1", principal="u-1")
    event = sink.events.pop()
    body = json.dumps([event.client_ip, event.peer_ip]).encode()
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]}})
    await send({{"type": "http.response.body", "body": body}})

application = AuditMiddleware(app, trusted_proxies={trusted!r})
"""


@pytest.mark.parametrize(("trusted", "forger", "proxy"), [
    ([], ("", ""), ("", "")),
    ([PROXY], ("", ""), ("", "")),
    (["unix"], (CLIENT, "unix"), (CLIENT, "unix")),
], ids=["nothing trusted", "a proxy's IP trusted", "unix trusted"])
def test_granian_asgi_on_a_unix_socket_a_bound_path_is_no_address(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trusted: list[str],
        forger: tuple[str, str], proxy: tuple[str, str]) -> None:
    """granian's ASGI ``--uds`` hands over a unix socket's peer as ``scope["client"]``
    (the path it bound, "0") beside ``scope["server"]`` (the socket's path, "0"), outside
    the spec's [path, None]: a local process bound to the path ``10.0.0.1`` was that
    client IP (nothing trusted) or the trusted proxy 10.0.0.1, and ``"unix"`` never
    applied to nginx, which binds nothing."""
    path = tmp_path / "granian-asgi.sock"
    monkeypatch.chdir(tmp_path)  # the forger binds its path relative to its directory
    with granian_asgi_serving(tmp_path, trusted, "--uds", str(path)):
        assert recorded(exchange(socket.AF_UNIX, str(path), REQUEST, bind=PROXY)) == forger
        assert recorded(exchange(socket.AF_UNIX, str(path), REQUEST)) == proxy


def test_granian_asgi_on_tcp_the_peer_is_the_peer(tmp_path: Path) -> None:
    """On TCP granian's ports are text too ("36150", outside the spec's int), but its
    server names a real port: the peer's address is kept."""
    with socket.socket() as probe:  # a free TCP port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with granian_asgi_serving(tmp_path, ["unix"], "--host", "127.0.0.1", "--port", str(port)):
        assert recorded(exchange(socket.AF_INET, ("127.0.0.1", port), REQUEST)) \
            == ("127.0.0.1", "")


@pytest.mark.parametrize(("trusted", "expected"), [
    ([], ("", "")),
    (["unix"], (CLIENT, "unix")),
], ids=["nothing trusted", "unix trusted"])
def test_granian_asgi_on_a_unix_socket_its_own_proxy_headers_are_not_believed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trusted: list[str],
        expected: tuple[str, str]) -> None:
    """granian's ``wrap_asgi_with_proxy_headers`` (outside the middleware) believes a peer
    bound to the path ``127.0.0.1``, its default trusted host, and puts the client its
    X-Forwarded-For names in ``scope["client"]`` with the int port 0: that was kept as
    the client IP, where the WSGI side keeps nothing granian's wrapper says on a unix
    socket. The socket's peer is a unix socket peer all the same."""
    path = tmp_path / "granian-asgi.sock"
    monkeypatch.chdir(tmp_path)  # the forger binds its path relative to its directory
    with granian_asgi_serving(tmp_path, trusted, "--uds", str(path), proxy_headers=True):
        assert recorded(exchange(socket.AF_UNIX, str(path), REQUEST, bind="127.0.0.1")) \
            == expected


@contextmanager
def granian_asgi_serving(tmp: Path, trusted: list[str], *listen: str,
                         proxy_headers: bool = False) -> Iterator[None]:
    """granian (ASGI, one worker) running ``SERVED_ASGI_APP`` with ``listen``; with
    ``proxy_headers``, inside granian's own ``wrap_asgi_with_proxy_headers``."""
    module = SERVED_ASGI_APP.format(root=str(Path(__file__).parents[2]), trusted=trusted)
    if proxy_headers:
        module += ("from granian.utils.proxies import wrap_asgi_with_proxy_headers\n"
                   "application = wrap_asgi_with_proxy_headers(application)\n")
    (tmp / "served_asgi_app.py").write_text(module)
    command = [venv_script("granian"), "--interface", "asgi", *listen, "--workers", "1",
               "--runtime-threads", "1", "--working-dir", str(tmp),
               "served_asgi_app:application"]
    with running(tmp, command, b"Started worker-1"):
        yield


#: A PROXY protocol v2 header with the LOCAL command: the proxy's own connection (a
#: health check), which names no client, so gunicorn puts no ``REMOTE_ADDR`` at all.
PROXY_V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00, 0x00, 0x00])


def test_gunicorn_on_tcp_a_peer_without_an_address_is_no_unix_socket_peer(
        tmp_path: Path) -> None:
    """gunicorn on TCP behind the PROXY protocol hands over no ``REMOTE_ADDR`` for a
    connection the proxy says is its own (``LOCAL``), and still its TCP connection
    (``gunicorn.socket``). That peer is no unix socket peer: ``"unix"`` does not trust
    it, as ``AuditMiddleware`` does not trust a TCP request without a client, or its
    X-Forwarded-For was believed."""
    with socket.socket() as probe:  # a free TCP port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    served_app(tmp_path, ["unix"])
    command = [venv_script("gunicorn"), "--workers", "1", "--bind", f"127.0.0.1:{port}",
               "--proxy-protocol", "v2", "--proxy-allow-from", "127.0.0.1",
               "--chdir", str(tmp_path), "served_app:application"]
    with running(tmp_path, command, b"Booting worker"):
        assert recorded(exchange(socket.AF_INET, ("127.0.0.1", port),
                                 PROXY_V2_LOCAL + REQUEST)) == ("", "")
