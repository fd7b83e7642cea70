"""What a query asks of each index chunk: the SQL conditions compiled from
``collector.query.Filters``, and, chunk by chunk, which index may serve the status and
name filters.

- A name filter becomes ``org_id IN (ids that had the name)`` in an indexed chunk (see
  ``collector.storage.names``), and the row's name column confirms it everywhere.
- The status index is partial (``status <> ''``) and SQLite only uses it when the query
  repeats that condition. Its statistics cannot tell a rare status from a common one
  (SQLite here has no per-value statistics, and the sampled ``ANALYZE`` says ~1000 rows
  a key for every column), so each indexed chunk is asked first, through the index, how
  many of its rows in the page's seq range hold the status, up to ``STATUS_WALK + 1``
  (a covering walk of at most that many entries): none, and the chunk is skipped; more
  than ``STATUS_WALK`` while another indexed filter narrows the query, and the status is
  checked on the rows that filter's index finds (``+status``: no index) rather than
  walking the status index through thousands of rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson

from .chunks import PARTIAL
from .filters import check_text, expand_types, ip_ranges, parse_time
from .names import ID_COLUMNS, MAX_IDS, ids_named

if TYPE_CHECKING:
    import sqlite3

    from collector.query import Filters

FOREVER: Final = (-(2**62), 2**62)
#: Rows of one chunk holding the asked status above which the status index is not
#: walked when another indexed filter narrows the query.
STATUS_WALK: Final = 1000


@dataclass(frozen=True)
class Conditions:
    where: str  # every filter but status and the names' id narrowing
    params: tuple[Any, ...]
    status: str | None
    narrow: str  # "org_id IN (...)" etc. for indexed chunks; "" when no name filter
    narrow_params: tuple[Any, ...]
    other_index: bool  # another indexed filter than status narrows the query
    since: int
    until: int
    nothing: bool  # no chunk can match (a type glob that matches no stored type, ...)
    nothing_indexed: bool  # no indexed chunk can match (a name none of them holds)

    @property
    def timed(self) -> bool:
        return (self.since, self.until) != FOREVER

    def for_chunk(self, con: sqlite3.Connection, table: str, indexed: bool, low: int,
                  high: int) -> tuple[str, tuple[Any, ...]] | None:
        """The WHERE clause and parameters for the rows of ``table`` with seqs from
        ``low`` to ``high``; None when none of them can match."""
        if indexed and self.nothing_indexed:
            return None
        parts: list[str] = []
        params: list[Any] = []
        if indexed and self.narrow:
            parts.append(self.narrow)
            params += self.narrow_params
        if self.where != "1":
            parts.append(self.where)
            params += self.params
        if self.status is not None:
            column = "status = ?"
            if indexed and self.status != "":
                held = con.execute(
                    f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE status = ? AND "
                    f"{PARTIAL['status']} AND seq BETWEEN ? AND ? LIMIT {STATUS_WALK + 1})",
                    (self.status, low, high)).fetchone()[0]
                if not held:
                    return None
                column = ("+status = ?" if held > STATUS_WALK and self.other_index
                          else f"status = ? AND {PARTIAL['status']}")
            parts.append(column)
            params.append(self.status)
        return " AND ".join(parts) or "1", tuple(params)


#: A type glob matching more stored types than this is passed as one JSON array.
_TYPES_AS_PARAMETERS: Final = 500


def compile_conditions(con: sqlite3.Connection, filters: Filters,
                       window: tuple[int, int] | None) -> Conditions:
    """Check ``filters`` (``QueryError`` names a bad value) and compile them; ``window``
    is the (since, until) a cursor carries, so a relative time stays fixed while paging."""
    where: list[str] = []
    params: list[Any] = []
    nothing = False
    if filters.types:
        types = filters.types
        if isinstance(types, str):
            types = (types,)
        known = [t for (t,) in con.execute("SELECT type FROM types")]
        names = expand_types(types, known)
        nothing = not names
        if len(names) <= _TYPES_AS_PARAMETERS:
            where.append(f"type IN ({','.join('?' * len(names))})")
            params += names
        else:  # one parameter, not one each: SQLite takes at most 32,766 per statement
            where.append("type IN (SELECT value FROM json_each(?))")
            params.append(orjson.dumps(names).decode())
    for column, value, what in (("principal", filters.principal, "principal"),
                                ("target", filters.target, "target"),
                                ("org_id", filters.org, "org"),
                                ("workspace_id", filters.workspace, "workspace"),
                                ("org_name", filters.org_name, "org_name"),
                                ("workspace_name", filters.workspace_name,
                                 "workspace_name")):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(check_text(value, what))
    status = check_text(filters.status, "status") if filters.status is not None else None
    narrow, narrow_params, nothing_indexed = _names(con, filters)
    if filters.client_ip is not None:
        ranges = ip_ranges(filters.client_ip)
        where.append("(" + " OR ".join(
            f"(client_ip BETWEEN ? AND ? AND length(client_ip) = {len(low)})"
            for low, _ in ranges) + ")")
        params += [bound for low_high in ranges for bound in low_high]
    other_index = bool(narrow) or any(
        v is not None for v in (filters.principal, filters.target, filters.org,
                                filters.workspace, filters.client_ip)) or bool(filters.types)
    if window is not None:
        since, until = window
    else:
        now = time.time_ns() // 1000
        since = (parse_time(filters.since, what="since", now_us=now)
                 if filters.since is not None else FOREVER[0])
        until = (parse_time(filters.until, what="until", now_us=now)
                 if filters.until is not None else FOREVER[1])
    if (since, until) != FOREVER:
        where.append("created >= ? AND created < ?")
        params += [since, until]
    nothing = nothing or since >= until
    return Conditions(" AND ".join(where) or "1", tuple(params), status,
                      " AND ".join(narrow), tuple(narrow_params), other_index, since, until,
                      nothing, nothing_indexed)


def _names(con: sqlite3.Connection, filters: Filters) -> tuple[list[str], list[str], bool]:
    """The id conditions a name filter adds in indexed chunks, their parameters, and
    whether no indexed chunk can match (a name no indexed chunk holds)."""
    narrow: list[str] = []
    params: list[str] = []
    for kind, value in (("org", filters.org_name), ("workspace", filters.workspace_name)):
        if value is None:
            continue
        ids = ids_named(con, kind, value)
        if not ids:
            return [], [], True
        if len(ids) <= MAX_IDS:  # more: the name column alone (a walk by seq)
            narrow.append(f"{ID_COLUMNS[kind]} IN ({','.join('?' * len(ids))})")
            params += ids
    return narrow, params, False
