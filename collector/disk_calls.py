"""Calls from the event loop that write to the data disk (an acknowledgement of losses
staged, kept, dropped; the unix socket's file removed at a stop), each on a daemon thread
of its own, a few at a time; and ``retry_after``, the header of every 503 the API answers.

    disk = DiskCalls(4, "audit-api-disk")
    staging = disk.submit(functools.partial(store.stage_loss_ack, plan, ...))
    staged = await disk.wait(staging, timeout, "...")     # DiskLate after timeout
    await disk.finish(staged.keep)                        # never refused, not bounded

Not on the event loop's default thread pool (``asyncio.to_thread``): it has
min(32, cores + 4) threads, six on two cores, and each call stuck on a hung disk (a dying
disk, a frozen network file system) held one of them for good; once all were held,
every later ``to_thread`` waited for the disk too, those that never touch it included
(the forwarder's stop at shutdown). Here a hung disk holds at most ``limit`` threads of
these calls, and a call that would need one more is refused at once (``DiskBusy``).
Daemon threads, as ``single_flight.py``'s: a pool's threads are joined at exit, and one
held by the disk held the process's exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Final, TypeVar

from collector.single_flight import on_daemon_thread

T = TypeVar("T")

#: Seconds a client is told to wait before it tries again (``Retry-After``).
RETRY_AFTER: Final = 5


def retry_after(seconds: int = RETRY_AFTER) -> dict[str, str]:
    """The headers of a 503: when to ask again (RFC 9110, 10.2.3). Every 503 the API
    answers carries one, so a client (an exporter, a scraper, a script) backs off by
    what it is told instead of a guess of its own."""
    return {"Retry-After": str(seconds)}


class DiskLate(Exception):
    """A call on the data disk did not end within the caller's wait (it goes on): the
    request is answered 503 with ``Retry-After``."""


class DiskBusy(DiskLate):
    """Every thread for calls on the data disk is held (a hung disk): refused at once."""


def _nothing() -> None:
    pass


class DiskCalls:
    def __init__(self, limit: int, name: str) -> None:
        if limit < 1:
            raise ValueError(f"DiskCalls needs a limit of at least 1 thread, got {limit}")
        self._name = name
        self._slots = threading.BoundedSemaphore(limit)
        self._limit = limit

    def submit(self, call: Callable[[], T], *, limited: bool = True
               ) -> concurrent.futures.Future[T]:
        """``call()`` on a daemon thread; ``DiskBusy`` when ``limit`` limited calls are
        running already. ``limited=False``: for what ends a call made before (a staged
        acknowledgement kept or dropped, which releases its lock): refused, nothing
        would ever end it."""
        if not limited:
            return on_daemon_thread(call, self._name, _nothing)
        if not self._slots.acquire(blocking=False):
            raise DiskBusy(f"{self._limit} calls on the data disk ({self._name}) are still "
                           f"under way: the disk does not answer (a hung disk, a frozen "
                           f"network file system); try again once it does")
        try:
            # The slot is free again before the result is set: a caller woken by it and
            # calling again at once finds it free.
            return on_daemon_thread(call, self._name, self._slots.release)
        except BaseException:  # no thread started: nothing would ever free it
            self._slots.release()
            raise

    async def finish(self, call: Callable[[], T]) -> T:
        """``call()`` on a thread never refused (``submit(limited=False)``), waited for
        however long it takes: what ends a call made before."""
        return await asyncio.wrap_future(self.submit(call, limited=False))

    @staticmethod
    async def wait(future: concurrent.futures.Future[T], timeout: float | None,
                   late: str) -> T:
        """The call's result; ``DiskLate(late)`` after ``timeout`` seconds (None: no
        limit). The call goes on: a caller that gives up sees to what it leaves
        (``future.add_done_callback``)."""
        try:
            # A timeout or a cancellation ends this wrapper only: the thread runs on.
            # Not wait_for: on Python 3.11 it drops a cancel that comes as the call ends.
            async with asyncio.timeout(timeout):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            raise DiskLate(late) from None
