"""Exception classes. Each message says what to do about it."""

from __future__ import annotations


class AuditError(Exception):
    """Base class of every error this package raises."""


class AuditConfigurationError(AuditError, ValueError):
    """Invalid configuration (a bad trusted proxy, a bad cap, no sink configured, ...)."""


class AuditArgumentTypeError(AuditConfigurationError, TypeError):
    """An argument of the wrong type (a list as the event type, a number as ``target=``,
    a str as a sink): a configuration error, and a ``TypeError`` as Python's own was."""


class UnknownEventTypeError(AuditError, LookupError):
    """An event type that is neither in the seed catalogue nor registered by the app."""

    def __init__(self, event_type: str, suggestions: list[str]) -> None:
        self.event_type = event_type
        self.suggestions = suggestions
        hint = (
            f"; did you mean {', '.join(repr(s) for s in suggestions)}?"
            if suggestions
            else ""
        )
        super().__init__(
            f"unknown audit event type {event_type!r}{hint} "
            f"(register app-defined types with audit_middleware.register_resource())"
        )


class AuditFieldError(AuditError, TypeError):
    """A field value that cannot be recorded (wrong type); ``field`` names it."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class AuditDeliveryError(AuditError, RuntimeError):
    """An event could not be recorded durably (raised in ``fail_closed`` mode)."""
