"""``AuditMiddleware``: pure ASGI capture of the request context.

For each http request it sets the audit context (a contextvar) for the duration of the
app call and observes the response status by wrapping ``send``; it never reads or
buffers bodies. Websocket scopes pass straight through, their messages untouched, with
the audit context set (an event emitted over a websocket is its user's); on lifespan
shutdown the configured sink is flushed (bounded) before the server is told shutdown is
complete.

With a ``fail_closed`` sink, the response of a request whose events were not durably
recorded within the sink's deadline is replaced by a 503 before it starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from . import _config
from ._capture import UNAVAILABLE_BODY, CapturingMiddleware
from ._types import ASGIApp, Message, Receive, Scope, Send
from .context import (
    RequestContext,
    current,
    enclosing_context,
    init_context,
    new_context,
)
from .denials import on_denied
from .event import DENIED_STATUSES
from .shipper.receipts import Receipt, pending, wait_durable

log = logging.getLogger("audit_middleware")

SHUTDOWN_FLUSH_TIMEOUT = 5.0

class AuditMiddleware(CapturingMiddleware[ASGIApp]):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                # Its messages pass through untouched; an event emitted over it is the
                # connection's user's, from its address, not ``system``.
                ctx = RequestContext(self.config, scope)
                enclosing = enclosing_context()
                if enclosing is not None:
                    enclosing = ctx.nest_in(enclosing)
                token = current.set(ctx)
                try:
                    # Observed where a denial may be recorded: here, or by an enclosing
                    # audit middleware, which must then be told of a failure @audited
                    # recorded under this one (``on_denied``), or record it twice.
                    if self.config.denied_event is None and enclosing is None:
                        await self.app(scope, receive, send)
                    else:
                        await self.app(scope, receive, _handshake_observing(send, ctx))
                finally:
                    if ctx.status_code in DENIED_STATUSES:
                        # The handshake is a GET: the record reads as an http request's.
                        on_denied(ctx, enclosing, "GET", scope.get("path", ""))
                    current.reset(token)
                return
            if scope["type"] == "lifespan":
                await _lifespan(self.app, scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        ctx = new_context(RequestContext)
        init_context(ctx, self.config, scope, None)
        enclosing = enclosing_context()
        if enclosing is not None:  # a mounted sub-app's middleware, under another one
            enclosing = ctx.nest_in(enclosing)
        fail_closed_timeout = _config.settings.fail_closed_timeout
        if fail_closed_timeout is not None:
            await _call_fail_closed(self.app, scope, receive, send, ctx, enclosing,
                                    fail_closed_timeout)
            return

        def send_observing_status(message: Message) -> Awaitable[None]:
            # A plain function returning the server's own awaitable: no coroutine of ours
            # per message (ASGI asks only that ``send(message)`` can be awaited).
            if message["type"] == "http.response.start":
                ctx.status_code = message["status"]
            return send(message)

        token = current.set(ctx)
        try:
            await self.app(scope, receive, send_observing_status)
        finally:
            if ctx.status_code in DENIED_STATUSES:  # one comparison when not denied
                on_denied(ctx, enclosing, scope.get("method"), scope.get("path", ""))
            current.reset(token)


def _handshake_observing(send: Send, ctx: RequestContext) -> Send:
    """``send`` of a websocket, noting the HTTP status its handshake was answered with
    in ``ctx.status_code``: 101 once accepted; a denial response's own status
    (``websocket.http.response.start``); 403 when the app closes it before accepting
    it, which the server must answer with an HTTP 403 (ASGI spec). A refused websocket
    (Starlette's ``@requires``, a FastAPI dependency raising ``HTTPException``) is a
    denied request like an http one."""

    def send_observing_handshake(message: Message) -> Awaitable[None]:
        if ctx.status_code is None:
            kind = message["type"]
            if kind == "websocket.accept":
                ctx.status_code = 101
            elif kind == "websocket.http.response.start":
                ctx.status_code = message["status"]
            elif kind == "websocket.close":
                ctx.status_code = 403
        return send(message)

    return send_observing_handshake


async def _call_fail_closed(app: ASGIApp, scope: Scope, receive: Receive, send: Send,
                            ctx: RequestContext, enclosing: RequestContext | None,
                            timeout: float) -> None:
    receipts: list[Receipt[str | None]] = []
    refused = False

    async def send_once_durable(message: Message) -> None:
        nonlocal refused
        if refused:
            return  # the app's response was replaced by the 503
        if message["type"] == "http.response.start":
            reason = await wait_durable(receipts, timeout) if receipts else None
            if reason is not None:
                refused = True
                # %r: the path is the client's text, decoded; raw, a CR/LF in it forges
                # log lines.
                log.error("audit: refusing %r %r with 503 (fail_closed): %s",
                          scope.get("method"), scope.get("path"), reason)
                ctx.status_code = 503
                await send({"type": "http.response.start", "status": 503, "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(UNAVAILABLE_BODY)).encode()),
                    (b"retry-after", b"5")]})
                await send({"type": "http.response.body", "body": UNAVAILABLE_BODY})
                return
            ctx.status_code = message["status"]
        await send(message)

    token = current.set(ctx)
    receipts_token = pending.set(receipts)
    try:
        await app(scope, receive, send_once_durable)
    finally:
        if ctx.status_code in DENIED_STATUSES:
            on_denied(ctx, enclosing, scope.get("method"), scope.get("path", ""))
        pending.reset(receipts_token)
        current.reset(token)


async def _lifespan(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """The app's lifespan, the sink drained at its shutdown. An app that raises before
    it receives anything does not speak lifespan (ASGI's way to say so; Django's
    ``get_asgi_application()`` refuses every scope but http): the server would then
    carry on without one, and under uvicorn nothing drained the sink at all (it
    re-raises SIGTERM after shutdown: no exit handler runs), so the events a stalled
    collector had not acknowledged died with the process. The middleware answers the
    lifespan itself instead, and drains at its shutdown."""
    used = False

    async def receive_seen() -> Message:
        nonlocal used
        used = True
        return await receive()

    flushing = _flushing_on_shutdown(send)

    async def send_seen(message: Message) -> None:
        nonlocal used
        used = True
        await flushing(message)

    try:
        await app(scope, receive_seen, send_seen)
    except Exception as exc:
        if used:
            raise
        # Named, with its message: were it a bug of the app's and not a refusal, this
        # line is where it shows (the server will not say it).
        log.info("audit: the app refused the ASGI lifespan protocol (%s: %s); "
                 "AuditMiddleware answers it, to drain the audit sink at shutdown",
                 type(exc).__name__, exc)
        await _serve_lifespan(receive, flushing)


async def _serve_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})  # drains first
            return


def _flushing_on_shutdown(send: Send) -> Send:
    async def send_after_flush(message: Message) -> None:
        if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            sink = _config.settings.sink
            if sink is not None:
                # The last chance: uvicorn then re-raises the SIGTERM it caught, whose
                # default action ends the process without exit handlers (no close()).
                # A sink that can (CollectorSink.drain) spools what the collector has
                # not acknowledged by the deadline; a flush would leave it in flight.
                drain = getattr(sink, "drain", None)
                await asyncio.to_thread(drain if callable(drain) else sink.flush,
                                        SHUTDOWN_FLUSH_TIMEOUT)
        await send(message)

    return send_after_flush
