"""Turning caller-supplied values into record field values: coerce, cap, mark truncation.

Values stay data: control characters are kept (escaped later by the JSON encoder, so an
investigator sees exactly what an attacker sent) but never split a line; every string is
capped so one request cannot write a megabyte into the audit trail.
"""

from __future__ import annotations

import uuid
from typing import Final

from .errors import AuditFieldError

DEFAULT_MAX_FIELD_LENGTH: Final = 1024
#: The collector's own default cap (its ``max_field_length``): a longer field is
#: rejected there unless the collector is configured higher too.
COLLECTOR_DEFAULT_MAX_FIELD_LENGTH: Final = 4096
#: The cap of ``client_ip`` and ``peer_ip``, whatever ``max_field_length`` is: any IP
#: address fits (IPv6 with a zone included), and the collector refuses a longer value,
#: which would lose the event. A peer that is no address (a proxy or server passing on
#: a client's text) is capped and marked like any field.
MAX_IP_LENGTH: Final = 64
#: Appended to a capped value; the value plus the marker never exceeds the cap.
TRUNCATION_MARKER: Final = "…[truncated]"


def field_text(name: str, value: object, max_length: int) -> str:
    """The string to store for field ``name``: ``None`` is empty, ints and UUIDs become
    their decimal/canonical text, anything else is refused (a record must not contain a
    ``repr`` of some object that may hold secrets)."""
    if value is None:
        return ""
    if type(value) is str:
        text = value
    elif isinstance(value, str):
        text = str.__str__(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            text = str(int(value))
        except ValueError:  # past Python's 4,300-digit limit for int -> str: no id
            raise AuditFieldError(f"audit field {name!r} is an int of more than 4,300 "
                                  f"digits: pass the resource's id", name) from None
    elif isinstance(value, uuid.UUID):
        text = uuid.UUID.__str__(value)  # not a subclass's __str__
    else:
        raise AuditFieldError(
            f"audit field {name!r} must be a str, int or UUID, got {type(value).__name__}: "
            f"pass the resource's id, not the object", name)
    if len(text) > max_length:
        return cap(text, max_length)
    return text


def cap(text: str, max_length: int) -> str:
    keep = max(max_length - len(TRUNCATION_MARKER), 0)
    return text[:keep] + TRUNCATION_MARKER
