"""Refused access to the audit logs is recorded too, as ``audit_log_access_denied``.

A wrong or revoked token, an ended session, a reader that is not root, or a sign-in
posted from another site are attempts an investigator wants to see. A request with no
credentials at all is not recorded: it is what a signed-out panel asks first, and what
every scanner sends. The token itself never reaches the record: only whose it was, when
it belongs to a reader (403), and why it was refused.

Unauthenticated clients choose how often they are refused, so the records are rate
limited: per client IP and reason, at most one every ``WINDOW`` seconds, the next one
saying how many attempts it stands for. The table of recent keys is bounded.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

#: Seconds between two records of the same client IP and reason.
WINDOW: Final = 60.0
#: Client IP and reason pairs remembered (the oldest are forgotten first).
MAX_KEYS: Final = 10_000


@dataclass
class _Attempts:
    last_recorded: float
    since: int  # attempts refused since that record, not recorded yet


class DenialLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._recent: OrderedDict[tuple[str, str], _Attempts] = OrderedDict()

    def admit(self, client_ip: str, reason: str) -> int:
        """How many attempts a record made now would stand for (this one included), or
        0 when this attempt is only counted, to be reported by the next record."""
        now = self._clock()
        key = (client_ip, reason)
        seen = self._recent.get(key)
        if seen is not None and now - seen.last_recorded < WINDOW:
            seen.since += 1
            return 0
        attempts = 1 + (seen.since if seen is not None else 0)
        self._recent[key] = _Attempts(now, 0)
        self._recent.move_to_end(key)
        while len(self._recent) > MAX_KEYS:
            self._recent.popitem(last=False)
        return attempts
