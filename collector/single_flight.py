"""One reading at a time of something a hung disk can hold (the store's stats: a listing
of ``quarantine/``, a stat of the index files, a statvfs), shared by everyone who asks
while it runs.

    store_stats = SingleFlight(store.stats, "audit-store-stats")
    stats = await store_stats.read(timeout)        # GET /metrics, serve's stats task
    stats = store_stats.read_blocking(timeout)     # the OpenTelemetry reader's thread

Not on the event loop's default thread pool: each scrape of ``/metrics`` stuck on a
frozen disk held one of its few threads, and once all were held a stop
(``asyncio.to_thread``) and the losses listing waited for the disk too. Here a hung disk
holds one daemon thread, however many callers ask: a daemon thread, because the pool's
threads are joined at exit and one held by the disk held the process's exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T_co = TypeVar("T_co", covariant=True)  # a reading of a dict is one of a Mapping


T = TypeVar("T")


def on_daemon_thread(call: Callable[[], T], name: str,
                     before_result: Callable[[], None]) -> concurrent.futures.Future[T]:
    """``call()`` on a daemon thread of its own, its result (or exception) in the future
    returned, which is running from the start (no caller can cancel it).
    ``before_result`` runs once the call has ended, before the result is set: a caller
    woken by the result and asking again at once finds the state it leaves."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    future.set_running_or_notify_cancel()

    def run() -> None:
        try:
            result = call()
        except BaseException as exc:  # noqa: BLE001 - raised in each caller
            before_result()
            future.set_exception(exc)
        else:
            before_result()
            future.set_result(result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class Unanswered(Exception):
    """The reading did not finish within the caller's wait (it goes on, for the next)."""


class SingleFlight(Generic[T_co]):
    def __init__(self, read: Callable[[], T_co], name: str) -> None:
        self._read = read
        self._name = name
        self._lock = threading.Lock()  # asked from the loop and the OpenTelemetry thread
        self._flight: concurrent.futures.Future[T_co] | None = None

    async def read(self, timeout: float, *, fresh: bool = False) -> T_co:
        """The running reading's result, or a new one's; ``Unanswered`` after
        ``timeout`` seconds (the reading is left running: the next caller shares it).
        ``fresh``: a reading that starts after this call (the running one is waited
        for, then the next one shared), for a caller that must see a change made just
        before it asked: a reader removed from ``readers.json``, which a reading under
        way may have looked at before the change."""
        try:
            # A timeout cancels only this caller's wrapper: the flight is running, and a
            # running concurrent future cannot be cancelled. Not wait_for: on Python 3.11
            # it drops a cancel that comes as the reading lands, and the stats task a
            # stop cancelled went on writing the stats file for good.
            async with asyncio.timeout(timeout):
                return await self._landed(fresh)
        except TimeoutError:
            raise Unanswered(self._late(timeout)) from None

    async def _landed(self, fresh: bool) -> T_co:
        if fresh:
            with self._lock:
                running = self._flight
            if running is not None:
                with contextlib.suppress(Exception):  # its callers have its error
                    await asyncio.wrap_future(running)
        return await asyncio.wrap_future(self._current())

    def read_blocking(self, timeout: float) -> T_co:
        """``read`` for a thread other than the event loop's."""
        try:
            return self._current().result(timeout)
        except TimeoutError:
            raise Unanswered(self._late(timeout)) from None

    def _late(self, timeout: float) -> str:
        return f"{self._name} did not answer within {timeout:g} s (a hung disk?)"

    def _current(self) -> concurrent.futures.Future[T_co]:
        with self._lock:
            if self._flight is None:
                # Set only once a thread took it (else none ever ends); its landing waits
                # for this lock, so it always finds it set.
                self._flight = on_daemon_thread(self._read, self._name, self._land)
            return self._flight

    def _land(self) -> None:
        # Before the result is set: a caller woken by it and asking again at once gets a
        # fresh reading, not this one.
        with self._lock:
            self._flight = None
