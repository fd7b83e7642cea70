"""Refused access to the audit logs is recorded too, as ``audit_log_access_denied``.

A wrong or revoked token, an ended session, a reader that is not root, or a sign-in
posted from another site are attempts an investigator wants to see. A request with no
credentials at all is not recorded: it is what a signed-out panel asks first, and what
every scanner sends. The token itself never reaches the record: only whose it was, when
it belongs to a reader (403), and why it was refused.

Unauthenticated clients choose how often they are refused, so the records are rate
limited: per client IP and reason, at most one every ``WINDOW`` seconds, the next one
saying how many attempts it stands for. The attempts counted in between are written
once the window is over whether or not the client comes back (the server asks every
second, and at shutdown), with the latest one's path, method and status: they were
kept only for the client's next refusal, and lost at shutdown. The table of recent
keys is bounded; a key it forgets hands its count to the budget's report (below). An
IPv6 client counts by its /64, which one host or one customer of a provider holds.

A client changing address evades a per-address limit (a local user has all of
127.0.0.0/8, an IPv6 host a /64 or more): without more, ten thousand addresses made
ten thousand fsynced records in seconds, a way to fill the disk with no credentials at
all. So over all clients at most ``MAX_RECORDS`` records are written a window; the
attempts past it are counted and reported together by one record (``unrecorded``) once
the window ends (the server asks every second, and at shutdown). Refusals naming a
reader (a 403) are outside that budget: anonymous clients must not be able to use it
up to hide them. They have a budget of their own per reader instead,
``MAX_READER_RECORDS`` a window over all clients, the rest reported by one record
naming the reader: a reader's token that is not root (the metrics scraper's) is
enough to be refused, and from a new 127.x.y.z address each time it otherwise wrote
an fsynced record per request. The key of a client includes the reader, so that one
reader's refusals are never counted in another's record.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

#: Seconds between two records of the same client IP, reason and reader.
WINDOW: Final = 60.0
#: (client IP, reason, reader) keys remembered (the oldest are forgotten first).
MAX_KEYS: Final = 10_000
#: Denial records written a ``WINDOW`` for refusals naming no reader, over all clients;
#: the rest are counted.
MAX_RECORDS: Final = 100
#: Denial records written a ``WINDOW`` for refusals naming one reader, over all its
#: clients; the rest are counted.
MAX_READER_RECORDS: Final = 10
#: Distinct clients counted among the attempts not recorded one by one.
MAX_UNRECORDED_CLIENTS: Final = 10_000


@dataclass(frozen=True)
class Attempt:
    """One refused attempt, as its record tells it."""

    client_ip: str
    reason: str
    reader: str = ""  # the reader it named (a 403), "" for none
    target: str = ""  # the path asked for
    method: str = ""
    status: int = 0


@dataclass
class _Attempts:
    last_recorded: float
    since: int  # attempts refused since that record, not recorded yet
    latest: Attempt  # the last of them (or the recorded one): what their record shows


@dataclass(frozen=True)
class Refusals:
    """Attempts of one client, reason and reader not recorded yet: ``attempts`` of them,
    the last being ``latest``."""

    latest: Attempt
    attempts: int


@dataclass(frozen=True)
class Unrecorded:
    """Refused attempts over a budget in a past window, reported together."""

    attempts: int
    clients: int  # distinct client keys among them (counted up to MAX_UNRECORDED_CLIENTS)
    reader: str = ""  # whose budget: the reader the attempts named, "" for anonymous ones


@dataclass
class _Budget:
    """The records one budget allows a window (anonymous clients' together, or one
    reader's), and the attempts past it since it last reported them."""

    reader: str
    start: float  # of the current window
    recorded: int = 0  # records written in the current window
    unrecorded: int = 0  # attempts past the budget, since the last report
    clients: set[str] = field(default_factory=set)
    clients_given_back: int = 0  # counted in a report whose record failed

    @property
    def size(self) -> int:
        # Looked up when used, not when made: the module's numbers are the settings.
        return MAX_READER_RECORDS if self.reader else MAX_RECORDS

    def roll(self, now: float) -> None:
        if now - self.start >= WINDOW:
            self.start, self.recorded = now, 0

    def take(self, now: float) -> bool:
        """Whether a record fits in this window (it is then counted in it)."""
        self.roll(now)
        if self.recorded >= self.size:
            return False
        self.recorded += 1
        return True

    def count(self, client: str, attempts: int = 1) -> None:
        """Attempts past the budget: reported later, with the others."""
        self.unrecorded += attempts
        if len(self.clients) < MAX_UNRECORDED_CLIENTS:
            self.clients.add(client)

    def report(self, now: float, *, at_once: bool) -> Unrecorded | None:
        if not self.unrecorded:
            return None
        self.roll(now)
        if self.recorded >= self.size and not at_once:
            return None  # still the window that overflowed
        self.recorded += 1
        report = Unrecorded(self.unrecorded, len(self.clients) + self.clients_given_back,
                            self.reader)
        self.unrecorded = self.clients_given_back = 0
        self.clients = set()
        return report

    def give_back(self, report: Unrecorded) -> None:
        self.unrecorded += report.attempts
        self.clients_given_back += report.clients


class DenialLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: (client key, reason, reader) -> its last record and the attempts since
        self._recent: OrderedDict[tuple[str, str, str], _Attempts] = OrderedDict()
        self._anonymous = _Budget("", clock())
        #: Readers refused lately: few (an operator adds readers), and each is dropped
        #: once its window is over with nothing left to report.
        self._readers: dict[str, _Budget] = {}

    def admit(self, attempt: Attempt) -> int:
        """How many attempts a record of ``attempt`` made now would stand for (this one
        included), or 0 when it is only counted, to be reported by a later record.
        Anonymous attempts share one budget over all clients; each reader (a 403 names
        one) has its own, which anonymous clients cannot use up to hide its refusals."""
        now = self._clock()
        client = client_key(attempt.client_ip)
        key = (client, attempt.reason, attempt.reader)
        seen = self._recent.get(key)
        if seen is not None and now - seen.last_recorded < WINDOW:
            seen.since, seen.latest = seen.since + 1, attempt
            return 0
        budget = self._budget(attempt.reader, now)
        if not budget.take(now):
            budget.count(client)
            return 0
        attempts = 1 + (seen.since if seen is not None else 0)
        self._remember(key, _Attempts(now, 0, attempt), now)
        return attempts

    def unrecorded(self, *, now: bool = False) -> list[Refusals | Unrecorded]:
        """What to write now: the attempts each client was refused since its record,
        once its window is over, then the attempts past each budget, once its window
        has ended and it has room for the record that reports them (which it takes).
        ``now`` (at shutdown): all of them at once."""
        clock = self._clock()
        reports: list[Refusals | Unrecorded] = list(self._expired(clock, at_once=now))
        budgets = [self._anonymous, *self._readers.values()]
        reports += [r for b in budgets if (r := b.report(clock, at_once=now)) is not None]
        for name, budget in list(self._readers.items()):
            if not budget.unrecorded and clock - budget.start >= WINDOW:
                del self._readers[name]  # a new one starts as this one stands
        return reports

    def held_back(self) -> int:
        """Refused attempts counted and not recorded yet (a client's since its record,
        those past a budget): what a stop that cannot write them leaves unrecorded."""
        budgets = [self._anonymous, *self._readers.values()]
        return (sum(seen.since for seen in self._recent.values())
                + sum(budget.unrecorded for budget in budgets))

    def give_back(self, report: Refusals | Unrecorded) -> None:
        """The record of ``report`` could not be written: count it again, for the next
        (a client's attempts in its budget's report, which needs no key)."""
        clock = self._clock()
        if isinstance(report, Refusals):
            latest = report.latest
            self._budget(latest.reader, clock).count(client_key(latest.client_ip),
                                                     report.attempts)
        else:
            self._budget(report.reader, clock).give_back(report)

    def _expired(self, now: float, *, at_once: bool) -> list[Refusals]:
        """The counts of the keys whose window is over (all of them ``at_once``), each
        taken from its budget, or handed to the budget's report when it has no room.
        A key with nothing counted is forgotten: its next attempt is recorded anyway."""
        found: list[Refusals] = []
        while self._recent:
            # Keys are in the order of their last record: the expired ones come first.
            key, seen = next(iter(self._recent.items()))
            if now - seen.last_recorded < WINDOW and not at_once:
                break
            del self._recent[key]
            if not seen.since:
                continue
            budget = self._budget(seen.latest.reader, now)
            if budget.take(now):
                found.append(Refusals(seen.latest, seen.since))
                # That record is this window's: the next attempts wait for the next.
                self._remember(key, _Attempts(now, 0, seen.latest), now)
            else:
                budget.count(key[0], seen.since)
        return found

    def _remember(self, key: tuple[str, str, str], attempts: _Attempts, now: float) -> None:
        self._recent[key] = attempts
        self._recent.move_to_end(key)
        while len(self._recent) > MAX_KEYS:
            (client, _, reader), forgotten = self._recent.popitem(last=False)
            if forgotten.since:  # reported by its budget's record rather than lost
                self._budget(reader, now).count(client, forgotten.since)

    def _budget(self, reader: str, now: float) -> _Budget:
        if not reader:
            return self._anonymous
        budget = self._readers.get(reader)
        if budget is None:
            budget = self._readers[reader] = _Budget(reader, now)
        return budget


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
