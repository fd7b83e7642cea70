"""One case of ``capture_instructions``, run by it under ``valgrind --tool=callgrind``:
build the app, warm it up, switch callgrind's instrumentation on (``callgrind_control``)
for exactly ``N`` requests, then off. Also runs without valgrind (smoke runs), where the
switching is skipped.

    python -m benchmarks._instructions_child CASE N
"""

from __future__ import annotations

import contextvars
import functools
import gc
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

import audit_middleware
from audit_middleware import AuditMiddleware, audited
from audit_middleware import decorator as decorator_module

from ._asgi import Driver
from ._sinks import audit_file_sink
from .request_path import EVENT, ROUTE, SCOPE

WARMUP = 300

#: case -> (framework, AuditMiddleware installed, how the handler is wrapped)
CASES: dict[str, tuple[str, bool, str]] = {
    "starlette/bare": ("starlette", False, "none"),
    "starlette/passthrough": ("starlette", False, "passthrough-middleware"),
    "starlette/floor-middleware": ("starlette", False, "floor-middleware"),
    "starlette/middleware": ("starlette", True, "none"),
    "starlette/middleware+wrapper": ("starlette", True, "bare-wrapper"),
    "starlette/middleware+audited-no-event": ("starlette", True, "audited-no-event"),
    "starlette/ours": ("starlette", True, "audited"),
    "fastapi/bare": ("fastapi", False, "none"),
    "fastapi/ours": ("fastapi", True, "audited"),
}


class PassThrough:
    """The floor of any ASGI middleware: one layer that only awaits the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


_floor_context: contextvars.ContextVar[_FloorContext | None] = contextvars.ContextVar(
    "bench_floor_context", default=None)


class _FloorContext:
    __slots__ = ("scope", "status_code")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.status_code: int | None = None


class FloorMiddleware:
    """The floor of any capture middleware of this design: what AuditMiddleware cannot
    do without (a context object per request, set in a contextvar for the handler's
    events, and the response status seen through a ``send`` wrapper), and nothing more:
    no configuration, no nesting, no denial check, no fail-closed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = _FloorContext(scope)

        def send_observing_status(message: Any) -> Any:
            if message["type"] == "http.response.start":
                ctx.status_code = message["status"]
            return send(message)

        token = _floor_context.set(ctx)
        try:
            await self.app(scope, receive, send_observing_status)
        finally:
            _floor_context.reset(token)


def _bare_wrapper(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await func(*args, **kwargs)
    return wrapper


def _wrap(how: str, func: Callable[..., Any]) -> Callable[..., Any]:
    if how in ("none", "passthrough-middleware", "floor-middleware"):
        return func
    if how == "bare-wrapper":
        return _bare_wrapper(func)
    return audited(EVENT, target="credentials_id")(func)


def build(case: str) -> ASGIApp:
    framework, middleware, how = CASES[case]
    if how == "audited-no-event":
        decorator_module.record_in_request = lambda *args: None  # type: ignore[attr-defined]
    if framework == "starlette":
        async def delete_credentials(request: Request) -> JSONResponse:
            return JSONResponse({"deleted": request.path_params["credentials_id"]})

        stack = [Middleware(AuditMiddleware)] if middleware else []
        if how == "passthrough-middleware":
            stack = [Middleware(PassThrough)]
        elif how == "floor-middleware":
            stack = [Middleware(FloorMiddleware)]
        return Starlette(routes=[Route(ROUTE, _wrap(how, delete_credentials),
                                       methods=["DELETE"])], middleware=stack)
    app = FastAPI()

    async def delete(credentials_id: str):  # type: ignore[no-untyped-def]
        return {"deleted": credentials_id}

    app.add_api_route(ROUTE, _wrap(how, delete), methods=["DELETE"])
    if middleware:
        app.add_middleware(AuditMiddleware)
    return app


def _instrument(on: bool) -> None:
    if os.environ.get("AUDIT_BENCH_UNDER_CALLGRIND") != "1":
        return
    control = shutil.which("callgrind_control")
    if control is None:
        raise SystemExit("callgrind_control not found (Debian package valgrind)")
    subprocess.run([control, "-i", "on" if on else "off", str(os.getpid())], check=True,
                   capture_output=True)


def main(case: str, n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-instr-") as tmp:
        # The file sink with a queue that never wakes its writer during the batch: what
        # is counted is the request thread's work (the writer would be counted too).
        sink = audit_file_sink(Path(tmp) / "audit.jsonl")
        audit_middleware.configure(sink=sink)
        app = build(case)
        driver = Driver()
        for _ in range(WARMUP):
            status, _body = driver.request(app, SCOPE)
            if status != 200:
                raise SystemExit(f"{case}: the route answered {status}")
        # The cyclic GC would run at points that depend on everything else in the
        # process (its heap, the warm-up): off for the counted batch, so the count is
        # the request path's own work and repeats from run to run.
        gc.collect()
        gc.disable()
        _instrument(True)
        driver.batch_ns(app, SCOPE, n)
        _instrument(False)
        gc.enable()
        driver.close()
        queued = sink.stats()["queued"]
        audit_middleware.configure(sink=None)
    audited_case = CASES[case][2] == "audited"
    expected = (WARMUP + n) if audited_case else 0
    if queued != expected:
        raise SystemExit(f"{case}: {queued} events queued, expected {expected}")
    print(f"ok {case} {n}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
