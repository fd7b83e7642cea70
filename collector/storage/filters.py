"""Turning query filter values into index conditions: times, type globs, IP/CIDR.

Every bad value raises ``QueryError`` with the accepted forms, before any query runs.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Final

from audit_middleware.catalogue import NAME_PATTERN

from .records import created_micros


class QueryError(ValueError):
    """A filter, cursor or limit the query cannot use; the message gives the accepted
    forms."""


TIME_FORMS: Final = (
    "use RFC 3339 (2026-11-26T01:07:10Z, 2026-11-26T02:07:10+01:00, 2026-11-26), "
    "the seed's YYYY-MM-DD-HH-MM-SS in UTC (2026-11-26-01-07-10), or an age such as "
    "30s, 15m, 24h, 7d, 2w"
)
_RELATIVE = re.compile(r"(\d{1,9})([smhdw])", re.ASCII)
_SEED = re.compile(r"(\d{4})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})", re.ASCII)
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
#: 0001-01-01T00:00:00Z in microseconds since the epoch: the earliest time a filter means.
EARLIEST_US: Final = -62_135_596_800_000_000
_GLOB = re.compile(r"[a-z0-9_*?\[\]!-]{1,64}")


def parse_time(value: object, *, what: str, now_us: int) -> int:
    """Microseconds since the epoch (UTC) of a ``since``/``until`` value."""
    if not isinstance(value, str):
        raise QueryError(f"{what} must be a string: {TIME_FORMS}")
    text = value.strip()
    match = _RELATIVE.fullmatch(text)
    if match:
        # An age from before year 1 (999999999w) means from the beginning; unclamped it
        # passed what SQLite's integers hold.
        return max(now_us - int(match[1]) * _UNIT_SECONDS[match[2]] * 1_000_000, EARLIEST_US)
    text, leap_us = _leap_second(text)
    match = _SEED.fullmatch(text)
    try:
        if match:
            year, month, day, hour, minute, second = (int(g) for g in match.groups())
            moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
            return created_micros(moment.isoformat()) + leap_us
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}([Tt ].+)?", text, re.ASCII):
            moment = datetime.fromisoformat(text.replace("t", "T").replace("z", "Z"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            # Records are timed to the microsecond: a bound between two microseconds is
            # the next one (fromisoformat cuts the digits past six off, which moved
            # ``until`` before a record it should have kept, ``since`` after one).
            beyond = re.search(r"[.,]\d{6}(\d+)", text, re.ASCII)
            return created_micros(moment.isoformat()) + leap_us + (
                1 if beyond and int(beyond[1]) else 0)
    except ValueError:
        pass
    raise QueryError(f"{what}={value!r} is not a time: {TIME_FORMS}")


#: The seconds of a time of day, in RFC 3339 (``T23:59:60``, its fraction with it) or
#: the seed's form (``-23-59-60``, the whole text's end).
_SECOND_60: Final = re.compile(
    r"(?<=[Tt ]\d\d:\d\d:)60(?:[.,]\d+)?(?!\d)|(?<=^\d{4}-\d\d-\d\d-\d\d-\d\d-)60$", re.ASCII)


def _leap_second(text: str) -> tuple[str, int]:
    """A leap second (``23:59:60``, which RFC 3339 allows) as the text of the second
    before it and the microseconds to add: Unix time has no leap seconds, so the
    moment is the one right after second 59. It was refused as "not RFC 3339".
    Any moment inside it (``23:59:60.5``) is that same one: it comes before 00:00:00,
    and taken as 00:00:00.5 it left out of since= a record of 00:00:00.2."""
    leap, count = _SECOND_60.subn("59", text, count=1)
    return (leap, 1_000_000) if count else (text, 0)


def expand_types(patterns: Iterable[object], known: Iterable[str],
                 check: Callable[[], None] = lambda: None) -> list[str]:
    """The exact type names the ``types`` filter means: names as given, globs matched
    against the types the store holds. ``check`` is called before each glob (a time
    limit's: hundreds of globs over a million stored types take minutes)."""
    names: set[str] = set()
    known = sorted(known)
    for pattern in patterns:
        check()
        if not isinstance(pattern, str) or not _GLOB.fullmatch(pattern):
            raise QueryError(
                f"type {pattern!r} is not an event type or a glob: use names such as "
                f"run_launched, or globs of a-z, 0-9, '_' with * and ? (e.g. 'run_*')"
            )
        if NAME_PATTERN.fullmatch(pattern):
            names.add(pattern)
        else:
            names.update(fnmatch.filter(known, pattern))
    return sorted(names)


_V4_MAPPED_NET: Final = ipaddress.IPv6Network("::ffff:0:0/96")
_ZONE: Final = re.compile(r"%[^/]*")


def ip_ranges(value: object) -> list[tuple[bytes, bytes]]:
    """The (lowest, highest) key ranges of an IP or CIDR block (see ``ip_key``): 4 bytes
    for IPv4 (and IPv4-mapped IPv6), 16 for IPv6; a key only matches a range of its own
    length. An IPv6 block that holds all of ``::ffff:0:0/96`` (``::/0``, ``::/64``...)
    holds the IPv4 clients too: their keys are the mapped block's. A zone (``%eth0``) is
    ignored, as the index keys an address without it."""
    try:
        # The zone alone: a block is written fe80::1%eth0/64 (RFC 4007), and cutting at
        # the '%' took its prefix length with it (the block became one address).
        text = _ZONE.sub("", value.strip()) if isinstance(value, str) else ""
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise QueryError(
            f"client_ip {value!r} is not an IP or a CIDR block: use e.g. 10.1.2.3, "
            f"10.0.0.0/8, 2001:db8::1 or 2001:db8::/32"
        ) from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_V4_MAPPED_NET):
        network = ipaddress.IPv4Network(
            (int(network.network_address) & 0xFFFF_FFFF, network.prefixlen - 96))
    ranges = [(network.network_address.packed, network.broadcast_address.packed)]
    if isinstance(network, ipaddress.IPv6Network) and network.supernet_of(_V4_MAPPED_NET):
        ranges.append((b"\x00" * 4, b"\xff" * 4))
    return ranges


#: The longest exact-match value: as long as a stored line (``validation.MAX_LINE_BYTES``),
#: since no field is longer. Fields are capped by the collector's max_field_length, which
#: may be raised: a lower cap here made such long values impossible to find.
MAX_TEXT: Final = 256 * 1024


def check_text(value: object, what: str) -> str:
    """An exact-match filter value (an id, a name, a status)."""
    if not isinstance(value, str):
        raise QueryError(f"{what} must be a string (matched exactly), got {value!r:.40}")
    if len(value) > MAX_TEXT:
        raise QueryError(f"{what} is {len(value)} characters long: give at most "
                         f"{MAX_TEXT} (it is matched exactly)")
    return value
