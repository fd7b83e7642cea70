"""A web app for the fault tests, in its own process: uvicorn serving a Starlette app
behind ``AuditMiddleware`` that ships to the collector through a ``CollectorSink``.

    python -m tests.faults.http_app URL SPOOL_DIR OPTIONS_JSON

``POST /items/{n}`` records ``pipeline_created`` with target ``n`` and answers 201
(with ``fail_closed`` in the options: only once the collector acknowledged the event);
``GET /stats`` answers the sink's counters. It binds 127.0.0.1 on a free port and
prints ``listening PORT`` when it serves.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from audit_middleware import AuditMiddleware, audited, configure
from audit_middleware.shipper import CollectorSink


def create_app(sink: CollectorSink) -> AuditMiddleware:
    @audited("pipeline_created", target="n")
    async def create(request: Request) -> Response:
        return JSONResponse({"id": request.path_params["n"]}, status_code=201)

    async def stats(request: Request) -> Response:
        return JSONResponse(sink.stats())

    return AuditMiddleware(Starlette(routes=[
        Route("/items/{n}", create, methods=["POST"]),
        Route("/stats", stats, methods=["GET"]),
    ]), principal=lambda ctx: "loadtest")


def main(argv: list[str]) -> int:
    url, spool_dir, options_json = argv
    options: dict[str, Any] = orjson.loads(options_json)
    sink = CollectorSink(url, spool_dir=spool_dir, **options)
    configure(sink=sink)
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)  # clients queue from here on, before uvicorn takes the socket
    server = uvicorn.Server(uvicorn.Config(create_app(sink), log_level="warning",
                                           lifespan="on", access_log=False,
                                           proxy_headers=False, backlog=512))
    print(f"listening {sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])
    sink.close(10.0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
