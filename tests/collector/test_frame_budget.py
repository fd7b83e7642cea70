"""The collector's budget of frame bytes (``collector.frame_budget``): what it grants,
in which order, and that a waiter that gives up never leaks bytes or blocks the rest."""

from __future__ import annotations

import asyncio

import pytest

from collector.frame_budget import FrameBudget, Lease


def run(coroutine: object) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_bytes_within_the_budget_are_granted_at_once_and_given_back_once() -> None:
    async def scenario() -> None:
        budget = FrameBudget(100)
        lease = await budget.take(60)
        assert (budget.held, budget.waits) == (60, 0)
        lease.release()
        lease.release()  # an error path and a stored reply may both release it
        assert budget.held == 0 and budget.peak == 60
    run(scenario())


def test_a_frame_that_does_not_fit_waits_until_bytes_are_given_back() -> None:
    async def scenario() -> None:
        budget = FrameBudget(100)
        first = await budget.take(70)
        second = asyncio.ensure_future(budget.take(50))
        await settle()
        assert not second.done() and budget.stats()["inflight_waiting"] == 1
        first.release()
        assert (await second).size == 50
        assert (budget.held, budget.peak, budget.waits) == (50, 70, 1)
    run(scenario())


def test_waiters_are_served_in_arrival_order_so_a_large_frame_is_not_starved() -> None:
    async def scenario() -> None:
        budget = FrameBudget(100)
        held = await budget.take(60)
        large = asyncio.ensure_future(budget.take(100))
        await settle()
        small = asyncio.ensure_future(budget.take(10))  # would fit now, but came later
        await settle()
        assert not small.done()
        held.release()
        (await large).release()
        assert (await small).size == 10
    run(scenario())


def test_a_waiter_that_times_out_leaks_nothing_and_lets_the_next_one_in() -> None:
    async def scenario() -> None:
        budget = FrameBudget(100)
        held = await budget.take(50)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await budget.take(100)  # never fits while 50 are held
        assert budget.stats()["inflight_waiting"] == 0
        assert (await budget.take(50)).size == 50  # not queued behind the one gone
        held.release()
        assert budget.held == 50
    run(scenario())


def test_a_waiter_cancelled_as_it_was_granted_gives_its_bytes_back() -> None:
    async def scenario() -> None:
        budget = FrameBudget(100)
        held = await budget.take(100)
        waiter = asyncio.ensure_future(budget.take(100))
        await settle()
        held.release()  # granted: its turn resolved, its task not yet resumed
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert budget.held == 0
        assert (await budget.take(100)).size == 100
    run(scenario())


def test_a_frame_larger_than_the_whole_budget_is_refused_not_left_waiting() -> None:
    async def scenario() -> None:
        with pytest.raises(ValueError, match="max_inflight_bytes >= max_frame"):
            await FrameBudget(100).take(101)
    run(scenario())


def test_a_lease_of_no_budget_releases_nothing() -> None:
    Lease(None, 0).release()  # what a hello (not counted) carries
