"""The delivery path the benchmarks send events through, and checks that they arrived.

Both captures (ours and the naive ``BaseHTTPMiddleware``) enqueue into
``audit_middleware.sinks.BatchingQueue``; serialization (orjson) and the write happen on
its background thread. To separate request-thread cost from the background export, the
queue is configured so its worker only runs when a batch is flushed (one huge batch, a
long delay): the request thread pays ``submit`` and nothing else, then the flush is timed
on its own. The request path of ``submit`` is the same code as with the defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from audit_middleware.sinks import BatchingQueue, JsonlFileSink

from ._harness import BenchmarkError

#: Queue settings that keep the worker asleep until ``flush()`` (see module docstring).
DEFERRED: Mapping[str, Any] = {"max_queue": 1 << 24, "max_batch": 1 << 24, "max_delay": 3600.0}


def audit_file_sink(path: Path) -> JsonlFileSink:
    """Our sink: JSON lines, no fsync (the collector sink's request path is the same
    ``BatchingQueue.submit``)."""
    return JsonlFileSink(path, fsync=False, **DEFERRED)


class DictLinesQueue:
    """The naive capture's delivery: event dicts queued, serialized with orjson on the
    worker and appended to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self.queue: BatchingQueue[dict[str, Any]] = BatchingQueue(
            self._write, name="naive-audit", **DEFERRED)
        self.submit = self.queue.submit

    def _write(self, batch: list[dict[str, Any]]) -> None:
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        data = b"".join([dumps(event, option=newline) for event in batch])
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def flush(self) -> bool:
        return self.queue.flush(60.0)

    def close(self) -> None:
        self.queue.close(60.0)
        os.close(self._fd)


def read_lines(path: Path) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f]


def check_written(path: Path, expected: int, what: str, **fields: str) -> int:
    """Every event the benchmark caused is in ``path``, one valid line each, with the
    expected field values: a capture that silently did nothing must not look fast."""
    records = read_lines(path) if path.exists() else []
    if len(records) != expected:
        raise BenchmarkError(f"{what}: {len(records)} records in {path}, expected {expected}; "
                             f"the capture or its queue lost events, so its timing is void")
    for record in (records[0], records[-1]) if records else ():
        wrong = {k: record.get(k) for k, v in fields.items() if record.get(k) != v}
        if wrong:
            raise BenchmarkError(f"{what}: record fields {wrong} differ from {fields}")
    return len(records)
