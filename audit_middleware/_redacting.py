"""The request path with secrets redacted (``configure(redact_secrets=...)``).

``install`` binds these functions where the plain ones are called (the decorator's fast
path, the denials, ``emit()``), and the plain ones back when redaction is off: the
choice is made at configure time, so the default path tests no flag, per event or per
field. Each function redacts, then caps (a cap must not cut a secret in half so that no
pattern finds it), then hands the capped text to the plain function, whose own checks
then pass it through unchanged.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Final

from . import _config, decorator, denials, emitter
from .context import RequestContext
from .event import AuditEvent
from .redaction import SCAN_MARGIN, Redactor
from .sanitize import TRUNCATION_MARKER, field_text
from .sanitize import cap as cap_text

_UNCAPPED: Final = sys.maxsize

_plain_emit_in_request: Final = emitter.emit_in_request
_plain_record_in_request: Final = emitter.record_in_request
_plain_text: Final = emitter._text
_plain_request_fields: Final = emitter.request_fields


def redacted_text(name: str, value: object, cap: int) -> str:
    """``sanitize.field_text`` with the secrets redacted before the cap."""
    text = value if type(value) is str else field_text(name, value, _UNCAPPED)
    if not text:
        return text
    # Read per call, not asserted: configure(redact_secrets=False) clears it before
    # install() rebinds the plain path, and a request may be between the two.
    redactor = _config.settings.redactor
    if redactor is None:
        return text if len(text) <= cap else cap_text(text, cap)
    cut = len(text) > cap + SCAN_MARGIN
    if cut:  # past it, nothing can reach the record
        text = text[:cap + SCAN_MARGIN]
    text = redactor(text)
    if cut and len(text) + len(TRUNCATION_MARKER) <= cap:
        # A secret's marker made the cut text short: the record still says it was cut.
        return text + TRUNCATION_MARKER
    return text if len(text) <= cap and not cut else cap_text(text, cap)


def request_fields(ctx: RequestContext, cap: int) -> emitter.RequestFields:
    """``emitter.request_fields`` with the free-text ones redacted (never the addresses),
    cached on the request as the plain ones are."""
    fields = ctx.fields
    if fields is not None:
        return fields
    principal, client_ip, peer, org_id, org_name, ws_id, ws_name = (
        _plain_request_fields(ctx, _UNCAPPED))
    fields = ctx.fields = (
        redacted_text("principal", principal, cap), client_ip, peer,
        redacted_text("org_id", org_id, cap), redacted_text("org_name", org_name, cap),
        redacted_text("workspace_id", ws_id, cap),
        redacted_text("workspace_name", ws_name, cap))
    return fields


def emit_in_request(
    event_type: str, target: object, status: object, ctx: RequestContext
) -> AuditEvent:
    _, cap = emitter._settings_for(event_type)  # its errors first, as the plain path's
    request_fields(ctx, cap)
    return _plain_emit_in_request(event_type, redacted_text("target", target, cap),
                                  redacted_text("status", status, cap), ctx)


def record_in_request(
    event_type: str, target: object, status: object, ctx: RequestContext
) -> None:
    _, cap = emitter._settings_for(event_type)
    request_fields(ctx, cap)
    _plain_record_in_request(
        event_type, redacted_text("target", target, cap),
        None if status is None else redacted_text("status", status, cap), ctx)


#: Every name the request path is called through, with its redacting and plain value.
SEAMS: Final[tuple[tuple[ModuleType, str, object, object], ...]] = (
    (emitter, "emit_in_request", emit_in_request, _plain_emit_in_request),
    (emitter, "_field", redacted_text, _plain_text),
    (emitter, "_request_fields", request_fields, _plain_request_fields),
    (denials, "emit_in_request", emit_in_request, _plain_emit_in_request),
    (decorator, "record_in_request", record_in_request, _plain_record_in_request),
)


def install(redactor: Redactor | None) -> None:
    """Bind the redacting path (``redactor`` given) or the plain one everywhere it is
    called from. ``tests/app/test_redaction.py`` checks that no other module imports
    the functions rebound here (it would keep the plain path)."""
    for module, name, redacting, plain in SEAMS:
        setattr(module, name, plain if redactor is None else redacting)
