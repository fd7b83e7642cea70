"""``python -m examples.run`` (what ``make run`` calls): start the collector with its data
in ``./audit-data/`` (or ``DATA_DIR``), serve the example platform shipping its audit
events to it, drive a little traffic through every kind of event, print how to query
them, and keep serving until Ctrl-C (the collector stops with it).

    PORT=8000                 port on 127.0.0.1 (default 8000)
    DATA_DIR=audit-data       the collector's data directory (default audit-data; made
                              if missing): another one to run beside a running
                              collector, e.g. DATA_DIR=/tmp/demo make run
    TRUSTED_PROXIES=10.0.0.1  comma-separated IPs/CIDRs whose X-Forwarded-For is trusted
    --once                    exit after the traffic instead of serving on

Each step is its own function: start the collector, point the sink at it, serve,
drive traffic, summarize.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import uvicorn

from audit_middleware import AuditConfigurationError, configure
from audit_middleware._dirs import make_dirs
from audit_middleware.shipper import CollectorSink
from collector.readers import Readers
from examples.platform import create_app
from examples.platform.auth import ALICE
from examples.platform.tour import TourError, run_tour
from examples.run_data_dir import DataDirError, data_dir_from_env, in_use, suggestion

HOST = "127.0.0.1"
COLLECTOR_READY = "audit-collector ready:"
#: Seconds between run-backend steps while serving (runs progress on their own).
JOBS_INTERVAL = 2.0
STARTUP_TIMEOUT = 15.0


class RunError(Exception):
    """A problem the user can fix (a busy port, a bad setting): printed, exit code 2."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true",
                        help="exit after driving the example traffic")
    return parser.parse_args(argv)


def port_from_env() -> int:
    raw = os.environ.get("PORT", "8000")
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise RunError(f"PORT={raw!r} is not a port number: use 1-65535, e.g. PORT=8080")
    return int(raw)


def bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this; without it, each response on a socket we bound
    # ourselves was measured waiting ~40 ms for the client's delayed ACK (Nagle).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        raise RunError(f"cannot listen on {HOST}:{port} ({exc.strerror}): "
                       f"choose another port, e.g. PORT=8081 make run") from None
    return sock


def start_collector(data_dir: Path, ready_line: list[str]) -> subprocess.Popen[str]:
    """``audit-collector serve --data-dir DATA_DIR`` as a child process, ready to ingest
    when this returns (its ready line, which lists its addresses, is appended to
    ``ready_line``). Its own output goes to ``DATA_DIR/collector.log``; when it does
    not start, the error says why in its last words (a data directory in use, say)."""
    make_dirs(data_dir, 0o750)
    log = open(data_dir / "collector.log", "a", encoding="utf-8")  # noqa: SIM115
    ready = threading.Event()
    proc: subprocess.Popen[str] | None = None
    last_words: list[str] = []

    def pump() -> None:  # keep reading, so the collector never blocks on a full pipe
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if line.strip():
                last_words[:] = [line.strip()]
            if line.startswith(COLLECTOR_READY):
                ready_line.append(line)
                ready.set()
        ready.set()

    try:
        # A stop signal landing inside Popen (after the fork) or before ``proc`` was
        # assigned left the collector running with the data directory, its parent gone
        # (one leaked by most runs of the SIGTERM-at-start test): such a signal waits
        # until the collector is known here, then stops it.
        # A session of its own: a terminal's Ctrl-C (sent to the whole foreground group)
        # reached the collector too, and stop_collector's SIGTERM after it was then its
        # second stop signal, which ends it at once, without its drain or clean close.
        # Only this command stops it, with one SIGTERM.
        with _stops_deferred():
            proc = subprocess.Popen(
                [sys.executable, "-m", "collector", "serve", "--data-dir", str(data_dir)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                start_new_session=True)
        threading.Thread(target=pump, name="collector-log", daemon=True).start()
        # Its output ending without the ready line means it stopped, though it may not
        # be reaped yet (poll() still None); its last line says why.
        if not ready.wait(STARTUP_TIMEOUT) or not ready_line or proc.poll() is not None:
            ended = ready.is_set() and not ready_line and last_words
            why = f"{last_words[0]} " if ended else ""
            raise RunError(f"the collector did not start: {why}"
                           f"(its log: {data_dir / 'collector.log'}){_beside(data_dir)}")
    except BaseException:  # not started, or Ctrl-C / SIGTERM meanwhile: never left running
        if proc is not None:
            stop_collector(proc)
        raise
    return proc


def _beside(data_dir: Path) -> str:
    """How to run beside the collector that holds ``data_dir``, if one does."""
    if not in_use(data_dir):
        return ""
    return f"; to run beside it: DATA_DIR={shlex.quote(suggestion(data_dir))} make run"


def stop_collector(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # drains and closes the store cleanly
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def demo_root_reader(data_dir: Path) -> str:
    """A fresh token for the demo's root reader of the admin panel (``demo-root``)."""
    readers = Readers(data_dir)
    if any(r.name == "demo-root" for r in readers.all()):
        readers.remove("demo-root")
    return readers.add("demo-root", root=True)


def panel_url(ready_line: str) -> str | None:
    urls = [word for word in ready_line.split() if word.startswith("http")]
    return f"{urls[0]}/admin/audit-logs" if urls else None


def start_audit_sink(data_dir: Path) -> CollectorSink:
    """Where events go: the collector's unix socket; a local spool if it is away."""
    sink = CollectorSink(f"unix://{(data_dir / 'collector.sock').resolve()}",
                         spool_dir=data_dir / "spool")
    configure(sink=sink)
    return sink


def build_server(*, once: bool) -> uvicorn.Server:
    try:
        app = create_app(
            trusted_proxies=[p for p in os.environ.get("TRUSTED_PROXIES", "").split(",")
                             if p.strip()],
            jobs_interval=None if once else JOBS_INTERVAL,
        )
    except AuditConfigurationError as exc:
        raise RunError(f"TRUSTED_PROXIES: {exc}") from None
    # proxy_headers=False: uvicorn would otherwise rewrite the client address from
    # X-Forwarded-For for peers it trusts (127.0.0.1 by default), bypassing the audit
    # layer's own trusted-proxy rule. Client IPs are decided in one place only.
    config = uvicorn.Config(app, log_level="warning", lifespan="on", proxy_headers=False)
    return uvicorn.Server(config)


def drive_traffic(server: uvicorn.Server, sink: CollectorSink, base_url: str, *,
                  data_dir: Path, once: bool, outcome: list[int], panel: str | None
                  ) -> None:
    """Runs on a thread: wait for the server, walk the tour, report, maybe stop."""
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if time.monotonic() > deadline or server.should_exit:
                raise RunError(f"the server did not start within {STARTUP_TIMEOUT:.0f}s")
            time.sleep(0.05)
        with httpx.Client(base_url=base_url, timeout=10.0) as client:
            run_tour(client)
        if not sink.flush(timeout=30.0):
            raise RunError("the collector did not acknowledge the example events in 30s")
        print_summary(base_url, sink.stats()["acknowledged"], data_dir=data_dir, once=once,
                      panel=panel)
    except (RunError, TourError, httpx.HTTPError) as exc:
        print(f"example traffic failed: {exc}", file=sys.stderr)
        outcome.append(1)
        server.should_exit = True
        return
    if once:
        server.should_exit = True


def print_summary(base_url: str, stored: int, *, data_dir: Path, once: bool,
                  panel: str | None) -> None:
    query = [sys.executable, "-m", "collector", "query", "--data-dir", str(data_dir),
             "--limit", "8"]
    recent = subprocess.run(query, capture_output=True, text=True, timeout=60,
                            check=False).stdout
    script = Path(sys.executable).with_name("audit-collector")
    cli = _relative(script) if script.exists() else f"{_relative(Path(sys.executable))} -m collector"
    where = shlex.quote(str(data_dir))  # pasted into a shell: a space must not split it
    print(f"""
Example platform {"ran" if once else "at"} {base_url}; collector data in {data_dir.resolve()}
{stored} audit events from the example traffic acknowledged by the collector
(fsynced and indexed). The newest:

{recent}
Query them{"" if once else " (from another terminal)"}:
  {cli} query --data-dir {where} --type 'run_*'
  {cli} query --data-dir {where} --principal system --format csv
  {cli} tail -f --data-dir {where}
  {cli} stats --data-dir {where}
""" + ("" if once else _serving_lines(base_url, panel, cli, data_dir)), flush=True)


def _serving_lines(base_url: str, panel: str | None, cli: str, data_dir: Path) -> str:
    """What to try while the app and the collector serve (not after --once: they are
    stopped by the time it would be read)."""
    return f"""
{_panel_lines(panel, cli, data_dir)}
Try it (Alice is a demo user; each call below is one more audit record):
  curl -s -X POST {base_url}/sign-in -H 'content-type: application/json' \\
       -d '{{"email": "{ALICE.email}", "password": "{ALICE.password}"}}'
  curl -s -X POST {base_url}/orgs -H 'Authorization: Bearer {ALICE.token}' \\
       -d '{{"name": "my-org"}}'
Serving until Ctrl-C.
"""


def _panel_lines(panel: str | None, cli: str, data_dir: Path) -> str:
    if panel is None:
        return ("The admin panel is not running (its port was taken: see "
                f"{data_dir / 'collector.log'}).\n")
    return (f"Admin panel (Audit logs tab): {panel}\n"
            f"  sign in with the demo root reader's token: {demo_root_reader(data_dir)}\n"
            f"  (more readers: {cli} users add NAME --root --data-dir "
            f"{shlex.quote(str(data_dir))})\n")


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class Terminated(Exception):
    """SIGTERM (a process manager's stop), turned into an exception so that cleanup runs."""


_deferred: dict[str, object] = {"on": False, "pending": None}


def _terminated(signum: int, frame: object) -> None:
    stop: type[BaseException] = KeyboardInterrupt if signum == signal.SIGINT else Terminated
    if _deferred["on"]:
        _deferred["pending"] = stop  # raised when the deferring section ends
        return
    raise stop


@contextlib.contextmanager
def _stops_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the end of this section, then raise there."""
    previous = signal.signal(signal.SIGINT, _terminated)
    _deferred["on"] = True
    try:
        yield
    finally:
        _deferred["on"] = False
        signal.signal(signal.SIGINT, previous)
        pending, _deferred["pending"] = _deferred["pending"], None
        if isinstance(pending, type):
            raise pending


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # first: the last line below names it, whatever happens after
        data_dir = data_dir_from_env()
    except DataDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # uvicorn shuts down gracefully on Ctrl-C or SIGTERM, then re-raises the signal it
    # caught. SIGINT comes back as KeyboardInterrupt; SIGTERM's default action would end
    # the process before ``finally``, leaving the collector running with the data
    # directory. Either is how this command is meant to end, at any point: a normal exit.
    signal.signal(signal.SIGTERM, _terminated)
    collector: subprocess.Popen[str] | None = None
    sink: CollectorSink | None = None
    traffic: threading.Thread | None = None
    outcome: list[int] = []
    try:
        try:
            sock = bind(port_from_env())
            server = build_server(once=args.once)
            ready_line: list[str] = []
            collector = start_collector(data_dir, ready_line)
        except RunError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        sink = start_audit_sink(data_dir)
        base_url = f"http://{HOST}:{sock.getsockname()[1]}"
        traffic = threading.Thread(
            target=drive_traffic, args=(server, sink, base_url),
            kwargs={"data_dir": data_dir, "once": args.once, "outcome": outcome,
                    "panel": panel_url(ready_line[0])},
            name="example-traffic", daemon=True)
        traffic.start()
        server.run(sockets=[sock])
    except (KeyboardInterrupt, Terminated):
        pass
    finally:
        # A second Ctrl-C or SIGTERM must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if traffic is not None:
            traffic.join(timeout=5.0)
        if sink is not None:
            sink.close(timeout=10.0)
        if collector is not None:
            stop_collector(collector)
    print(f"Stopped. Audit data is in {data_dir.resolve()}", flush=True)
    return max(outcome, default=0)


if __name__ == "__main__":
    sys.exit(main())
