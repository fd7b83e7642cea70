"""The collector wire protocol: framing, frame types and control messages.

This module is the contract between the two halves: the shipper (``audit_middleware.
shipper``) and the collector's ingest server both import it, and ``docs/protocol.md``
describes the same bytes for other implementations. It does no I/O.

A frame is a 5-byte header (payload length: 4 bytes big-endian, frame type: 1 byte) and
the payload. Control payloads are JSON objects; a batch payload is a 4-byte batch id, a
JSON header line and the events as JSON-lines, so a spooled batch body is replayed byte
for byte.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from .errors import AuditError

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final[tuple[int, ...]] = (1,)

HEADER: Final = struct.Struct("!IB")  # payload length, frame type
HEADER_SIZE: Final = HEADER.size
#: How a TLS client's first record (its ClientHello) begins: handshake, version 3.x.
_TLS_HANDSHAKE: Final = b"\x16\x03"
BATCH_ID: Final = struct.Struct("!I")

DEFAULT_MAX_FRAME: Final = 4 * 1024 * 1024
#: The smallest ``max_frame`` a server may announce (a batch of one capped event fits).
MIN_MAX_FRAME: Final = 64 * 1024
#: Frames before the handshake completes (and every control frame) stay below this.
MAX_CONTROL_FRAME: Final = 64 * 1024

#: A source id: who numbered a batch's events (one per shipper instance and process).
SOURCE_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,127}")
MAX_SEQ: Final = 2**63 - 1
MAX_BATCH_ID: Final = 2**32 - 1
#: Events in one batch frame. The collector keeps a parsed event, or the reason it was
#: rejected, for every line of a batch in flight: a cap on lines (not only on bytes)
#: keeps a frame of tiny lines from costing it a hundred times the frame's size.
MAX_BATCH_EVENTS: Final = 8192
_MAX_REASON = 512


class FrameType(enum.IntEnum):
    HELLO = 1  # client -> server, first frame
    WELCOME = 2  # server -> client, the handshake succeeded
    BATCH = 3  # client -> server
    RESULT = 4  # server -> client, one per batch, in batch order
    ERROR = 5  # server -> client


_FRAME_TYPES: Final = frozenset(int(t) for t in FrameType)


class ErrorCode(enum.StrEnum):
    # fatal: the server closes the connection after the error frame
    BAD_FRAME = "bad_frame"  # unknown frame type, zero-length control frame
    FRAME_TOO_LARGE = "frame_too_large"
    UNEXPECTED_FRAME = "unexpected_frame"  # e.g. a batch before the hello
    BAD_HELLO = "bad_hello"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNAUTHORIZED = "unauthorized"
    BAD_BATCH = "bad_batch"  # the batch framing (header line, line count) is malformed
    TIMEOUT = "timeout"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    SHUTTING_DOWN = "shutting_down"
    # not fatal: the batch named in the error was not stored; send it again later
    STORAGE_UNAVAILABLE = "storage_unavailable"


#: Errors a client should answer by retrying later (the data was fine).
RETRYABLE: Final = frozenset({
    ErrorCode.TIMEOUT, ErrorCode.TOO_MANY_CONNECTIONS, ErrorCode.SHUTTING_DOWN,
    ErrorCode.STORAGE_UNAVAILABLE,
})


class WireError(AuditError, ValueError):
    """Bytes that do not follow the protocol, or an error frame received from the peer.

    ``code`` is an :class:`ErrorCode` value; ``retryable`` says whether sending the same
    data again later can succeed."""

    def __init__(self, code: str, message: str, *, batch: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.batch = batch

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE


# -- frames --------------------------------------------------------------------------------
def encode_frame(kind: FrameType, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), kind) + payload


def parse_header(header: bytes, max_frame: int) -> tuple[FrameType, int]:
    """The type and payload length of a frame header, checked against ``max_frame``."""
    if len(header) != HEADER_SIZE:
        raise WireError(ErrorCode.BAD_FRAME, f"a frame header is {HEADER_SIZE} bytes, "
                        f"got {len(header)}")
    length, kind = HEADER.unpack(header)
    if header.startswith(_TLS_HANDSHAKE) and (kind not in _FRAME_TYPES or length > max_frame):
        # A client with tls=True on a port without TLS: "unknown frame type" sent its
        # operator to look at protocol versions.
        raise WireError(ErrorCode.BAD_FRAME, "a TLS handshake, not a frame: the client "
                        "speaks TLS to a port without it (turn tls off in the client, or "
                        "give the collector tls_cert and tls_key)")
    if kind not in _FRAME_TYPES:
        raise WireError(ErrorCode.BAD_FRAME, f"unknown frame type {kind}: this server speaks "
                        f"protocol version {PROTOCOL_VERSION} (see docs/protocol.md)")
    if length > max_frame:
        raise WireError(ErrorCode.FRAME_TOO_LARGE, f"frame of {length} bytes is over the "
                        f"limit of {max_frame} bytes: send smaller batches")
    return FrameType(kind), length


def _load_object(payload: bytes, what: str, code: ErrorCode) -> dict[str, Any]:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise WireError(code, f"{what} is not valid JSON ({exc})") from None
    if type(obj) is not dict:
        raise WireError(code, f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- handshake -------------------------------------------------------------------------------
def token_is_unclean(token: str) -> bool:
    """Whether the shared token has surrounding whitespace or a control character, which
    no token has: read with its file's newline (``open(...).read()``) on one side and
    stripped on the other (the collector's ``token_file`` is), the two never matched,
    and every connection was refused as unauthorized, which reads as a wrong token. Both
    sides refuse such a token when configured (``CollectorSink``, the collector's
    config)."""
    return token != token.strip() or any(c < " " or "\x7f" <= c <= "\x9f" for c in token)


@dataclass(frozen=True)
class Hello:
    source: str
    versions: tuple[int, ...] = SUPPORTED_VERSIONS
    # Out of the repr: an error tracker that records a frame's locals must not get it.
    token: str | None = field(default=None, repr=False)
    client: str = "audit-middleware"

    def encode(self) -> bytes:
        body: dict[str, Any] = {"versions": list(self.versions), "source": self.source,
                                "client": self.client}
        if self.token is not None:
            body["token"] = self.token
        return encode_frame(FrameType.HELLO, orjson.dumps(body))

    @classmethod
    def decode(cls, payload: bytes) -> Hello:
        obj = _load_object(payload, "hello", ErrorCode.BAD_HELLO)
        versions = obj.get("versions")
        if (type(versions) is not list or not versions
                or not all(type(v) is int for v in versions)):
            raise WireError(ErrorCode.BAD_HELLO, "hello needs 'versions': a non-empty list "
                            f"of protocol versions, got {_short(versions)}")
        source = obj.get("source")
        if type(source) is not str or not SOURCE_PATTERN.fullmatch(source):
            raise WireError(ErrorCode.BAD_HELLO, "hello needs 'source': 1-128 characters of "
                            f"letters, digits and ._:@+/-, got {_short(source)}")
        token = obj.get("token")
        if token is not None and type(token) is not str:
            raise WireError(ErrorCode.BAD_HELLO, "hello 'token' must be a string")
        client = obj.get("client", "")
        return cls(source, tuple(versions), token, client if type(client) is str else "")

    def choose_version(self) -> int:
        common = set(self.versions) & set(SUPPORTED_VERSIONS)
        if not common:
            raise WireError(ErrorCode.UNSUPPORTED_VERSION, f"protocol versions "
                            f"{list(self.versions)} are not supported; this collector speaks "
                            f"{list(SUPPORTED_VERSIONS)}: upgrade the older side")
        return max(common)


@dataclass(frozen=True)
class Welcome:
    version: int
    max_frame: int
    idle_timeout: float
    server: str = "audit-collector"

    def encode(self) -> bytes:
        return encode_frame(FrameType.WELCOME, orjson.dumps({
            "version": self.version, "max_frame": self.max_frame,
            "idle_timeout": self.idle_timeout, "server": self.server,
        }))

    @classmethod
    def decode(cls, payload: bytes) -> Welcome:
        obj = _load_object(payload, "welcome", ErrorCode.BAD_FRAME)
        version, max_frame = obj.get("version"), obj.get("max_frame")
        idle = obj.get("idle_timeout", 0)
        if version not in SUPPORTED_VERSIONS or type(version) is not int:
            raise WireError(ErrorCode.UNSUPPORTED_VERSION, f"the collector chose protocol "
                            f"version {_short(version)}, which this client does not speak")
        if type(max_frame) is not int or max_frame < MIN_MAX_FRAME:
            raise WireError(ErrorCode.BAD_FRAME, f"welcome 'max_frame' must be an int >= "
                            f"{MIN_MAX_FRAME}, got {_short(max_frame)}")
        if type(idle) not in (int, float) or idle < 0:
            raise WireError(ErrorCode.BAD_FRAME, "welcome 'idle_timeout' must be >= 0")
        server = obj.get("server", "")
        return cls(version, max_frame, float(idle), server if type(server) is str else "")


# -- batches ---------------------------------------------------------------------------------
def encode_batch_body(source: str, seqs: list[int], lines: list[bytes],
                      numbered: int = 0) -> bytes:
    """The replayable part of a batch: a header line naming the source and the sequence
    number of each event, then one ``\\n``-terminated JSON line per event. ``numbered``:
    the highest number the source had given out when the batch was made (0: not said)."""
    header: dict[str, Any] = {"source": source, "seqs": seqs}
    if numbered:
        header["numbered"] = numbered
    return orjson.dumps(header, option=orjson.OPT_APPEND_NEWLINE) + b"".join(lines)


def encode_batch(batch_id: int, body: bytes) -> bytes:
    return HEADER.pack(BATCH_ID.size + len(body), FrameType.BATCH) + BATCH_ID.pack(batch_id) \
        + body


@dataclass(frozen=True)
class BatchBody:
    source: str
    seqs: list[int]
    lines: list[bytes]  # one JSON object per event, without the trailing newline
    #: The highest sequence number the source had given out (0: the header did not say):
    #: numbers at or below it that never arrive are lost, even after the source's last
    #: batch (docs/protocol.md).
    numbered: int = 0


@dataclass(frozen=True)
class Batch(BatchBody):
    """A batch frame's payload: its body and the id its reply names it by."""

    batch_id: int = field(kw_only=True)


def decode_batch(payload: bytes) -> Batch:
    """Split a batch payload; the event lines are left for the validator."""
    if len(payload) < BATCH_ID.size + 1:
        raise WireError(ErrorCode.BAD_BATCH, "a batch payload is a 4-byte batch id, a header "
                        "line and event lines; this one is too short")
    (batch_id,) = BATCH_ID.unpack_from(payload)
    body = decode_batch_body(payload[BATCH_ID.size:], batch_id)
    return Batch(body.source, body.seqs, body.lines, body.numbered, batch_id=batch_id)


def decode_batch_body(body: bytes, batch_id: int | None = None) -> BatchBody:
    """The source, sequence numbers, event lines and ``numbered`` of a batch body."""
    if not body.endswith(b"\n"):
        raise WireError(ErrorCode.BAD_BATCH, "every line of a batch must end with '\\n'",
                        batch=batch_id)
    parts = body.split(b"\n")
    parts.pop()  # the empty string after the final newline
    header = _load_object(parts[0], "batch header line", ErrorCode.BAD_BATCH)
    source, seqs = header.get("source"), header.get("seqs")
    if type(source) is not str or not SOURCE_PATTERN.fullmatch(source):
        raise WireError(ErrorCode.BAD_BATCH, "batch header 'source' must be 1-128 characters "
                        f"of letters, digits and ._:@+/-, got {_short(source)}", batch=batch_id)
    if type(seqs) is not list or not all(type(s) is int for s in seqs) or (
            seqs and (min(seqs) < 1 or max(seqs) > MAX_SEQ)):
        raise WireError(ErrorCode.BAD_BATCH, "batch header 'seqs' must be a list of event "
                        "sequence numbers from 1 to 2**63-1", batch=batch_id)
    numbered = header.get("numbered", 0)
    if type(numbered) is not int or not 0 <= numbered <= MAX_SEQ or (
            numbered and seqs and numbered < max(seqs)):
        raise WireError(ErrorCode.BAD_BATCH, "batch header 'numbered' must be the highest "
                        "sequence number the source has given out (at least every number "
                        f"in 'seqs', at most 2**63-1), got {_short(numbered)}", batch=batch_id)
    lines = parts[1:]
    if len(lines) != len(seqs):
        raise WireError(ErrorCode.BAD_BATCH, f"batch header numbers {len(seqs)} events but "
                        f"the batch has {len(lines)} event lines", batch=batch_id)
    return BatchBody(source, seqs, lines, numbered)


@dataclass(frozen=True)
class Rejection:
    index: int  # position of the event in its batch
    seq: int
    id: str | None  # the event's id, when it had a readable one
    reason: str


@dataclass(frozen=True)
class Result:
    """The reply to one batch: ``written`` and ``duplicates`` are acknowledged (durably
    stored); each rejected event is named with its reason and must not be sent again."""

    batch_id: int
    written: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def acknowledged(self) -> int:
        return len(self.written) + len(self.duplicates)

    def encode(self) -> bytes:
        return encode_frame(FrameType.RESULT, orjson.dumps({
            "batch": self.batch_id, "written": self.written, "duplicates": self.duplicates,
            "rejected": [{"index": r.index, "seq": r.seq, "id": r.id,
                          "reason": r.reason[:_MAX_REASON]} for r in self.rejected],
        }))

    @classmethod
    def decode(cls, payload: bytes) -> Result:
        obj = _load_object(payload, "result", ErrorCode.BAD_FRAME)
        batch_id, written, dups = obj.get("batch"), obj.get("written"), obj.get("duplicates")
        rejected = obj.get("rejected")
        if (type(batch_id) is not int or type(written) is not list
                or type(dups) is not list or type(rejected) is not list):
            raise WireError(ErrorCode.BAD_FRAME, "result needs 'batch', 'written', "
                            "'duplicates' and 'rejected'")
        try:
            rejections = [Rejection(int(r["index"]), int(r["seq"]), r.get("id"),
                                    str(r["reason"])) for r in rejected]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise WireError(ErrorCode.BAD_FRAME, "result 'rejected' entries need 'index', "
                            "'seq' and 'reason'") from None
        return cls(batch_id, written, dups, rejections)


# -- errors ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorReply:
    code: str
    message: str
    batch: int | None = None  # set when the error concerns one batch only

    @property
    def fatal(self) -> bool:
        """The server closes the connection after a fatal error."""
        return self.code != ErrorCode.STORAGE_UNAVAILABLE

    def encode(self) -> bytes:
        return encode_frame(FrameType.ERROR, orjson.dumps({
            "code": str(self.code), "message": self.message, "batch": self.batch,
            "retryable": self.code in RETRYABLE, "fatal": self.fatal,
        }))

    @classmethod
    def decode(cls, payload: bytes) -> ErrorReply:
        obj = _load_object(payload, "error", ErrorCode.BAD_FRAME)
        code, message, batch = obj.get("code"), obj.get("message"), obj.get("batch")
        if type(code) is not str or type(message) is not str:
            raise WireError(ErrorCode.BAD_FRAME, "error needs 'code' and 'message' strings")
        return cls(code, message, batch if type(batch) is int else None)

    @classmethod
    def from_exception(cls, exc: WireError) -> ErrorReply:
        return cls(exc.code, exc.message, exc.batch)

    def exception(self) -> WireError:
        return WireError(self.code, f"collector: {self.message} [{self.code}]", batch=self.batch)
