"""An app process for the fault tests: emits audit events through the real
``CollectorSink`` until its stdin closes, then waits for delivery and prints its stats
as one JSON line.

    python -m tests.faults.emitter NAME URL SPOOL_DIR LOG_DIR BURST PAUSE OPTIONS_JSON

Targets are ``NAME-0``, ``NAME-1``, ... in emit order. Two logs in LOG_DIR count what
the shipper was told, written with unbuffered ``os.write`` so they survive a SIGKILL of
this process: ``NAME.acked`` (every id the collector acknowledged: written or duplicate)
and ``NAME.spooled`` (every id fsynced into the local spool). They are the test's
instruments, hooked around the shipper's own methods; the shipper is not changed.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import orjson

from audit_middleware import configure, emit
from audit_middleware.shipper import CollectorSink
from audit_middleware.shipper.pipeline import Chunk
from audit_middleware.shipper.sender import Sender
from audit_middleware.shipper.spool import Spool
from audit_middleware.wire import Result, decode_batch_body


def _append_log(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)


def _write_ids(fd: int, ids: list[str]) -> None:
    if ids:
        os.write(fd, ("\n".join(ids) + "\n").encode())


def install_logs(log_dir: Path, name: str) -> None:
    acked = _append_log(log_dir / f"{name}.acked")
    spooled = _append_log(log_dir / f"{name}.spooled")
    on_result = Sender._on_result
    append = Spool.append

    def logging_on_result(self: Sender, chunk: Chunk, result: Result) -> None:
        _write_ids(acked, [*result.written, *result.duplicates])
        on_result(self, chunk, result)

    def logging_append(self: Spool, body: bytes) -> bool:
        ok = append(self, body)
        if ok:
            _write_ids(spooled, [orjson.loads(line)["id"]
                                 for line in decode_batch_body(body).lines])
        return ok

    Sender._on_result = logging_on_result  # type: ignore[method-assign]
    Spool.append = logging_append  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    name, url, spool_dir, log_dir, burst, pause, options_json = argv
    options: dict[str, Any] = orjson.loads(options_json)
    deliver_timeout = float(options.pop("deliver_timeout", 120.0))
    install_logs(Path(log_dir), name)
    sink = CollectorSink(url, spool_dir=spool_dir, **options)
    configure(sink=sink)
    stop = threading.Event()

    def wait_for_stdin_to_close() -> None:
        sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=wait_for_stdin_to_close, daemon=True).start()
    n, size, gap = 0, int(burst), float(pause)
    while not stop.is_set():
        for _ in range(size):
            emit("run_status_changed", f"{name}-{n}", status="running")
            n += 1
        if gap:
            stop.wait(gap)
    delivered = sink.wait_for_delivery(timeout=deliver_timeout)
    stats = sink.stats()
    sink.close()
    print(orjson.dumps({"emitted": n, "delivered": delivered, "source": sink.source,
                        **stats}).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
