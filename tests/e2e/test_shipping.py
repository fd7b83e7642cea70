"""End to end: apps shipping to the collector running as a real subprocess
(``python -m collector serve``) on a real socket. Delivery is at-least-once and the
index exactly-once, through collector outages, restarts under load, kill -9, forks and
hostile clients."""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from audit_middleware import AuditMiddleware, audited, configure, emit
from audit_middleware.shipper import CollectorSink
from audit_middleware.testing import reset_configuration
from audit_middleware.wire import (
    HEADER,
    ErrorCode,
    FrameType,
    Hello,
    Result,
)
from tests.e2e.harness import (
    ROOT,
    CollectorProcess,
    RawClient,
    open_store,
    run_python,
    stored_events,
    wait_until,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def collector(root: Path) -> Iterator[CollectorProcess]:
    process = CollectorProcess(root / "data")
    yield process
    process.kill()


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    reset_configuration()


def shipping_sink(collector: CollectorProcess, root: Path, **options: Any) -> CollectorSink:
    options.setdefault("backoff_max", 0.2)
    sink = CollectorSink(collector.url, spool_dir=root / "spool", **options)
    configure(sink=sink)
    return sink


def stored_ids(collector: CollectorProcess) -> list[str]:
    return [e["id"] for e in stored_events(collector.data_dir)]


def test_app_to_collector_end_to_end(root: Path, collector: CollectorProcess) -> None:
    @audited("credentials_created", target=lambda call: call.result_value("id"))
    async def create(request: Request) -> JSONResponse:
        return JSONResponse({"id": "cred-9"}, status_code=201)

    @audited("run_relaunched", target="run_id", status="relaunched")
    def relaunch(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = AuditMiddleware(Starlette(routes=[
        Route("/credentials", create, methods=["POST"]),
        Route("/runs/{run_id}/relaunch", relaunch, methods=["POST"]),
    ]), principal=lambda ctx: "user-7")
    collector.start()
    sink = shipping_sink(collector, root)
    with TestClient(app) as client:
        assert client.post("/credentials").status_code == 201
        assert client.post("/runs/run-1/relaunch").status_code == 200
    emit("run_dropped", "run-1")
    assert sink.flush(timeout=10)
    assert collector.stop() == 0
    records = stored_events(collector.data_dir)
    assert [(r["type"], r["target"], r["principal"], r["status"]) for r in records] == [
        ("credentials_created", "cred-9", "user-7", ""),
        ("run_relaunched", "run-1", "user-7", "relaunched"),
        ("run_dropped", "run-1", "system", ""),
    ]
    assert records[0]["client_ip"] == "testclient" and records[2]["client_ip"] == ""
    sink.close()


def test_collector_down_then_up_every_event_exactly_once(root: Path,
                                                         collector: CollectorProcess) -> None:
    sink = shipping_sink(collector, root)
    ids = [emit("team_created", f"down-{i}").id for i in range(3000)]
    assert sink.flush(timeout=10)
    assert sink.stats()["spooled"] == 3000
    collector.start()
    ids += [emit("team_created", f"up-{i}").id for i in range(1000)]
    assert sink.wait_for_delivery(timeout=30)
    assert collector.stop() == 0
    assert stored_ids(collector) == ids
    stats = sink.stats()
    assert (stats["acknowledged"], stats["dropped"]) == (4000, 0)
    # The later events were spooled too if the replay was still running: either way,
    # everything spooled was replayed.
    assert stats["replayed"] == stats["spooled"] >= 3000
    sink.close()


def test_restart_and_kill_9_under_load_lose_nothing_and_duplicate_nothing(
        root: Path, collector: CollectorProcess) -> None:
    collector.start()
    sink = shipping_sink(collector, root, max_queue=1_000_000, batch_size=500)
    stop = threading.Event()
    emitted: list[list[str]] = [[] for _ in range(4)]

    def load(n: int) -> None:
        # At most ~20,000 events/s in all: load the collector can keep up with once
        # back. Unthrottled (50 events a millisecond a thread), the app outran the
        # collector for good, the spool grew behind it to its 256 MiB cap, and the
        # drops (counted: the product's answer to overload) failed 1 run in 2 on a
        # slow day: a test of overload, not of restarts.
        while not stop.is_set():
            emitted[n].extend(emit("run_status_changed", f"r{n}").id for _ in range(50))
            stop.wait(0.01)

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()

    def more_acknowledged(n: int) -> None:
        target = sink.stats()["acknowledged"] + n
        wait_until(lambda: sink.stats()["acknowledged"] >= target,
                   message=f"{n} more events acknowledged")

    try:
        more_acknowledged(2000)
        assert collector.stop() == 0  # graceful: batches in flight are answered first
        collector.start()
        more_acknowledged(2000)
        collector.kill()  # kill -9: whatever was not acknowledged is sent again
        collector.start()
        more_acknowledged(2000)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert sink.wait_for_delivery(timeout=60)
    assert collector.stop() == 0
    ids = stored_ids(collector)
    all_emitted = {i for ids_ in emitted for i in ids_}
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert set(ids) == all_emitted
    stats = sink.stats()
    assert stats["dropped"] == 0
    # The outages were met under load (~30,000 spooled a run), not between batches.
    assert stats["replayed"] == stats["spooled"] > 0 and stats["retried"] > 0, stats
    sink.close()


def test_a_replayed_batch_is_deduplicated(root: Path, collector: CollectorProcess) -> None:
    collector.start()
    lines = [orjson.dumps({
        "v": 1, "id": f"0190c5a0-0000-7000-8000-{i:012x}", "type": "team_created",
        "target": f"t{i}", "principal": "system", "status": "", "org_id": "",
        "org_name": "", "workspace_id": "", "workspace_name": "", "client_ip": "",
        "created": "2026-11-26T01:07:10.123456Z", "trace_id": "", "span_id": "",
    }) + b"\n" for i in range(10)]
    results = []
    for attempt in range(2):  # the same batch on two connections, as after a lost ack
        conn = RawClient(collector.socket)
        conn.hello()
        kind, payload = conn.batch(attempt + 1, lines)
        assert kind is FrameType.RESULT
        results.append(Result.decode(payload))
        conn.close()
    assert len(results[0].written) == 10 and results[0].duplicates == []
    assert results[1].written == [] and len(results[1].duplicates) == 10
    assert collector.stop() == 0
    assert len(stored_ids(collector)) == 10


def _emit_in_a_child(prefix: str, n: int) -> None:
    for i in range(n):
        emit("run_completed", f"{prefix}-{i}")


@pytest.mark.parametrize("how", ["Process", "Pool"])
def test_a_multiprocessing_childs_events_arrive(root: Path, collector: CollectorProcess,
                                                how: str) -> None:
    """A multiprocessing child ends with os._exit, which skips atexit: its queue is
    sent by multiprocessing's own exit finalizers instead (it was lost, uncounted)."""
    collector.start()
    sink = shipping_sink(collector, root, max_delay=60.0, batch_size=10_000)
    context = multiprocessing.get_context("fork")
    if how == "Process":
        child = context.Process(target=_emit_in_a_child, args=("child", 9))
        child.start()
        child.join(30)
        assert child.exitcode == 0
    else:
        # Closed and joined, so the workers end on their own; the with-block's
        # terminate() would SIGTERM them, losing their queues as any kill does.
        pool = context.Pool(2)
        pool.starmap(_emit_in_a_child, [("pool-a", 5), ("pool-b", 4)])
        pool.close()
        pool.join()
    expected = ({f"child-{i}" for i in range(9)} if how == "Process" else
                {f"pool-a-{i}" for i in range(5)} | {f"pool-b-{i}" for i in range(4)})
    assert collector.stop() == 0
    assert {e["target"] for e in stored_events(collector.data_dir)} == expected
    sink.close()


def test_a_forked_worker_never_resends_its_parents_buffer(root: Path,
                                                           collector: CollectorProcess) -> None:
    collector.start()
    sink = shipping_sink(collector, root, max_delay=60.0, batch_size=10_000)
    parent_ids = [emit("team_created", f"parent-{i}").id for i in range(100)]  # queued only
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: emits its own events, then exits like a gunicorn worker
        try:
            os.close(read_end)
            child_ids = [emit("team_created", f"child-{i}").id for i in range(50)]
            ok = sink.wait_for_delivery(timeout=20)
            stats = sink.stats()
            os.write(write_end, orjson.dumps({"ok": ok, "ids": child_ids, "stats": stats,
                                              "source": sink.source}))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = orjson.loads(pipe.read())
    os.waitpid(pid, 0)
    assert child["ok"]
    assert (child["stats"]["emitted"], child["stats"]["acknowledged"]) == (50, 50)
    assert child["source"] != sink.source
    assert sink.wait_for_delivery(timeout=20)
    assert collector.stop() == 0
    ids = stored_ids(collector)
    assert sorted(ids) == sorted(parent_ids + child["ids"])  # each once: nothing re-sent
    sink.close()


#: A uWSGI master in miniature: the app (and its sink) made before the fork, then workers
#: forked by libc's fork() as uWSGI forks them, so that Python's at-fork hooks do not run
#: (``PyDLL``: the GIL stays held across the call, as it is in the forking thread).
_FORK_WITHOUT_HOOKS = """
import ctypes, os, sys, types
sys.modules["uwsgi"] = types.SimpleNamespace(opt={})  # no py-call-osafterfork
from audit_middleware import configure, emit
from audit_middleware.shipper import CollectorSink
url, spool, parent_emits = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
sink = CollectorSink(url, spool_dir=spool, backoff_max=0.2)
configure(sink=sink)
if parent_emits:  # the master's worker thread runs: a worker has none of it
    for i in range(5):
        emit("team_created", f"parent-{i}")
    assert sink.flush(10)
children = []
for k in range(2):
    pid = ctypes.PyDLL(None).fork()
    if pid == 0:
        code = 1
        try:
            for i in range(20):
                emit("team_created", f"child{k}-{i}")
            sink.close(5)
            code = 0 if sink.stats()["emitted"] == 20 else 2
        finally:
            os._exit(code)
    children.append(pid)
print([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children])
sink.close(5)
"""


@pytest.mark.parametrize("parent_emits", [False, True])
def test_workers_forked_without_the_at_fork_hook_ship_as_sources_of_their_own(
        root: Path, collector: CollectorProcess, parent_emits: bool) -> None:
    """uWSGI forks its workers after loading the app, in C, without the at-fork hook
    (unless py-call-osafterfork). Every worker then numbered its events as the master's
    source, 1, 2, 3 ... each, hiding one another's gaps; with the master's worker
    thread started (an event at import, spool files adopted), no worker sent anything:
    its events waited for a thread it did not have, and were lost at exit."""
    collector.start()
    done = run_python(_FORK_WITHOUT_HOOKS, collector.url, str(root / "spool"),
                      "1" if parent_emits else "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 0]", done.stderr
    assert collector.stop() == 0
    events = stored_events(collector.data_dir)
    expected = {f"child{k}-{i}" for k in range(2) for i in range(20)}
    if parent_emits:
        expected |= {f"parent-{i}" for i in range(5)}
    assert sorted(e["target"] for e in events) == sorted(expected)  # each once
    sources = {prefix: {e["source"] for e in events if e["target"].startswith(prefix)}
               for prefix in ("child0-", "child1-", "parent-")}
    assert len(sources["child0-"]) == len(sources["child1-"]) == 1
    assert len(sources["child0-"] | sources["child1-"] | sources["parent-"]) == (
        3 if parent_emits else 2)
    for prefix in ("child0-", "child1-"):
        assert sorted(e["source_seq"] for e in events
                      if e["target"].startswith(prefix)) == list(range(1, 21))


def test_many_threads_emitting_exact_total(root: Path, collector: CollectorProcess) -> None:
    collector.start()
    sink = shipping_sink(collector, root, max_queue=100_000)
    threads = [threading.Thread(target=lambda n=n: [emit("user_updated", f"u{n}-{i}")
                                                    for i in range(2500)]) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sink.flush(timeout=30)
    assert collector.stop() == 0
    ids = stored_ids(collector)
    assert len(ids) == len(set(ids)) == 20_000
    assert sink.stats()["acknowledged"] == 20_000
    sink.close()


def test_events_lost_by_the_app_show_as_a_gap_at_the_collector(
        root: Path, collector: CollectorProcess) -> None:
    collector.start()
    sink = shipping_sink(collector, root, spool_max_bytes=100)  # no room for any batch
    for i in range(5):
        emit("team_created", f"before-{i}")  # numbered 1-5, delivered
    assert sink.flush(timeout=10)
    assert collector.stop() == 0
    for i in range(10):
        emit("team_created", f"lost-{i}")  # 6-15: collector down, spool full: dropped
    assert sink.flush(timeout=10)
    assert sink.stats()["dropped"] == 10
    collector.start()
    for i in range(5):
        emit("team_created", f"after-{i}")  # 16-20
    # Everything still held is delivered; False all the same: 10 were dropped since the
    # sink was made.
    assert sink.wait_for_delivery(timeout=20) is False
    assert sink.stats()["acknowledged"] == 10 and sink.stats()["queued"] == 0
    assert collector.stop() == 0
    sink.close()
    store = open_store(collector.data_dir)
    try:
        report = store.stats()["sources"][sink.source]
        assert report.pop("last_seen") is not None
        assert report == {"received": 10, "ranges": [[1, 5], [16, 20]], "gaps": [[6, 15]],
                          "folded_gap_events": 0, "numbered": 20, "unreceived_tail": [],
                          "acknowledged_through": 0}
        assert (store.stats()["gap_events"], store.stats()["unreceived_tail_events"]) == (10, 0)
    finally:
        store.close()


APP_KILLED_AFTER_DROPS = """
import os, signal, sys
from audit_middleware import configure, emit, stats
from audit_middleware.shipper import CollectorSink
sink = CollectorSink(sys.argv[1], spool_dir=None, max_queue=200, batch_size=1000,
                     max_delay=60.0)
configure(sink=sink)
for i in range(250):  # 1-200 queued; 201-250 find the queue full: dropped (numbered)
    emit("user_sign_in", f"u{i}", principal=f"u{i}", status="password")
assert sink.flush(timeout=20)  # one batch of 1-200, made after every emit: numbered 250
print(sink.source, stats()["dropped"], flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # gone: only the collector can tell the loss now
"""


def test_the_last_events_of_an_app_that_is_gone_show_as_its_unreceived_tail(
        root: Path, collector: CollectorProcess) -> None:
    """Events lost at the end (here dropped by a full queue, then the app killed) have
    no later event to make a gap; the batch header's ``numbered`` shows them."""
    collector.start()
    app = subprocess.run([sys.executable, "-c", APP_KILLED_AFTER_DROPS, collector.url],
                         check=False, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert app.returncode == -9, app.stderr
    source, dropped = app.stdout.split()
    assert dropped == "50"
    assert collector.stop() == 0
    collector.start()  # what the batch said survives a restart
    assert collector.stop() == 0
    store = open_store(collector.data_dir)
    try:
        report = store.stats()["sources"][source]
        assert report.pop("last_seen") is not None  # a source gone since then: its tail lost
        assert report == {"received": 200, "ranges": [[1, 200]], "gaps": [],
                          "folded_gap_events": 0, "numbered": 250,
                          "unreceived_tail": [201, 250], "acknowledged_through": 0}
        assert (store.stats()["gap_events"], store.stats()["unreceived_tail_events"]) == (0, 50)
    finally:
        store.close()


APP_THAT_EXITS = """
import sys
from audit_middleware import configure, emit
from audit_middleware.shipper import CollectorSink
configure(sink=CollectorSink(sys.argv[1], spool_dir=sys.argv[2], max_delay=60.0,
                             exit_timeout=float(sys.argv[3])))
for i in range(300):
    emit("user_sign_in", f"u{i}", principal=f"u{i}", status="password")
print("emitted", flush=True)
"""  # and exits without flushing: the queue is still full when the interpreter stops


def run_app(collector: CollectorProcess, root: Path, exit_timeout: float) -> None:
    subprocess.run([sys.executable, "-c", APP_THAT_EXITS, collector.url, str(root / "spool"),
                    str(exit_timeout)], check=True, timeout=60, cwd=ROOT)


def test_interpreter_exit_flushes_to_the_collector(root: Path,
                                                   collector: CollectorProcess) -> None:
    collector.start()
    run_app(collector, root, exit_timeout=10.0)
    assert collector.stop() == 0
    assert len(stored_ids(collector)) == 300


def test_interpreter_exit_with_the_collector_down_spools_within_the_timeout(
        root: Path, collector: CollectorProcess) -> None:
    run_app(collector, root, exit_timeout=2.0)  # returns: exit is bounded
    collector.start()
    sink = shipping_sink(collector, root)  # the next process finds the spool, replays it
    assert sink.wait_for_delivery(timeout=20)
    assert sink.stats()["replayed"] == 300
    assert collector.stop() == 0
    assert len(stored_ids(collector)) == 300
    sink.close()


# -- hostile clients -------------------------------------------------------------------------
def test_malformed_and_oversized_frames_get_errors_and_the_collector_lives_on(
        root: Path, collector: CollectorProcess) -> None:
    collector.args = ["--max-frame", "128KiB"]
    collector.start()
    cases = [
        (HEADER.pack(200 * 1024, FrameType.BATCH), ErrorCode.FRAME_TOO_LARGE),
        (HEADER.pack(4, 77) + b"junk", ErrorCode.BAD_FRAME),
        (HEADER.pack(6, FrameType.BATCH) + b"\x00\x00\x00\x01{\n", ErrorCode.BAD_BATCH),
        (Hello("again").encode(), ErrorCode.UNEXPECTED_FRAME),
    ]
    for data, code in cases:
        conn = RawClient(collector.socket)
        conn.hello()
        conn.send(data)
        assert conn.error().code == code  # and the connection is closed
        conn.close()
    for garbage in (b"\x00" * 5, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(4096)):
        conn = RawClient(collector.socket)
        conn.send(garbage)
        conn.close()
    sink = shipping_sink(collector, root)
    emit("team_created", "still-alive")
    assert sink.flush(timeout=10)
    assert collector.proc is not None and collector.proc.poll() is None
    assert collector.stop() == 0
    assert [e["target"] for e in stored_events(collector.data_dir)] == ["still-alive"]
    sink.close()


def test_tcp_with_the_token_and_a_wrong_token_refused(root: Path,
                                                      collector: CollectorProcess) -> None:
    collector.args = ["--tcp", "127.0.0.1:0"]
    collector.env["AUDIT_TOKEN"] = "s3cret-token"
    collector.start()
    assert "s3cret-token" not in "".join(collector.output)  # the summary masks it
    match = re.search(r"tcp:127\.0\.0\.1:(\d+)", collector.ready_line)
    assert match, collector.ready_line
    port = int(match.group(1))

    wrong = RawClient(tcp=("127.0.0.1", port))
    wrong.send(Hello("intruder", token="guess").encode())
    assert wrong.error().code == ErrorCode.UNAUTHORIZED
    wrong.close()

    sink = CollectorSink(f"tcp://127.0.0.1:{port}", token="s3cret-token",
                         spool_dir=root / "spool")
    configure(sink=sink)
    ids = [emit("access_token_created", f"tok-{i}").id for i in range(20)]
    assert sink.flush(timeout=10)
    assert sink.stats()["acknowledged"] == 20
    assert collector.stop() == 0
    assert stored_ids(collector) == ids
    sink.close()


def test_fail_closed_returns_503_while_the_collector_is_down(root: Path,
                                                             collector: CollectorProcess) -> None:
    @audited("pipeline_deleted", target="pipeline_id")
    async def delete(request: Request) -> JSONResponse:
        return JSONResponse({"deleted": True})

    app = AuditMiddleware(Starlette(routes=[
        Route("/pipelines/{pipeline_id}", delete, methods=["DELETE"])]))
    sink = shipping_sink(collector, root, fail_closed=True, fail_closed_timeout=5.0)
    with TestClient(app) as client:
        assert client.delete("/pipelines/p1").status_code == 503
        collector.start()
        wait_until(lambda: client.delete("/pipelines/p2").status_code == 200,
                   message="the collector is back: requests succeed again")
    assert sink.wait_for_delivery(timeout=20)
    assert collector.stop() == 0
    targets = [e["target"] for e in stored_events(collector.data_dir)]
    assert "p1" in targets  # refused, yet recorded once the collector was back
    sink.close()
