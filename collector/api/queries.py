"""The API's query connections: a few ``collector.query.Reader`` objects used on a few
worker threads, so index lookups and segment reads never block the event loop (which
also runs the ingest server) and a burst of panel users cannot open a connection each.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, TypeVar

from collector.query import Reader

T = TypeVar("T")
DEFAULT_THREADS: Final = 4


class QueryPool:
    def __init__(self, data_dir: Path, threads: int = DEFAULT_THREADS) -> None:
        self.data_dir = Path(data_dir)
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="audit-api-query")
        self._idle: queue.SimpleQueue[Reader] = queue.SimpleQueue()
        self._all: list[Reader] = []
        self._lock = threading.Lock()
        self._closed = False

    async def run(self, work: Callable[[Reader], T]) -> T:
        """``work(reader)`` on a worker thread, with a Reader nobody else is using."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, work)

    def _call(self, work: Callable[[Reader], T]) -> T:
        try:
            reader = self._idle.get_nowait()
        except queue.Empty:
            reader = Reader(self.data_dir)  # at most one per worker thread
            with self._lock:
                self._all.append(reader)
        try:
            return work(reader)
        finally:
            self._idle.put(reader)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True)
        for reader in self._all:
            reader.close()
