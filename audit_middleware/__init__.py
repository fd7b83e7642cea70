"""Audit logging for Python web applications.

Install :class:`AuditMiddleware` (ASGI) or :class:`WSGIAuditMiddleware`, decorate
handlers with :func:`audited`, call :func:`emit` for events outside a request, and
:func:`configure` a sink at start-up.
"""

from .catalogue import Catalogue, register_resource
from .context import RequestContext, current_request, header, path_param, set_principal
from .decorator import AuditCall, audited, from_param, from_result
from .emitter import configure, emit, stats
from .errors import (
    AuditArgumentTypeError,
    AuditConfigurationError,
    AuditDeliveryError,
    AuditError,
    AuditFieldError,
    UnknownEventTypeError,
)
from .event import FIELDS, SCHEMA_VERSION, SYSTEM, AuditEvent
from .middleware import AuditMiddleware
from .shipper import CollectorSink
from .sinks import JsonlFileSink, MemorySink, OTelLogSink, Sink
from .wsgi import WSGIAuditMiddleware

__all__ = [
    "FIELDS",
    "SCHEMA_VERSION",
    "SYSTEM",
    "AuditArgumentTypeError",
    "AuditCall",
    "AuditConfigurationError",
    "AuditDeliveryError",
    "AuditError",
    "AuditEvent",
    "AuditFieldError",
    "AuditMiddleware",
    "Catalogue",
    "CollectorSink",
    "JsonlFileSink",
    "MemorySink",
    "OTelLogSink",
    "RequestContext",
    "Sink",
    "UnknownEventTypeError",
    "WSGIAuditMiddleware",
    "audited",
    "configure",
    "current_request",
    "emit",
    "from_param",
    "from_result",
    "header",
    "path_param",
    "register_resource",
    "set_principal",
    "stats",
]
