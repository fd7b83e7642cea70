"""Refused access to the audit logs is recorded too, as ``audit_log_access_denied``.

A wrong or revoked token, an ended session, a reader that is not root, or a sign-in
posted from another site are attempts an investigator wants to see. A request with no
credentials at all is not recorded: it is what a signed-out panel asks first, and what
every scanner sends. The token itself never reaches the record: only whose it was, when
it belongs to a reader (403), and why it was refused.

Unauthenticated clients choose how often they are refused, so the records are rate
limited: per client IP and reason, at most one every ``WINDOW`` seconds, the next one
saying how many attempts it stands for. The table of recent keys is bounded. An IPv6
client counts by its /64, which one host or one customer of a provider holds.

A client changing address evades a per-address limit (a local user has all of
127.0.0.0/8, an IPv6 host a /64 or more): without more, ten thousand addresses made
ten thousand fsynced records in seconds, a way to fill the disk with no credentials at
all. So over all clients at most ``MAX_RECORDS`` records are written a window; the
attempts past it are counted and reported together by one record (``unrecorded``) once
the window ends (the server asks every second, and at shutdown). Refusals naming a
reader (a 403) are outside that budget: anonymous clients must not be able to use it
up to hide them.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

#: Seconds between two records of the same client IP and reason.
WINDOW: Final = 60.0
#: Client IP and reason pairs remembered (the oldest are forgotten first).
MAX_KEYS: Final = 10_000
#: Denial records written a ``WINDOW``, over all clients; the rest are counted.
MAX_RECORDS: Final = 100
#: Distinct clients counted among the attempts not recorded one by one.
MAX_UNRECORDED_CLIENTS: Final = 10_000


@dataclass
class _Attempts:
    last_recorded: float
    since: int  # attempts refused since that record, not recorded yet


@dataclass(frozen=True)
class Unrecorded:
    """Refused attempts over the global budget of a past window, reported together."""

    attempts: int
    clients: int  # distinct client keys among them (counted up to MAX_UNRECORDED_CLIENTS)


class DenialLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._recent: OrderedDict[tuple[str, str], _Attempts] = OrderedDict()
        self._window_start = clock()
        self._recorded = 0  # records written in the current window
        self._unrecorded = 0  # attempts past the budget, since the last report
        self._unrecorded_clients: set[str] = set()
        self._clients_given_back = 0  # counted in a report whose record failed

    def admit(self, client_ip: str, reason: str, *, named: bool = False) -> int:
        """How many attempts a record made now would stand for (this one included), or
        0 when this attempt is only counted, to be reported by a later record.
        ``named``: the attempt names a reader (a 403): outside the budget over all
        clients, which anonymous clients could otherwise use up to hide it (readers are
        few, and each is still limited per address and reason)."""
        now = self._clock()
        if now - self._window_start >= WINDOW:
            self._window_start, self._recorded = now, 0
        client = client_key(client_ip)
        key = (client, reason)
        seen = self._recent.get(key)
        if seen is not None and now - seen.last_recorded < WINDOW:
            seen.since += 1
            return 0
        if self._recorded >= MAX_RECORDS and not named:
            self._unrecorded += 1
            if len(self._unrecorded_clients) < MAX_UNRECORDED_CLIENTS:
                self._unrecorded_clients.add(client)
            return 0
        self._recorded += 0 if named else 1
        attempts = 1 + (seen.since if seen is not None else 0)
        self._recent[key] = _Attempts(now, 0)
        self._recent.move_to_end(key)
        while len(self._recent) > MAX_KEYS:
            self._recent.popitem(last=False)
        return attempts

    def unrecorded(self, *, now: bool = False) -> Unrecorded | None:
        """The attempts past the budget, once their window has ended and the budget has
        room for the record that reports them (which it takes), or at once with ``now``
        (at shutdown); None when there are none, or not yet."""
        if not self._unrecorded:
            return None
        clock = self._clock()
        if clock - self._window_start >= WINDOW:
            self._window_start, self._recorded = clock, 0
        if self._recorded >= MAX_RECORDS and not now:
            return None  # still the window that overflowed
        self._recorded += 1
        report = Unrecorded(self._unrecorded,
                            len(self._unrecorded_clients) + self._clients_given_back)
        self._unrecorded = self._clients_given_back = 0
        self._unrecorded_clients = set()
        return report

    def give_back(self, report: Unrecorded) -> None:
        """The record of ``report`` could not be written: count it again, for the next."""
        self._unrecorded += report.attempts
        self._clients_given_back += report.clients


_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


def client_key(client_ip: str) -> str:
    """The client an attempt counts for: its address, or for IPv6 its /64. An IPv4
    client seen through a dual-stack socket (``::ffff:a.b.c.d``) or NAT64 is its IPv4
    address: the /64 of those would put every IPv4 client in one."""
    if ":" not in client_ip:
        return client_ip
    try:
        ip = ipaddress.IPv6Address(client_ip)
    except ValueError:
        return client_ip
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip in _NAT64:
        return str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return str(ipaddress.IPv6Network((ip, 64), strict=False))
