"""The record hash chain.

Every stored record ends with ``,"chain":"<64 hex digits>"}``. The hash is

    chain(n) = SHA-256( chain(n-1) as 64 lowercase hex digits
                        || the record's bytes up to, not including, ``,"chain":`` )

so changing, removing, inserting or reordering a record breaks every later link. The
chain runs across segment boundaries: a segment header carries the chain value of the
record before its first one (``GENESIS`` for the store's first segment). Verifying a
record needs no JSON parsing: the chain field has a fixed length at a fixed place.
"""

from __future__ import annotations

import hashlib
from typing import Final

#: The "previous hash" of the store's very first record.
GENESIS: Final = b"0" * 64
FIELD: Final = b',"chain":"'
#: ``,"chain":"<64 hex>"}``: the end of a chained record line, without its newline.
SUFFIX_LEN: Final = len(FIELD) + 64 + 2
_sha256 = hashlib.sha256


def link(previous: bytes, unchained: bytes) -> bytes:
    """The chain value of a record whose bytes before ``,"chain":`` are ``unchained``."""
    return _sha256(previous + unchained).hexdigest().encode()


def split(line: bytes) -> tuple[bytes, bytes] | None:
    """(bytes before ``,"chain":``, the 64 hex digits) of a record line (with or without
    its newline), or None if it does not end with a chain field."""
    end = len(line) - 1 if line.endswith(b"\n") else len(line)
    start = end - SUFFIX_LEN
    if start < 1 or line[start:start + len(FIELD)] != FIELD or line[end - 2:end] != b'"}':
        return None
    value = line[start + len(FIELD):end - 2]
    if not is_hex(value):
        return None
    return line[:start], value


def chain_of(line: bytes) -> bytes | None:
    """The chain value a record line carries, or None."""
    parts = split(line)
    return parts[1] if parts else None


_HEX: Final = frozenset(b"0123456789abcdef")


def is_hex(value: bytes) -> bool:
    return len(value) == 64 and not value.translate(None, bytes(_HEX))
