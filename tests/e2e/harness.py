"""Test helpers shared by the shipper, ingest and end-to-end tests: the collector as a
real subprocess (``python -m collector serve``) or in-process (the ingest server on its
own event loop thread with a real Store), and what it stored."""

from __future__ import annotations

import asyncio
import collections
import fcntl
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self, TypeVar

import orjson

from audit_middleware.wire import (
    ErrorReply,
    FrameType,
    Hello,
    Welcome,
    encode_batch,
    encode_batch_body,
    parse_header,
)

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
READY = "audit-collector ready:"


def wire_line(n: int, created: str = "2026-11-26T01:07:10.123456Z") -> bytes:
    """A ``system`` ``team_created`` event line (target ``t<n>``, a fresh id) as a
    shipper writes it: for tests that speak the wire protocol by hand."""
    return orjson.dumps({
        "v": 1, "id": str(uuid.uuid4()), "type": "team_created", "target": f"t{n}",
        "principal": "system", "status": "", "org_id": "", "org_name": "",
        "workspace_id": "", "workspace_name": "", "client_ip": "",
        "created": created, "trace_id": "", "span_id": ""}) + b"\n"


@contextmanager
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: unix socket paths must stay under 104
    bytes, and pytest's tmp_path can be longer than that."""
    path = Path(tempfile.mkdtemp(prefix="aud-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class CollectorProcess:
    #: What ``python -m`` runs: the collector, or a test's wrapper of its command line.
    module = "collector"
    #: The interpreter it runs on: another virtualenv's (tests/packaging) or this one.
    python = sys.executable

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.ready_line = ""
        #: Set once all its output is read (it exited): ``output`` is whole.
        self.output_ended = threading.Event()

    @property
    def socket(self) -> Path:
        return self.data_dir / "collector.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 30.0) -> Self:
        self.output = []
        self.proc = subprocess.Popen(
            # An ephemeral API port by default (tests run side by side; 8080 may be
            # taken); a test's own --api-listen comes later and wins.
            [self.python, "-m", self.module, "serve", "--data-dir", str(self.data_dir),
             "--api-listen", "127.0.0.1:0", *self.args],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1,
        )
        ready = self._follow()
        if not ready.wait(timeout):
            self.kill()
            raise AssertionError("collector did not become ready:\n" + "".join(self.output))
        if not self.ready_line:  # its output ended without the ready line: it exited
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
            raise AssertionError("collector exited at start-up:\n" + "".join(self.output))
        return self

    def _follow(self) -> threading.Event:
        """Its output read in a thread, into ``output``; the event is set once it is
        ready (or gone), ``output_ended`` once all is read."""
        assert self.proc is not None
        ready = threading.Event()
        self.output_ended = threading.Event()
        threading.Thread(target=self._read, args=(self.proc, ready, self.output_ended),
                         daemon=True).start()
        return ready

    def _read(self, proc: subprocess.Popen[str], ready: threading.Event,
              ended: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line)
            if line.startswith(READY):
                self.ready_line = line
                ready.set()
        ended.set()
        ready.set()  # exited: start() reports it

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for a clean exit; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("collector did not stop on SIGTERM:\n"
                                 + "".join(self.output)) from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


def host_and_port(url: str) -> tuple[str, int]:
    """Where ``http(s)://HOST:PORT`` listens: ``(HOST, PORT)``."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end has closed ``sock`` (FIN or reset) already: no waiting."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def lower_file_limit(collector: CollectorProcess, soft: int | None = None, *,
                     above_idle: int | None = None) -> None:
    """Lower a running collector's soft file limit (``RLIMIT_NOFILE``) to ``soft``, or
    to the files it holds open now plus ``above_idle``; its hard limit stays. Nothing is
    restored: the limit dies with the process, and the collector reads it afresh where
    it matters (its connection limits, each accept)."""
    if (soft is None) == (above_idle is None):
        raise TypeError("lower_file_limit: pass either soft (the new limit) or above_idle "
                        "(files over what the collector holds open now), not both")
    assert collector.proc is not None and collector.proc.poll() is None, \
        "lower_file_limit: start the collector first"
    pid = collector.proc.pid
    if soft is None:
        assert above_idle is not None
        soft = len(os.listdir(f"/proc/{pid}/fd")) + above_idle
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


@contextmanager
def flooding(address: tuple[str, int], held: int = 300) -> Iterator[None]:
    """A flood of silent TCP connections to ``address`` that goes on: new ones, about
    one a millisecond, the oldest closed once ``held`` are open (as an attacker whose
    connections the collector closed, or who reconnects), until the block ends; the
    block starts once ``held`` are open. Non-blocking: one the collector does not
    accept (its backlog full) must not hold up the test."""
    stop, built = threading.Event(), threading.Event()

    def run() -> None:
        socks: collections.deque[socket.socket] = collections.deque()
        try:
            while not stop.is_set():
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.setblocking(False)
                sock.connect_ex(address)
                if len(socks) > held:
                    socks.popleft().close()
                    built.set()
                stop.wait(0.001)
        finally:
            for sock in socks:
                sock.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert built.wait(30), "the flood did not get going"
        yield
    finally:
        stop.set()
        thread.join(10)


def run_python(code: str, *args: str, timeout: float = 60.0
               ) -> subprocess.CompletedProcess[str]:
    """``python -c CODE ARGS`` from the project root, its output captured (a process to
    kill or crash on purpose: its exit code is the caller's to check)."""
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def stored_events(data_dir: Path) -> list[dict[str, Any]]:
    """Every event record in the collector's segments, in storage order (segment header
    lines left out). Records are on disk once acknowledged: the collector may be running."""
    import gzip

    import orjson

    segments = data_dir / "segments"
    if not segments.exists():
        return []
    files = sorted(segments.glob("segment-*.jsonl*"), key=lambda p: p.name)
    records = []
    for path in files:
        if path.name.endswith(".gz"):
            if path.with_suffix("").exists():
                continue  # both copies while compressing: read the plain one
            data = gzip.decompress(path.read_bytes())
        else:
            data = path.read_bytes()
        for line in data.splitlines():
            record = orjson.loads(line) if line else None
            if isinstance(record, dict) and "segment" not in record:
                records.append(record)
    return records


def wait_until(condition: Any, timeout: float = 30.0, message: str = "") -> None:
    """Poll ``condition`` (no fixed sleeps in tests: wait for the state, not a time)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting: {message or condition}")
        time.sleep(0.01)


def outcome_within(seconds: float, call: Callable[[], T]) -> T | BaseException:
    """What ``call`` returned or raised, waited for at most ``seconds``: it runs in a
    daemon thread, so one that waits too long fails the test without holding it."""
    result: list[T | BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"still waiting after {seconds} s"
    return result[0]


def open_store(data_dir: Path) -> Any:
    from collector.store import StorageSettings, Store

    store = Store(StorageSettings(data_dir=data_dir))
    store.open()
    return store


class InProcessCollector:
    """The ingest server on its own event loop thread, as in the collector process."""

    def __init__(self, store: Any, settings: Any) -> None:
        from collector.ingest import IngestServer

        self.server = IngestServer(store, settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        try:
            self.call(self.server.start())
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stats(self) -> dict[str, int]:
        return self.call(_stats(self.server))  # type: ignore[no-any-return]

    def close(self) -> None:
        self.call(self.server.shutdown(drain_timeout=5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _stats(server: Any) -> dict[str, int]:
    return server.stats()  # type: ignore[no-any-return]


class RawClient:
    """The wire protocol spoken by hand, for tests of what a misbehaving client sees."""

    def __init__(self, path: Path | None = None, tcp: tuple[str, int] | None = None) -> None:
        if tcp is not None:
            self.sock = socket.create_connection(tcp, timeout=10)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(str(path))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self) -> tuple[FrameType, bytes] | None:
        """The next frame, or None when the server closed the connection."""
        header = self._exactly(5)
        if header is None:
            return None
        kind, length = parse_header(header, 1 << 30)
        payload = self._exactly(length)
        assert payload is not None
        return kind, payload

    def _exactly(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def hello(self, token: str | None = None) -> Welcome:
        self.send(Hello("test:1:ab", token=token).encode())
        reply = self.frame()
        assert reply is not None and reply[0] is FrameType.WELCOME, reply
        return Welcome.decode(reply[1])

    def batch(self, batch_id: int, records: list[bytes], seqs: list[int] | None = None
              ) -> tuple[FrameType, bytes]:
        self.send_batch(batch_id, records, seqs)
        reply = self.frame()
        assert reply is not None
        return reply

    def send_batch(self, batch_id: int, records: list[bytes], seqs: list[int] | None = None
                   ) -> None:
        """A batch sent, its reply left to ``frame`` (for a test that acts before it)."""
        seqs = seqs if seqs is not None else list(range(1, len(records) + 1))
        self.send(encode_batch(batch_id, encode_batch_body("test:1:ab", seqs, records)))

    def all_read(self) -> bool:
        """Whether the server has read every byte sent on this unix socket (its output
        queue holds what its peer has not read)."""
        queued = fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return struct.unpack("i", queued)[0] == 0

    def error(self) -> ErrorReply:
        """The error frame the server sends before closing, then the close itself."""
        reply = self.frame()
        assert reply is not None and reply[0] is FrameType.ERROR, reply
        assert self.frame() is None, "the connection should be closed after a fatal error"
        return ErrorReply.decode(reply[1])

    def close(self) -> None:
        self.sock.close()
