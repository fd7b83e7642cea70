"""The ingest fast path: an event line in exactly the form the shipper writes it,
checked and encoded without parsing JSON.

Every shipper writes an event as orjson writes it: the schema fields in schema order,
no spaces, ``"v":1``. For such a line (ASCII, no escapes), parsing it into a dict,
validating the dict and dumping it again (``Validator.parse`` then
``records.encode_events``) gives back the very same bytes, so one regular expression
can do the whole job: it checks every field as the validator does, and its groups are
the values the index keeps. That is about half the collector's CPU per event.

``CanonicalLines.read`` accepts a *subset* of what the validator accepts and produces
the same record and index key, byte for byte (``tests/collector/test_canonical_lines.py``
compares the two on generated lines). Anything else (escapes, non-ASCII text, an IPv6
zone, another key order, a line longer than the field cap, any invalid line) gets
``None`` and takes the general path, which also writes every rejection reason.
"""

from __future__ import annotations

import re
from typing import Any, Final

from audit_middleware.event import FIELDS
from audit_middleware.sanitize import MAX_IP_LENGTH

from .own_records import OWN_TYPES
from .storage.errors import StorageError
from .storage.records import ip_column, second_micros
from .validation import CREATED_YEARS, MAX_LINE_BYTES

__all__ = ["CanonicalLines"]

# Printable ASCII but '"' and '\\': a JSON string orjson writes without any escape.
_TEXT: Final = r'"([ !#-\[\]-~]*)"'
# The characters of an IPv4 or IPv6 address (a zone such as %eth0 takes the general path).
_IP_CHARS: Final = "[0-9A-Fa-f.:]"
#: Each schema field's value as the validator accepts it, one group per field but ``v``.
_VALUES: Final = {
    "v": "1",
    "id": '"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"',
    "type": '"([a-z][a-z0-9_]{0,63})"',  # catalogue.NAME_PATTERN
    "target": _TEXT,
    "principal": _TEXT,
    "status": _TEXT,
    "org_id": _TEXT,
    "org_name": _TEXT,
    "workspace_id": _TEXT,
    "workspace_name": _TEXT,
    "client_ip": f'"({_IP_CHARS}{{0,{MAX_IP_LENGTH}}})"',
    # The second and its fraction apart: the index keys ``created`` by the second.
    # The hour as validation.py has it (00-23: never fromisoformat's T24 reading).
    "created": r'"([0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-9]{2}:[0-9]{2})'
               r'\.([0-9]{6})Z"',
    "trace_id": '"((?:[0-9a-f]{32})?)"',
    "span_id": '"((?:[0-9a-f]{16})?)"',
}
_LINE: Final = re.compile(
    "\\{" + ",".join(f'"{name}":{_VALUES[name]}' for name in FIELDS)
    # peer_ip is stored only when non-empty: an empty one takes the general path. "unix":
    # a trusted proxy on a unix socket, which has no address (audit_middleware.client_ip).
    + f'(?:,"peer_ip":"(?:{_IP_CHARS}{{1,{MAX_IP_LENGTH}}}|unix)")?' + "\\}"
)


class CanonicalLines:
    """Reads event lines in the shipper's canonical form (see the module docstring)."""

    __slots__ = ("_longest", "_refused_types")

    def __init__(self, max_field_length: int, *, from_clients: bool = False) -> None:
        # A line no longer than the field cap cannot hold a field over it, so the fast
        # path needs no length check of its own; a longer line takes the general path.
        self._longest = min(max_field_length, MAX_LINE_BYTES)
        # From clients, the collector's own types take the general path, which refuses
        # them (``Validator(from_clients=True)``).
        self._refused_types = OWN_TYPES if from_clients else frozenset()

    def read(self, line: bytes) -> tuple[str, bytes, tuple[Any, ...]] | None:
        """``(id, body, key)`` as ``records.encode_events`` gives them for this line's
        event, or None when the line is not canonical (or not valid)."""
        if len(line) > self._longest:
            return None
        # latin-1 never fails; the pattern itself admits ASCII only.
        match = _LINE.fullmatch(line.decode("latin-1"))
        if match is None:
            return None
        (ident, kind, target, principal, status, org_id, org_name, workspace_id,
         workspace_name, client_ip, second, fraction, _, _) = match.groups()
        if kind in self._refused_types or not CREATED_YEARS[0] <= second[:4] <= CREATED_YEARS[1]:
            return None  # the general path gives the reason
        try:
            micros = second_micros(second)  # also: is the date on the calendar?
        except StorageError:
            return None
        # The pattern fixed the id's shape: its 16 bytes are id_key's value for it.
        return ident, line[:-1], (
            bytes.fromhex(ident.replace("-", "")), micros + int(fraction), kind, principal,
            target, org_id, workspace_id, ip_column(client_ip), status, org_name, workspace_name)
