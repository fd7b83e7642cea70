"""The query API's connection limit (a part of ``ApiServer``, which inherits it):
``max_connections`` (a quarter of the file limit unless set), against which count the
connections holding a file (uvicorn's, those on their way to it, and over TLS those in
their handshake). A new plain-HTTP connection (``_admit``, from ``collector.accepting``'s
loop) is let in under it; at it, only by closing the connection nearest its deadline
without a request in progress (the guard's order, ``collector.api.server_guard``), or
else refused with a 503 (``collector.api.refusal``). Out of files, the same room is made.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..accepting import default_max_connections
from .refusal import refuse
from .server_guard import _close, _Waiting, _waiting

if TYPE_CHECKING:
    import uvicorn

    from .tls import TlsListener


class _ConnectionLimit:
    """``ApiServer``'s connection limit (see this module's doc)."""

    #: Set, and said, in ``ApiServer.__init__`` (``tls``: in ``start``).
    server: uvicorn.Server
    tls: TlsListener | None
    max_connections: int | None
    closed_by_guard: int
    counters: Counter[str]
    _joining: int
    _tasks: set[asyncio.Task[None]]
    _waiting_since: dict[_Waiting, float]
    #: uvicorn's HTTP protocol for one connection (``ApiServer``).
    _http_protocol: Callable[[], asyncio.Protocol]

    def _limit(self) -> int:
        return self.max_connections or default_max_connections()

    def _room_for_handshakes(self) -> int:
        return self._limit() - len(self.server.server_state.connections)

    def _admit(self, sock: socket.socket, peer: str) -> None:
        """A new plain-HTTP connection (``accept_forever``), given to uvicorn's protocol;
        at the limit, room made for it first (``_room_for_one``), or it is refused when
        every connection has a request in progress: answered 503 with ``Retry-After``
        (``collector.api.refusal``, never waiting) and closed. asyncio's server accepted
        every connection waiting, and a flood of them passed the limit by hundreds between
        two passes of the guard: the process ran out of files (the apps' socket and the
        store's too), and asyncio logged a traceback for each connection it could not
        accept, up to 2048 a second."""
        if not self._room_for_one():
            refuse(sock)  # closed without a word, the client saw a reset and no reason
            self.counters["connections_refused"] += 1
            return
        self._joining += 1
        task = asyncio.get_running_loop().create_task(self._join(sock))
        self._tasks.add(task)  # referenced until it ends
        task.add_done_callback(self._tasks.discard)

    async def _join(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.connect_accepted_socket(self._http_protocol, sock)
        except OSError:
            sock.close()  # reset before its transport was made: nothing to say to it
            return
        finally:
            self._joining -= 1
        # Timed from now, not from the guard's next pass: until then a flood's new
        # connections all tied with it, and room was made by closing any one of them.
        key, _ = _waiting(protocol)
        self._waiting_since.setdefault(key, loop.time())

    def _room_for_one(self) -> bool:
        """Whether one more connection fits under the limit, once the connections nearest
        their deadline without a request in progress are closed (the guard's order)."""
        excess = self._open_count() + 1 - self._limit()
        return excess <= 0 or self._close_nearest(excess) <= 0

    def _make_room(self) -> None:
        """Out of files: the connection nearest its deadline without a request in
        progress closed."""
        self._close_nearest(1)

    def _close_nearest(self, excess: int) -> int:
        """Closes up to ``excess`` connections without a request in progress, nearest
        their deadline first; how many are left to close. One scan each, no pass of the
        guard (which sorts them all): this runs at each connection of a flood."""
        now = asyncio.get_running_loop().time()
        while excess > 0:
            nearest: tuple[float, Any] | None = None
            for conn in self.server.server_state.connections:
                key, limit = _waiting(conn)
                transport = getattr(conn, "transport", None)
                if limit is None or transport is None or transport.is_closing():
                    continue
                deadline = self._waiting_since.get(key, now) + limit
                if nearest is None or deadline < nearest[0]:
                    nearest = (deadline, conn)
            if nearest is None:
                break
            if _close(nearest[1]):
                self.closed_by_guard += 1
            excess -= 1
        return excess

    def _open_count(self) -> int:
        """Connections holding a file: uvicorn's, those on their way to it, and (over TLS)
        those in their handshake."""
        pending = len(self.tls.pending) if self.tls is not None else 0
        return len(self.server.server_state.connections) + self._joining + pending
