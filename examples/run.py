"""``python -m examples.run`` (what ``make run`` calls): serve the example platform with
its audit records in ``./audit-data/events.jsonl``, drive a little traffic through every
kind of event, print where the records are, and keep serving until Ctrl-C.

    PORT=8000                 port on 127.0.0.1 (default 8000)
    TRUSTED_PROXIES=10.0.0.1  comma-separated IPs/CIDRs whose X-Forwarded-For is trusted
    --once                    exit after the traffic instead of serving on

Each step is its own function (where events go, what serves, what drives traffic) so
the collector can take its place in the pipeline: start it, point the sink at it.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import uvicorn

from audit_middleware import AuditConfigurationError, JsonlFileSink, configure
from examples.platform import create_app
from examples.platform.auth import ALICE
from examples.platform.tour import TourError, run_tour

HOST = "127.0.0.1"
AUDIT_FILE = Path("audit-data") / "events.jsonl"
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


def start_audit_sink() -> JsonlFileSink:
    """Where events go. Until the collector exists: a local JSON-lines file."""
    sink = JsonlFileSink(AUDIT_FILE)
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


def drive_traffic(server: uvicorn.Server, sink: JsonlFileSink, base_url: str, *,
                  once: bool, outcome: list[int]) -> None:
    """Runs on a thread: wait for the server, walk the tour, report, maybe stop."""
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if time.monotonic() > deadline or server.should_exit:
                raise RunError(f"the server did not start within {STARTUP_TIMEOUT:.0f}s")
            time.sleep(0.05)
        with httpx.Client(base_url=base_url, timeout=10.0) as client:
            run_tour(client)
        sink.flush(timeout=10.0)
        print_summary(base_url, sink.stats()["delivered"], once=once)
    except (RunError, TourError, httpx.HTTPError) as exc:
        print(f"example traffic failed: {exc}", file=sys.stderr)
        outcome.append(1)
        server.should_exit = True
        return
    if once:
        server.should_exit = True


def print_summary(base_url: str, written: int, *, once: bool) -> None:
    path = AUDIT_FILE.resolve()
    print(f"""
Example platform at {base_url}
{written} audit events written by the example traffic to {path}
  tail -n 3 {AUDIT_FILE}

Try it (Alice is a demo user; each call below is one more audit record):
  curl -s -X POST {base_url}/sign-in -H 'content-type: application/json' \\
       -d '{{"email": "{ALICE.email}", "password": "{ALICE.password}"}}'
  curl -s -X POST {base_url}/orgs -H 'Authorization: Bearer {ALICE.token}' \\
       -d '{{"name": "my-org"}}'
""" + ("" if once else "Serving until Ctrl-C.\n"), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sock = bind(port_from_env())
        server = build_server(once=args.once)
        sink = start_audit_sink()
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    base_url = f"http://{HOST}:{sock.getsockname()[1]}"
    outcome: list[int] = []
    traffic = threading.Thread(
        target=drive_traffic, args=(server, sink, base_url),
        kwargs={"once": args.once, "outcome": outcome}, name="example-traffic", daemon=True)
    traffic.start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully on Ctrl-C, then re-raises the signal it caught.
        # Ctrl-C is how this command is meant to end: a normal exit, not an error.
        pass
    finally:
        traffic.join(timeout=5.0)
        sink.close(timeout=10.0)
    print(f"Stopped. Audit records are in {AUDIT_FILE.resolve()}", flush=True)
    return max(outcome, default=0)


if __name__ == "__main__":
    sys.exit(main())
