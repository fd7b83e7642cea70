"""Per-source sequence ranges: which of a shipper's event numbers the store holds.

Each shipper numbers its events 1, 2, 3, ...; a number that never arrives (dropped by a
full spool, lost with a killed process) shows up as a gap between two stored ranges, so
a loss is visible at the collector even when the app that lost it is gone. Each batch
also says the highest number its source has given out (``numbered``): numbers after
the last stored one, up to it, are the unreceived tail, which is how the last events of
a killed process show, with no later event to make a gap.

Ranges are inclusive ``[first, last]`` pairs, sorted and disjoint, never adjacent.
The store keeps them in the index, updated with each commit.

A source keeps at most ``MAX_RANGES`` ranges in detail. A shipper that drops events
under sustained overload (a full queue and no spool) fragments its numbering into one
range per export, hundreds a second; unbounded, each commit would re-merge and rewrite
them all and the collector would slow down exactly when the app is overloaded. Past the
bound the oldest ranges are *folded* into one, ``[first, last, missing]``, ``missing``
counting the numbers inside it not received when they were folded (numbers older than
a folded range, arriving late, can make a second, older one). The totals (``received``,
gap events) stay exact; what is forgotten is where the oldest gaps were.
A number that arrives later inside the folded range is not subtracted from ``missing``
(a shipper may number two events alike: it cannot be told from a repeat), so such a
late arrival is counted as missing still, never a loss hidden.

Retention deleting old segments leaves the ranges as they are (a deleted record was
received, not lost), except that a source none of whose records is left is forgotten
(``GroupWriter.forget_sources``); ``reindex`` rebuilds them from the segments that
remain.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Mapping
from typing import Final, NamedTuple, TypedDict

from audit_middleware.event import format_created
from audit_middleware.wire import MAX_SEQ

from . import loss_acks

Ranges = list[list[int]]


#: Ranges a source keeps in detail; older ones are folded (see the module docstring).
MAX_RANGES: Final = 1_000
#: Sources ``stats`` reports one by one (see ``overview``); the others are counted.
MAX_REPORTED: Final = 1_000


def add(ranges: Ranges, numbers: Iterable[int]) -> Ranges:
    """``ranges`` with ``numbers`` added (a new list, sharing no inner list that changed;
    numbers < 1 mean 'not numbered'), folded to at most ``MAX_RANGES`` ranges."""
    runs: Ranges = []
    for n in sorted(set(numbers)):
        if n < 1:
            continue
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    if not runs:
        return ranges
    if ranges and runs[0][0] > ranges[-1][1]:
        # The common case, numbers after every stored one: O(new), not O(stored).
        appended = ranges[:]
        if runs[0][0] == appended[-1][1] + 1:
            appended[-1] = _join(appended[-1], runs.pop(0))
        return _fold(appended + runs)
    merged: Ranges = []
    for r in _by_start(ranges, runs):
        if merged and r[0] <= merged[-1][1] + 1:
            merged[-1] = _join(merged[-1], r)
        else:
            merged.append(r)
    return _fold(merged)


def _by_start(a: Ranges, b: Ranges) -> Iterable[list[int]]:
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i][0] <= b[j][0]:
            yield a[i]
            i += 1
        else:
            yield b[j]
            j += 1
    yield from a[i:]
    yield from b[j:]


def _join(a: list[int], b: list[int]) -> list[int]:
    """One new range for overlapping or adjacent ``a`` and ``b`` (``a`` starting first),
    keeping the missing count of whichever of them is folded."""
    missing = (a[2] if len(a) > 2 else 0) + (b[2] if len(b) > 2 else 0)
    last = max(a[1], b[1])
    return [a[0], last, missing] if missing else [a[0], last]


def _fold(ranges: Ranges) -> Ranges:
    """Fold the oldest ranges into the first until at most ``MAX_RANGES`` remain."""
    extra = len(ranges) - MAX_RANGES
    if extra <= 0:
        return ranges
    head = ranges[:extra + 1]
    missing = folded(head) + count(gaps(head))
    return [[head[0][0], head[-1][1], missing], *ranges[extra + 1:]]


def gaps(ranges: Ranges) -> Ranges:
    """The numbers missing between stored ranges (before the first range is not a gap:
    a store may start receiving from a shipper that was already running)."""
    return [[prev[1] + 1, cur[0] - 1] for prev, cur in itertools.pairwise(ranges)]


def count(ranges: Ranges) -> int:
    """How many numbers ``ranges`` hold (a folded range's missing ones not counted)."""
    return sum(r[1] - r[0] + 1 - (r[2] if len(r) > 2 else 0) for r in ranges)


def folded(ranges: Ranges) -> int:
    """How many numbers inside folded ranges are missing (0 when nothing was folded).
    The folded range is the first, unless numbers older than it arrived since."""
    return sum(r[2] for r in ranges if len(r) > 2)


def unreceived_tail(ranges: Ranges, numbered: int) -> list[int]:
    """``[first, last]`` of the numbers a source said it had given out (``numbered``, a
    batch header's) after the last one stored; ``[]`` when there are none. For a source
    still running these are in flight; for one that has stopped, lost (a killed process's
    queue): the loss a gap between ranges cannot show, as nothing follows it."""
    stored = ranges[-1][1] if ranges else 0
    return [stored + 1, numbered] if numbered > stored else []


class Overview(NamedTuple):
    """What ``stats`` says of the sources: reports of at most ``MAX_REPORTED`` of them,
    and totals over all of them (for alerting: the store's metrics)."""

    reports: dict[str, SourceReport]
    gap_events: int  # numbers missing between stored ranges, folded ones included
    unreceived_tail_events: int
    total: int  # sources known
    omitted: int  # sources known but not in ``reports``
    #: The two above less what an operator acknowledged (``loss_acks``): what to alert on.
    unacknowledged_gap_events: int = 0
    unacknowledged_tail_events: int = 0


def overview(ranges: Mapping[str, Ranges], numbered: Mapping[str, int],
             seen: Mapping[str, int], limit: int | None = None,
             acknowledged: Mapping[str, int] | None = None) -> Overview:
    """Reports of the ``limit`` (default ``MAX_REPORTED``) sources most worth a look:
    those with unacknowledged losses first, then those with acknowledged ones, then the
    most recently seen. Every app process is a source, so over a retention period there
    can be many thousands; reporting them all would make each ``stats`` call (every few
    seconds, and each metrics scrape) cost O(sources) in reports and JSON. The totals
    still count every source. ``acknowledged``: the number each acknowledged source's
    losses are acknowledged through."""
    limit = MAX_REPORTED if limit is None else limit
    acknowledged = acknowledged or {}
    in_gaps = in_tails = new_gaps = new_tails = 0
    worth: list[tuple[bool, bool, int, str]] = []
    for source, r in ranges.items():
        said = numbered.get(source, 0)
        gap = r[-1][1] - r[0][0] + 1 - count(r) if r else 0
        tail = max(0, said - (r[-1][1] if r else 0))
        new_gap, new_tail = gap, tail
        through = acknowledged.get(source, 0)
        if through and (gap or tail):
            new_gap, new_tail = loss_acks.unacknowledged(r, said, through)
        in_gaps += gap
        in_tails += tail
        new_gaps += new_gap
        new_tails += new_tail
        worth.append((new_gap > 0 or new_tail > 0, gap > 0 or tail > 0,
                      seen.get(source, 0), source))
    chosen = heapq.nlargest(limit, worth) if len(worth) > limit else worth
    reports = {source: report(ranges[source], numbered.get(source, 0), seen.get(source),
                              acknowledged.get(source, 0))
               for *_, source in chosen}
    # Sources and their numbers are the clients' to choose: a sum can pass what a metric
    # exporter encodes (OTLP's int64), which would lose every other metric with it.
    return Overview(reports, min(in_gaps, MAX_SEQ), min(in_tails, MAX_SEQ), len(worth),
                    len(worth) - len(reports), min(new_gaps, MAX_SEQ),
                    min(new_tails, MAX_SEQ))


class SourceReport(TypedDict):
    received: int
    ranges: Ranges
    gaps: Ranges
    folded_gap_events: int
    numbered: int
    unreceived_tail: list[int]
    last_seen: str | None
    acknowledged_through: int


def report(ranges: Ranges, numbered: int = 0, seen_ns: int | None = None,
           acknowledged_through: int = 0) -> SourceReport:
    """The ``stats()["sources"][source]`` entry. ``folded_gap_events``: numbers missing
    inside the folded range, beside the ``gaps`` still in detail. ``last_seen``:
    when the collector last stored an event of the source (RFC 3339 UTC, None if not
    recorded): an unreceived tail of a source not seen for longer than its shipper's
    ``max_delay`` is lost. ``acknowledged_through``: losses of numbers up to it were
    acknowledged by an operator (0: none were)."""
    return {"received": count(ranges), "ranges": ranges, "gaps": gaps(ranges),
            "folded_gap_events": folded(ranges),
            "numbered": numbered, "unreceived_tail": unreceived_tail(ranges, numbered),
            "last_seen": format_created(seen_ns) if seen_ns is not None else None,
            "acknowledged_through": acknowledged_through}
