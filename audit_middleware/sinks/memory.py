"""An in-memory sink: events kept in a list, for tests and small tools."""

from __future__ import annotations

import threading

from ..event import AuditEvent


class MemorySink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self._lock = threading.Lock()

    def submit(self, event: AuditEvent) -> None:
        with self._lock:
            self.events.append(event)

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self, timeout: float | None = None) -> None:
        return None

    def stats(self) -> dict[str, int]:
        n = len(self.events)
        return {"submitted": n, "delivered": n, "dropped": 0}

    def clear(self) -> None:
        with self._lock:
            self.events.clear()
