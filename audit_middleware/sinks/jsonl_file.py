"""A JSON-lines file sink for a single process: one event per line, appended in batches
from a background thread, fsynced per batch.

For several processes, or rotation and indexing, ship to the collector instead: this
sink has no cross-process lock and never rotates.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..event import AuditEvent, PendingEvent, json_line
from .batching import BatchingQueue


class JsonlFileSink:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = True,
        max_queue: int = 10_000,
        max_batch: int = 512,
        max_delay: float = 0.2,
    ) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._fd: int | None = None
        self._queue = BatchingQueue(
            self._write, max_queue=max_queue, max_batch=max_batch, max_delay=max_delay,
            name=f"audit-jsonl:{self.path.name}",
        )

    def _open(self) -> int:
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def _write(self, batch: list[AuditEvent | PendingEvent]) -> None:
        if self._fd is None:
            self._fd = self._open()
        fd = self._fd
        data = memoryview(b"".join([json_line(item) for item in batch]))
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError:
            os.ftruncate(fd, start)  # e.g. disk full: never leave a partial line behind
            raise
        if self._fsync:
            os.fsync(self._fd)

    def submit(self, event: AuditEvent) -> None:
        self._queue.submit(event)

    def submit_pending(self, item: PendingEvent) -> None:
        """The request path's tuple form: the event is built on the writer thread."""
        self._queue.submit(item)

    def flush(self, timeout: float | None = None) -> bool:
        return self._queue.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        self._queue.close(timeout)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def stats(self) -> dict[str, int]:
        counts = self._queue.counts()
        counts["delivered"] = self._queue.drained.value - counts["failed"]
        return counts
