"""Helpers for testing code that emits audit events.

    from audit_middleware.testing import capture_audit_events

    def test_delete_is_audited(client):
        with capture_audit_events() as events:
            client.delete("/credentials/c1")
        assert [(e.type, e.target) for e in events] == [("credentials_deleted", "c1")]
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from . import _config
from .event import AuditEvent
from .sinks.memory import MemorySink


@contextmanager
def capture_audit_events() -> Iterator[list[AuditEvent]]:
    """Route every event emitted inside the block into the yielded list (instead of the
    configured sink, which is restored afterwards, untouched)."""
    settings = _config.settings
    sink = MemorySink()
    previous = settings.set_sink(sink)
    try:
        yield sink.events
    finally:
        settings.set_sink(previous)


def reset_configuration() -> None:
    """Forget ``configure()`` (sink, caps, catalogue). Types added with
    ``register_resource()`` stay registered: modules register them once, at import."""
    _config.reset()
