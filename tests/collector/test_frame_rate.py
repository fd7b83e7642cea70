"""A frame's payload (or an HTTP ingest body) read at a minimum rate while others wait
for room (``collector.frame_rate``): cut only then, never while there is room for everyone.
Rates here are far above any feed (every byte not yet given is late), with no grace:
what is tested is the decision, not a clock."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from collector.frame_budget import FrameBudget
from collector.frame_rate import FrameTooSlow, Pace, next_chunk, read_payload
from collector.http_ingest import HttpIngest, HttpIngestSettings

LATE = {"rate": 1e15, "grace": 0.0}  # behind the rate whenever it has to wait


def run(coroutine: object) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


async def settle(turns: int = 20) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def contended(budget: FrameBudget) -> asyncio.Future[object]:
    """``budget`` held whole, and a frame waiting for room."""
    await budget.take(budget.limit)
    waiter = asyncio.ensure_future(budget.take(1))
    await settle()
    assert budget.contended
    return waiter


def test_a_payload_already_arrived_is_read_whole_even_when_others_wait() -> None:
    async def scenario() -> None:
        budget = FrameBudget(10)
        waiter = await contended(budget)
        reader = asyncio.StreamReader()
        reader.feed_data(b"abcdef")
        assert await read_payload(reader, 6, budget, **LATE) == b"abcdef"
        waiter.cancel()
    run(scenario())


def test_a_payload_lagging_behind_the_rate_is_cut_while_others_wait() -> None:
    async def scenario() -> None:
        budget = FrameBudget(10)
        waiter = await contended(budget)
        reader = asyncio.StreamReader()
        reader.feed_data(b"abc")
        with pytest.raises(FrameTooSlow) as cut:
            await read_payload(reader, 6, budget, **LATE)
        assert cut.value.code == "timeout" and cut.value.retryable
        assert "3 bytes" in cut.value.message and "send it again" in cut.value.message
        waiter.cancel()
    run(scenario())


def test_a_slow_payload_is_left_alone_while_no_one_waits_for_room() -> None:
    async def scenario() -> None:
        budget = FrameBudget(10)
        reader = asyncio.StreamReader()
        reader.feed_data(b"abc")
        reading = asyncio.ensure_future(read_payload(reader, 6, budget, **LATE))
        await settle()  # behind the rate many times over meanwhile
        assert not reading.done()
        reader.feed_data(b"def")
        assert await reading == b"abcdef"
    run(scenario())


def test_a_slow_payload_is_cut_once_another_frame_starts_waiting() -> None:
    async def scenario() -> None:
        budget = FrameBudget(10)
        reader = asyncio.StreamReader()
        reading = asyncio.ensure_future(read_payload(reader, 6, budget, **LATE))
        await settle()
        assert not reading.done()
        waiter = await contended(budget)
        await settle()
        with pytest.raises(FrameTooSlow):
            await reading
        waiter.cancel()
    run(scenario())


def test_a_connection_closed_in_the_middle_of_a_payload_says_what_it_sent() -> None:
    async def scenario() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b"ab")
        reader.feed_eof()
        with pytest.raises(asyncio.IncompleteReadError) as closed:
            await read_payload(reader, 6, FrameBudget(10))
        assert closed.value.partial == b"ab"
    run(scenario())


def test_a_payload_waiting_in_the_socket_when_its_check_comes_is_read_not_cut() -> None:
    """Bytes the client has sent, in the socket but not yet taken by the event loop when
    the check comes (a loop busy past it: its timer and the socket's readiness handled in
    the same turn), are the collector's lag, not the client's. Before, the read was
    cancelled with them on their way in, and an honest frame was cut as too slow."""
    async def scenario() -> None:
        budget = FrameBudget(10)
        waiter = await contended(budget)
        ours, theirs = socket.socketpair()
        with ours, theirs:
            reader, writer = await asyncio.open_connection(sock=ours)
            theirs.sendall(b"abcdef")  # all of it sent: the loop has not looked yet
            assert await read_payload(reader, 6, budget, **LATE) == b"abcdef"
            writer.close()
        waiter.cancel()
    run(scenario())


# HTTP ingest's bodies (POST /api/v1/events) take their room from the same budget and
# are held to the same rule (collector.http_ingest): before, only read_timeout bounded
# them, and a trickled body held its room while socket frames waited behind it.

TOKEN = "frame-rate-token"


def http_ingest(budget: FrameBudget) -> HttpIngest:
    # No store: every body here is cut, left unanswered, or holds no valid event.
    return HttpIngest(None, HttpIngestSettings(token=TOKEN), budget, **LATE)


def body_request(length: int, messages: list[dict[str, Any]],
                 arrived: asyncio.Event) -> Request:
    """A request of ``length`` bytes whose body is ``messages``, then waits for
    ``arrived`` before its end (a sender that stopped sending)."""
    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await arrived.wait()
        return {"type": "http.request", "body": b"\n", "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/api/v1/events",
                    "query_string": b"", "headers": [
                        (b"authorization", f"Bearer {TOKEN}".encode()),
                        (b"content-length", str(length).encode())]}, receive)


async def granted_while_another_waits(budget: FrameBudget, ingest: HttpIngest,
                                      request: Request) -> tuple[asyncio.Future[Response],
                                                                 asyncio.Future[object]]:
    """``request`` answered by ``ingest``, its room granted as another body's (all of
    the budget) goes on waiting behind it."""
    holder = await budget.take(budget.limit)
    answer = asyncio.ensure_future(ingest.handle(request))
    await settle()
    waiter = asyncio.ensure_future(budget.take(budget.limit))
    await settle()
    holder.release()  # room for the request's body, not for the waiter's
    assert budget.contended
    return answer, waiter


def test_an_http_body_already_arrived_is_read_whole_even_when_others_wait() -> None:
    async def scenario() -> None:
        budget = FrameBudget(10)
        ingest = http_ingest(budget)
        body = [{"type": "http.request", "body": b"{}\n", "more_body": False}]
        answer, waiter = await granted_while_another_waits(
            budget, ingest, body_request(3, body, asyncio.Event()))
        assert (await answer).status_code == 422  # read whole: its event judged, rejected
        await waiter
    run(scenario())


def test_an_http_body_lagging_behind_the_rate_is_answered_503_while_others_wait() -> None:
    async def scenario() -> None:
        budget = FrameBudget(10)
        ingest = http_ingest(budget)
        first = [{"type": "http.request", "body": b"{", "more_body": True}]
        answer, waiter = await granted_while_another_waits(
            budget, ingest, body_request(3, first, asyncio.Event()))
        await settle()
        assert answer.done(), "the trickled body still holds its room"
        cut = answer.result()
        assert cut.status_code == 503 and cut.headers["retry-after"] == "1"
        reply = orjson.loads(cut.body)
        assert reply["error"] == "timeout", reply
        assert "a body of 3 bytes" in reply["message"] and "1 bytes" in reply["message"]
        assert "send it again" in reply["message"]
        assert ingest.stats()["inflight_too_slow"] == 1
        await waiter  # its room given back: the waiting body's turn
    run(scenario())


def test_a_slow_http_body_is_left_alone_while_no_one_waits_for_room() -> None:
    async def scenario() -> None:
        budget = FrameBudget(10)
        ingest = http_ingest(budget)
        arrived = asyncio.Event()
        first = [{"type": "http.request", "body": b"{}", "more_body": True}]
        answer = asyncio.ensure_future(ingest.handle(body_request(3, first, arrived)))
        await settle()  # behind the rate many times over meanwhile
        assert not answer.done() and budget.held == 3
        arrived.set()
        assert (await answer).status_code == 422  # the whole body read
        assert "inflight_too_slow" not in ingest.stats() and budget.held == 0
    run(scenario())


def test_a_body_read_failing_as_its_caller_gives_up_logs_no_unretrieved_error() -> None:
    """The client gone (the read's task ends with ``ClientDisconnect``) in the turn its
    caller's deadline (``read_timeout``) cancels ``next_chunk``: the read's error is
    nobody's to raise. ``next_chunk`` cancels the task even once it is done, which
    marks that error retrieved; skipping the cancel of a done task logged "Task
    exception was never retrieved", a traceback for each such body."""
    async def scenario() -> list[str]:
        logged: list[str] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: logged.append(context["message"]))
        gone = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            await gone.wait()
            raise ClientDisconnect()
            yield b""  # an async generator, as Starlette's request.stream()

        pace = Pace(FrameBudget(10), "a body of 3 bytes", rate=1.0, grace=1e9)
        reading = asyncio.ensure_future(next_chunk(body(), pace))
        await settle()
        gone.set()  # the read's task fails in the next turn ...
        reading.cancel()  # ... as its caller's deadline cancels the caller
        with pytest.raises(asyncio.CancelledError):
            await reading
        del reading
        await settle()
        gc.collect()
        return logged

    assert asyncio.run(scenario()) == []
