"""The wire protocol fuzzed with Hypothesis against a real collector process, on its unix
socket and on TCP with a token: whatever arrives, the collector answers with well-formed
frames, never acknowledges an id it was not sent, never crashes, never writes a
malformed record, and its memory stays bounded. (At least 100,000 frames in the full
run.)"""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_middleware.wire import HEADER_SIZE, FrameType, Result, WireError, parse_header
from tests.faults.fleet import (
    Collector,
    Stored,
    check_stored_records,
    memory_dir,
    report,
    scaled,
)
from tests.faults.wire_strategies import Conversation, conversations

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(scaled(300, 3600))]

FRAMES = scaled(3_000, 100_000)
ROUND = 250  # examples per Hypothesis run; runs repeat until FRAMES were sent
TOKEN = "fuzz-token-0123456789"
MEMORY_GROWTH_KIB = 128 * 1024


def talk(address: Any, family: int, data: bytes) -> tuple[list[tuple[FrameType, bytes]], bool]:
    """Send ``data``, close our side, read every reply frame until the server closes.
    Returns the frames and whether the connection was reset (a server that closes with
    our bytes unread resets it; frames in flight may then be lost)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(30)
    reset = False
    received = b""
    try:
        sock.connect(address)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            reset = True
        except OSError as exc:
            # The server's reset came in between sendall and shutdown: the socket is no
            # longer connected (ENOTCONN), the same reset said otherwise.
            if exc.errno != errno.ENOTCONN:
                raise
            reset = True
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                reset = True
                break
            if not chunk:
                break
            received += chunk
    finally:
        sock.close()
    frames = []
    while len(received) >= HEADER_SIZE:
        kind, length = parse_header(received[:HEADER_SIZE], 64 * 1024 * 1024)
        if len(received) < HEADER_SIZE + length:
            break
        frames.append((kind, received[HEADER_SIZE:HEADER_SIZE + length]))
        received = received[HEADER_SIZE + length:]
    assert not received or reset, f"the reply stream ends inside a frame: {received[:50]!r}"
    return frames, reset


def check_replies(conv: Conversation, frames: list[tuple[FrameType, bytes]],
                  acked: set[str]) -> None:
    sent = {i for ids in conv.batch_ids for i in ids}
    for n, (kind, payload) in enumerate(frames):
        assert kind in (FrameType.WELCOME, FrameType.RESULT, FrameType.ERROR), kind
        assert kind is not FrameType.WELCOME or n == 0, "a second welcome"
        if kind is FrameType.RESULT:
            result = Result.decode(payload)
            unknown = set(result.written + result.duplicates) - sent
            assert not unknown, f"acknowledged ids it was not sent: {unknown}"
            acked.update(result.written)
        elif kind is FrameType.ERROR:
            error = orjson.loads(payload)
            assert error["code"] != "storage_unavailable", error
            assert n == len(frames) - 1, "frames after a fatal error"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with memory_dir() as path:
        yield path / "data"


def test_fuzzed_frames_never_crash_the_collector_nor_reach_the_segments_malformed(
        data_dir: Path) -> None:
    collector = Collector(data_dir, "--max-frame", "128KiB", "--tcp", "127.0.0.1:0",
                          "--handshake-timeout", "2s", "--read-timeout", "2s",
                          env={"AUDIT_TOKEN": TOKEN}).start()
    match = re.search(r"tcp:127\.0\.0\.1:(\d+)", collector.ready_line)
    assert match, collector.ready_line
    endpoints = [(str(collector.socket), socket.AF_UNIX),
                 (("127.0.0.1", int(match[1])), socket.AF_INET)]
    start = collector.memory()
    state = {"frames": 0, "conversations": 0, "resets": 0, "peak_kib": start.rss_kib}
    acked: set[str] = set()

    @settings(max_examples=ROUND, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(conversations(token=TOKEN), st.sampled_from(endpoints))
    def converse(conv: Conversation, endpoint: tuple[Any, int]) -> None:
        frames, reset = talk(endpoint[0], endpoint[1], conv.data)
        state["frames"] += conv.frames
        state["conversations"] += 1
        state["resets"] += reset
        try:
            check_replies(conv, frames, acked)
        except WireError as exc:
            raise AssertionError(f"a reply frame does not parse: {exc}") from None
        assert collector.alive, "".join(collector.output[-30:])

    try:
        while state["frames"] < FRAMES:
            converse()
            state["peak_kib"] = max(state["peak_kib"], collector.memory().rss_kib)
    finally:
        alive = collector.alive
        code = collector.stop() if alive else None
    assert alive and code == 0, "".join(collector.output[-50:])
    counters = orjson.loads((data_dir / "ingest-stats.json").read_bytes())
    log = "".join(collector.output)
    assert counters.get("internal_errors", 0) == 0 and "Traceback" not in log, log[-5000:]

    stored = Stored.read(collector.data_dir)
    check_stored_records(collector.data_dir)
    missing = stored.missing(acked)
    report("wire protocol fuzzed (Hypothesis)", frames=state["frames"],
           connections=state["conversations"], resets=state["resets"],
           acknowledged=len(acked), stored=len(stored.in_segments), lost=len(missing),
           collector_rss_mib=f"{start.rss_kib // 1024}->{state['peak_kib'] // 1024} (peak)")
    assert missing == []
    stored.check_exactly_once()
    assert stored.unreadable_lines == 0
    assert state["peak_kib"] - start.rss_kib < MEMORY_GROWTH_KIB
