"""Process-wide mutable configuration, in one place, with a reset for tests.

Everything else in the package is configured at construction and then immutable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .catalogue import Catalogue, default_catalogue
from .event import PendingEvent
from .redaction import Redactor
from .sanitize import DEFAULT_MAX_FIELD_LENGTH
from .sinks.base import Sink


@dataclass
class Settings:
    sink: Sink | None = None
    catalogue: Catalogue = field(default_factory=lambda: default_catalogue)
    max_field_length: int = DEFAULT_MAX_FIELD_LENGTH
    #: The sink's ``fail_closed_timeout`` when it is fail-closed, else None: decided once
    #: here, so the middlewares need not ask the sink on every request.
    fail_closed_timeout: float | None = None
    #: The sink's ``submit_pending`` when it has one (see ``event.PendingEvent``).
    submit_pending: Callable[[PendingEvent], None] | None = None
    #: ``configure(redact_secrets=...)``'s redactor, None when off (the default).
    redactor: Redactor | None = None

    def set_sink(self, sink: Sink | None) -> Sink | None:
        """Install ``sink``; returns the one it replaces."""
        previous, self.sink = self.sink, sink
        self.fail_closed_timeout = (
            float(sink.fail_closed_timeout)  # type: ignore[union-attr]
            if getattr(sink, "fail_closed", False) else None)
        self.submit_pending = pending_submitter(sink)
        return previous


def pending_submitter(sink: object) -> Callable[[PendingEvent], None] | None:
    """``sink.submit_pending`` when the sink's own class offers it next to the ``submit``
    it uses: a subclass that overrides ``submit`` (to filter, redact or count) and a
    wrapper that forwards attributes to an inner sink both get every event through their
    own ``submit`` instead."""
    if sink is None:
        return None
    mro = type(sink).__mro__
    pending_owner = next((k for k in mro if "submit_pending" in vars(k)), None)
    submit_owner = next((k for k in mro if "submit" in vars(k)), None)
    if pending_owner is None or pending_owner is not submit_owner:
        return None
    return getattr(sink, "submit_pending", None)


settings = Settings()


def reset() -> None:
    """Back to the import-time defaults (no sink). Does not close the previous sink."""
    global settings
    if settings.redactor is not None:
        from . import _redacting  # here: it imports the modules that import this one

        _redacting.install(None)
    settings = Settings()
