"""Keyset cursors of ``collector.query``'s pages: made, read back, and tied to the query
that made them (its filters and order, by a fingerprint).

A cursor holds the seq a page ended at and the time window resolved on the first page
("24h" read then, not at each page): base64 of a small JSON object, which a reader
decodes and checks before any read (one edited by hand is refused, or its window
clamped by ``Reader._compile``).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from typing import Any

import orjson

from collector.query_filters import Filters
from collector.storage.filters import QueryError


def cursor_after(seq: int, filters: Filters | None = None) -> str:
    """A cursor for ``search(filters, newest_first=False)`` that continues after record
    ``seq``: the cursor a page ending at ``seq`` would have returned (a follower that
    keeps its own position, such as the forwarder's checkpoint, resumes with it)."""
    return _encode_cursor({"s": seq, "f": _fingerprint(filters or Filters(), False),
                           "a": None, "b": None})


def cursor_before(seq: int, filters: Filters | None = None) -> str:
    """A cursor for ``search(filters, newest_first=True)`` that continues with the records
    before ``seq``: the last N as of a moment, however many arrived since (``tail``)."""
    return _encode_cursor({"s": seq, "f": _fingerprint(filters or Filters(), True),
                           "a": None, "b": None})


def _fingerprint(filters: Filters, newest_first: bool) -> str:
    body = orjson.dumps([dataclasses.astuple(filters), newest_first], default=str)
    return hashlib.sha256(body).hexdigest()[:16]


def _encode_cursor(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"v": 1, **state})).decode().rstrip("=")


def _decode_cursor(cursor: object, fingerprint: str) -> dict[str, Any]:
    try:
        if not isinstance(cursor, str) or len(cursor) > 512:
            raise ValueError
        state = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if (state["v"] != 1 or type(state["s"]) is not int or type(state["f"]) is not str
                or not all(state[k] is None or type(state[k]) is int for k in "ab")):
            raise ValueError
    except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
        raise QueryError("cursor is not one this store returned: pass a page's "
                         "next_cursor unchanged") from None
    if state["f"] != fingerprint:
        raise QueryError("this cursor belongs to another query: page with the same "
                         "filters and order that produced it")
    return state  # type: ignore[no-any-return]
