"""A thread-safe counter. Kept off the request path: the hot path derives its counts
(e.g. emitted = drained + dropped + queued) instead of locking per event."""

from __future__ import annotations

import threading


class Counter:
    __slots__ = ("_lock", "_n")

    def __init__(self) -> None:
        self._n = 0
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        with self._lock:
            self._n += n

    @property
    def value(self) -> int:
        return self._n

    def reset(self) -> None:
        """Back to 0 with a new lock. Called in a forked child, where another thread of
        the parent may have held the old lock at the fork: it is never released there,
        and taking it would hang the child."""
        self._lock = threading.Lock()
        self._n = 0


def worth_saying(n: int) -> bool:
    """Whether the ``n``th occurrence of a repeated failure is logged: the 1st, 2nd,
    4th, 8th, ...: visible, never a flood (a failing disk logged each of thousands)."""
    return n & (n - 1) == 0
