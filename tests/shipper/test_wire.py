"""The wire codec: frames, handshake, batches, results and errors round-trip; every
malformed input is a WireError with a code, never another exception."""

from __future__ import annotations

import struct

import orjson
import pytest

from audit_middleware.wire import (
    BATCH_ID,
    DEFAULT_MAX_FRAME,
    HEADER,
    MIN_MAX_FRAME,
    BatchBody,
    ErrorCode,
    ErrorReply,
    FrameType,
    Hello,
    Rejection,
    Result,
    Welcome,
    WireError,
    decode_batch,
    decode_batch_body,
    encode_batch,
    encode_batch_body,
    encode_frame,
    parse_header,
)


def split(frame: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> tuple[FrameType, bytes]:
    kind, length = parse_header(frame[:5], max_frame)
    payload = frame[5:]
    assert len(payload) == length
    return kind, payload


def test_frame_header_is_length_then_type() -> None:
    frame = encode_frame(FrameType.HELLO, b"abc")
    assert frame == b"\x00\x00\x00\x03\x01abc"
    assert split(frame) == (FrameType.HELLO, b"abc")


def test_hello_round_trips_with_and_without_token() -> None:
    for hello in (Hello("web-1:42:ab12"), Hello("web-1:42:ab12", token="s3cret")):
        kind, payload = split(hello.encode())
        assert kind is FrameType.HELLO
        assert Hello.decode(payload) == hello


def test_welcome_round_trips() -> None:
    welcome = Welcome(1, DEFAULT_MAX_FRAME, 300.0)
    kind, payload = split(welcome.encode())
    assert kind is FrameType.WELCOME
    assert Welcome.decode(payload) == welcome


def test_server_picks_the_highest_common_version() -> None:
    assert Hello("s", versions=(1, 7)).choose_version() == 1


def test_no_common_version_is_unsupported_version() -> None:
    with pytest.raises(WireError) as info:
        Hello("s", versions=(2, 3)).choose_version()
    assert info.value.code == ErrorCode.UNSUPPORTED_VERSION


def test_batch_round_trips_source_seqs_and_lines() -> None:
    lines = [orjson.dumps({"n": i}) + b"\n" for i in range(3)]
    body = encode_batch_body("app:1:ff", [5, 6, 9], lines)
    kind, payload = split(encode_batch(10, body))  # 10 is b"\n": ids are binary, not lines
    assert kind is FrameType.BATCH
    batch = decode_batch(payload)
    assert (batch.batch_id, batch.source, batch.seqs) == (10, "app:1:ff", [5, 6, 9])
    assert batch.lines == [line.rstrip(b"\n") for line in lines]
    assert decode_batch_body(body) == BatchBody("app:1:ff", [5, 6, 9], batch.lines, 0)
    assert batch.numbered == 0  # not said


def test_a_batch_says_how_far_its_source_has_numbered() -> None:
    lines = [orjson.dumps({"n": i}) + b"\n" for i in range(2)]
    body = encode_batch_body("app:1:ff", [5, 6], lines, numbered=40)
    assert body.startswith(b'{"source":"app:1:ff","seqs":[5,6],"numbered":40}\n')
    assert decode_batch(BATCH_ID.pack(1) + body).numbered == 40
    assert decode_batch_body(body).numbered == 40


@pytest.mark.parametrize("numbered", [5, -1, 2**63, "40", 40.0, True, None, [40]])
def test_a_numbered_below_the_batchs_own_numbers_or_not_an_int_is_refused(
        numbered: object) -> None:
    header = {"source": "s", "seqs": [6, 7], "numbered": numbered}
    with pytest.raises(WireError) as caught:
        decode_batch(batch_payload(header, b"{}", b"{}", b""))
    assert caught.value.code is ErrorCode.BAD_BATCH
    assert "'numbered' must be the highest sequence number" in str(caught.value)


def test_empty_batch_is_valid() -> None:
    batch = decode_batch(BATCH_ID.pack(1) + encode_batch_body("s", [], []))
    assert (batch.seqs, batch.lines) == ([], [])


def test_result_round_trips() -> None:
    result = Result(4, ["a", "b"], ["c"], [Rejection(3, 17, "d", "field 'v' must be 1")])
    kind, payload = split(result.encode())
    assert kind is FrameType.RESULT
    decoded = Result.decode(payload)
    assert decoded == result
    assert decoded.acknowledged == 3


def test_error_reply_round_trips_and_says_whether_the_connection_closes() -> None:
    fatal = ErrorReply(ErrorCode.UNAUTHORIZED, "wrong token")
    retry = ErrorReply(ErrorCode.STORAGE_UNAVAILABLE, "disk full", batch=3)
    for reply in (fatal, retry):
        kind, payload = split(reply.encode())
        assert kind is FrameType.ERROR
        assert ErrorReply.decode(payload) == reply
    assert fatal.fatal and not retry.fatal
    assert retry.exception().retryable and not fatal.exception().retryable
    assert orjson.loads(split(retry.encode())[1])["retryable"] is True


# -- malformed input -------------------------------------------------------------------------
@pytest.mark.parametrize(("header", "code"), [
    (HEADER.pack(3, 0), ErrorCode.BAD_FRAME),  # type 0
    (HEADER.pack(3, 99), ErrorCode.BAD_FRAME),  # unknown type
    (HEADER.pack(DEFAULT_MAX_FRAME + 1, FrameType.BATCH), ErrorCode.FRAME_TOO_LARGE),
    (HEADER.pack(2**32 - 1, FrameType.BATCH), ErrorCode.FRAME_TOO_LARGE),
    (b"\x00\x00", ErrorCode.BAD_FRAME),  # short header
])
def test_bad_frame_headers(header: bytes, code: ErrorCode) -> None:
    with pytest.raises(WireError) as info:
        parse_header(header, DEFAULT_MAX_FRAME)
    assert info.value.code == code


@pytest.mark.parametrize("payload", [
    b"", b"not json", b"[]", b"{}", b'{"versions": [], "source": "a"}',
    b'{"versions": [1], "source": ""}', b'{"versions": [1], "source": "has space"}',
    b'{"versions": ["1"], "source": "a"}', b'{"versions": [true], "source": "a"}',
    b'{"versions": [1], "source": "a", "token": 5}', b'{"versions": [1], "source": "'
    + b"a" * 200 + b'"}', b"\xff\xfe", b'{"versions": [1], "source": "a"',
])
def test_bad_hello_payloads(payload: bytes) -> None:
    with pytest.raises(WireError) as info:
        Hello.decode(payload)
    assert info.value.code == ErrorCode.BAD_HELLO


def batch_payload(header: object, *lines: bytes, batch_id: int = 1) -> bytes:
    head = header if isinstance(header, bytes) else orjson.dumps(header)
    return BATCH_ID.pack(batch_id) + head + b"\n" + b"".join(line + b"\n" for line in lines)


@pytest.mark.parametrize("payload", [
    b"", b"\x00\x00\x00", b"\x00\x00\x00\x01",  # too short
    BATCH_ID.pack(1) + b'{"source": "s", "seqs": []}',  # no final newline
    batch_payload(b"not json"),
    batch_payload([1, 2]),
    batch_payload({"seqs": [1]}, b"{}"),  # no source
    batch_payload({"source": "bad source", "seqs": [1]}, b"{}"),
    batch_payload({"source": "s"}, b"{}"),  # no seqs
    batch_payload({"source": "s", "seqs": [0]}, b"{}"),  # seqs start at 1
    batch_payload({"source": "s", "seqs": [2**63]}, b"{}"),
    batch_payload({"source": "s", "seqs": ["1"]}, b"{}"),
    batch_payload({"source": "s", "seqs": [1.5]}, b"{}"),
    batch_payload({"source": "s", "seqs": [1, 2]}, b"{}"),  # count mismatch
    batch_payload({"source": "s", "seqs": [1]}, b"{}", b"{}"),
])
def test_bad_batch_payloads(payload: bytes) -> None:
    with pytest.raises(WireError) as info:
        decode_batch(payload)
    assert info.value.code == ErrorCode.BAD_BATCH


def test_bad_event_lines_are_left_for_the_validator() -> None:
    batch = decode_batch(batch_payload({"source": "s", "seqs": [1, 2]}, b"garbage", b""))
    assert batch.lines == [b"garbage", b""]


@pytest.mark.parametrize("payload", [
    b"{}", b"[]", b'{"version": 2, "max_frame": 4194304}',
    b'{"version": 1, "max_frame": 10}', b'{"version": true, "max_frame": 4194304}',
    b'{"version": 1, "max_frame": 4194304, "idle_timeout": -1}',
])
def test_a_client_refuses_a_bad_welcome(payload: bytes) -> None:
    with pytest.raises(WireError):
        Welcome.decode(payload)


@pytest.mark.parametrize("payload", [
    b"{}", b'{"batch": 1, "written": [], "duplicates": []}',
    b'{"batch": 1, "written": [], "duplicates": [], "rejected": [{"index": 0}]}',
    b'{"batch": 1, "written": [], "duplicates": [], "rejected": [7]}', b"nope",
])
def test_a_client_refuses_a_bad_result(payload: bytes) -> None:
    with pytest.raises(WireError):
        Result.decode(payload)


def test_every_byte_string_is_handled_by_the_decoders() -> None:
    # A cheap fuzz: truncations and byte flips of valid frames never raise anything but
    # WireError (the server turns that into an error reply).
    valid = [
        Hello("src", token="t").encode()[5:],
        batch_payload({"source": "s", "seqs": [1, 2]}, b'{"a": 1}', b'{"b": 2}'),
    ]
    decoders = [Hello.decode, decode_batch]
    for payload, decode in zip(valid, decoders, strict=True):
        for cut in range(len(payload)):
            _decode_or_wire_error(decode, payload[:cut])
        for i in range(len(payload)):
            for byte in (0x00, 0x0A, 0x22, 0x7D, 0xFF):
                _decode_or_wire_error(decode, payload[:i] + bytes([byte]) + payload[i + 1:])


def _decode_or_wire_error(decode: object, payload: bytes) -> None:
    try:
        decode(payload)  # type: ignore[operator]
    except WireError:
        pass


def test_min_max_frame_fits_a_batch_of_one_capped_event() -> None:
    assert MIN_MAX_FRAME >= 64 * 1024
    assert struct.calcsize("!IB") == 5


def test_the_token_is_not_in_a_hellos_repr() -> None:
    """Error trackers record a failing frame's locals by their repr."""
    hello = Hello("web-1:42:ab", token="s3cret-token")
    assert "s3cret-token" not in repr(hello) and "web-1:42:ab" in repr(hello)
    assert b"s3cret-token" in hello.encode()  # still sent, of course
