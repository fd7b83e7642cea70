"""``WSGIAuditMiddleware``: the same capture for WSGI apps (Flask, Django).

The context is set while the app callable runs, which is when views run in Flask and
Django, and while the response body is iterated and closed (a streamed body may emit);
the response status is observed through ``start_response``, a denial (401, 403)
recorded once that status is final (``_Answer``). With a ``fail_closed`` sink,
``start_response`` first waits until the request's events are durably recorded, and
answers 503 instead when they are not (as ``AuditMiddleware``); that 503 stands, whatever
status the app names after it, or an exception it raises (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from . import _config
from ._capture import UNAVAILABLE_BODY, CapturingMiddleware
from ._types import Environ, StartResponse, WSGIApp
from .context import (
    RequestContext,
    current,
    enclosing_context,
    init_context,
    new_context,
)
from .denials import on_denied
from .event import DENIED_STATUSES
from .shipper.receipts import Receipt, pending, wait_durable_blocking

log = logging.getLogger("audit_middleware")


class WSGIAuditMiddleware(CapturingMiddleware[WSGIApp]):
    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        ctx = new_context(RequestContext)
        init_context(ctx, self.config, None, environ)
        enclosing = enclosing_context()
        if enclosing is not None:  # a dispatched sub-app's middleware, under another one
            enclosing = ctx.nest_in(enclosing)
        fail_closed_timeout = _config.settings.fail_closed_timeout
        if fail_closed_timeout is not None:
            return self._call_fail_closed(environ, start_response, ctx, enclosing,
                                          fail_closed_timeout)

        def start_response_observing_status(status: str, headers: Any, *exc: Any) -> Any:
            return answer.started(status, start_response(status, headers, *exc))

        token = current.set(ctx)
        answer = _Answer(ctx, enclosing, environ)
        try:
            body = self.app(environ, start_response_observing_status)
        finally:
            current.reset(token)
        return _in_context(body, answer)

    def _call_fail_closed(self, environ: Environ, start_response: StartResponse,
                          ctx: RequestContext, enclosing: RequestContext | None,
                          timeout: float) -> Iterable[bytes]:
        receipts: list[Receipt[str | None]] = []
        refused: list[str] = []

        def start_response_once_durable(status: str, headers: Any, *exc: Any) -> Any:
            if refused:
                # Refused once, the 503 stands: a status the app names after it (PEP
                # 3333 lets it replace its status with ``exc_info`` until the first body
                # byte) is not passed on, even if the events were acknowledged since.
                return _discard
            reason = wait_durable_blocking(receipts, timeout) if receipts else None
            if reason is None:
                return answer.started(status, start_response(status, headers, *exc))
            # The server first: one that sent the headers already re-raises exc_info
            # here, and the client keeps the response it has: no 503 to note or to send.
            start_response("503 Service Unavailable", [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(UNAVAILABLE_BODY))), ("Retry-After", "5")],
                *exc)
            refused.append(reason)
            log.error("audit: refusing %r %r with 503 (fail_closed): %s",  # %r: no forged lines
                      environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), reason)
            ctx.status_code = 503
            return _discard

        token = current.set(ctx)
        answer = _Answer(ctx, enclosing, environ)
        receipts_token = pending.set(receipts)
        try:
            body = self.app(environ, start_response_once_durable)
        except Exception:
            if not refused:
                raise
            _raised_after_refusal()
            return [UNAVAILABLE_BODY]
        finally:
            pending.reset(receipts_token)
            current.reset(token)
        if refused:
            _close(body)
            return [UNAVAILABLE_BODY]
        return _in_context(body, answer, receipts, refused)


class _Answer:
    """The status a response is sent with, recorded as a denial once it is final. PEP
    3333 lets an app replace its status (``start_response`` again, with ``exc_info``)
    until the first body chunk goes out: a 403 an error turns into a 500 is no denial,
    a 200 turned into a 403 is one. Final when the server gets the first chunk (wsgiref,
    gunicorn and Werkzeug send the headers with it, an empty one too), the legacy
    ``write()`` is first called, the body ends or is closed, or the app returns a body
    no code of its own produces (a list). An app that raises before then sent nothing:
    the server answers it (a 500), and no denial is recorded."""

    __slots__ = ("ctx", "enclosing", "environ", "final")

    def __init__(self, ctx: RequestContext, enclosing: RequestContext | None,
                 environ: Environ) -> None:
        self.ctx = ctx
        #: The context an outer audit middleware set for the same request, if any.
        self.enclosing = enclosing
        self.environ = environ
        self.final = False

    def started(self, status: str, write: Any) -> Any:
        """``start_response(status, ...)`` was taken by the server, which returned
        ``write``. Noted after it: a server that sent the headers already refuses a late
        status (it re-raises ``exc_info``), and the client has the one before."""
        if self.final:
            return write
        self.ctx.status_code = code = status_line_code(status)
        if code not in DENIED_STATUSES:
            return write

        def write_sent(data: bytes) -> Any:
            self.settle()  # the headers go out with the first write
            return write(data)

        return write_sent

    def settle(self) -> None:
        """The status is sent: a 401 or 403 is recorded, once."""
        if not self.final:
            self.final = True
            if self.ctx.status_code in DENIED_STATUSES:
                _on_denied(self.ctx, self.enclosing, self.environ)

    def abandon(self) -> None:
        """The app raised before its status was sent: the server answers, not it."""
        self.final = True


def _on_denied(ctx: RequestContext, enclosing: RequestContext | None,
               environ: Environ) -> None:
    # WSGI hands the path over as latin-1 text of its bytes (PEP 3333); the record
    # holds what the client asked for, as ASGI's ``scope["path"]`` does.
    path = f"{environ.get('SCRIPT_NAME', '')}{environ.get('PATH_INFO', '')}"
    try:
        path = path.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        pass  # not bytes as latin-1: a server that decoded it already
    on_denied(ctx, enclosing, environ.get("REQUEST_METHOD"), path)


def _in_context(body: Iterable[bytes], answer: _Answer,
                receipts: list[Receipt[str | None]] | None = None,
                refused: list[str] | None = None) -> Iterable[bytes]:
    """``body`` as the server will iterate it: inside the request's audit context (a
    streamed body's ``emit()``, such as a download recorded once sent, is the request's
    user's, as under ASGI, not ``system``). A body that runs no app code while it is sent
    is handed over as it is: bytes, a list, a file (uWSGI's ``wsgi.file_wrapper`` returns
    the file itself, and sends it with sendfile only if it gets that object back) or the
    server's file wrapper; its status is final (no app code can replace it)."""
    file_wrapper = answer.environ.get("wsgi.file_wrapper")
    if isinstance(body, (bytes, list, tuple)) or hasattr(body, "read") or (
            isinstance(file_wrapper, type) and isinstance(body, file_wrapper)):
        answer.settle()
        return body
    return _Body(body, answer, receipts, refused)


class _Body:
    """The app's body, iterated and closed inside the request's context (and, fail
    closed, with its receipts pending, so an event emitted before a lazy
    ``start_response`` is waited for too). Fail closed, a lazy ``start_response`` that
    refused the response (called while the first chunk is made) turns the body into
    the 503's, an empty one too. ``close()`` always closes the app's body, iterated or not. Its first
    chunk, its end or its close settles the response's status (``_Answer``); an
    exception before any does not."""

    __slots__ = ("_answer", "_body", "_ctx", "_done", "_iterator", "_receipts", "_refused")

    def __init__(self, body: Iterable[bytes], answer: _Answer,
                 receipts: list[Receipt[str | None]] | None,
                 refused: list[str] | None) -> None:
        self._body = body
        self._answer = answer
        self._ctx = answer.ctx
        self._receipts = receipts
        self._refused = refused
        self._iterator: Iterator[bytes] | None = None
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._done:
            raise StopIteration
        token = current.set(self._ctx)
        receipts = pending.set(self._receipts) if self._receipts is not None else None
        try:
            try:
                if self._iterator is None:
                    self._iterator = iter(self._body)
                chunk = next(self._iterator)
            except StopIteration:
                if self._refused:
                    # A lazy start_response refused an empty body: the 503's headers
                    # (their Content-Length too) are waiting for its body.
                    self._done = True
                    return UNAVAILABLE_BODY
                self._answer.settle()  # an empty body: the headers go out now
                raise
            except Exception:
                if not self._refused:
                    self._answer.abandon()  # a no-op once sent: the server answers the rest
                    raise
                _raised_after_refusal()
                self._done = True
                return UNAVAILABLE_BODY
            except BaseException:
                self._answer.abandon()  # a no-op once sent: the server answers the rest
                raise
            if self._refused:
                self._done = True
                return UNAVAILABLE_BODY
            if not self._answer.final:
                self._answer.settle()
            return chunk
        finally:
            if receipts is not None:
                pending.reset(receipts)
            current.reset(token)

    def close(self) -> None:
        token = current.set(self._ctx)
        try:
            _close(self._body)
        finally:
            # After the app's body: an audit middleware inside it settles first, and
            # passes out a failure its @audited recorded (``on_denied``). Closed unread
            # (a client gone), the app's last status stands.
            try:
                self._answer.settle()
            finally:
                current.reset(token)


def _raised_after_refusal() -> None:
    """The app raised once its response was refused: the 503 stands (under ASGI it is
    sent already), where the server would answer the exception with its 500 and the
    client be told the app failed, not that the action could not be recorded. Logged
    here, as the server would have."""
    log.exception("audit: the app raised after its response was refused with 503 "
                  "(fail_closed); the client gets the 503")


def _discard(data: bytes) -> None:
    """The ``write()`` of a refused response: the app's own body never reaches the client."""


def _close(body: Iterable[bytes]) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()


def status_line_code(status: str) -> int | None:
    """The code of a status line (``"404 NOT FOUND"``), None when it has none."""
    try:
        return int(status.split(None, 1)[0])
    except (ValueError, IndexError):
        return None
