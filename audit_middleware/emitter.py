"""``emit()``: build one event from explicit values and the request context, and hand
it to the configured sink. This is the request path: no I/O, no serialization here."""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Iterable
from typing import Any, NoReturn

from . import _config
from .catalogue import Catalogue
from .client_ip import parse_ip
from .context import RequestContext, asgi_peer, current, principal_from_user
from .errors import AuditArgumentTypeError, AuditConfigurationError, AuditError, AuditFieldError
from .event import SYSTEM, AuditEvent
from .redaction import redactor_from_option
from .sanitize import (
    COLLECTOR_DEFAULT_MAX_FIELD_LENGTH,
    MAX_IP_LENGTH,
    TRUNCATION_MARKER,
    field_text,
)
from .sinks.base import Sink
from .tracing import current_context as _current_context

log = logging.getLogger("audit_middleware")

_time_ns = time.time_ns
_UNSET: Any = object()


def configure(
    *,
    sink: Sink | None = _UNSET,
    max_field_length: int = _UNSET,
    catalogue: Catalogue = _UNSET,
    redact_secrets: bool | Iterable[str | re.Pattern[str]] = _UNSET,
) -> None:
    """Set where events go and how they are capped. Call once at start-up; the sink it
    replaces is flushed and closed. ``redact_secrets=True`` replaces secrets found in
    the free-text fields (a token in a target) with ``[redacted:<kind>]``; a list of
    extra patterns adds to the built-in ones (docs/record.md, "Redacting secrets")."""
    settings = _config.settings
    if sink is not _UNSET:
        if isinstance(sink, type):
            raise AuditConfigurationError(
                f"sink={sink.__name__} is a class: pass an instance, e.g. {sink.__name__}()")
        if sink is not None and not all(
            callable(getattr(sink, m, None)) for m in ("submit", "flush", "close", "stats")
        ):
            raise AuditConfigurationError(
                f"{sink!r} is not a sink: it needs submit(), flush(), close() and stats() "
                f"(see audit_middleware.sinks)"
            )
        previous = settings.set_sink(sink)
        if previous is not None and previous is not sink:
            previous.close(timeout=5.0)
    if max_field_length is not _UNSET:
        if not isinstance(max_field_length, int) or max_field_length < 2 * len(TRUNCATION_MARKER):
            raise AuditConfigurationError(
                f"max_field_length must be an int >= {2 * len(TRUNCATION_MARKER)}, "
                f"got {max_field_length!r}"
            )
        settings.max_field_length = max_field_length
        if max_field_length > COLLECTOR_DEFAULT_MAX_FIELD_LENGTH:
            log.warning("audit: max_field_length=%d is above the collector's default cap "
                        "(%d): set the collector's max_field_length as high, or it rejects "
                        "events with longer fields", max_field_length,
                        COLLECTOR_DEFAULT_MAX_FIELD_LENGTH)
    if catalogue is not _UNSET:
        if not isinstance(catalogue, Catalogue):
            raise AuditConfigurationError("catalogue must be an audit_middleware.Catalogue")
        settings.catalogue = catalogue
    if redact_secrets is not _UNSET:
        redactor = redactor_from_option(redact_secrets)
        from . import _redacting  # here: it rebinds names in modules that import this one

        settings.redactor = redactor
        _redacting.install(redactor)


def _text(name: str, value: object, cap: int) -> str:
    # The common case (a short str, or nothing) without a function call per field.
    if type(value) is str and len(value) <= cap:
        return value
    return "" if value is None else field_text(name, value, cap)


RequestFields = tuple[str, str, str, str, str, str, str]


def request_fields(ctx: RequestContext, cap: int) -> RequestFields:
    """(principal, client_ip, peer_ip, org_id, org_name, workspace_id, workspace_name) of
    the request, resolved and capped once, for its first event. Without configured
    resolvers or proxies (the default) this reads the scope directly; user-supplied
    resolvers run guarded (``resolve_or``), so a failing one never loses the event."""
    fields = ctx.fields
    if fields is not None:
        return fields
    config = ctx.config
    scope = ctx.scope
    if config.plain and scope is not None and ctx.principal_override is None:
        # The default configuration, on every request's first event: two dict reads.
        user = scope.get("user")
        principal = (principal_from_user(user) or "") if user is not None else ""
        client = scope.get("client")
        if client:
            try:  # the spec's int port, never 0 for a socket's peer: the host is an
                # address (a port 0 may be a proxy-headers wrapper's: see asgi_peer)
                peer = client[0] if type(port := client[1]) is int and port \
                    else asgi_peer(scope)
            except (TypeError, IndexError, KeyError):
                peer = asgi_peer(scope)
        else:
            peer = ""
        if type(peer) is not str:  # outside the ASGI spec (a host object): its text
            peer = str(peer)
        if type(principal) is not str or len(principal) > cap:
            principal = _text("principal", principal, cap)
        if len(peer) > MAX_IP_LENGTH:
            peer = _text("client_ip", peer, MAX_IP_LENGTH)
        fields = ctx.fields = (principal, peer, "", "", "", "", "")
        return fields
    if ctx.principal_override is not None:
        principal = ctx.principal_override
    elif config.principal is None and scope is not None:
        principal = principal_from_user(scope.get("user")) or ""
    else:
        principal = ctx.resolve_or("principal", "")
    principal = _text("principal", principal, cap)
    if principal == SYSTEM and ctx.principal_override is not None:
        # set_principal("system"): the app declares the action its own. A user whose id
        # merely is "system" keeps the request's address: the two can be told apart.
        client_ip = peer = ""
    else:
        # Under another audit middleware (a mounted sub-app's own), the enclosing
        # request's address, maybe: it is closer to the network (``CaptureConfig.within``).
        addressed = ctx.addressed if config.address_outside else ctx
        if not config.trusted_proxies:
            client_ip, peer = _text("client_ip", addressed.peer, MAX_IP_LENGTH), ""
        else:
            client_ip, peer = addressed.resolve_or("resolution", ("", addressed.peer))
            client_ip = _text("client_ip", client_ip, MAX_IP_LENGTH)
            peer = _text("peer_ip", peer, MAX_IP_LENGTH)
    org = _capped_pair(ctx, "org", cap) if config.org else _EMPTY_PAIR
    workspace = _capped_pair(ctx, "workspace", cap) if config.workspace else _EMPTY_PAIR
    fields = ctx.fields = (principal, client_ip, peer, *org, *workspace)
    return fields


#: What ``emit()`` with explicit fields makes of a free-text field, and of the request's
#: fields: rebound by ``configure(redact_secrets=...)`` (``_redacting.install``), so
#: that with redaction off no event tests for it.
_field = _text
_request_fields = request_fields

_EMPTY_PAIR: tuple[str, str] = ("", "")


def _capped_pair(ctx: RequestContext, what: str, cap: int) -> tuple[str, str]:
    ident, name = ctx.resolve_or(what, _EMPTY_PAIR)
    return (_text(f"{what}_id", ident, cap), _text(f"{what}_name", name, cap))


def _settings_for(event_type: str) -> tuple[Sink, int]:
    settings = _config.settings
    try:
        if event_type not in settings.catalogue.types:
            settings.catalogue.check(event_type)  # raises, naming the closest valid types
    except AuditError:
        raise
    except TypeError:  # unhashable (a list): Python's words name nothing to pass
        _not_an_event_type(event_type)
    sink = settings.sink
    if sink is None:
        raise AuditConfigurationError(
            "no audit sink configured: call audit_middleware.configure(sink=...) at "
            "start-up, or use audit_middleware.testing.capture_audit_events() in tests"
        )
    return sink, settings.max_field_length


def _not_an_event_type(event_type: object) -> NoReturn:
    """An event type the catalogue lookup could not hash (a list, a dict): said as
    ``Catalogue.check`` says any value that is no str, without Python's "unhashable type"
    chained before it."""
    try:
        _config.settings.catalogue.check(event_type)  # type: ignore[arg-type]
    except AuditError as error:
        raise error from None
    raise AuditArgumentTypeError(  # a str subclass that refuses hashing, so far-fetched
        f"an event type is a str such as 'run_launched', got {event_type!r:.80}")


def emit_in_request(
    event_type: str, target: object, status: object, ctx: RequestContext
) -> AuditEvent:
    """``emit(event_type, target, status=status)`` inside request ``ctx``: the path taken
    by every ``@audited`` handler, kept free of keyword handling and of calls that the
    common case (a known type, short string fields, fields cached) does not need."""
    settings = _config.settings
    sink = settings.sink
    try:  # free until it catches: no work added to the request path
        if sink is None or event_type not in settings.catalogue.types:
            sink, _ = _settings_for(event_type)  # raises, saying what to configure
    except AuditError:
        raise
    except TypeError:  # unhashable (a list), found by the lookup
        _not_an_event_type(event_type)
    cap = settings.max_field_length
    fields = ctx.fields
    if fields is None:
        fields = request_fields(ctx, cap)
    if type(target) is not str or len(target) > cap:
        target = _text("target", target, cap)
    if type(status) is not str or len(status) > cap:
        status = _text("status", status, cap)
    principal, client_ip, peer, org_id, org_name, ws_id, ws_name = fields
    event = AuditEvent(
        event_type, target, principal, status,
        org_id, org_name, ws_id, ws_name, client_ip, _time_ns(), _current_context(), peer,
    )
    sink.submit(event)
    return event


def record_in_request(
    event_type: str, target: object, status: object, ctx: RequestContext
) -> None:
    """``emit_in_request`` for a caller that does not need the event back (``@audited``):
    with a sink that has ``submit_pending`` and plain string fields, the request hands
    over a tuple and the sink's thread builds the ``AuditEvent`` (see
    ``event.PendingEvent``); anything else takes ``emit_in_request``."""
    settings = _config.settings
    submit_pending = settings.submit_pending
    cap = settings.max_field_length
    if (submit_pending is None or event_type not in settings.catalogue.types
            or type(target) is not str or len(target) > cap
            or (status is not None and (type(status) is not str or len(status) > cap))):
        emit_in_request(event_type, target, status, ctx)
        return
    fields = ctx.fields
    if fields is None:
        fields = request_fields(ctx, cap)
    submit_pending((event_type, target, status or "", fields,
                    _time_ns(), _current_context()))


def emit(
    event_type: str,
    target: object = None,
    *,
    principal: object = None,
    status: object = None,
    org_id: object = None,
    org_name: object = None,
    workspace_id: object = None,
    workspace_name: object = None,
    client_ip: object = None,
) -> AuditEvent:
    """Record one event. Inside a request, unset fields come from its context (principal,
    client IP, organization, workspace); outside one the principal is ``system``. The
    application's own events (outside a request, or ``principal="system"``, or after
    ``set_principal("system")``) never carry a client IP; a user whose id merely is
    ``system`` keeps the request's address, so the two can be told apart."""
    ctx = current.get()
    if (ctx is not None and principal is None and org_id is None and org_name is None
            and workspace_id is None and workspace_name is None and client_ip is None):
        return emit_in_request(event_type, target, status, ctx)  # the common call
    sink, cap = _settings_for(event_type)
    if client_ip is not None:
        client_ip = _given_ip(client_ip, ctx)
    peer = ""
    # The application's own event: outside a request by default, or declared so.
    system = principal == SYSTEM or (principal is None and (
        ctx is None or ctx.principal_override == SYSTEM))
    if ctx is None:
        principal = SYSTEM if principal is None else _field("principal", principal, cap)
    else:
        r_principal, r_ip, r_peer, r_org, r_org_name, r_ws, r_ws_name = _request_fields(ctx, cap)
        principal = r_principal if principal is None else _field("principal", principal, cap)
        if client_ip is None and not system:
            client_ip, peer = r_ip, r_peer
        if org_id is None:
            org_id = r_org
            org_name = r_org_name if org_name is None else org_name
        if workspace_id is None:
            workspace_id = r_ws
            workspace_name = r_ws_name if workspace_name is None else workspace_name
    if system:
        client_ip = peer = ""
    event = AuditEvent(
        event_type,
        _field("target", target, cap),
        principal,
        _field("status", status, cap),
        _field("org_id", org_id, cap),
        _field("org_name", org_name, cap),
        _field("workspace_id", workspace_id, cap),
        _field("workspace_name", workspace_name, cap),
        _text("client_ip", client_ip, MAX_IP_LENGTH),
        _time_ns(),
        _current_context(),
        peer,
    )
    sink.submit(event)
    return event


def _given_ip(value: object, ctx: RequestContext | None) -> str:
    """An explicit ``client_ip=``: an address (an ``ipaddress`` one, too), or '' for none.
    Any other text was recorded as the client IP (the collector checks only its length),
    where a filter by address or network never finds it. The request's own peer is taken
    as it is: ``request.client.host`` is what the request's other events record, and
    under Starlette's TestClient it is ``testclient``, no address."""
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        value = str(value)
    if type(value) is str:
        if not value:
            return ""
        ip = parse_ip(value)  # as a forwarded hop is read: its port and zone dropped
        if ip is not None:
            return str(ip)
        if ctx is not None and value == ctx.peer:
            return value
    raise AuditFieldError(
        f"audit field 'client_ip' must be an IP address such as '198.51.100.7' or "
        f"'2001:db8::1' (or '' for none), got {value!r:.80}", "client_ip")


def stats() -> dict[str, int]:
    """The configured sink's counters (empty when none is configured)."""
    sink = _config.settings.sink
    return dict(sink.stats()) if sink is not None else {}
