"""The collector as the collector benchmarks run it: a real ``python -m collector serve``
subprocess on a real unix socket, its memory read from ``/proc``, and what it stored
read back through its own CLI.

Nothing here is timed; the benchmarks time what they drive through it.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import orjson

from collector.storage.chunks import CLOSED, INDEXED, OPEN
from collector.store_housekeeping import IDLE_CHUNK_ROWS

from ._harness import BenchmarkError

ROOT = Path(__file__).resolve().parent.parent
READY = "audit-collector ready:"
#: Written by ``serve`` (periodically and when it stops): ingest counters and, under
#: ``"store"``, the Store's own (fsyncs, events per fsync, ...).
STATS_FILE = "ingest-stats.json"


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory with a short path (a unix socket path must stay under 104
    bytes), on the same file system as the baselines' files."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _clean_env() -> dict[str, str]:
    # AUDIT_* variables of whoever runs the benchmark must not change what is measured.
    return {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}


class Collector:
    """``python -m collector serve --data-dir DIR`` as a subprocess."""

    def __init__(self, data_dir: Path, *, wrapper: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        #: A command the collector runs under (``valgrind --tool=callgrind ...``), and
        #: variables added to its environment.
        self.wrapper = wrapper or []
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._ready = threading.Event()
        self._ready_seen = False

    @property
    def url(self) -> str:
        return f"unix://{self.data_dir / 'collector.sock'}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchmarkError("the collector is not started: call start() first")
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> Self:
        command = [*self.wrapper, sys.executable, "-m", "collector", "serve", "--data-dir",
                   str(self.data_dir), "--api-listen", ""]
        # A session of its own: a terminal's Ctrl-C reaches the whole foreground group,
        # and the collector would take the SIGTERM of kill() after it for a second stop
        # signal, ending at once without its drain (as make run did: examples/run.py).
        self.proc = subprocess.Popen(command, cwd=ROOT, env={**_clean_env(), **self.env},
                                     text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     bufsize=1, start_new_session=True)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        if not self._ready.wait(timeout) or not self._ready_seen:
            self.kill()
            raise BenchmarkError("the collector did not start (is the checkout importable "
                                 "from the repository root?):\n" + "".join(self.output[-30:]))
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if len(self.output) < 1000:  # a chatty collector must not grow this process
                self.output.append(line)
            if line.startswith(READY):
                self._ready_seen = True
                self._ready.set()
        self._ready.set()

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM and a clean exit: the collector drains its connections, writes its
        final counters and closes its Store."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchmarkError(f"the collector did not stop within {timeout}s of SIGTERM:\n"
                                 + "".join(self.output[-30:])) from None
        if code != 0:
            raise BenchmarkError(f"the collector exited with {code}:\n"
                                 + "".join(self.output[-30:]))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def read_stats(self) -> dict[str, Any]:
        """The counters ``serve`` wrote (final ones after :meth:`stop`)."""
        path = self.data_dir / STATS_FILE
        if not path.exists():
            raise BenchmarkError(f"{path} missing: stop() the collector cleanly first")
        return orjson.loads(path.read_bytes())  # type: ignore[no-any-return]

    def wait_indexed(self, timeout: float = 120.0) -> None:
        wait_indexed(self.data_dir, timeout)

    def deferred_build_ns(self, timeout: float = 120.0) -> int:
        return deferred_build_ns(self.data_dir, timeout)

    def wait_idle(self, quiet: float = 0.05, timeout: float = 60.0) -> None:
        """Wait until the collector has used no CPU for ``quiet`` seconds (its
        background work done: index builds, the WAL checkpoint after them), so that the
        next case of a benchmark does not run beside it."""
        deadline = time.monotonic() + timeout
        last, since = cpu_seconds(self.pid), time.monotonic()
        while time.monotonic() - since < quiet:
            if time.monotonic() > deadline:
                raise BenchmarkError(f"the collector was still busy after {timeout} s")
            time.sleep(0.01)
            now = cpu_seconds(self.pid)
            if now != last:
                last, since = now, time.monotonic()

    def read_store_stats(self) -> dict[str, Any]:
        return self.read_stats()["store"]  # type: ignore[no-any-return]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.stop()
        else:
            self.kill()


def indexed_events(data_dir: Path) -> int:
    """How many events the data directory's index holds, as ``audit-collector stats``
    reports it (a separate process, reading what is on disk)."""
    done = subprocess.run([sys.executable, "-m", "collector", "stats", "--data-dir",
                           str(data_dir), "--json"], cwd=ROOT, env=_clean_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise BenchmarkError(f"audit-collector stats failed ({done.returncode}): {done.stderr}")
    return int(orjson.loads(done.stdout)["events_indexed"])


def _read_index(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{data_dir / 'index.sqlite'}?mode=ro", uri=True, timeout=10.0)


def wait_indexed(data_dir: Path, timeout: float = 120.0) -> None:
    """Wait until no closed chunk of the index in ``data_dir`` waits for its secondary
    indexes (the background index build of ``collector.storage.indexer``), read from the
    index itself. A benchmark that times ingest waits for this inside its clock: the
    index builds its events caused are then its cost, not a later case's."""
    deadline = time.monotonic() + timeout
    con = _read_index(data_dir)
    try:
        while con.execute("SELECT count(*) FROM chunks WHERE state=?",
                          (CLOSED,)).fetchone()[0]:
            if time.monotonic() > deadline:
                raise BenchmarkError(f"the index was not built within {timeout} s")
            time.sleep(0.005)
    finally:
        con.close()


def deferred_build_ns(data_dir: Path, timeout: float = 120.0) -> int:
    """The secondary-index build a round left for later, timed: the chunk still open at
    the end of a round is closed and indexed only once the store has been idle a while
    (``collector.store_housekeeping``, ``IDLE_CHUNK_ROWS``), which would otherwise happen off the
    round's clock, beside whatever case runs next. Waits for that build and returns its
    wall time as seen from here (from the poll that first found the chunk CLOSED to the
    one that found it INDEXED; the idle wait before it is not the round's cost). 0 when
    no open chunk is big enough for an idle store to index."""
    deadline = time.monotonic() + timeout
    con = _read_index(data_dir)
    try:
        # The newest chunk, whatever its state: an idle close may have come already.
        row = con.execute("SELECT chunk, rows, state FROM chunks ORDER BY chunk DESC "
                          "LIMIT 1").fetchone()
        if row is None or row[2] == INDEXED or (row[2] == OPEN and row[1] < IDLE_CHUNK_ROWS):
            return 0  # nothing left to build (a small remainder is the next round's)
        closed_at: int | None = time.perf_counter_ns() if row[2] == CLOSED else None
        previous_poll = time.perf_counter_ns()
        while True:
            state = con.execute("SELECT state FROM chunks WHERE chunk=?", (row[0],)).fetchone()
            now = time.perf_counter_ns()
            if state is None:  # dropped by retention meanwhile
                return 0
            if state[0] == CLOSED and closed_at is None:
                closed_at = now
            if state[0] == INDEXED:
                return now - (closed_at if closed_at is not None else previous_poll)
            if time.monotonic() > deadline:
                raise BenchmarkError(f"the open chunk was not indexed within {timeout} s")
            previous_poll = now
            time.sleep(0.002)
    finally:
        con.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- memory -------------------------------------------------------------------------------
def status_kib(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` value in KiB, e.g. ``VmRSS`` (now) or ``VmHWM`` (peak)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError as exc:
        raise BenchmarkError(f"cannot read /proc/{pid}/status ({exc}): memory is measured "
                             f"on Linux only, while the process runs") from None
    raise BenchmarkError(f"/proc/{pid}/status has no {key} line")


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds on a thread, each sample
    tagged with a progress value the caller keeps current (e.g. events acknowledged)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.progress = 0
        self.samples: list[tuple[float, int, int]] = []  # (seconds, progress, KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._start = 0.0

    def _run(self) -> None:
        while True:
            try:
                kib = status_kib(self.pid, "VmRSS")
            except BenchmarkError:
                return  # the process ended: nothing more to sample
            self.samples.append((time.monotonic() - self._start, self.progress, kib))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Self:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def peak_kib(self) -> int:
        return max((kib for _, _, kib in self.samples), default=0)
