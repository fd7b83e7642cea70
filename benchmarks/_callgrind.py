"""Reading ``valgrind --tool=callgrind`` output files: the total instruction count, and
each shared object's own share of it (the interpreter, SQLite, orjson, libc...)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Final

from ._harness import BenchmarkError

_TOTALS: Final = re.compile(rb"^totals:\s+(\d+)", re.MULTILINE)
_NAMED: Final = re.compile(r"\((\d+)\)(?: (.*))?$")

#: Shared objects by what they are, first match wins (a substring of the object's path).
PARTS: Final = (
    ("libsqlite3", "SQLite"),
    ("_sqlite3.", "sqlite3 module (binding values, rows)"),
    ("libpython", "CPython (bytecode, objects, builtins)"),
    ("bin/python", "CPython (bytecode, objects, builtins)"),
    ("orjson", "orjson"),
    ("libc.so", "libc (memcpy, malloc, syscalls' user side)"),
    ("libcrypto", "OpenSSL (hashes, TLS)"),
    ("_hashlib", "OpenSSL (hashes, TLS)"),
    ("cryptography", "cryptography (signatures)"),
    ("libz.", "zlib"),
    ("ld-linux", "dynamic loader"),
)
OTHER: Final = "other"


def parse_totals(data: bytes) -> int:
    """The ``totals:`` line of a callgrind output file (instructions, ``Ir``)."""
    match = _TOTALS.search(data)
    if match is None:
        raise BenchmarkError("callgrind wrote no totals line: was instrumentation on?")
    return int(match.group(1))


def self_cost_by_object(data: bytes) -> dict[str, int]:
    """Instructions executed inside each shared object (its functions' self cost, what
    they called not included), by the object's path; they sum to ``parse_totals``.

    The format: ``ob=`` names the object of the functions that follow (``(id) path`` the
    first time, ``(id)`` after), cost lines are ``<position> <count>``, and the cost line
    after ``calls=`` is the callee's inclusive cost, counted where it was spent."""
    names: dict[str, str] = {}
    costs: Counter[str] = Counter()
    current = "???"
    after_call = False
    for line in data.splitlines():
        first = line[:1]
        if first.isdigit() or first in (b"+", b"-", b"*"):
            if after_call:
                after_call = False
            else:
                costs[current] += int(line.rsplit(b" ", 1)[1])
        elif line.startswith(b"ob="):
            current = _object(names, line[3:].decode())
        elif line.startswith(b"cob="):
            _object(names, line[4:].decode())  # may name an object for the first time
        elif line.startswith(b"calls="):
            after_call = True
    return dict(costs)


def by_part(costs: dict[str, int]) -> dict[str, int]:
    """``self_cost_by_object`` grouped by ``PARTS`` (the rest under ``OTHER``)."""
    parts: Counter[str] = Counter()
    for path, count in costs.items():
        part = next((name for key, name in PARTS if key in path), OTHER)
        parts[part] += count
    return dict(parts)


def _object(names: dict[str, str], spec: str) -> str:
    match = _NAMED.match(spec)
    if match is None:  # not compressed: the path itself
        return spec
    if match.group(2) is not None:
        names[match.group(1)] = match.group(2)
    return names.get(match.group(1), "???")
