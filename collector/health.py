"""``GET /healthz`` on the API port: whether the collector can take events now, for a
load balancer's, systemd's or Kubernetes' readiness probe.

    health = Health(store)          # serve's Integrations makes it
    app.state.health = health       # the route finds it there
    health.stopping = True          # serve, once asked to stop

200 ``{"status": "ready"}`` while the store is open and its writes go through; 503 with
one of ``REASONS`` otherwise, decided from the store's own state at each request
(``Store.refusal``), never from a flag set once at start-up. Like ``/metrics`` with
``metrics_auth = none`` it needs no token, so it says no more than one of those fixed
reasons: no path, no count, no error text (the log and ``audit-collector stats`` have
them).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Final, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .storage.failures import DISK_FULL, NOT_OPEN, WRITE_FAILING, WRITE_STALLED

STARTING: Final = "starting"
STOPPING: Final = "stopping"

#: Each reason for a 503, and what it tells the operator (nothing of the store's).
REASONS: Final = {
    STARTING: "the collector is starting: ask again in a moment",
    STOPPING: "the collector is stopping: it takes no new events (the apps keep theirs "
              "until it is back)",
    NOT_OPEN: "the store is not open: the collector is starting or stopping",
    DISK_FULL: "the store's disk is full: batches are refused until space is freed on "
               "it (the apps keep theirs meanwhile)",
    WRITE_FAILING: "the store's last write failed, and not for want of space: batches "
                   "are refused until one is written or the store's directory takes a "
                   "write again; the collector's log says why",
    WRITE_STALLED: "the store's writes have hung longer than write_stall_timeout (a "
                   "hung fsync: a dying disk, a frozen network file system): batches "
                   "wait until it completes (the apps keep theirs meanwhile)",
}


class Refusing(Protocol):
    def refusal(self) -> str | None: ...


#: Probes whose answer may be worked out at once, each on a thread of its own. The store's
#: answer is judged off the event loop (a full disk by statvfs, which a hung disk can
#: hold), but not on the loop's shared thread pool: scrapes of ``/metrics`` (the store's
#: stats list files on the data disk) stuck on a frozen disk could take every one of its
#: threads, and the probe would queue behind them until its caller timed out instead of
#: hearing why. A thread per probe, not a pool of two: a pool's threads are joined at
#: exit, and one held by a hung disk would hold the process's exit.
PROBES_AT_ONCE: Final = 2

#: Seconds a probe waits for the store's answer before it says ``WRITE_STALLED``: a
#: healthy store answers in microseconds, and a caller (Kubernetes waits 1 s by default)
#: must hear why rather than time out. A probe that finds every thread taken shares the
#: answer of the latest one while it is younger than this: probes that come together on
#: a healthy disk all hear it ready (the third heard ``WRITE_STALLED`` while the other two
#: were merely starting their threads).
PATIENCE: Final = 0.5


class _Judgement:
    """One thread's reading of ``problem()``, awaited by its probe and any that share it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.since = loop.time()
        self.answer: asyncio.Future[str | None] = loop.create_future()
        # Read by no one when every probe awaiting it gave up: marked retrieved, so that
        # asyncio does not log the store's exception as never retrieved.
        self.answer.add_done_callback(lambda done: done.cancelled() or done.exception())

    def deliver(self, result: str | None, exc: Exception | None) -> None:
        """From the judging thread: hand the answer to the loop, unless it has closed
        (no probe waits any more, and the daemon thread must not die of it)."""
        try:
            self.answer.get_loop().call_soon_threadsafe(_settle, self.answer, result, exc)
        except RuntimeError:
            pass  # the loop closed while the disk held this thread


class Health:
    """What ``GET /healthz`` answers from: the store's state, and whether serve stops."""

    def __init__(self, store: Refusing) -> None:
        self._store = store
        #: Set by serve when it is asked to stop: ingest drains its clients, and a load
        #: balancer should send nothing new (the API's port closes a moment later).
        self.stopping = False
        self._slots = threading.BoundedSemaphore(PROBES_AT_ONCE)
        self._latest: _Judgement | None = None  # only touched on the event loop

    def problem(self) -> str | None:
        """None when the collector can take events; else one of ``REASONS``."""
        if self.stopping:
            return STOPPING
        return self._store.refusal()

    async def judged(self) -> str | None:
        """``problem()`` from a thread of the probe's own (see ``PROBES_AT_ONCE``), or
        ``WRITE_STALLED`` when no answer comes within ``PATIENCE``."""
        if self.stopping:
            return STOPPING
        loop = asyncio.get_running_loop()
        judgement = self._started(loop) or self._shared(loop)
        if judgement is None:
            return WRITE_STALLED  # the earlier probes have waited for the disk too long
        wait = judgement.since + PATIENCE - loop.time()
        try:
            # Shielded: a probe that gives up (or whose client went away) leaves the
            # answer to those that share it.
            return await asyncio.wait_for(asyncio.shield(judgement.answer), max(wait, 0))
        except TimeoutError:
            return WRITE_STALLED

    def _started(self, loop: asyncio.AbstractEventLoop) -> _Judgement | None:
        if not self._slots.acquire(blocking=False):
            return None
        judgement = _Judgement(loop)
        try:
            # A daemon thread: one that a hung disk holds must not hold the process's exit.
            threading.Thread(target=self._judge, args=(judgement,), name="audit-healthz",
                             daemon=True).start()
        except BaseException:
            self._slots.release()  # no thread took it: every later probe would be refused
            raise
        self._latest = judgement
        return judgement

    def _shared(self, loop: asyncio.AbstractEventLoop) -> _Judgement | None:
        latest = self._latest
        if latest is None or latest.answer.get_loop() is not loop:
            return None
        return latest if loop.time() - latest.since < PATIENCE else None

    def _judge(self, judgement: _Judgement) -> None:
        try:
            result = self.problem()
        except Exception as exc:  # noqa: BLE001 - raised in the awaiting request
            judgement.deliver(None, exc)
        else:
            judgement.deliver(result, None)
        finally:
            self._slots.release()


def _settle(answer: asyncio.Future[str | None], result: str | None,
            exc: Exception | None) -> None:
    if answer.done():  # never cancelled (shielded); defensive
        return
    if exc is not None:
        answer.set_exception(exc)
    else:
        answer.set_result(result)


async def _endpoint(request: Request) -> Response:
    health: Health | None = getattr(request.app.state, "health", None)
    # None: the API listens a moment before serve attaches it (``Integrations.attach``).
    problem = STARTING if health is None else await health.judged()
    if problem is None:
        return _json({"status": "ready"}, 200)
    return _json({"status": "unavailable", "reason": problem, "message": REASONS[problem]},
                 503)


def _json(body: dict[str, str], status: int) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def routes() -> list[Route]:
    """``GET /healthz``, and ``HEAD`` (Starlette serves it for GET routes; probes use it:
    it runs no query and records nothing, unlike the audit-log reads' HEAD)."""
    return [Route("/healthz", _endpoint, methods=["GET"])]
