"""What a query asks of each index chunk: the SQL conditions compiled from
``collector.query.Filters``, and, chunk by chunk, the statement that finds its rows.

Every filter is checked on the ``events`` rows themselves. In an indexed chunk, the
filters that have postings (``collector.storage.chunks``) are the *drivers*: the one
with the fewest entries in the chunk is walked, and each entry's row checked against
the rest. How many entries a driver has is counted, up to ``PROBE + 1``, through its
postings (a covering walk of at most that many entries): a driver with none skips the
chunk; so the walk follows the filter that narrows most, wherever that is (statistics
sampled over a whole table cannot tell a rare status from a common one, nor one
principal's busy week from its quiet one).

- A name filter becomes ``org_id IN (ids that had the name)`` in an indexed chunk (see
  ``collector.storage.names``), and the row's name column confirms it everywhere.
- The status postings leave empty statuses out (``chunks.PARTIAL``): a filter on the
  empty status is checked on the rows only.
- A driver of several values (a type glob, a CIDR block that holds IPv4 and IPv6, a name
  several ids carried) yields its entries out of seq order: with more than ``PROBE``
  of them, a walk of the chunk's rows in seq order, which stops at the page's end, is
  cheaper than gathering and sorting them all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson

from .chunks import INDEXED, postings
from .filters import QueryError, check_text, expand_types, ip_ranges, parse_time
from .names import ID_COLUMNS, MAX_IDS, ids_named
from .time_limit import check

if TYPE_CHECKING:
    import sqlite3

    from collector.query import Filters

FOREVER: Final = (-(2**62), 2**62)
#: Entries of a driver counted in a chunk before it is called common.
PROBE: Final = 1000
#: Values of a driver (parameters: an IP range counts two) that the catalog walk
#: looks up in each indexed chunk before it asks the chunk (``catalog_filter``).
CATALOG_VALUES: Final = 64


@dataclass(frozen=True)
class Driver:
    """A filter with postings: its column, its condition on the postings' ``v``, and
    whether it is one value (its entries come in seq order)."""

    column: str
    condition: str
    params: tuple[Any, ...]
    single: bool


@dataclass(frozen=True)
class Conditions:
    where: str  # every filter, on the events rows
    params: tuple[Any, ...]
    drivers: tuple[Driver, ...]  # the filters an indexed chunk's postings can serve
    since: int
    until: int
    nothing: bool  # no chunk can match (a type glob that matches no stored type, ...)
    nothing_indexed: bool  # no indexed chunk can match (a name none of them holds)

    @property
    def timed(self) -> bool:
        return (self.since, self.until) != FOREVER

    @property
    def runs(self) -> bool:
        """Whether runs of indexed chunks are read in one statement (``indexed_run``):
        one filter of one value drives every chunk alike."""
        return (not self.nothing_indexed and len(self.drivers) == 1
                and self.drivers[0].single)

    def catalog_filter(self) -> tuple[str, tuple[Any, ...]]:
        """A condition on the ``chunks`` catalog's rows that leaves out the indexed
        chunks none of whose rows can match: those where a driver has no entry at all
        (one seek a driver, and one a value of a several-valued one, inside SQLite; the
        chunk's statement then counts what is left, ``statement``). For the walk that
        reads the catalog: a rare filter of several values (a CIDR block, a type glob)
        or of several filters visited every chunk with a statement of its own (~3.4 us
        each, ~70 ms at a year's ~20,000 chunks). Not for runs (``indexed_run``): their
        one statement skips such chunks itself."""
        if self.nothing_indexed:
            return f"state <> {INDEXED}", ()
        # Fewest seeks first (a value or an IP range is one): SQLite checks them in
        # this order and stops at the first without an entry. A driver of more values
        # than CATALOG_VALUES is left to the chunk's statement (a seek each per chunk).
        drivers = sorted((d for d in self.drivers if len(d.params) <= CATALOG_VALUES),
                         key=lambda d: len(d.params))
        if self.runs or not drivers:
            return "1", ()
        held = " AND ".join(
            f"EXISTS (SELECT 1 FROM {postings(d.column)} WHERE chunk = chunks.chunk AND "
            f"{d.condition})" for d in drivers)
        return (f"(state <> {INDEXED} OR ({held}))",
                tuple(p for d in drivers for p in d.params))

    def statement(self, con: sqlite3.Connection, chunk: int, indexed: bool, low: int,
                  high: int, order: str) -> tuple[str, tuple[Any, ...]] | None:
        """The statement selecting (seq, off, len) of the matching rows of ``chunk``
        with seqs from ``low`` to ``high`` in ``order`` (ASC or DESC), its last
        parameter the limit left out; None when none of them can match."""
        can_match, driver = self._driver(con, chunk, low, high) if indexed else (True, None)
        if not can_match:
            return None
        if driver is None:
            sql = (f"SELECT seq, off, len FROM events WHERE seq BETWEEN ? AND ? "
                   f"AND {self.where} ORDER BY seq {order} LIMIT ?")
            return sql, (low, high, *self.params)
        # CROSS JOIN: SQLite walks the postings first, as chosen, and looks each row up.
        sql = (f"SELECT e.seq, e.off, e.len FROM {postings(driver.column)} AS p "
               f"CROSS JOIN events AS e ON e.seq = p.seq WHERE p.chunk = ? AND "
               f"{driver.condition} AND p.seq BETWEEN ? AND ? AND {self.where} "
               f"ORDER BY p.seq {order} LIMIT ?")
        return sql, (chunk, *driver.params, low, high, *self.params)

    def indexed_run(self, start: tuple[int, int], stop: tuple[int, int] | None,
                    seqs: tuple[int, int], order: str) -> tuple[str, tuple[Any, ...]] | None:
        """One statement for a run of indexed chunks: from the chunk whose (segment,
        chunk) is ``start`` on, in ``order``, to before ``stop`` (the next chunk not
        indexed; None: to the end), the rows with seqs in ``seqs`` (what a cursor and the
        time window's seq blocks leave), as (seq, segment, off, len), its last parameter
        the limit left out. None unless one filter of one value drives every chunk
        alike (no choice to make per chunk).

        A store holds thousands of chunks after a year (one a segment at least, hourly
        by default); a statement per chunk cost ~3.4 us each (10 ms a query at 3,000),
        where the chunk catalog, the postings and the rows walked in one statement cost
        a seek a chunk (~0.6 us), and stop at the page's end: (segment, chunk, seq) is
        the order of the catalog's chunks_segment index and of each chunk's postings
        of one value, so SQLite sorts nothing."""
        if not self.runs:
            return None
        driver = self.drivers[0]
        descending = order == "DESC"
        low, high = seqs
        bounds = [f"(c.segment, c.chunk) {'<=' if descending else '>='} (?, ?)"]
        params: list[Any] = [INDEXED, self.since, self.until, *start]
        if stop is not None:
            bounds.append(f"(c.segment, c.chunk) {'>' if descending else '<'} (?, ?)")
            params += stop
        sql = (f"SELECT e.seq, c.segment, e.off, e.len FROM chunks AS c "
               f"CROSS JOIN {postings(driver.column)} AS p CROSS JOIN events AS e "
               f"WHERE c.state = ? AND c.rows > 0 AND c.max_created >= ? AND "
               f"c.min_created < ? AND {' AND '.join(bounds)} AND p.chunk = c.chunk AND "
               f"{driver.condition} AND p.seq BETWEEN ? AND ? AND e.seq = p.seq AND "
               f"{self.where} ORDER BY c.segment {order}, c.chunk {order}, p.seq {order} "
               f"LIMIT ?")
        return sql, (*params, *driver.params, low, high, *self.params)

    def _driver(self, con: sqlite3.Connection, chunk: int, low: int,
                high: int) -> tuple[bool, Driver | None]:
        """Whether a row of an indexed chunk can match, and the driver to walk (None:
        walk the rows, when there is no driver or the best one is common and
        unordered)."""
        if self.nothing_indexed:
            return False, None
        if len(self.drivers) == 1 and self.drivers[0].single:
            return True, self.drivers[0]  # nothing to choose; an empty walk costs a probe
        best: tuple[int, Driver] | None = None
        for driver in self.drivers:
            held = con.execute(
                f"SELECT count(*) FROM (SELECT 1 FROM {postings(driver.column)} "
                f"WHERE chunk = ? AND {driver.condition} AND seq BETWEEN ? AND ? "
                f"LIMIT {PROBE + 1})", (chunk, *driver.params, low, high)).fetchone()[0]
            if not held:
                return False, None
            # Counts stop at PROBE + 1: among drivers that all reach it, one of a single
            # value (walked in seq order, to the page's end) beats one of several (the
            # rows scanned), whichever the filters list first.
            if best is None or (held, not driver.single) < (best[0], not best[1].single):
                best = (held, driver)
        if best is None:
            return True, None
        held, driver = best
        return True, (None if held > PROBE and not driver.single else driver)


#: A type glob matching more stored types than this is passed as one JSON array.
_TYPES_AS_PARAMETERS: Final = 500


def compile_conditions(con: sqlite3.Connection, filters: Filters,
                       window: tuple[int, int] | None) -> Conditions:
    """Check ``filters`` (``QueryError`` names a bad value) and compile them; ``window``
    is the (since, until) a cursor carries, so a relative time stays fixed while paging."""
    where: list[str] = []
    params: list[Any] = []
    drivers: list[Driver] = []
    nothing = False
    if filters.types:
        types = filters.types
        if isinstance(types, str):
            types = (types,)
        known = [t for (t,) in con.execute("SELECT type FROM types")]
        names = expand_types(types, known, check)
        nothing = not names
        if len(names) <= _TYPES_AS_PARAMETERS:
            listed = f"IN ({','.join('?' * len(names))})"
            type_params: tuple[Any, ...] = tuple(names)
        else:  # one parameter, not one each: SQLite takes at most 32,766 per statement
            listed = "IN (SELECT value FROM json_each(?))"
            type_params = (orjson.dumps(names).decode(),)
        where.append(f"type {listed}")
        params += type_params
        drivers.append(Driver("type", f"v {listed}", type_params, len(names) == 1))
    for column, value, what in (("principal", filters.principal, "principal"),
                                ("target", filters.target, "target"),
                                ("org_id", filters.org, "org"),
                                ("workspace_id", filters.workspace, "workspace"),
                                ("org_name", filters.org_name, "org_name"),
                                ("workspace_name", filters.workspace_name,
                                 "workspace_name"),
                                ("status", filters.status, "status")):
        if value is not None:
            text = check_text(value, what)
            where.append(f"{column} = ?")
            params.append(text)
            if column in ("org_name", "workspace_name") or (column, text) == ("status", ""):
                continue  # no postings: names (see names.py), the empty status (PARTIAL)
            drivers.append(Driver(column, "v = ?", (text,), True))
    named, nothing_indexed = _names(con, filters)
    drivers += named
    if filters.client_ip is not None:
        ranges = ip_ranges(filters.client_ip)
        bounds = tuple(bound for low_high in ranges for bound in low_high)
        where.append("(" + " OR ".join(
            f"(client_ip BETWEEN ? AND ? AND length(client_ip) = {len(low)})"
            for low, _ in ranges) + ")")
        params += bounds
        drivers.append(Driver("client_ip", "(" + " OR ".join(
            f"(v BETWEEN ? AND ? AND length(v) = {len(low)})" for low, _ in ranges) + ")",
            bounds, len(ranges) == 1 and ranges[0][0] == ranges[0][1]))
    if window is not None:
        since, until = window
    else:
        now = time.time_ns() // 1000
        since = (parse_time(filters.since, what="since", now_us=now)
                 if filters.since is not None else FOREVER[0])
        until = (parse_time(filters.until, what="until", now_us=now)
                 if filters.until is not None else FOREVER[1])
        if since > until:  # both given (a bound left out is the widest): swapped, likely
            raise QueryError(f"since={filters.since!r} is after until={filters.until!r}: "
                             f"no event can match; give the earlier time as since (an age "
                             f"such as 24h is a time that long ago)")
    if (since, until) != FOREVER:
        where.append("created >= ? AND created < ?")
        params += [since, until]
    nothing = nothing or since >= until
    return Conditions(" AND ".join(where) or "1", tuple(params), tuple(drivers), since,
                      until, nothing, nothing_indexed)


def _names(con: sqlite3.Connection, filters: Filters) -> tuple[list[Driver], bool]:
    """The drivers a name filter adds in indexed chunks (the ids that carried the name),
    and whether no indexed chunk can match (a name no indexed chunk holds)."""
    drivers: list[Driver] = []
    for kind, value in (("org", filters.org_name), ("workspace", filters.workspace_name)):
        if value is None:
            continue
        ids = ids_named(con, kind, value)
        if not ids:
            return [], True
        if len(ids) <= MAX_IDS:  # more: the name column alone (a walk by seq)
            drivers.append(Driver(ID_COLUMNS[kind], f"v IN ({','.join('?' * len(ids))})",
                                  tuple(ids), len(ids) == 1))
    return drivers, False
