"""The sink interface: where emitted events go.

``submit`` runs on the request path, so a sink must make it cheap and non-blocking
(enqueue, never I/O). Delivery, batching and retries belong to the sink's own thread.

A sink that builds events on its own thread may also offer ``submit_pending(item)``,
taking the request path's tuple (``event.PendingEvent``) instead of an ``AuditEvent``;
``event.json_line`` turns either form into the record line. ``@audited`` uses it when
present (the file and collector sinks have it); ``emit()`` always builds the event,
since it returns it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..event import AuditEvent


@runtime_checkable
class Sink(Protocol):
    def submit(self, event: AuditEvent) -> None:
        """Accept one event. Never raises for delivery problems: those are counted."""

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver everything submitted so far; True when done within ``timeout``."""

    def close(self, timeout: float | None = None) -> None:
        """Flush, then release threads and files. Submitting after close is an error."""

    def stats(self) -> dict[str, int]:
        """Counters: at least ``submitted``, ``delivered`` and ``dropped``."""
