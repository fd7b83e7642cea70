"""The ingest fast path (``CanonicalLines``) against the general path it stands in for
(``Validator.parse`` then ``records.encode_events``): whatever line the fast path
accepts, the general path accepts too, with the same id, record bytes and index key;
every line the shipper writes takes the fast path."""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
import pytest

from audit_middleware.event import AuditEvent, format_created
from benchmarks._events import Population
from collector.canonical_lines import CanonicalLines
from collector.storage.records import encode_events
from collector.validation import DEFAULT_MAX_FIELD_LENGTH, Validator
from tests.collector.storage_helpers import event

Read = tuple[str, bytes, tuple[Any, ...]]


def general(line: bytes, cap: int = DEFAULT_MAX_FIELD_LENGTH) -> Read | None:
    record = Validator(cap).parse(line)
    if isinstance(record, str):
        return None
    encoded = encode_events([record])
    return encoded.ids[0], encoded.bodies[0], encoded.keys[0]


def population_lines(n: int) -> list[bytes]:
    records = next(Population().records(n, time.time_ns(), 3_600 * 10**9, seed=5))
    return [orjson.dumps(r) for r in records]


def test_population_lines_all_take_the_fast_path_with_the_general_result() -> None:
    fast = CanonicalLines(DEFAULT_MAX_FIELD_LENGTH)
    for line in population_lines(2_000):
        assert fast.read(line) == general(line), line


def test_the_shippers_own_lines_take_the_fast_path() -> None:
    fast = CanonicalLines(DEFAULT_MAX_FIELD_LENGTH)
    created = 1_764_119_230_123_456_000
    events = [
        AuditEvent("run_created", "run-1", "alice", "", "org-1", "Acme", "ws-1", "Research",
                   "203.0.113.9", created, None, ""),
        AuditEvent("credentials_accessed", "cred-1", "system", "", "org-1", "Acme", "ws-1",
                   "Research", "", created, None, ""),
        AuditEvent("user_sign_in", "alice", "alice", "github", "", "", "", "",
                   "2001:db8::1", created, None, "10.0.0.2"),
        AuditEvent("run_deleted", "run-9", "bob", "", "org-2", "Beta Corp", "ws-2", "Ops",
                   "::ffff:198.51.100.7", created, None, ""),
    ]
    for item in events:
        line = item.to_json_line().rstrip(b"\n")
        read = fast.read(line)
        assert read is not None, line
        assert read == general(line)
    traced = orjson.dumps(event(trace_id="0af7651916cd43dd8448eb211c80319c",
                                span_id="b7ad6b7169203331"))
    assert fast.read(traced) == general(traced) is not None


@pytest.mark.parametrize("line", [
    # valid, but not in canonical form: the general path takes them
    orjson.dumps(event(target="caf\u00e9")),  # non-ASCII
    orjson.dumps(event(target="a\u2028b")),
    orjson.dumps(event(principal='say "hi"')),  # an escape
    orjson.dumps(event(status="a\\b")),
    orjson.dumps(event(client_ip="fe80::1%eth0")),  # a zone
    orjson.dumps(event(client_ip="unknown")),
    orjson.dumps(dict(reversed(event().items()))),  # another key order
    orjson.dumps(event()).replace(b'":', b'": '),  # spaces
    orjson.dumps(event(target="run-1")).replace(b'"run-1"', b'"run\\u002d1"'),  # escaped '-'
    orjson.dumps(event(created="2026-11-26T01:07:10.123456+00:00")),
    # invalid: the general path rejects them with a reason
    orjson.dumps(event(v=2)),
    orjson.dumps(event(v=1.0)),
    orjson.dumps(event(id="01938F2E-4B1C-7D3A-9E2F-0123456789AB")),
    orjson.dumps(event(type="Run_created")),
    orjson.dumps(event(type="r" * 65)),
    orjson.dumps(event(created="2026-02-30T01:07:10.123456Z")),  # not on the calendar
    orjson.dumps(event(created="2026-11-26T24:07:10.123456Z")),
    orjson.dumps(event(created="2026-11-26T24:00:00.000000Z")),
    orjson.dumps(event(trace_id="0af7651916cd43dd8448eb211c80319")),
    orjson.dumps(event(span_id="B7AD6B7169203331")),
    orjson.dumps(event(client_ip="1" * 65)),
    orjson.dumps({**event(), "peer_ip": ""}),
    orjson.dumps({**event(), "extra": "x"}),
    orjson.dumps(event(target=1)),
    orjson.dumps(event(target="x" * (DEFAULT_MAX_FIELD_LENGTH + 1))),
    orjson.dumps(event())[:-1],  # cut short
    orjson.dumps(event(created="2600-01-01T00:00:00.000000Z")),  # for the general path's
    orjson.dumps(event(created="1969-12-31T23:59:59.999999Z")),  # reason: a year OTLP lacks
    orjson.dumps(event()) + b" ",
], ids=lambda line: line[:60].decode("utf-8", "replace"))
def test_lines_off_the_canonical_form_take_the_general_path(line: bytes) -> None:
    assert CanonicalLines(DEFAULT_MAX_FIELD_LENGTH).read(line) is None


def test_peer_ip_is_read_when_present() -> None:
    line = orjson.dumps({**event(), "peer_ip": "10.0.0.1"})
    read = CanonicalLines(DEFAULT_MAX_FIELD_LENGTH).read(line)
    assert read is not None and read == general(line)
    assert read[1].endswith(b'"peer_ip":"10.0.0.1"')


def test_a_proxy_on_a_unix_socket_keeps_the_fast_path() -> None:
    # trusted_proxies ["unix"]: every event behind such a proxy has peer_ip "unix".
    line = orjson.dumps({**event(), "peer_ip": "unix"})
    read = CanonicalLines(DEFAULT_MAX_FIELD_LENGTH).read(line)
    assert read is not None and read == general(line)
    assert read[1].endswith(b'"peer_ip":"unix"')
    assert CanonicalLines(DEFAULT_MAX_FIELD_LENGTH).read(
        orjson.dumps({**event(), "peer_ip": "unixx"})) is None


def test_a_line_longer_than_a_small_field_cap_takes_the_general_path() -> None:
    line = orjson.dumps(event())  # every field within 16 characters, the line is not
    assert CanonicalLines(16).read(line) is None
    assert general(line, 16) is not None  # the general path checks each field
    assert general(orjson.dumps(event(target="x" * 17)), 16) is None
    assert CanonicalLines(len(line)).read(line) == general(line, len(line)) is not None


# Characters a mutation puts in: the JSON syntax, escapes, digits, letters of both
# cases, a space, control and non-ASCII characters.
_ALPHABET = [*b'{}[]:,"\\-._ 019afAFzZT', 0, 10, 13, 0x1B, 0x7F, 0xC3, 0xA9, 0xE2]


def mutate(line: bytes, rng: random.Random) -> bytes:
    data = bytearray(line)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data))
        action = rng.random()
        if action < 0.6:
            data[at] = rng.choice(_ALPHABET)
        elif action < 0.8:
            del data[at]
        else:
            data.insert(at, rng.choice(_ALPHABET))
    return bytes(data)


def test_whatever_the_fast_path_accepts_the_general_path_accepts_identically() -> None:
    """20,000 mutations of real lines: the fast path may decline a valid line, but it
    never accepts a line the general path rejects, nor reads one differently."""
    rng = random.Random(2026)
    fast = CanonicalLines(DEFAULT_MAX_FIELD_LENGTH)
    accepted = declined_valid = rejected = 0
    for line in population_lines(500):
        for _ in range(40):
            mutated = mutate(line, rng)
            read, oracle = fast.read(mutated), general(mutated)
            if read is not None:
                assert read == oracle, mutated
                accepted += 1
            elif oracle is not None:
                declined_valid += 1
            else:
                rejected += 1
    # The mutations reach all three outcomes (else this test proves little).
    assert accepted > 1_000 and declined_valid > 100 and rejected > 1_000, (
        accepted, declined_valid, rejected)


def test_format_created_is_what_the_fast_path_reads() -> None:
    # The shipper's created values (format_created) are the pattern's form exactly.
    line = orjson.dumps(event(created=format_created(1_764_119_230_000_001_000)))
    assert CanonicalLines(DEFAULT_MAX_FIELD_LENGTH).read(line) == general(line) is not None
