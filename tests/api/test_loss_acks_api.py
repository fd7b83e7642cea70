"""POST /api/v1/sources/acknowledge-losses: root only, JSON only, recorded as an audit
event of its own before it applies; what it acknowledges leaves the unacknowledged
totals (what an alert watches) and nothing else."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from collector.own_records import AUDIT_LOSS_ACKNOWLEDGED, SOURCE
from collector.query import Filters, iter_records
from collector.storage.records import encode_events
from tests.api.conftest import PEER, Env
from tests.collector.storage_helpers import events, forget_source, loss_acks_rename_fails

PATH = "/api/v1/sources/acknowledge-losses"


@pytest.fixture
def lossy(env: Env) -> Env:
    """Two sources that lost events (app-1: 2 between, 2 after; app-2: 1 between) and
    one that lost none."""
    for source, seqs, numbered in (("app-1", [1, 4], 6), ("app-2", [1, 3], 0),
                                   ("app-3", [1, 2], 2)):
        env.store.submit_encoded(encode_events(events(len(seqs))), source, seqs,
                                 numbered).result()
    return env


def post(env: Env, body: Any, token: str | None = None,
         content_type: str = "application/json") -> Any:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return env.client.post(PATH, content=data, headers={
        "Authorization": f"Bearer {token or env.root}", "Content-Type": content_type})


def unacknowledged(env: Env) -> tuple[int, int]:
    stats = env.store.stats()
    return stats["unacknowledged_gap_events"], stats["unacknowledged_tail_events"]


def acks_recorded(env: Env) -> list[dict[str, Any]]:
    return list(iter_records(env.store, Filters(types=(AUDIT_LOSS_ACKNOWLEDGED,))))


def test_a_root_reader_acknowledges_a_sources_losses_and_it_is_recorded(lossy: Env) -> None:
    assert unacknowledged(lossy) == (3, 2)
    done = post(lossy, {"source": "app-1", "reason": "killed for the 2026-11 upgrade"})
    assert done.status_code == 200, done.text
    assert done.json() == {"acknowledged": {"app-1": 6}}
    assert unacknowledged(lossy) == (1, 0)  # app-2's gap is left
    stats = lossy.store.stats()
    assert (stats["gap_events"], stats["unreceived_tail_events"]) == (3, 2)
    [record] = acks_recorded(lossy)
    assert (record["principal"], record["target"], record["client_ip"], record["source"]) \
        == ("root-reader", "app-1", PEER, SOURCE)
    assert orjson.loads(record["status"]) == {"reason": "killed for the 2026-11 upgrade",
                                              "through": 6}


def test_every_source_with_a_new_loss_at_once(lossy: Env) -> None:
    done = post(lossy, {"reason": "the outage of the 26th", "through": 3})
    assert done.json() == {"acknowledged": {"app-1": 3, "app-2": 3}}
    assert unacknowledged(lossy) == (0, 2)  # app-1's tail (5-6) is after 3
    [record] = acks_recorded(lossy)
    assert record["target"] == "(all sources)"
    assert orjson.loads(record["status"]) == {"reason": "the outage of the 26th",
                                              "sources": 2, "through": 3}


@pytest.mark.parametrize(("token", "body", "content_type", "status"), [
    ("plain", {"source": "app-1", "reason": "x"}, "application/json", 403),
    ("bad", {"source": "app-1", "reason": "x"}, "application/json", 401),
    ("root", {"source": "app-1", "reason": "x"}, "text/plain", 400),  # a form elsewhere
    ("root", {"source": "app-1", "reason": "x"}, "application/x-www-form-urlencoded", 400),
    ("root", {"source": "nope", "reason": "x"}, "application/json", 404),
    ("root", {"source": "app-1"}, "application/json", 400),
    ("root", {"source": "app-1", "reason": "  "}, "application/json", 400),
    ("root", {"source": "app-1", "reason": "two\nlines"}, "application/json", 400),
    ("root", {"source": "app-1", "reason": "x" * 401}, "application/json", 400),
    ("root", {"source": "app-1", "reason": "x", "through": 0}, "application/json", 400),
    ("root", {"source": "app-1", "reason": "x", "through": "6"}, "application/json", 400),
    ("root", {"source": "app-1", "reason": "x", "through": 2**63}, "application/json", 400),
    ("root", {"source": "", "reason": "x"}, "application/json", 400),
    ("root", {"source": "app-1", "reason": "x", "by": "mallory"}, "application/json", 400),
    ("root", ["app-1"], "application/json", 400),
    ("root", b"{not json", "application/json", 400),
    ("root", b"x" * 5000, "application/json", 400),
])
def test_a_refused_acknowledgement_changes_and_records_nothing(
        lossy: Env, token: str, body: Any, content_type: str, status: int) -> None:
    tokens = {"root": lossy.root, "plain": lossy.plain, "bad": "ac_not-a-token"}
    done = post(lossy, body, tokens[token], content_type)
    assert done.status_code == status, done.text
    assert done.json()["message"]  # says what to do
    assert unacknowledged(lossy) == (3, 2)
    assert acks_recorded(lossy) == []


@pytest.mark.parametrize("body", [{"source": None, "reason": "x"},
                                  {"source": "app-1", "reason": "x", "through": None}])
def test_a_null_is_refused_not_taken_for_left_out(lossy: Env, body: dict[str, Any]) -> None:
    """A client's unset variable sent as null must not acknowledge every source (or every
    number): only a field left out means that."""
    done = post(lossy, body)
    assert done.status_code == 400, done.text
    assert unacknowledged(lossy) == (3, 2)
    assert acks_recorded(lossy) == []


def test_an_app_cannot_send_the_acknowledgement_record_itself(lossy: Env) -> None:
    from collector.validation import Validator

    forged = dict(events(1)[0], type=AUDIT_LOSS_ACKNOWLEDGED)
    assert isinstance(Validator(from_clients=True).validate(forged), str)


def test_the_sources_that_lost_events_are_listed_for_root_only(lossy: Env) -> None:
    listed = lossy.get("/api/v1/sources/losses", lossy.root).json()
    assert [(s["source"], s["unacknowledged_gap_events"], s["unacknowledged_tail_events"])
            for s in listed["sources"]] == [("app-1", 2, 2), ("app-2", 1, 0)]
    post(lossy, {"source": "app-1", "reason": "known"})
    listed = lossy.get("/api/v1/sources/losses", lossy.root).json()
    assert [(s["source"], s["acknowledged_through"], s["gap_events"],
             s["unacknowledged_gap_events"]) for s in listed["sources"]] == [
        ("app-2", 0, 1, 1), ("app-1", 6, 2, 0)]  # the unacknowledged first
    assert (listed["unacknowledged_gap_events"], listed["unacknowledged_tail_events"]) == (1, 0)
    assert lossy.get("/api/v1/sources/losses", lossy.plain).status_code == 403
    assert lossy.get("/api/v1/sources/losses").status_code == 401


def test_a_source_with_nothing_numbered_is_refused_and_nothing_recorded(lossy: Env) -> None:
    lossy.store.submit_encoded(encode_events(events(1)), "unnumbered", [0], 0).result()
    done = post(lossy, {"source": "unnumbered", "reason": "x"})
    assert done.status_code == 400, done.text
    assert "no loss to acknowledge" in done.json()["message"]
    assert acks_recorded(lossy) == []
    assert post(lossy, {"source": "nope", "reason": "x"}).status_code == 404


def test_a_through_past_what_the_source_numbered_acknowledges_no_later_loss(
        lossy: Env) -> None:
    """Losses not made yet cannot be known: a through past the source's latest number
    stops there, and a loss after it counts (the alert fires)."""
    done = post(lossy, {"source": "app-2", "reason": "outage", "through": 2**62})
    assert done.json() == {"acknowledged": {"app-2": 3}}, done.text
    [record] = acks_recorded(lossy)
    assert orjson.loads(record["status"])["through"] == 3
    assert post(lossy, {"reason": "all", "through": 10**9}).json() == {
        "acknowledged": {"app-1": 6}}
    assert unacknowledged(lossy) == (0, 0)
    lossy.store.submit_encoded(encode_events(events(1)), "app-2", [9], 9).result()
    assert unacknowledged(lossy) == (5, 0)  # 4-8, lost after the acknowledgement


def test_losses_are_counted_off_the_event_loop(lossy: Env, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    """Planning "every source" and listing the sources that lost events walk every
    source's ranges (thousands of sources, up to sources.MAX_RANGES ranges each): on the
    loop, which ingest shares, they would stall every connection meanwhile."""
    import asyncio

    from collector.storage import loss_acks

    on_loop = []

    def watched(real: Any) -> Any:
        def call(*args: Any) -> Any:
            try:
                asyncio.get_running_loop()
                on_loop.append(True)
            except RuntimeError:
                on_loop.append(False)
            return real(*args)
        return call

    monkeypatch.setattr(lossy.store, "plan_loss_ack", watched(lossy.store.plan_loss_ack))
    monkeypatch.setattr(loss_acks, "unacknowledged", watched(loss_acks.unacknowledged))
    assert post(lossy, {"reason": "the outage of the 26th"}).status_code == 200
    assert lossy.get("/api/v1/sources/losses", lossy.root).status_code == 200
    assert on_loop and not any(on_loop)


def test_an_acknowledgement_the_disk_cannot_keep_is_neither_made_nor_recorded(
        lossy: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded first, then kept, it left a record of an acknowledgement a full disk
    then refused: the file is now written (beside its place) before the record."""
    import errno

    from collector.storage import loss_acks, regular_files

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    for module in (loss_acks, regular_files):  # however the file is written
        monkeypatch.setattr(module, "write_new_file", full, raising=False)
    done = post(lossy, {"source": "app-1", "reason": "known"})
    assert done.status_code == 503 and "No space left" in done.json()["message"], done.text
    assert acks_recorded(lossy) == [] and unacknowledged(lossy) == (3, 2)
    monkeypatch.undo()
    assert post(lossy, {"source": "app-1", "reason": "known"}).status_code == 200


def test_an_acknowledgement_that_cannot_be_recorded_is_not_made(
        lossy: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.api.reads import ReadNotRecordedError

    api = lossy.client.app.state.api  # type: ignore[attr-defined]

    async def refused(*args: Any, **kwargs: Any) -> str:
        raise ReadNotRecordedError("the store refused it (injected)")

    monkeypatch.setattr(api, "write_record", refused)
    done = post(lossy, {"source": "app-1", "reason": "known"})
    assert done.status_code == 503, done.text
    assert unacknowledged(lossy) == (3, 2)
    data_dir = lossy.store.settings.data_dir
    assert not list(data_dir.glob("*loss-acks*")), list(data_dir.iterdir())
    monkeypatch.undo()  # and the next one is not kept waiting by the one refused
    assert post(lossy, {"source": "app-1", "reason": "known"}).status_code == 200
    assert unacknowledged(lossy) == (1, 0)


def test_an_acknowledgement_not_recorded_rewrites_the_file_off_the_event_loop(
        lossy: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropped, an acknowledgement rewrites loss-acks.json (fsynced) when retention
    forgot a source meanwhile, as the holder of the lock: dropped on the event loop,
    which ingest shares, the loop waited for the disk."""
    import asyncio

    from collector.api.reads import ReadNotRecordedError
    from collector.storage import loss_acks

    store = lossy.store
    store.acknowledge_losses({"app-2": 1}, by="alice", reason="known")
    api = lossy.client.app.state.api  # type: ignore[attr-defined]

    async def refused(*args: Any, **kwargs: Any) -> str:
        forget_source(store, "app-2")  # retention, meanwhile: left to the lock's holder
        raise ReadNotRecordedError("the store refused it (injected)")

    real_save, on_the_loop = loss_acks.save, []

    def save(data_dir: Any, acks: Any) -> None:
        try:
            asyncio.get_running_loop()
            on_the_loop.append(True)
        except RuntimeError:  # no loop runs on this thread
            on_the_loop.append(False)
        real_save(data_dir, acks)

    monkeypatch.setattr(api, "write_record", refused)
    monkeypatch.setattr(loss_acks, "save", save)
    done = post(lossy, {"source": "app-1", "reason": "known"})
    assert done.status_code == 503, done.text
    assert on_the_loop == [False]
    assert "app-2" not in loss_acks.load(store.settings.data_dir)


def test_an_acknowledgement_recorded_is_made_even_when_its_file_cannot_take_its_place(
        lossy: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Staged, recorded, then renamed into place: a rename that failed answered 503 and
    left a record of an acknowledgement not made. Once recorded, it is made: it applies
    at once, and its file takes its place before the next acknowledgement is staged
    (which is refused, before its record, while it cannot)."""
    from collector.storage import loss_acks

    loss_acks_rename_fails(monkeypatch)
    done = post(lossy, {"source": "app-1", "reason": "killed for the upgrade"})
    assert done.status_code == 200, done.text
    assert done.json() == {"acknowledged": {"app-1": 6}}
    [record] = acks_recorded(lossy)
    assert unacknowledged(lossy) == (1, 0)  # made, as its record says
    data_dir = lossy.store.settings.data_dir
    staged = loss_acks.staged(data_dir)  # kept for the next try, naming its record
    assert staged is not None and staged[0]["app-1"].through == 6
    assert staged[1] == record["id"]

    refused_next = post(lossy, {"source": "app-2", "reason": "known too"})
    assert refused_next.status_code == 503, refused_next.text
    assert "earlier acknowledgement" in refused_next.json()["message"]
    assert len(acks_recorded(lossy)) == 1 and unacknowledged(lossy) == (1, 0)

    monkeypatch.undo()
    assert post(lossy, {"source": "app-2", "reason": "known too"}).status_code == 200
    kept = loss_acks.load(data_dir)
    assert {s: (a.through, a.reason) for s, a in kept.items()} == {
        "app-1": (6, "killed for the upgrade"), "app-2": (3, "known too")}
    assert unacknowledged(lossy) == (0, 0)


def test_a_request_cancelled_while_its_record_is_written_still_makes_the_acknowledgement(
        lossy: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop past the drain timeout cancels the requests still in progress. One whose
    record the store's commit thread had taken (a slow disk) dropped its staged file;
    the store then wrote the record anyway: a record of an acknowledgement not made,
    for good. The record's write decides, not the request's cancellation."""
    import asyncio
    import os
    import threading

    import httpx

    from collector.api import ApiSettings, create_app
    from collector.storage import loss_acks

    writing, release, armed = threading.Event(), threading.Event(), threading.Event()
    real_fdatasync = os.fdatasync

    def slow_disk(fd: int) -> None:  # the OS's, outside the product
        if armed.is_set():
            armed.clear()
            writing.set()
            release.wait(30)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", slow_disk)
    app = create_app(ApiSettings(data_dir=lossy.store.settings.data_dir), lossy.store,
                     readers=lossy.readers)

    async def cancelled_while_recorded() -> None:
        transport = httpx.ASGITransport(app=app, client=(PEER, 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            armed.set()
            request = asyncio.ensure_future(c.post(PATH, json={
                "source": "app-1", "reason": "known"}, headers={
                "Authorization": f"Bearer {lossy.root}"}))
            assert await asyncio.to_thread(writing.wait, 30)  # its record, being written
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            release.set()
            for _ in range(300):  # the record's write ends (bounded)
                if acks_recorded(lossy) and unacknowledged(lossy) == (1, 0):
                    break
                await asyncio.sleep(0.05)

    asyncio.run(cancelled_while_recorded())
    assert len(acks_recorded(lossy)) == 1  # the store wrote it: so it is made
    assert unacknowledged(lossy) == (1, 0)
    assert loss_acks.load(lossy.store.settings.data_dir)["app-1"].through == 6
    assert post(lossy, {"source": "app-2", "reason": "known"}).status_code == 200  # not stuck


def test_a_request_cancelled_while_it_stages_leaves_no_acknowledgement_waiting(
        lossy: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled while its staging thread was writing (a stop past the drain timeout, a
    slow disk), the request never had the staged acknowledgement to keep or drop: the
    thread finished staging and kept the acknowledgements' lock, so every later
    acknowledgement waited, then was refused (503), until the collector restarted."""
    import asyncio
    import os
    import threading

    import httpx

    from collector import store_acknowledging
    from collector.api import ApiSettings, create_app
    from collector.storage import loss_acks

    staging, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_disk(fd: int) -> None:  # the OS's, outside the product
        if os.readlink(f"/proc/self/fd/{fd}").endswith(loss_acks.STAGED_NAME):
            staging.set()
            release.wait(30)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_disk)
    # A lock left held shows as a refusal at once, not after the usual 30 s wait.
    monkeypatch.setattr(store_acknowledging, "ACK_WAIT", 0.5)
    app = create_app(ApiSettings(data_dir=lossy.store.settings.data_dir), lossy.store,
                     readers=lossy.readers)
    staged_file = lossy.store.settings.data_dir / loss_acks.STAGED_NAME

    async def cancelled_while_staging() -> None:
        transport = httpx.ASGITransport(app=app, client=(PEER, 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            request = asyncio.ensure_future(c.post(PATH, json={
                "source": "app-1", "reason": "known"}, headers={
                "Authorization": f"Bearer {lossy.root}"}))
            assert await asyncio.to_thread(staging.wait, 30)  # its file, being staged
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            release.set()
            for _ in range(300):  # the staging thread ends (bounded)
                if not staged_file.exists():
                    break
                await asyncio.sleep(0.05)

    asyncio.run(cancelled_while_staging())
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not staged_file.exists()  # never recorded: not made
    assert acks_recorded(lossy) == [] and unacknowledged(lossy) == (3, 2)
    done = post(lossy, {"source": "app-2", "reason": "known"})
    assert done.status_code == 200, done.text  # not kept waiting by the cancelled one
    assert unacknowledged(lossy) == (2, 2)


def test_the_same_acknowledgement_again_is_answered_and_not_recorded_twice(
        lossy: Env) -> None:
    """A client that gave up waiting (60 s) and asked again added a second record of
    the same acknowledgement: the same source, through and reason, by the same reader,
    already made, is answered as the first time, without a record."""
    body = {"source": "app-1", "reason": "killed for the upgrade", "through": 5}
    first, again = post(lossy, body), post(lossy, body)
    assert first.status_code == again.status_code == 200, again.text
    assert first.json() == again.json() == {"acknowledged": {"app-1": 5}}
    assert len(acks_recorded(lossy)) == 1
    # Every source at once, again: the sources it acknowledged have no new loss.
    everything = {"reason": "the outage of the 26th"}
    assert post(lossy, everything).json() == {"acknowledged": {"app-1": 6, "app-2": 3}}
    assert post(lossy, everything).json() == {"acknowledged": {}}
    assert len(acks_recorded(lossy)) == 2


@pytest.mark.parametrize(("change", "token"), [
    ({"reason": "another reason"}, "root"), ({"through": 4}, "root"),
    ({}, "other root"),  # another reader says it too: its own record
])
def test_an_acknowledgement_that_differs_is_recorded_again(
        lossy: Env, change: dict[str, Any], token: str) -> None:
    other = lossy.readers.add("other-root", root=True)
    body = {"source": "app-1", "reason": "killed for the upgrade", "through": 5}
    assert post(lossy, body).status_code == 200
    done = post(lossy, body | change, other if token == "other root" else None)
    assert done.status_code == 200, done.text
    assert len(acks_recorded(lossy)) == 2
