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

from typing import Final, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .disk_calls import retry_after
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
    def refusal(self) -> str | None:
        """Called on the event loop: must answer from memory, never wait on the disk."""


class Health:
    """What ``GET /healthz`` answers from: the store's state, and whether serve stops."""

    def __init__(self, store: Refusing) -> None:
        self._store = store
        #: Set by serve when it is asked to stop: ingest drains its clients, and a load
        #: balancer should send nothing new (the API's port closes a moment later).
        self.stopping = False

    def problem(self) -> str | None:
        """None when the collector can take events; else one of ``REASONS``."""
        if self.stopping:
            return STOPPING
        return self._store.refusal()


async def _endpoint(request: Request) -> Response:
    health: Health | None = getattr(request.app.state, "health", None)
    # None: the API listens a moment before serve attaches it (``Integrations.attach``).
    # Answered on the event loop: ``Store.refusal`` reads memory only (the commit thread
    # judges the disk), so a hung disk cannot keep a probe waiting.
    problem = STARTING if health is None else health.problem()
    if problem is None:
        return _json({"status": "ready"}, 200)
    # Retry-After as every 503 of the API: a probe ignores it, a script may use it.
    return _json({"status": "unavailable", "reason": problem, "message": REASONS[problem]},
                 503, retry_after())


def _json(body: dict[str, str], status: int,
          headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers,
                    media_type="application/json")


def routes() -> list[Route]:
    """``GET /healthz``, and ``HEAD`` (Starlette serves it for GET routes; probes use it:
    it runs no query and records nothing, unlike the audit-log reads' HEAD)."""
    return [Route("/healthz", _endpoint, methods=["GET"])]
