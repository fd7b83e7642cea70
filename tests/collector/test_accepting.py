"""The TCP ports' accept loop (``collector.accepting``) on a real listening socket."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections import Counter

from collector.accepting import accept_forever, bind_tcp
from collector.handshakes import FailureLog


def test_after_a_failed_admit_the_loop_yields_before_the_next_accept() -> None:
    """sock_accept does not yield while connections wait in the backlog: after an admit
    that raised, the loop went straight to the next accept, so a backlog of connections
    (a flood's) that admit could not take starved the rest of the collector. Each
    connection is closed and counted, and the rest of the loop runs between two."""
    async def scenario() -> tuple[list[int], Counter[str], list[bytes]]:
        listener = bind_tcp("127.0.0.1", 0)[0]
        port = listener.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5)
                   for _ in range(3)]  # all three wait in the backlog
        ticks = 0
        seen: list[int] = []

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        def admit(conn: socket.socket, peer: str) -> None:
            seen.append(ticks)
            raise RuntimeError("a bug in admit")

        counters: Counter[str] = Counter()
        tasks = [asyncio.create_task(ticker()), asyncio.create_task(
            accept_forever(listener, admit, lambda: None, counters, FailureLog(),
                           log=logging.getLogger("collector.ingest"), what="ingest",
                           making_room="closing nothing"))]
        try:
            async with asyncio.timeout(10):
                while len(seen) < 3:
                    await asyncio.sleep(0.01)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            listener.close()
        closed = [client.recv(1) for client in clients]
        for client in clients:
            client.close()
        return seen, counters, closed

    seen, counters, closed = asyncio.run(scenario())
    assert seen == sorted(set(seen)), f"two accepts with nothing run between: {seen}"
    assert counters["internal_errors"] == 3
    assert closed == [b"", b"", b""]


def test_after_a_connection_aborted_before_its_accept_the_loop_yields() -> None:
    """accept() failing with ECONNABORTED (a client that reset while it waited in the
    backlog) went straight to the next accept: a flood of such connections starved the
    rest of the collector as a flood of accepted ones did not. The loop yields after
    those too."""
    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        listener = bind_tcp("127.0.0.1", 0)[0]
        ticks = 0
        seen: list[int] = []
        forever: asyncio.Future[tuple[socket.socket, object]] = loop.create_future()

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        async def aborted(sock: socket.socket) -> tuple[socket.socket, object]:
            seen.append(ticks)
            if len(seen) <= 3:
                raise ConnectionAbortedError(errno.ECONNABORTED, "Software caused "
                                             "connection abort")
            return await forever  # no more connections

        loop.sock_accept = aborted  # type: ignore[method-assign]
        tasks = [asyncio.create_task(ticker()), asyncio.create_task(
            accept_forever(listener, lambda conn, peer: None, lambda: None, Counter(),
                           FailureLog(), log=logging.getLogger("collector.ingest"),
                           what="ingest", making_room="closing nothing"))]
        try:
            async with asyncio.timeout(10):
                while len(seen) < 4:
                    await asyncio.sleep(0.01)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            listener.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen == sorted(set(seen)), f"two accepts with nothing run between: {seen}"
