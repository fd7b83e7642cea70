"""Hypothesis strategies for the collector wire protocol (``docs/protocol.md``): whole
conversations of frames, from valid to hostile, built around valid ones so that the
fuzzer reaches the validator and the store, not only the frame parser."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import strategies as st

from audit_middleware.event import FIELDS
from audit_middleware.wire import BATCH_ID, HEADER, FrameType

JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)
NASTY_TEXT = st.sampled_from([
    "", "\n", "\r\n", "\u2028", "\u2029", "\x00", "\x1b[31mred\x1b[0m", "\t=1+1",
    "=HYPERLINK(\"http://x\")", "<script>alert(1)</script>", "\"},{\"v\":1", "\\", "\ud7ff",
    "\U0001f600" * 3, "a" * 4096, "a" * 4097, "é" * 5000, " ", "\x7f", "\x85",
])
TEXT = st.text(max_size=64) | NASTY_TEXT


def valid_event() -> dict[str, Any]:
    return {
        "v": 1, "id": str(uuid.uuid4()), "type": "credentials_created", "target": "c-1",
        "principal": "u-1", "status": "", "org_id": "o-1", "org_name": "Acme",
        "workspace_id": "", "workspace_name": "", "client_ip": "203.0.113.7",
        "created": "2026-11-26T01:07:10.123456Z", "trace_id": "", "span_id": "",
    }


@st.composite
def event_lines(draw: st.DrawFn) -> bytes:
    """One event line (no newline): valid, mutated field by field, or not JSON at all."""
    kind = draw(st.sampled_from(["valid", "valid", "mutated", "mutated", "raw", "shuffled"]))
    if kind == "raw":
        raw = draw(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
        return raw.replace(b"\n", b" ")
    event = valid_event()
    event["target"] = draw(TEXT)
    event["principal"] = draw(TEXT)
    event["org_name"] = draw(TEXT)
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 3))):
            name = draw(st.sampled_from([*FIELDS, "peer_ip", "seq", "chain", "extra"]))
            action = draw(st.sampled_from(["drop", "json", "text"]))
            if action == "drop":
                event.pop(name, None)
            elif action == "json":
                event[name] = draw(JSON_VALUES)
            else:
                event[name] = draw(TEXT)
        if draw(st.booleans()):
            event["id"] = draw(st.sampled_from([
                str(uuid.uuid4()).upper(), "not-a-uuid", str(uuid.uuid4()), "",
                "00000000-0000-0000-0000-000000000000"]))
        if draw(st.booleans()):
            event["created"] = draw(st.sampled_from([
                "2026-02-30T01:07:10.123456Z", "2026-11-26T01:07:10Z",
                "2026-11-26 01:07:10.123456", "9999-12-31T23:59:59.999999Z", "0"]))
    if kind == "shuffled":
        items = list(event.items())
        event = dict(draw(st.permutations(items)))
    try:
        return orjson.dumps(event)
    except (TypeError, orjson.JSONEncodeError):  # e.g. an integer beyond 64 bits
        return b'{"unencodable": true}'


@dataclass
class Batch:
    payload: bytes
    #: ids of the events that are well-formed enough to be stored, if the batch is
    ids: list[str] = field(default_factory=list)


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    lines = draw(st.lists(event_lines(), max_size=12))
    seqs: Any = list(range(1, len(lines) + 1))
    source: Any = "fuzz:1:ab"
    header_kind = draw(st.sampled_from(["valid"] * 6 + ["seqs", "source", "json", "none"]))
    if header_kind == "seqs":
        seqs = draw(st.sampled_from([[], [0] * len(lines), [-1], [2**63] * len(lines),
                                     ["1"] * len(lines), None, list(range(len(lines) + 1))])
                    | JSON_VALUES)
    elif header_kind == "source":
        source = draw(TEXT | JSON_VALUES)
    header: bytes
    if header_kind == "json":
        header = orjson.dumps(draw(JSON_VALUES))
    elif header_kind == "none":
        header = b""
    else:
        try:
            header = orjson.dumps({"source": source, "seqs": seqs})
        except (TypeError, orjson.JSONEncodeError):
            header = b"{}"
    body = b"\n".join([header, *lines]) + b"\n"
    if draw(st.integers(0, 9)) == 0:
        body = body[:-1]  # no final newline
    batch_id = draw(st.integers(0, 2**32 - 1))
    ids = []
    for line in lines:
        try:
            record = orjson.loads(line)
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                ids.append(record["id"])
        except orjson.JSONDecodeError:
            pass
    return Batch(BATCH_ID.pack(batch_id) + body, ids)


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), kind) + payload


@st.composite
def hellos(draw: st.DrawFn, token: str | None) -> bytes:
    kind = draw(st.sampled_from(["valid"] * 8 + ["fuzzed", "json", "raw", "wrong_token"]))
    body: Any = {"versions": [1], "source": "fuzz:1:ab", "client": "fuzz"}
    if token is not None:
        body["token"] = token
    if kind == "fuzzed":
        body[draw(st.sampled_from(["versions", "source", "token", "client"]))] = \
            draw(JSON_VALUES | TEXT)
    elif kind == "json":
        body = draw(JSON_VALUES)
    elif kind == "wrong_token":
        body["token"] = draw(TEXT)
    if kind == "raw":
        return frame(FrameType.HELLO, draw(st.binary(max_size=100)))
    try:
        return frame(FrameType.HELLO, orjson.dumps(body))
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits
        return frame(FrameType.HELLO, b'{"versions": [1e999]}')


@dataclass
class Conversation:
    data: bytes
    frames: int
    batch_ids: list[list[str]]  # the event ids of each well-formed batch frame


@st.composite
def conversations(draw: st.DrawFn, token: str | None = None,
                  max_frame: int = 128 * 1024) -> Conversation:
    """A hello (mostly valid), then frames: mostly batches, some hostile."""
    parts = [draw(hellos(token))] if draw(st.integers(0, 19)) else []
    batch_ids: list[list[str]] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["batch"] * 8 + [
            "type", "hello", "short", "oversized", "raw", "empty", "long"]))
        if kind == "batch":
            b = draw(batches())
            parts.append(frame(FrameType.BATCH, b.payload))
            batch_ids.append(b.ids)
        elif kind == "type":
            parts.append(frame(draw(st.integers(0, 255)), draw(st.binary(max_size=64))))
        elif kind == "hello":
            parts.append(draw(hellos(token)))
        elif kind == "short":  # announces more than it sends: the connection then ends
            payload = draw(batches()).payload
            parts.append(HEADER.pack(len(payload) + draw(st.integers(1, 1000)),
                                     FrameType.BATCH) + payload)
            break
        elif kind == "oversized":
            parts.append(HEADER.pack(max_frame + draw(st.integers(1, 2**31)), FrameType.BATCH))
        elif kind == "raw":
            parts.append(draw(st.binary(min_size=1, max_size=300)))
        elif kind == "empty":
            parts.append(frame(FrameType.BATCH, b""))
        else:  # a batch of events just under and over the field cap
            lines = [orjson.dumps({**valid_event(), "target": "x" * n})
                     for n in (4096, 4097, 30_000)]
            parts.append(frame(FrameType.BATCH, BATCH_ID.pack(1) + orjson.dumps(
                {"source": "fuzz:1:ab", "seqs": [1, 2, 3]}) + b"\n" + b"\n".join(lines)
                + b"\n"))
            batch_ids.append([orjson.loads(line)["id"] for line in lines])
    return Conversation(b"".join(parts), len(parts), batch_ids)
