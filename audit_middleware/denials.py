"""Denied requests as audit events: a request answered 401 or 403 is recorded as the
event type the app chose (``AuditMiddleware(denied_event=...)``, the same for
``WSGIAuditMiddleware``).

Such a request often never reaches a handler (an authentication middleware refused it,
a permission check raised), so no ``@audited`` records it, yet invalid access attempts
are what an auditor asks for first (PCI DSS 10.2.1.4, SOC 2 CC6/CC7). The status is the
one the middlewares already observe (the ``send`` and ``start_response`` wrappers), so
nothing is added to a request that is not denied but one comparison. A websocket whose
handshake is refused (closed before it is accepted: the server answers 403; or a denial
response) is recorded too, its method ``GET``.

The event: target the request's path (never its query string, which can hold tokens),
status ``HTTP 403 on DELETE``, and the request's principal, client IP, organization and
workspace as for any event (an unauthenticated request's principal is empty). A request
whose ``@audited(record_failure=True)`` handler already recorded its failure is not
recorded twice: when the request's last ``@audited`` outcome was a failure with the
status the request was answered with (``failed: HTTP 403`` for a 403); an ``@audited``
call made after it (a background task, an ``after_request`` hook) does not change that,
nor does a failure recorded once the response has started (a background task that
fails: neither a second record beside the handler's failure, nor a denial hidden).
A failure an audited helper recorded, caught by an ``@audited`` handler that then
answered 403, is not the answer: the denial is recorded beside it
(``RequestContext.failed_status``). A handler that is not ``@audited`` clears nothing, so
there the helper's failure stands for the denial, as when it was the answer.
"""

from __future__ import annotations

import logging

from . import _config
from .context import RequestContext
from .emitter import emit_in_request
from .errors import AuditArgumentTypeError
from .event import denied_status
from .shipper.receipts import pending

log = logging.getLogger("audit_middleware")


def checked_denied_event(event_type: object) -> str | None:
    """``denied_event`` as given to a middleware, checked when it is constructed: a type
    the catalogue does not know fails at start-up, naming the closest, not per request."""
    if event_type is None:
        return None
    if type(event_type) is not str:
        raise AuditArgumentTypeError(
            f"denied_event must be an event type (a str), got {event_type!r}: register one, "
            f"e.g. register_resource('request', {{'denied': 'request_denied'}}), and pass "
            f"denied_event='request_denied'")
    return _config.settings.catalogue.check(event_type)


def on_denied(ctx: RequestContext, enclosing: RequestContext | None, method: object,
              path: str) -> None:
    """The request of ``ctx`` was answered 401 or 403 (``ctx.status_code``): record it
    as its middleware's ``denied_event`` (None: that middleware records no denials),
    which the middleware keeps in its ``CaptureConfig``. ``enclosing`` is the
    context an outer audit middleware set for the same request (a mounted sub-app with
    a middleware of its own), if any: the outermost one that records denials records
    it, once, and a failure ``@audited`` recorded inside is passed out to it, and a
    principal ``set_principal()`` named inside.

    The response is sent or on its way: a failure to record it is logged, never raised
    into the server."""
    failed = getattr(ctx, "failed_status", None)
    if enclosing is not None:
        if failed is not None:
            enclosing.failed_status = failed
        named = ctx.principal_override
        if named is not None and named != enclosing.principal_override:
            # set_principal() in the sub-app names the request's user for the rest of
            # the request, as under a lone middleware: the outer record too.
            enclosing.principal_override = named
            enclosing.fields = None
        if enclosing.config.denied_event is not None:
            return  # the outer middleware sees the same answer and records it
    event_type = ctx.config.denied_event
    if event_type is None or failed == ctx.status_code:
        # The request's last @audited call recorded this very answer as its failure
        # ("failed: HTTP 403"): said once. A failure of another status (an audited
        # helper's ValueError the handler caught before it answered 403) is not it.
        return
    # Outside the request's pending receipts: its answer is decided (sent, or past the
    # fail-closed wait), so nothing waits for this event, and a fail-closed sink must not
    # wake its worker for it as for an event a response is held for.
    receipts = pending.set(None)
    try:
        emit_in_request(event_type, path, denied_status(ctx.status_code, method), ctx)
    except Exception:
        log.exception("audit: could not record the denied request as %s", event_type)
    finally:
        pending.reset(receipts)
