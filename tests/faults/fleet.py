"""The fault suite's shared harness: the collector as a real process that can be killed,
stopped and started at any moment, app processes that emit through the real shipper and
log what the collector acknowledged, and the counting that proves nothing was lost.

Scale: the shortened run (the default, part of ``make test``) and the full run
(``FAULTS_FULL=1``, ``make faults``) differ only in the numbers given to ``scaled``.
Randomness: every random choice comes from ``rng()``, seeded from ``FAULTS_SEED`` or
the clock, and the seed is printed, so a failing run can be replayed.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import orjson

from tests.e2e.harness import READY, ROOT, CollectorProcess

FULL = os.environ.get("FAULTS_FULL") == "1"


#: Every process a test started here; ``kill_leftovers`` ends those a failed test left.
_started: list[subprocess.Popen[Any]] = []


def _track(proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
    _started.append(proc)
    return proc


def started_mark() -> int:
    return len(_started)


def kill_leftovers(since: int = 0) -> None:
    """End the processes started since ``started_mark()`` returned ``since``."""
    while len(_started) > since:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def scaled(ci: Any, full: Any) -> Any:
    """The shortened-run value in CI, the full-run value behind ``make faults``."""
    return full if FULL else ci


def rng(name: str) -> random.Random:
    seed = int(os.environ.get("FAULTS_SEED") or time.time_ns() % 1_000_000_007)
    print(f"[{name}] random seed {seed} (replay with FAULTS_SEED={seed})")
    return random.Random(seed)


# -- the collector -------------------------------------------------------------------------
class Collector(CollectorProcess):
    """``python -m collector serve`` that can also be killed before it is ready, paused
    and measured. The query API is off unless a test asks for it (``api=True``): the
    fault tests start many collectors and the API's fixed default port is irrelevant."""

    def __init__(self, data_dir: Path, *args: str, api: bool = False,
                 env: dict[str, str] | None = None) -> None:
        env = {"AUDIT_API_LISTEN": "127.0.0.1:0" if api else "", **(env or {})}
        super().__init__(data_dir, *args, env=env)
        self.starts = 0

    def spawn(self) -> threading.Event:
        """Start the process without waiting; the event is set once it is ready (or
        gone)."""
        self.output = []
        self.ready_line = ""
        self.starts += 1
        if self.proc is not None and self.proc.poll() is None:
            raise AssertionError("this collector is still running: stop or kill it first")
        self.proc = _track(subprocess.Popen(
            [sys.executable, "-m", self.module, "serve", "--data-dir", str(self.data_dir),
             *self.args],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1,
        ))
        return self._follow()

    def start(self, timeout: float = 60.0) -> Self:
        ready = self.spawn()
        if not ready.wait(timeout) or not self.ready_line:
            self.kill()
            raise AssertionError("collector did not become ready:\n" + "".join(self.output))
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sigkill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def memory(self) -> Memory:
        return memory_of(self.pid)

    def repair_line(self) -> str:
        """What start-up said it repaired (the ``store opened`` line)."""
        return next((line.strip() for line in self.output if "store opened" in line), "")

    def api_url(self) -> str:
        for word in self.ready_line.split():
            if word.startswith(("http://", "https://")):
                return word
        raise AssertionError(f"no API address in {self.ready_line!r}")


class HungReadsCollector(Collector):
    """The collector under ``tests.faults.hung_reads``: its reads hang where the gates its
    environment names say."""

    module = "tests.faults.hung_reads"


@dataclass(frozen=True)
class Memory:
    rss_kib: int
    peak_kib: int  # VmHWM: the most resident memory the process ever had


def memory_of(pid: int) -> Memory:
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return Memory(values["VmRSS"], values["VmHWM"])


# -- app processes ---------------------------------------------------------------------------
class App:
    """``tests/faults/emitter.py`` in its own process: emits through a ``CollectorSink``
    until told to stop (stdin closed), logging every id the collector acknowledged and
    every id it spooled. It may be SIGKILLed at any moment; the logs survive it."""

    def __init__(self, name: str, url: str, spool_dir: Path, log_dir: Path, *,
                 burst: int = 20, pause: float = 0.002, **sink_options: Any) -> None:
        self.name = name
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        options = {"backoff_max": 0.2, "max_queue": 1_000_000, **sink_options}
        self.proc = _track(subprocess.Popen(
            [sys.executable, "-m", "tests.faults.emitter", name, url, str(spool_dir),
             str(log_dir), str(burst), str(pause), orjson.dumps(options).decode()],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ))
        self.result: dict[str, Any] | None = None

    @property
    def ack_log(self) -> Path:
        return self.log_dir / f"{self.name}.acked"

    def acknowledged(self) -> list[str]:
        return read_ids(self.ack_log)

    def spooled(self) -> list[str]:
        return read_ids(self.log_dir / f"{self.name}.spooled")

    def acknowledged_count(self) -> int:
        try:
            with open(self.ack_log, "rb") as f:
                return f.read().count(b"\n")
        except FileNotFoundError:
            return 0

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        """Stop emitting (stdin closed), without waiting for the delivery (``finish``).
        Stop every app first, then finish each: finished one after another, the others
        went on emitting all the while, and the load the collector had to catch up with
        grew with each app's wait (3x the events of a run where it did not)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
            self.proc.stdin = None

    def finish(self, timeout: float = 120.0) -> dict[str, Any]:
        """Stop emitting, wait until everything was delivered; the app's own stats."""
        self.stop()
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise AssertionError(f"app {self.name} failed ({self.proc.returncode}):\n"
                                 f"{err.decode(errors='replace')}")
        self.result = orjson.loads(out.splitlines()[-1])
        return self.result

    def memory(self) -> Memory:
        return memory_of(self.proc.pid)


class HttpApp:
    """``tests/faults/http_app.py``: uvicorn with the audit middleware, in its own
    process, shipping to the collector."""

    def __init__(self, url: str, spool_dir: Path, **sink_options: Any) -> None:
        options = {"backoff_max": 0.2, **sink_options}
        self.proc = _track(subprocess.Popen(
            [sys.executable, "-m", "tests.faults.http_app", url, str(spool_dir),
             orjson.dumps(options).decode()],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening "):
            self.proc.kill()
            raise AssertionError(f"the app did not start: {line}{self.proc.stdout.read()!r}")
        self.base_url = f"http://127.0.0.1:{int(line.split()[1])}"
        # Keep reading its output so it never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stats(self) -> dict[str, int]:
        import httpx

        return httpx.get(f"{self.base_url}/stats", timeout=10).json()  # type: ignore[no-any-return]

    def memory(self) -> Memory:
        return memory_of(self.proc.pid)

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM: uvicorn finishes, lifespan shutdown flushes the sink (or spools what
        is queued); uvicorn then re-raises the SIGTERM it caught."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        assert code in (0, -signal.SIGTERM), f"the app exited with {code}"


@dataclass
class Request:
    n: int
    status: int  # 0: no response (connection refused or reset: the app was down or died)
    seconds: float
    phase: str


class Load:
    """Closed-loop HTTP clients: each thread posts ``/items/{n}`` (a new ``n`` every
    time) to whatever ``base_url()`` says now, and records status and latency."""

    def __init__(self, base_url: Any, threads: int = 4) -> None:
        self.base_url = base_url
        self.phase = "load"
        self.requests: list[Request] = []
        self._numbers = iter(range(1 << 62))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(threads)]

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                with self._lock:
                    n = next(self._numbers)
                phase = self.phase
                start = time.monotonic()
                try:
                    status = client.post(f"{self.base_url()}/items/{n}").status_code
                except httpx.HTTPError:
                    status = 0
                elapsed = time.monotonic() - start
                with self._lock:
                    self.requests.append(Request(n, status, elapsed, phase))
                if status == 0:
                    self._stop.wait(0.01)  # the app is down: do not spin

    def count(self, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if status is None or r.status == status)

    def latencies(self, phase: str) -> list[float]:
        with self._lock:
            return [r.seconds for r in self.requests if r.phase == phase and r.status]


def read_ids(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    # A line cut by SIGKILL cannot be a whole id: only complete lines count.
    return [line.decode() for line in data.split(b"\n")[:-1] if len(line) == 36]


@contextlib.contextmanager
def memory_dir() -> Iterator[Path]:
    """A short temporary directory where fsync is free (/dev/shm when there is one), for
    tests about what the collector makes of hostile input, not about the disk: thousands
    of batches each waiting for a real fsync would make them slow."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else "/tmp"
    path = Path(tempfile.mkdtemp(prefix="aud-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


# -- what was stored ---------------------------------------------------------------------------
def segment_records(data_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """Every record in the segments, in storage order, and the number of lines that are
    not records (garbage a test put there). A plain and a compressed copy of one
    segment (a crash mid-compression) count once: the plain one."""
    import gzip

    records: list[dict[str, Any]] = []
    unreadable = 0
    files = sorted((data_dir / "segments").glob("segment-*.jsonl*"))
    for path in files:
        if path.name.endswith(".gz"):
            if path.with_suffix("").exists():
                continue
            data = gzip.decompress(path.read_bytes())
        else:
            data = path.read_bytes()
        for line in data.splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                unreadable += 1
                continue
            if isinstance(record, dict) and type(record.get("seq")) is int:
                records.append(record)
            elif not (isinstance(record, dict) and "segment" in record):
                unreadable += 1
    return records, unreadable


@dataclass
class Stored:
    """Every id in the segments and in the index, with how often each appears."""

    in_segments: collections.Counter[str]
    in_index: collections.Counter[str]
    index_ids_rows: int  # rows of the index's id table (its dedupe set)
    records: list[dict[str, Any]] = field(repr=False)
    unreadable_lines: int = 0  # lines in the segments that are not records

    @classmethod
    def read(cls, data_dir: Path) -> Stored:
        from collector.index import connect
        from collector.query import Filters, Reader

        records, unreadable = segment_records(data_dir)
        in_index: collections.Counter[str] = collections.Counter()
        reader = Reader(data_dir)
        try:
            cursor = None
            while True:
                page = reader.search(Filters(), limit=10_000, cursor=cursor,
                                     newest_first=False)
                in_index.update(r["id"] for r in page.records)
                cursor = page.next_cursor
                if cursor is None:
                    break
        finally:
            reader.close()
        con = connect(data_dir / "index.sqlite", readonly=True)
        try:
            rows = con.execute("SELECT count(*) FROM ids").fetchone()[0]
        finally:
            con.close()
        return cls(collections.Counter(r["id"] for r in records), in_index, rows, records,
                   unreadable)

    def twice(self) -> list[str]:
        return sorted(i for i, n in (self.in_segments + self.in_index).items()
                      if self.in_segments[i] != 1 or self.in_index[i] != 1)

    def missing(self, ids: Iterable[str]) -> list[str]:
        return sorted({i for i in ids if not self.in_segments[i] or not self.in_index[i]})

    def check_exactly_once(self) -> None:
        assert not self.twice(), f"stored more than once (or not in both): {self.twice()[:5]}"
        assert set(self.in_segments) == set(self.in_index)
        assert self.index_ids_rows == len(self.in_index)


STORAGE_FIELDS = ("seq", "source", "source_seq")


def check_stored_records(data_dir: Path) -> int:
    """Every record line in the (plain) segments is a valid event in schema order,
    followed by the collector's storage fields; returns how many were checked."""
    from audit_middleware.event import FIELDS
    from collector.validation import Validator

    validator = Validator()
    checked = 0
    for path in sorted((data_dir / "segments").glob("segment-*.jsonl")):
        for line in path.read_bytes().splitlines()[1:]:  # after the segment header
            record = orjson.loads(line)
            keys = list(record)
            schema = keys[:keys.index("seq")]  # the collector's fields follow the event's
            assert tuple(keys[len(schema):len(schema) + 3]) == STORAGE_FIELDS, keys
            assert tuple(schema[:len(FIELDS)]) == FIELDS
            assert schema[len(FIELDS):] in ([], ["peer_ip"]), keys
            valid = validator.validate({k: record[k] for k in schema})
            assert isinstance(valid, dict), f"a stored record fails validation: {valid}"
            assert type(record["seq"]) is int and type(record["source_seq"]) is int
            checked += 1
    return checked


# -- the report ----------------------------------------------------------------------------------
def report(row: str, **numbers: Any) -> None:
    """Print a result line (the numbers of docs/reliability.md come from these) and, with
    ``FAULTS_REPORT=path``, append it there as JSON."""
    numbers = {"run": "full" if FULL else "ci", **numbers}
    print(f"FAULT {row}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))
    target = os.environ.get("FAULTS_REPORT")
    if target:
        with open(target, "ab") as f:
            f.write(orjson.dumps({"row": row, **numbers}, option=orjson.OPT_NON_STR_KEYS)
                    + b"\n")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


__all__ = [
    "FULL",
    "READY",
    "App",
    "Collector",
    "HttpApp",
    "Load",
    "Memory",
    "Request",
    "Stored",
    "check_stored_records",
    "kill_leftovers",
    "memory_dir",
    "memory_of",
    "percentile",
    "read_ids",
    "report",
    "rng",
    "scaled",
    "segment_records",
    "started_mark",
    "wait_for",
]
