"""The query API's stop (a part of ``ApiServer``, which inherits it): ``shutdown``,
within ``drain_timeout``; and the record of the refused attempts the denials' limit held
back (``_report_unrecorded_denials``), asked for by the guard at each of its passes and
by the stop once more, bounded.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Final

from .context import Api
from .server_guard import _close

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette

    from .tls import TlsListener

log = logging.getLogger("collector.api")

#: Seconds a stop waits at least for the query threads, however little of
#: ``drain_timeout`` is left: idle ones end at once.
THREADS_END_WAIT: Final = 1.0

#: Seconds a stop waits at least for the refused attempts held back by the denials'
#: limit to be recorded, however little of ``drain_timeout`` is left: on a sound disk
#: the record takes milliseconds.
DENIALS_END_WAIT: Final = 1.0


class _Stop:
    """``ApiServer``'s stop (see this module's doc)."""

    #: Set, and said, in ``ApiServer.__init__`` (the tasks and the socket: in ``start``).
    app: Starlette
    server: uvicorn.Server
    tls: TlsListener | None
    drain_timeout: float
    _socket: socket.socket | None
    _main: asyncio.Task[None] | None
    _guard: asyncio.Task[None] | None
    _accepting: asyncio.Task[None] | None
    _denials_report: asyncio.Task[None] | None

    async def _report_unrecorded_denials(self, *, now: bool = False,
                                         timeout: float | None = None) -> None:
        """Refused attempts past the denials' budget are written once their window is
        over, whether or not another refusal comes (``collector.api.denials``); within
        ``timeout`` seconds (None: no bound), else left unrecorded, said in the log."""
        api = self.app.state.api
        report = getattr(api, "report_unrecorded", None)
        if report is None:
            return
        bound = asyncio.timeout(timeout)
        try:
            async with bound:
                await report(now=now)
        except Exception:  # the guard must go on; the count is kept for the next try
            if not bound.expired():
                log.exception("query API: refused attempts past the budget not recorded")
                return
            limiter = getattr(api, "denials", None)
            held = f"{limiter.held_back()} " if limiter is not None else ""
            log.warning("query API: %srefused attempts held back by the denials' rate "
                        "limit were not recorded within %.1f s (the data disk does not "
                        "answer?): the stop goes on without them", held, timeout)

    async def shutdown(self) -> None:
        """Requests in progress answered, within ``drain_timeout`` (then cancelled); the
        refused attempts held back recorded, and the query threads ended, each within
        what is left of it: a hung disk leaves those attempts unrecorded (logged) and a
        thread held in a read (a daemon thread), where waiting for them held the stop for
        good."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        if self._guard is not None:
            self._guard.cancel()
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.wait([self._accepting], timeout=1.0)
        if self.tls is not None:
            await self.tls.close()  # no more accepted, unfinished handshakes ended
        self.server.should_exit = True
        if self._main is not None:
            await self._main
        # uvicorn's shutdown closes an idle connection with close(), which over TLS waits
        # for the client's close_notify: a client that does not read its idle kept-alive
        # connection (a pool's) held the stop for all of drain_timeout. Nothing is left
        # to finish on it: closed here as the guard closes it (over TLS, aborted).
        for conn in list(self.server.server_state.connections):
            cycle = getattr(conn, "cycle", None)
            if cycle is None or cycle.response_complete:
                _close(conn)
        await self.server.shutdown(sockets=[self._socket] if self._socket else None)
        # Bounded: a hung fsync held this write, and the stop with it, for good. The
        # guard's own write, if one is under way, is waited for within the same bound.
        denials_wait = max(deadline - loop.time(), DENIALS_END_WAIT)
        if self._denials_report is not None and not self._denials_report.done():
            await asyncio.wait([self._denials_report], timeout=denials_wait)
            if self._denials_report.cancel():
                # Cancelled, it gives what it had not written back to the limiter, but
                # only once it runs: the stop's record below, taken before that, left
                # those attempts out, unrecorded without a word. Its wait is a future's,
                # which ends at once on a cancel (bounded all the same).
                await asyncio.wait([self._denials_report], timeout=DENIALS_END_WAIT)
        await self._report_unrecorded_denials(
            now=True, timeout=max(deadline - loop.time(), DENIALS_END_WAIT))
        api: Api = self.app.state.api
        # Not on the loop's default pool (a stop's other parts need its threads), and at
        # least a moment: idle threads end at once, on a loaded machine not instantly.
        await api.aclose(max(deadline - loop.time(), THREADS_END_WAIT))
