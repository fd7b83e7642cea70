"""Query-string parameters of the audit-log endpoints -> ``collector.query.Filters``.

The same filters as ``audit-collector query``. Unknown parameters are refused (a typo
such as ``principle=`` must not silently widen a selection); empty values mean "no
filter", so a form can send every field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from starlette.datastructures import QueryParams

from collector.query import Filters

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 1000
_LIMIT_DIGITS: Final = len(str(MAX_LIMIT))
FILTER_PARAMS: Final = ("type", "principal", "target", "status", "org", "org_name",
                        "workspace", "workspace_name", "client_ip", "since", "until")
_SINGLE: Final = FILTER_PARAMS[1:]
MAX_TYPES: Final = 64


class ParamError(ValueError):
    """A query parameter the API cannot use; the message names it and the accepted forms."""


@dataclass(frozen=True)
class Selection:
    filters: Filters
    newest_first: bool
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    def describe(self) -> dict[str, Any]:
        """What was asked, for the read's audit event (``status``)."""
        f = self.filters
        asked = {"type": list(f.types), **{name: getattr(f, name) for name in _SINGLE}}
        shown: dict[str, Any] = {k: v for k, v in asked.items() if v}
        shown["order"] = "newest" if self.newest_first else "oldest"
        return shown


def _limit(text: str) -> int:
    # isascii(): str.isdigit() is also true of "²" and other digits int() refuses. The
    # length first: int() raises past 4,300 digits (a 500), and no limit needs more
    # digits than MAX_LIMIT has.
    if (not (text.isascii() and text.isdigit()) or len(text) > _LIMIT_DIGITS
            or not 1 <= int(text) <= MAX_LIMIT):
        raise ParamError(f"limit={text[:20]!r}: use a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def selection(params: QueryParams, *, paging: bool) -> Selection:
    allowed = set(FILTER_PARAMS) | {"order"} | ({"limit", "cursor"} if paging else set())
    unknown = sorted(set(params.keys()) - allowed)
    if unknown:
        raise ParamError(f"unknown parameter(s) {', '.join(unknown)}: use "
                         f"{', '.join(sorted(allowed))}")
    for name in (*_SINGLE, "order", "limit", "cursor"):
        if len(params.getlist(name)) > 1:
            raise ParamError(f"{name} is given more than once: give it once (only type "
                             f"may repeat)")
    types = tuple(t.strip() for value in params.getlist("type") for t in value.split(",")
                  if t.strip())
    if len(types) > MAX_TYPES:
        raise ParamError(f"at most {MAX_TYPES} types or globs, got {len(types)}")
    # Values are matched exactly, never trimmed: "admin " (a look-alike principal) must be
    # findable apart from "admin". A value of nothing but spaces is no filter.
    values = {name: value if (value := params.get(name)) and value.strip() else None
              for name in _SINGLE}
    order = params.get("order") or "newest"
    if order not in ("newest", "oldest"):
        raise ParamError(f"order={order!r}: use newest (the default) or oldest")
    limit = DEFAULT_LIMIT
    if paging and params.get("limit"):
        limit = _limit(params["limit"])
    return Selection(
        Filters(types=types, **values),  # the parameters are named as the filters
        newest_first=order == "newest", limit=limit,
        cursor=(params.get("cursor") or None) if paging else None)
