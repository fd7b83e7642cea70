"""The ingest server on a real unix socket (and TCP), with the real Store in a temp dir:
handshake, acknowledgements, rejections, deduplication, and an error reply or a closed
connection for anything else a client can send, without ever taking the server down."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_middleware.wire import (
    BATCH_ID,
    HEADER,
    MAX_CONTROL_FRAME,
    ErrorCode,
    ErrorReply,
    FrameType,
    Hello,
    Result,
    encode_batch,
    encode_batch_body,
    encode_frame,
)
from collector.ingest import IngestError, IngestServer, IngestSettings
from collector.own_records import OWN_TYPES
from tests.e2e.harness import InProcessCollector, RawClient, open_store, short_tmp, wait_until

MAX_FRAME = 256 * 1024


def event(i: int = 0, **changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "v": 1, "id": f"0190c5a0-1234-7abc-8def-{i:012x}", "type": "credentials_created",
        "target": f"cred-{i}", "principal": "user-42", "status": "", "org_id": "o1",
        "org_name": "Acme", "workspace_id": "w1", "workspace_name": "Main",
        "client_ip": "203.0.113.7", "created": "2026-11-26T01:07:10.123456Z",
        "trace_id": "", "span_id": "",
    }
    record.update(changes)
    return record


def lines(*records: dict[str, Any]) -> list[bytes]:
    return [orjson.dumps(r) + b"\n" for r in records]


Server = InProcessCollector


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


@pytest.fixture
def store(tmp: Path) -> Iterator[Any]:
    store = open_store(tmp / "data")
    yield store
    store.close()


ServerFactory = Callable[..., Server]


@pytest.fixture
def make_server(tmp: Path, store: Any) -> Iterator[ServerFactory]:
    servers: list[Server] = []

    def make(store_: Any = None, **settings: Any) -> Server:
        options: dict[str, Any] = {"socket_path": tmp / "c.sock", "max_frame": MAX_FRAME}
        options.update(settings)
        server = Server(store_ if store_ is not None else store, IngestSettings(**options))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def server(make_server: ServerFactory) -> Server:
    return make_server()


@pytest.fixture
def client(server: Server, tmp: Path) -> Iterator[RawClient]:
    c = RawClient(tmp / "c.sock")
    yield c
    c.close()


def result(reply: tuple[FrameType, bytes]) -> Result:
    assert reply[0] is FrameType.RESULT, reply
    return Result.decode(reply[1])


# -- the happy path --------------------------------------------------------------------------
def test_the_handshake_announces_version_and_frame_limit(client: RawClient) -> None:
    welcome = client.hello()
    assert (welcome.version, welcome.max_frame) == (1, MAX_FRAME)


def test_a_batch_is_acknowledged_with_the_written_ids(client: RawClient) -> None:
    client.hello()
    reply = result(client.batch(7, lines(event(1), event(2))))
    assert reply.batch_id == 7
    assert reply.written == [event(1)["id"], event(2)["id"]]
    assert reply.duplicates == [] and reply.rejected == []


def test_a_replayed_batch_is_acknowledged_as_duplicates(client: RawClient) -> None:
    client.hello()
    result(client.batch(1, lines(event(1), event(2))))
    again = result(client.batch(2, lines(event(1), event(2), event(3))))
    assert again.written == [event(3)["id"]]
    assert sorted(again.duplicates) == sorted([event(1)["id"], event(2)["id"]])


def test_bad_events_are_rejected_with_reasons_and_the_good_ones_kept(client: RawClient) -> None:
    client.hello()
    batch = [*lines(event(1)), b"not json\n", *lines(event(2, v=2), event(3)),
             *lines(event(4, type="Bad Type"))]
    reply = result(client.batch(1, batch, seqs=[10, 11, 12, 13, 14]))
    assert reply.written == [event(1)["id"], event(3)["id"]]
    rejected = {(r.index, r.seq, r.id): r.reason for r in reply.rejected}
    assert set(rejected) == {(1, 11, None), (2, 12, event(2)["id"]), (4, 14, event(4)["id"])}
    assert "not valid JSON" in rejected[(1, 11, None)]
    assert "'v' must be 1" in rejected[(2, 12, event(2)["id"])]
    assert "'type'" in rejected[(4, 14, event(4)["id"])]


def test_the_collectors_own_records_cannot_be_sent_by_a_client(client: RawClient) -> None:
    """The reads of the audit log are the collector's records (``own_records``): an app
    could otherwise forge who read it, or pose as the collector's source."""
    client.hello()
    own = [event(2 + n, type=t) for n, t in enumerate(sorted(OWN_TYPES))]
    reply = result(client.batch(1, lines(event(1), *own)))
    assert reply.written == [event(1)["id"]]  # the canonical fast path refuses them too
    assert [(r.index, r.id) for r in reply.rejected] == [
        (n, e["id"]) for n, e in enumerate(own, start=1)]  # every own type, whatever their number
    assert all("the collector's own record" in r.reason for r in reply.rejected)
    # Each reason names what the type records: an acknowledged loss is not a read.
    reasons = {r.id: r.reason for r in reply.rejected}
    acked = next(e["id"] for e in own if e["type"] == "audit_loss_acknowledged")
    assert "reads of the audit log" not in reasons[acked], reasons[acked]
    client.send(encode_batch(2, encode_batch_body("Audit-Collector-API", [1],
                                                  lines(event(99)))))
    error = client.error()
    assert error.code == ErrorCode.BAD_BATCH and "kept for the collector" in error.message


def test_a_batch_of_only_bad_events_is_answered_without_touching_the_store(
        make_server: ServerFactory, tmp: Path) -> None:
    class NoStore:
        def submit_encoded(self, *args: Any) -> Any:
            raise AssertionError("nothing valid to store")

    make_server(NoStore())
    client = RawClient(tmp / "c.sock")
    client.hello()
    reply = result(client.batch(1, [b"[]\n"]))
    assert reply.acknowledged == 0 and len(reply.rejected) == 1


def test_many_batches_on_one_connection(client: RawClient) -> None:
    client.hello()
    for n in range(1, 21):
        reply = result(client.batch(n, lines(*(event(n * 100 + i) for i in range(50)))))
        assert (reply.batch_id, len(reply.written)) == (n, 50)


def test_concurrent_clients_are_all_acknowledged(server: Server, tmp: Path) -> None:
    written: list[str] = []

    def work(k: int) -> None:
        c = RawClient(tmp / "c.sock")
        c.hello()
        for b in range(5):
            reply = result(c.batch(b + 1, lines(*(event(k * 10_000 + b * 100 + i)
                                                  for i in range(40)))))
            written.extend(reply.written)
        c.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(written) == len(set(written)) == 8 * 5 * 40


def test_the_socket_is_private(server: Server, tmp: Path) -> None:
    mode = os.stat(tmp / "c.sock").st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


# -- storage failures ------------------------------------------------------------------------
def test_a_storage_failure_is_a_retryable_error_and_the_connection_stays(
        make_server: ServerFactory, store: Any, tmp: Path) -> None:
    class FailingOnce:
        failed = False

        def submit_encoded(self, encoded: Any, source: str = "",
                           source_seqs: Any = None, numbered: int = 0) -> Any:
            if not self.failed:
                self.failed = True
                future: Future[Any] = Future()
                future.set_exception(OSError(28, "No space left on device"))
                return future
            return store.submit_encoded(encoded, source, source_seqs, numbered)

    make_server(FailingOnce())
    client = RawClient(tmp / "c.sock")
    client.hello()
    kind, payload = client.batch(1, lines(event(1)))
    assert kind is FrameType.ERROR
    error = ErrorReply.decode(payload)
    assert (error.code, error.batch, error.fatal) == (ErrorCode.STORAGE_UNAVAILABLE, 1, False)
    assert error.exception().retryable
    assert "No space left" in error.message
    assert result(client.batch(2, lines(event(1)))).written == [event(1)["id"]]


# -- bad clients -----------------------------------------------------------------------------
def test_a_batch_before_the_hello_is_refused(client: RawClient) -> None:
    client.send(encode_batch(1, encode_batch_body("s", [1], lines(event(1)))))
    assert client.error().code == ErrorCode.UNEXPECTED_FRAME


def test_a_second_hello_is_refused(client: RawClient) -> None:
    client.hello()
    client.send(Hello("again").encode())
    assert client.error().code == ErrorCode.UNEXPECTED_FRAME


def test_an_unknown_frame_type_is_refused(client: RawClient) -> None:
    client.hello()
    client.send(HEADER.pack(2, 42) + b"{}")
    assert client.error().code == ErrorCode.BAD_FRAME


def test_a_frame_over_the_limit_is_refused_before_it_is_read(client: RawClient) -> None:
    client.hello()
    client.send(HEADER.pack(MAX_FRAME + 1, FrameType.BATCH))  # and no payload at all
    error = client.error()
    assert error.code == ErrorCode.FRAME_TOO_LARGE
    assert str(MAX_FRAME) in error.message


def test_before_the_handshake_only_small_frames_are_accepted(client: RawClient) -> None:
    client.send(HEADER.pack(MAX_CONTROL_FRAME + 1, FrameType.HELLO))
    assert client.error().code == ErrorCode.FRAME_TOO_LARGE


@pytest.mark.parametrize("payload", [b"", b"junk", b"{}", b'{"versions": [9], "source": "s"}'])
def test_a_bad_hello_is_refused(client: RawClient, payload: bytes) -> None:
    client.send(encode_frame(FrameType.HELLO, payload))
    assert client.error().code in (ErrorCode.BAD_HELLO, ErrorCode.UNSUPPORTED_VERSION)


def test_a_malformed_batch_is_refused(client: RawClient) -> None:
    client.hello()
    client.send(encode_frame(FrameType.BATCH, BATCH_ID.pack(3) + b'{"source": "s"}\n'))
    error = client.error()
    assert (error.code, error.batch) == (ErrorCode.BAD_BATCH, 3)


def test_a_connection_closed_mid_frame_does_not_disturb_the_server(
        server: Server, tmp: Path) -> None:
    c = RawClient(tmp / "c.sock")
    c.hello()
    c.send(HEADER.pack(1000, FrameType.BATCH) + b"only part of it")
    c.close()
    fresh = RawClient(tmp / "c.sock")
    fresh.hello()
    assert result(fresh.batch(1, lines(event(1)))).written == [event(1)["id"]]


def test_random_bytes_from_many_clients_never_take_the_server_down(
        server: Server, tmp: Path) -> None:
    rng = random.Random(1234)
    valid_hello = Hello("fuzz").encode()
    for i in range(60):
        c = RawClient(tmp / "c.sock")
        if i % 2:
            c.send(valid_hello)
        c.send(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
        c.sock.shutdown(socket.SHUT_WR)
        while c.frame() is not None:
            pass
        c.close()
    fresh = RawClient(tmp / "c.sock")
    fresh.hello()
    assert result(fresh.batch(1, lines(event(1)))).written == [event(1)["id"]]
    assert server.server.stats().get("internal_errors", 0) == 0


def test_a_silent_client_times_out_in_the_handshake(make_server: ServerFactory,
                                                    tmp: Path) -> None:
    make_server(handshake_timeout=0.2)
    c = RawClient(tmp / "c.sock")
    assert c.error().code == ErrorCode.TIMEOUT


def test_an_idle_connection_is_closed(make_server: ServerFactory, tmp: Path) -> None:
    make_server(idle_timeout=0.2)
    c = RawClient(tmp / "c.sock")
    c.hello()
    assert c.error().code == ErrorCode.TIMEOUT


def test_a_stalled_frame_times_out(make_server: ServerFactory, tmp: Path) -> None:
    make_server(read_timeout=0.2)
    c = RawClient(tmp / "c.sock")
    c.hello()
    c.send(HEADER.pack(100, FrameType.BATCH) + b"x")  # a frame started, then nothing
    assert c.error().code == ErrorCode.TIMEOUT


# -- the frame budget (max_inflight_bytes) ----------------------------------------------------
def test_every_batch_frame_gives_its_budget_back_however_it_ends(
        make_server: ServerFactory, tmp: Path) -> None:
    server = make_server(read_timeout=0.3)
    stored = RawClient(tmp / "c.sock")
    stored.hello()
    assert result(stored.batch(1, lines(event(1)))).written == [event(1)["id"]]
    malformed = RawClient(tmp / "c.sock")
    malformed.hello()
    malformed.send(encode_frame(FrameType.BATCH, BATCH_ID.pack(3) + b'{"source": "s"}\n'))
    assert malformed.error().code == ErrorCode.BAD_BATCH
    stalled = RawClient(tmp / "c.sock")
    stalled.hello()
    stalled.send(HEADER.pack(1000, FrameType.BATCH) + b"x")
    assert stalled.error().code == ErrorCode.TIMEOUT
    cut = RawClient(tmp / "c.sock")
    cut.hello()
    cut.send(HEADER.pack(1000, FrameType.BATCH) + b"only part of it")
    cut.close()
    wait_until(lambda: server.stats()["inflight_bytes"] == 0, 10, "every frame's bytes back")
    assert server.stats()["inflight_peak_bytes"] >= 1000


def test_a_frame_that_finds_no_room_waits_unread_then_times_out_saying_why(
        make_server: ServerFactory, tmp: Path) -> None:
    """The budget held whole (as by other clients' frames): a batch waits, its payload
    unread, until its read deadline, and is told why; once there is room it goes in."""
    server = make_server(max_inflight_bytes=MAX_FRAME, read_timeout=0.3)
    held = server.call(server.server.budget.take(MAX_FRAME))
    c = RawClient(tmp / "c.sock")
    c.hello()
    c.send(encode_frame(FrameType.BATCH, BATCH_ID.pack(1) + b'{"source": "s", "seqs": [1]}\n'
                        + lines(event(1))[0]))
    error = c.error()
    assert error.code == ErrorCode.TIMEOUT and "waited" in error.message
    assert "max_inflight_bytes" in error.message
    stats = server.stats()
    assert (stats["inflight_waits"], stats["inflight_wait_timeouts"]) == (1, 1)
    server.loop.call_soon_threadsafe(held.release)
    fresh = RawClient(tmp / "c.sock")
    fresh.hello()
    assert result(fresh.batch(2, lines(event(2)))).written == [event(2)["id"]]


def test_a_budget_smaller_than_one_frame_is_refused(store: Any, tmp: Path) -> None:
    with pytest.raises(IngestError, match="max_inflight_bytes .* is below max_frame"):
        IngestServer(store, IngestSettings(tmp / "c.sock", max_frame=MAX_FRAME,
                                           max_inflight_bytes=MAX_FRAME - 1))


def test_connections_beyond_the_limit_are_refused(make_server: ServerFactory,
                                                  tmp: Path) -> None:
    server = make_server(max_connections=2)
    first, second = RawClient(tmp / "c.sock"), RawClient(tmp / "c.sock")
    first.hello()
    second.hello()
    third = RawClient(tmp / "c.sock")
    error = third.error()
    assert error.code == ErrorCode.TOO_MANY_CONNECTIONS and error.exception().retryable
    first.close()
    second.close()
    _wait(lambda: server.server.stats()["connections_open"] == 0)
    RawClient(tmp / "c.sock").hello()


def _wait(condition: Callable[[], bool]) -> None:
    wait_until(condition, 10)


# -- TCP -------------------------------------------------------------------------------------
def test_tcp_requires_the_token(make_server: ServerFactory) -> None:
    server = make_server(socket_path=None, tcp_host="127.0.0.1", tcp_port=0, token="s3cret")
    address = ("127.0.0.1", server.server.tcp_port())
    good = RawClient(tcp=address)
    good.hello(token="s3cret")
    assert result(good.batch(1, lines(event(1)))).written == [event(1)["id"]]
    for token in ("wrong", None, "s3cret "):
        bad = RawClient(tcp=address)
        bad.send(Hello("x", token=token).encode())
        assert bad.error().code == ErrorCode.UNAUTHORIZED


def test_an_address_family_the_kernel_lacks_is_skipped_as_asyncio_skipped_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a kernel without IPv6 (ipv6.disable=1), socket(AF_INET6) fails with
    EAFNOSUPPORT. asyncio's server skipped such an address and listened on the others;
    the ingest port's own binding refused to start at all on "" (every interface: 0.0.0.0
    and ::) or on a "localhost" that /etc/hosts also gives as ::1."""
    from collector import accepting

    real = socket.socket

    def without_ipv6(family: int = -1, *args: Any, **kwargs: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(accepting.socket, "socket", without_ipv6)
        listeners = accepting.bind_tcp("", 0)
    try:
        assert [sock.family for sock in listeners] == [socket.AF_INET]
        with socket.create_connection(("127.0.0.1", listeners[0].getsockname()[1]),
                                      timeout=5):
            pass  # listening
    finally:
        for sock in listeners:
            sock.close()


def test_a_tcp_listener_without_a_token_does_not_start(store: Any) -> None:
    with pytest.raises(IngestError, match="token"):
        IngestServer(store, IngestSettings(socket_path=None, tcp_host="127.0.0.1"))


def test_tcp_beyond_loopback_needs_tls(store: Any) -> None:
    with pytest.raises(IngestError, match="TLS certificate"):
        IngestServer(store, IngestSettings(socket_path=None, tcp_host="0.0.0.0", token="t"))


def test_unix_clients_need_no_token(make_server: ServerFactory, tmp: Path) -> None:
    make_server(token="s3cret")
    RawClient(tmp / "c.sock").hello()


# -- the socket file -------------------------------------------------------------------------
def test_a_stale_socket_file_is_replaced(make_server: ServerFactory, tmp: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp / "c.sock"))
    stale.close()  # the file stays, nobody listens: what a killed collector leaves
    make_server()
    RawClient(tmp / "c.sock").hello()


def test_a_live_socket_is_not_stolen(server: Server, store: Any, tmp: Path) -> None:
    with pytest.raises(IngestError, match="already listening"):
        Server(store, IngestSettings(socket_path=tmp / "c.sock"))


def test_a_regular_file_in_the_way_is_an_error(store: Any, tmp: Path) -> None:
    (tmp / "c.sock").write_text("not a socket")
    with pytest.raises(IngestError, match="not a socket"):
        Server(store, IngestSettings(socket_path=tmp / "c.sock"))
    assert (tmp / "c.sock").read_text() == "not a socket"


def test_a_socket_path_too_long_is_a_clear_error(store: Any, tmp: Path) -> None:
    with pytest.raises(IngestError, match="keep it under 104"):
        Server(store, IngestSettings(socket_path=tmp / ("x" * 120)))


def test_an_id_twice_in_one_batch_is_stored_once(client: RawClient) -> None:
    client.hello()
    reply = result(client.batch(1, lines(event(1), event(1), event(2))))
    assert reply.written == [event(1)["id"], event(2)["id"]]
    assert reply.duplicates == [event(1)["id"]]


def test_the_connection_limit_follows_the_file_limit_unless_set(
        make_server: ServerFactory, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """max_connections was 256 whatever the process's file limit; its default is now a
    quarter of it (``accepting.default_max_connections``, the query API's), read when a
    connection comes: prlimit or systemd may change it under a running collector."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    monkeypatch.setattr(resource, "getrlimit", lambda which: (64, hard))  # a limit of 16
    server = make_server()
    clients: list[RawClient] = []

    def connect() -> RawClient:
        clients.append(RawClient(tmp / "c.sock"))
        return clients[-1]

    try:
        for _ in range(16):
            connect().hello()
        assert connect().error().code == ErrorCode.TOO_MANY_CONNECTIONS
        assert server.stats()["max_connections"] == 16
        monkeypatch.setattr(resource, "getrlimit", lambda which: (128, hard))  # 32 now
        connect().hello()
        assert server.stats()["max_connections"] == 32
    finally:
        for c in clients:
            c.close()


def test_a_refusal_is_published_with_its_reason(make_server: ServerFactory,
                                                tmp: Path) -> None:
    """A connection refused at once (at max_connections, or while stopping) was counted
    in connections_refused only, not by its error code: an operator could not tell a
    full collector from a stopping one. Each reason now has its counter and metric."""
    from collector.metrics import Metrics

    server = make_server(max_connections=1)
    first = RawClient(tmp / "c.sock")
    first.hello()
    second = RawClient(tmp / "c.sock")  # once the first has said hello: not evicted
    try:
        assert second.error().code == ErrorCode.TOO_MANY_CONNECTIONS
    finally:
        first.close()
        second.close()
    metrics = Metrics()
    metrics.add("ingest", server.stats)
    text = metrics.prometheus()
    assert "audit_collector_ingest_connections_refused_total 1\n" in text
    assert ("audit_collector_ingest_connections_refused_too_many_connections_total 1\n"
            in text)
    assert "audit_collector_ingest_connections_refused_shutting_down_total 0\n" in text


def test_making_room_a_silent_connection_goes_before_one_in_the_middle_of_its_hello(
        make_server: ServerFactory, tmp: Path) -> None:
    """At max_connections the oldest connection without its hello was closed, even one
    whose client was sending its hello, while a newer one that had sent nothing stayed
    (as the TLS handshakes were, before ``accepting.least_worth``). Now one that has
    sent nothing is closed first."""
    server = make_server(max_connections=2)
    hello = Hello("test:1:ab").encode()
    speaking, silent = RawClient(tmp / "c.sock"), None
    try:
        speaking.send(hello[:-1])  # all but its last byte
        _wait(speaking.all_read)
        silent = RawClient(tmp / "c.sock")
        _wait(lambda: server.stats()["connections_open"] == 2)
        RawClient(tmp / "c.sock").hello()  # at the limit: room made for it
        assert silent.error().code == ErrorCode.TOO_MANY_CONNECTIONS
        speaking.send(hello[-1:])
        reply = speaking.frame()
        assert reply is not None and reply[0] is FrameType.WELCOME, reply
    finally:
        speaking.close()
        if silent is not None:
            silent.close()
    assert server.stats()["connections_evicted"] == 1


def test_a_second_shutdown_waits_for_the_first_to_end(server: Server, client: RawClient) -> None:
    # serve calls shutdown twice when its stop's gather raised (the forwarder's stop):
    # the second call returned at once while the first still drained a batch, and the
    # store was then closed under it.
    client.hello()
    client.send(encode_batch(1, encode_batch_body("test:1:ab", [1], lines(event(1))))[:-3])
    wait_until(client.all_read, message="the half-sent batch read by the server")

    async def twice() -> tuple[bool, bool]:
        first = asyncio.ensure_future(server.server.shutdown(drain_timeout=1.0))
        await asyncio.sleep(0)  # the first call under way, draining the connection
        await server.server.shutdown(drain_timeout=1.0)
        done_after_second = first.done()
        await first
        return done_after_second, first.done()

    assert server.call(twice()) == (True, True)
