"""A cancel that comes as the awaited work lands must cancel: Python 3.11's
``asyncio.wait_for`` returned the result instead, and dropped the cancel. The stats task
a stop cancelled (its read of the store's stats landing that moment) went on writing
the stats file for good, and the stop that awaited it with it."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import pytest

from collector.disk_calls import DiskCalls
from collector.single_flight import SingleFlight


def _cancelled_as_it_lands(wait: Any, land: Any) -> None:
    """``wait()`` in a task, cancelled in the same loop turn as ``land()`` makes what it
    waits for done: the task must end cancelled, not with the result."""

    async def main() -> None:
        task = asyncio.create_task(wait())
        await asyncio.sleep(0)  # the task waits now
        await asyncio.sleep(0)
        land()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_single_flight_reader_cancelled_as_the_reading_lands_is_cancelled() -> None:
    flight = SingleFlight(lambda: {"events": 1}, "store-stats")
    landed = asyncio.Event()

    async def _landed(fresh: bool) -> dict[str, int]:  # the reading, landing on cue
        await landed.wait()
        return {"events": 1}

    flight._landed = _landed  # type: ignore[method-assign]
    _cancelled_as_it_lands(lambda: flight.read(10), landed.set)


def test_a_disk_call_waited_for_and_cancelled_as_it_ends_is_cancelled() -> None:
    future: concurrent.futures.Future[int] = concurrent.futures.Future()
    future.set_running_or_notify_cancel()  # a call under way on its thread
    async def wait() -> int:
        return await DiskCalls.wait(future, 10, "late")

    def land() -> None:
        # The thread's result, delivered to the loop as asyncio does it (call_soon).
        future.set_result(1)

    _cancelled_as_it_lands(wait, land)
