"""Acknowledged losses: an operator's word that a source's lost numbers up to some
number are known. The totals keep counting every loss; the unacknowledged ones, what
to alert on, count only losses after it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from collector.storage import loss_acks
from collector.storage.records import encode_events
from collector.store_acknowledging import LossAckError, UnknownSourceError
from tests.collector.storage_helpers import (
    events,
    forget_source,
    loss_acks_rename_fails,
    open_store,
)


@pytest.mark.parametrize(("ranges", "numbered", "through", "expected"), [
    ([[1, 3], [6, 8]], 10, 0, (2, 2)),  # nothing acknowledged: gap 4-5, tail 9-10
    ([[1, 3], [6, 8]], 10, 4, (1, 2)),  # the gap straddles it: 5 is new
    ([[1, 3], [6, 8]], 10, 8, (0, 2)),
    ([[1, 3], [6, 8]], 10, 9, (0, 1)),  # the tail straddles it
    ([[1, 3], [6, 8]], 10, 10, (0, 0)),
    ([[1, 3], [6, 8]], 10, 99, (0, 0)),
    ([[1, 100, 7], [110, 120]], 0, 50, (16, 0)),  # folded: its 7 have no known place
    ([[1, 100, 7], [110, 120]], 0, 100, (9, 0)),
    ([[1, 100, 7], [110, 120]], 0, 97, (3 + 9, 0)),  # at most 98-100 of its 7 are new
    ([[1, 10_000, 9_000]], 10_000, 9_990, (10, 0)),
    ([], 5, 3, (0, 2)),  # numbers announced, none stored
])
def test_losses_after_the_acknowledged_number_are_counted(
        ranges: list[list[int]], numbered: int, through: int, expected: tuple[int, int]
) -> None:
    assert loss_acks.unacknowledged(ranges, numbered, through) == expected


def write(store: object, source: str, seqs: list[int], numbered: int = 0) -> None:
    store.submit_encoded(encode_events(events(len(seqs))), source, seqs,  # type: ignore[attr-defined]
                         numbered).result()


def totals(store: object) -> tuple[int, int, int, int]:
    s = store.stats()  # type: ignore[attr-defined]
    return (s["gap_events"], s["unreceived_tail_events"], s["unacknowledged_gap_events"],
            s["unacknowledged_tail_events"])


def test_an_acknowledged_loss_stops_counting_as_unacknowledged_until_a_new_one(
        tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        write(store, "app-1", [1, 2, 3, 6, 7, 8], numbered=10)
        assert totals(store) == (2, 2, 2, 2)
        plan = store.plan_loss_ack("app-1")
        assert plan == {"app-1": 10}  # everything the source numbered so far
        store.acknowledge_losses(plan, by="alice", reason="app killed for the upgrade")
        assert totals(store) == (2, 2, 0, 0)  # the totals still count every loss
        assert store.stats()["sources"]["app-1"]["acknowledged_through"] == 10
        write(store, "app-1", [12, 13], numbered=13)  # 9-10 acknowledged, 11 is new
        assert totals(store) == (5, 0, 1, 0)  # gaps 4-5 and 9-11
    with open_store(tmp_path) as store:  # kept across a restart
        assert totals(store) == (5, 0, 1, 0)
    kept = loss_acks.load(tmp_path)["app-1"]
    assert (kept.through, kept.by, kept.reason) == (10, "alice", "app killed for the upgrade")
    assert (tmp_path / loss_acks.FILE_NAME).stat().st_mode & 0o777 == 0o640


def test_all_sources_acknowledges_only_those_with_a_new_loss(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        write(store, "lossy", [1, 3])
        write(store, "whole", [1, 2, 3])
        write(store, "known", [1, 5])
        store.acknowledge_losses({"known": 5}, by="alice", reason="known")
        assert store.plan_loss_ack(None) == {"lossy": 3}
        assert store.plan_loss_ack(None, through=2) == {"lossy": 2}
        store.acknowledge_losses(store.plan_loss_ack(None), by="bob", reason="all at once")
        assert totals(store)[2:] == (0, 0)
        assert loss_acks.load(tmp_path)["known"].by == "alice"  # left as it was


def test_bad_acknowledgements_are_refused_and_change_nothing(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        write(store, "app-1", [1, 3])
        with pytest.raises(LossAckError, match="no source 'app-2'"):
            store.plan_loss_ack("app-2")
        for bad in (0, -1, 2**63, "3", True):
            with pytest.raises(LossAckError, match="through must be"):
                store.plan_loss_ack("app-1", bad)  # type: ignore[arg-type]
        for reason in ("", "   ", "x" * (loss_acks.MAX_REASON + 1)):
            with pytest.raises(LossAckError, match="say why"):
                store.acknowledge_losses({"app-1": 3}, by="alice", reason=reason)
        assert totals(store) == (1, 0, 1, 0)
    assert not (tmp_path / loss_acks.FILE_NAME).exists()


@pytest.mark.parametrize("content", [b"{not json", b'{"format": 2, "sources": {}}',
                                     b'{"format": 1, "sources": {"a": {"through": 0}}}',
                                     b"[]"])
def test_a_damaged_acknowledgements_file_counts_every_loss_and_the_store_starts(
        tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """An alert too many, never one too few: whatever the file holds, the losses count."""
    with open_store(tmp_path) as store:
        write(store, "app-1", [1, 3])
        store.acknowledge_losses({"app-1": 3}, by="alice", reason="known")
    (tmp_path / loss_acks.FILE_NAME).write_bytes(content)
    with caplog.at_level(logging.ERROR, "collector.store"), open_store(tmp_path) as store:
        assert totals(store) == (1, 0, 1, 0)
        store.acknowledge_losses(store.plan_loss_ack("app-1"), by="bob", reason="again")
        assert totals(store) == (1, 0, 0, 0)  # rewritten whole
    assert "every loss counts as unacknowledged" in caplog.text


def test_a_source_that_numbered_nothing_cannot_cost_the_other_acknowledgements(
        tmp_path: Path) -> None:
    """A source whose events carried no number (seq 0) is known to the store but lost
    nothing: acknowledging it wrote through 0, which the next start refused as a damaged
    file, so every other source's acknowledgement was gone."""
    with open_store(tmp_path) as store:
        write(store, "app-1", [1, 3])
        write(store, "unnumbered", [0])
        store.acknowledge_losses(store.plan_loss_ack("app-1"), by="alice", reason="known")
        with pytest.raises(LossAckError, match="no loss to acknowledge"):
            store.plan_loss_ack("unnumbered")
        with pytest.raises(LossAckError, match="through must be"):
            store.acknowledge_losses({"unnumbered": 0}, by="bob", reason="whatever")
        assert store.plan_loss_ack(None) == {}
    with open_store(tmp_path) as store:
        assert totals(store) == (1, 0, 0, 0)  # app-1's acknowledgement outlived the start


def test_an_acknowledgement_never_takes_back_an_earlier_one(tmp_path: Path) -> None:
    """Two readers at once: each plan is recorded, then kept, and the two can be kept in
    either order. The one through a lower number (or planned first and kept last) must
    not lower the other: losses acknowledged would alert again."""
    with open_store(tmp_path) as store:
        write(store, "app-1", [1, 3, 6], numbered=8)
        early = store.plan_loss_ack("app-1", 3)
        late = store.plan_loss_ack("app-1")
        store.acknowledge_losses(late, by="alice", reason="the whole outage")
        store.acknowledge_losses(early, by="bob", reason="the first gap")
        assert store.stats()["sources"]["app-1"]["acknowledged_through"] == 8
        assert totals(store) == (3, 2, 0, 0)
        assert loss_acks.load(tmp_path)["app-1"].by == "alice"


def test_acknowledged_losses_folded_with_new_ones_do_not_count_again(tmp_path: Path) -> None:
    """A source that keeps losing events folds its oldest ranges (sources.MAX_RANGES):
    once the folded range reaches past the acknowledged number, the losses acknowledged
    in it must not count as new ones again."""
    from collector.storage import sources

    with open_store(tmp_path) as store:
        write(store, "app-1", [1, 1000])  # 2-999 lost
        store.acknowledge_losses(store.plan_loss_ack("app-1"), by="alice", reason="known")
        assert totals(store) == (998, 0, 0, 0)
        write(store, "app-1", list(range(1002, 1002 + 2 * sources.MAX_RANGES, 2)))
        [folded, *_] = store.stats()["sources"]["app-1"]["ranges"]
        assert folded == [1, 1002, 999]  # 2-999 and 1001 folded: straddles 1000
        new = sources.MAX_RANGES  # 1001, 1003, ..., 2999
        assert totals(store)[0] == 998 + new
        # Which of the folded 999 is after 1000 is not known: at most 2 of them are.
        assert totals(store)[2] == new + 1  # was 998 + new: the acknowledged came back


def test_an_acknowledgement_recorded_but_not_in_place_is_put_there_at_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its record written, the rename failed (or the collector stopped before it): the
    record says the acknowledgement was made, so the next start puts it in place."""
    [record] = events(1)
    with open_store(tmp_path) as store:
        write(store, "app-1", [1, 3])
        loss_acks_rename_fails(monkeypatch)
        staged = store.stage_loss_ack(store.plan_loss_ack("app-1"), by="alice",
                                      reason="known", record=record["id"])
        store.write([record], "audit-collector-api")
        staged.keep()  # does not raise: recorded, so made
        assert totals(store) == (1, 0, 0, 0)
        monkeypatch.undo()
    assert not (tmp_path / loss_acks.FILE_NAME).exists()
    with open_store(tmp_path) as store:
        assert totals(store) == (1, 0, 0, 0)
    assert loss_acks.load(tmp_path)["app-1"].by == "alice"
    assert not (tmp_path / loss_acks.STAGED_NAME).exists()


def test_an_acknowledgement_staged_but_never_recorded_is_not_made_at_the_next_start(
        tmp_path: Path) -> None:
    """Stopped between staging and the record: no record claims it, so it is not made,
    and its staged file is removed."""
    with open_store(tmp_path) as store:
        write(store, "app-1", [1, 3])
        store.stage_loss_ack(store.plan_loss_ack("app-1"), by="alice", reason="known",
                             record=events(1)[0]["id"])  # the record is never written
    assert (tmp_path / loss_acks.STAGED_NAME).exists()
    with open_store(tmp_path) as store:
        assert totals(store) == (1, 0, 1, 0)
    assert not (tmp_path / loss_acks.STAGED_NAME).exists()
    assert not (tmp_path / loss_acks.FILE_NAME).exists()


def test_without_a_record_a_failed_rename_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.storage.errors import StorageError

    with open_store(tmp_path) as store:
        write(store, "app-1", [1, 3])
        loss_acks_rename_fails(monkeypatch)
        with pytest.raises(StorageError, match="cannot put loss-acks.json in place"):
            store.acknowledge_losses({"app-1": 3}, by="alice", reason="known")
        assert totals(store) == (1, 0, 1, 0)
        monkeypatch.undo()
        store.acknowledge_losses({"app-1": 3}, by="alice", reason="known")  # not stuck
        assert totals(store) == (1, 0, 0, 0)


def test_a_source_retention_forgets_takes_its_acknowledgement_with_it(tmp_path: Path) -> None:
    """Kept until the next acknowledgement was saved (in memory and in the file), the
    acknowledgement of a source retention forgot covered the new losses of a source of
    the same name (a client naming its own source): an alert too few."""
    from tests.collector.storage_helpers import wait_until

    settings = {"max_segment_bytes": 4096, "retention_bytes": 9000,
                "retention_days": float("inf")}
    with open_store(tmp_path, **settings) as store:
        write(store, "src-old", [1, 3], numbered=6)
        store.acknowledge_losses(store.plan_loss_ack("src-old"), by="alice", reason="known")
        for n in range(8):  # src-old's segment is deleted by size, src-old forgotten
            write(store, "src-busy", list(range(n * 8 + 1, n * 8 + 9)))
        wait_until(lambda: store.stats()["sources_forgotten"] == 1)
        wait_until(lambda: "src-old" not in loss_acks.load(tmp_path))  # the file too
        write(store, "src-old", [1, 5])  # the same name again: 2-4 are new losses
        assert totals(store)[2] == 3
    with open_store(tmp_path, **settings) as store:
        assert totals(store)[2] == 3


def test_an_acknowledgement_of_a_source_the_store_does_not_know_is_not_loaded(
        tmp_path: Path) -> None:
    """A file naming a source the store no longer knows (rewritten before retention
    forgot it, as earlier versions left it): its acknowledgement covers no later source
    of that name."""
    with open_store(tmp_path) as store:
        write(store, "app-1", [1, 2])
    loss_acks.save(tmp_path, {"ghost": loss_acks.Ack(6, "2026-11-01T00:00:00Z", "alice",
                                                     "known")})
    with open_store(tmp_path) as store:
        write(store, "ghost", [1, 5])
        assert totals(store) == (3, 0, 3, 0)
        assert store.plan_loss_ack(None) == {"ghost": 5}


def test_a_recorded_acknowledgement_whose_staged_file_was_removed_is_saved_from_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its rename failed, then its staged file was removed by hand: the next
    acknowledgement was refused for good (nothing to rename). What it held is applied,
    in memory: that is saved, and the next one goes on."""
    [record, second] = events(2)
    with open_store(tmp_path) as store:
        write(store, "app-1", [1, 3])
        write(store, "app-2", [1, 5])
        loss_acks_rename_fails(monkeypatch)
        staged = store.stage_loss_ack({"app-1": 3}, by="alice", reason="known",
                                      record=record["id"])
        store.write([record], "audit-collector-api")
        staged.keep()
        monkeypatch.undo()
        (tmp_path / loss_acks.STAGED_NAME).unlink()
        staged = store.stage_loss_ack({"app-2": 5}, by="bob", reason="known too",
                                      record=second["id"])
        store.write([second], "audit-collector-api")
        staged.keep()
        assert totals(store) == (4, 0, 0, 0)
    assert {s: a.by for s, a in loss_acks.load(tmp_path).items()} == {"app-1": "alice",
                                                                      "app-2": "bob"}


def test_a_source_forgotten_while_an_acknowledgement_is_under_way_leaves_the_file_too(
        tmp_path: Path) -> None:
    """Retention forgot a source while another source's acknowledgement was under way
    (staged, waiting for its record): the rewrite without it never waits for that one,
    and the file then put in place, staged before, still named it. The next start
    handed its acknowledgement to a new source of the same name: an alert too few."""
    from tests.collector.storage_helpers import wait_until

    settings = {"max_segment_bytes": 4096, "retention_bytes": 9000,
                "retention_days": float("inf")}
    with open_store(tmp_path, **settings) as store:
        write(store, "src-old", [1, 3], numbered=6)
        store.acknowledge_losses(store.plan_loss_ack("src-old"), by="alice", reason="known")
        write(store, "src-busy", [1, 3])
        staged = store.stage_loss_ack({"src-busy": 3}, by="bob", reason="known too")
        for n in range(8):  # src-old's segment is deleted by size, src-old forgotten
            write(store, "src-busy", list(range(n * 8 + 4, n * 8 + 12)))
        wait_until(lambda: store.stats()["sources_forgotten"] == 1)
        staged.keep()
        write(store, "src-old", [1, 5])  # the same name again: 2-4 are new losses
        assert store.stats()["sources"]["src-old"]["acknowledged_through"] == 0
    with open_store(tmp_path, **settings) as store:
        assert store.stats()["sources"]["src-old"]["acknowledged_through"] == 0


class _KeptMeanwhile:
    """The store's acknowledgements lock, through which an acknowledgement under way is
    kept (on another thread, as the API does) just before the commit thread's
    ``acquire(blocking=False)``: the moment retention's rewrite of the file waits for."""

    def __init__(self, lock: Any, staged: Any) -> None:
        self._lock, self._staged = lock, staged

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not blocking and self._staged is not None:
            staged, self._staged = self._staged, None
            staged.keep()
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        self._lock.release()


def test_an_acknowledgement_kept_while_retention_forgets_a_source_stays_in_the_file(
        tmp_path: Path) -> None:
    """Retention took the acknowledgements to write before it had the lock: one kept
    meanwhile was put in place, then the file was overwritten without it. Applied and
    recorded, it was gone at the next start."""
    with open_store(tmp_path) as store:
        write(store, "src-old", [1, 3])
        write(store, "app-1", [1, 3])
        store.acknowledge_losses({"src-old": 3}, by="alice", reason="known")
        staged = store.stage_loss_ack({"app-1": 3}, by="bob", reason="known too")
        writer = store._writer
        with writer.lock:  # as GroupWriter.forget_sources does, on the commit thread
            writer.sources.pop("src-old")
        store._acks_lock = _KeptMeanwhile(store._acks_lock, staged)  # type: ignore[assignment]
        store._forget_loss_acks(["src-old"])
        assert totals(store)[2] == 0  # applied
        assert set(loss_acks.load(tmp_path)) == {"app-1"}
    with open_store(tmp_path) as store:
        assert store.stats()["sources"]["app-1"]["acknowledged_through"] == 3


def test_an_acknowledgement_abandoned_is_settled_by_its_record_at_the_next_start(
        tmp_path: Path) -> None:
    """Abandoned (its request and its record's write cancelled as the collector stopped):
    not applied by this run, made by the next start if its record was written."""
    [record] = events(1)
    with open_store(tmp_path) as store:
        write(store, "app-1", [1, 3])
        write(store, "app-2", [1, 3])
        written = store.stage_loss_ack({"app-1": 3}, by="alice", reason="known",
                                       record=record["id"])
        store.write([record], "audit-collector-api")
        written.abandon()
        assert totals(store) == (2, 0, 2, 0)
    with open_store(tmp_path) as store:
        assert totals(store) == (2, 0, 1, 0)
        never = store.stage_loss_ack({"app-2": 3}, by="alice", reason="known",
                                     record=events(1)[0]["id"])
        never.abandon()  # its record never written
    with open_store(tmp_path) as store:
        assert totals(store) == (2, 0, 1, 0)
    assert set(loss_acks.load(tmp_path)) == {"app-1"}


def test_a_staged_file_is_durable_before_its_record_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record, fsynced in segments/, is what makes the acknowledgement; its staged
    file was fsynced, but not its name in the data directory: after a power loss the
    record could be there and the file not (an acknowledgement claimed, never made)."""
    import os

    real_fsync = os.fsync
    synced: list[str] = []

    def spied(fd: int) -> None:  # the OS's, outside the product
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    with open_store(tmp_path) as store:
        write(store, "app-1", [1, 3])
        monkeypatch.setattr(os, "fsync", spied)
        staged = store.stage_loss_ack({"app-1": 3}, by="alice", reason="known",
                                      record=events(1)[0]["id"])
        monkeypatch.undo()
        staged.drop()
    assert str(tmp_path / loss_acks.STAGED_NAME) in synced  # the file
    assert str(tmp_path) in synced  # and its name


def test_the_same_acknowledgement_asked_while_the_first_is_under_way_is_not_made_twice(
        tmp_path: Path) -> None:
    """A client's retry can come while its first request is still under way (staged,
    its record being written): it waits for that one, then finds it made, and has
    nothing to write or record."""
    import threading

    with open_store(tmp_path) as store:
        write(store, "app-1", [1, 3])
        first = store.stage_loss_ack({"app-1": 3}, by="alice", reason="known",
                                     record=events(1)[0]["id"])
        assert first is not None
        retried: list[object] = []
        retry = threading.Thread(target=lambda: retried.append(store.stage_loss_ack(
            {"app-1": 3}, by="alice", reason=" known ", record=events(1)[0]["id"])))
        retry.start()
        first.keep()
        retry.join(30)
        assert retried == [None]
        assert not (tmp_path / loss_acks.STAGED_NAME).exists()
        store.acknowledge_losses({"app-1": 3}, by="bob", reason="known")  # not kept waiting
        assert loss_acks.load(tmp_path)["app-1"].by == "alice"  # as far: kept


@pytest.mark.parametrize("forgotten", ["after the failed rename", "while staged"])
def test_a_source_forgotten_while_a_rename_is_pending_leaves_the_staged_file_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forgotten: str) -> None:
    """Recorded, its rename failed: the acknowledgements wait staged for the next
    acknowledgement or start. Retention forgot a source meanwhile: memory let it go,
    the staged file kept it (rewritten only when no rename was pending), and the next
    start put it in place and handed its acknowledgement to a new source of the same
    name: an alert too few."""
    [record] = events(1)
    with open_store(tmp_path) as store:
        write(store, "src-old", [1, 3], numbered=6)
        write(store, "app-1", [1, 3])
        loss_acks_rename_fails(monkeypatch)
        staged = store.stage_loss_ack({"src-old": 6, "app-1": 3}, by="alice",
                                      reason="known", record=record["id"])
        assert staged is not None
        store.write([record], "audit-collector-api")
        if forgotten == "while staged":
            forget_source(store, "src-old")
        staged.keep()  # made, not in place
        if forgotten == "after the failed rename":
            forget_source(store, "src-old")
        left = loss_acks.staged(tmp_path)
        assert left is not None and set(left[0]) == {"app-1"}, left
        assert left[1] == record["id"]  # still claimed by its record
        monkeypatch.undo()
        write(store, "src-old", [1, 5])  # the same name again: 2-4 are new losses
        assert store.stats()["sources"]["src-old"]["acknowledged_through"] == 0
    with open_store(tmp_path) as store:
        assert store.stats()["sources"]["src-old"]["acknowledged_through"] == 0
        assert store.stats()["sources"]["app-1"]["acknowledged_through"] == 3
    assert set(loss_acks.load(tmp_path)) == {"app-1"}


def test_an_acknowledgement_pending_outlives_a_rewrite_for_retention_the_disk_refuses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention's rewrite of a staged file replaces it whole or not at all: written
    over it, a full disk left none, and the acknowledgement made was gone at the next
    start."""
    import errno
    import os

    real_write = os.write

    def full(fd: int, data: Any) -> int:  # the OS's, outside the product
        if loss_acks.FILE_NAME in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real_write(fd, data)

    [record] = events(1)
    with open_store(tmp_path) as store:
        write(store, "src-old", [1, 3], numbered=6)
        write(store, "app-1", [1, 3])
        loss_acks_rename_fails(monkeypatch)
        staged = store.stage_loss_ack({"src-old": 6, "app-1": 3}, by="alice",
                                      reason="known", record=record["id"])
        assert staged is not None
        store.write([record], "audit-collector-api")
        staged.keep()
        monkeypatch.setattr(os, "write", full)
        forget_source(store, "src-old")
        monkeypatch.undo()
    with open_store(tmp_path) as store:
        assert store.stats()["sources"]["app-1"]["acknowledged_through"] == 3


def test_a_source_forgotten_while_an_acknowledgement_under_way_is_then_dropped_leaves_the_file_too(
        tmp_path: Path) -> None:
    """Retention's rewrite never waits for an acknowledgement under way, whose ``keep``
    rewrites the file without the forgotten source. One dropped instead (its record
    refused) rewrote nothing: the file still named the source, and the next start
    handed its acknowledgement to a new source of the same name."""
    with open_store(tmp_path) as store:
        write(store, "src-old", [1, 3], numbered=6)
        write(store, "app-1", [1, 3])
        store.acknowledge_losses({"src-old": 6}, by="alice", reason="known")
        staged = store.stage_loss_ack({"app-1": 3}, by="bob", reason="known too",
                                      record=events(1)[0]["id"])
        assert staged is not None
        forget_source(store, "src-old")
        staged.drop()  # its record refused: not made
        assert "src-old" not in loss_acks.load(tmp_path)
        write(store, "src-old", [1, 5])  # the same name again: 2-4 are new losses
        assert store.stats()["sources"]["src-old"]["acknowledged_through"] == 0
    with open_store(tmp_path) as store:
        assert store.stats()["sources"]["src-old"]["acknowledged_through"] == 0


def test_a_source_forgotten_whose_rewrite_failed_leaves_the_file_at_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Retention's rewrite failed (logged: "left out ... from the file at the next
    acknowledgement or start"). The start left it out of memory only: the file still
    named the source, and once a new source of that name came, the start after handed
    it the old acknowledgement."""
    from tests.collector.storage_helpers import wait_until

    settings = {"max_segment_bytes": 4096, "retention_bytes": 9000,
                "retention_days": float("inf")}
    with open_store(tmp_path, **settings) as store:
        write(store, "src-old", [1, 3], numbered=6)
        store.acknowledge_losses(store.plan_loss_ack("src-old"), by="alice", reason="known")
        loss_acks_rename_fails(monkeypatch)
        for n in range(8):  # src-old's segment is deleted by size, src-old forgotten
            write(store, "src-busy", list(range(n * 8 + 1, n * 8 + 9)))
        wait_until(lambda: "cannot rewrite loss-acks.json" in caplog.text)
        monkeypatch.undo()
    with open_store(tmp_path, **settings) as store:
        assert "src-old" not in loss_acks.load(tmp_path)
        write(store, "src-old", [1, 5])  # the same name again: 2-4 are new losses
    with open_store(tmp_path, **settings) as store:
        assert store.stats()["sources"]["src-old"]["acknowledged_through"] == 0


def test_a_source_forgotten_as_the_file_is_rewritten_without_another_is_left_out_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention forgot a second source while the holder of the lock (an acknowledgement
    dropped) rewrote the file without the first: its own rewrite found the lock taken
    and left it to that holder, which had its copy already."""
    with open_store(tmp_path) as store:
        for name in ("src-a", "src-b", "app-1"):
            write(store, name, [1, 3])
        store.acknowledge_losses({"src-a": 3, "src-b": 3}, by="alice", reason="known")
        staged = store.stage_loss_ack({"app-1": 3}, by="bob", reason="known too",
                                      record=events(1)[0]["id"])
        assert staged is not None
        forget_source(store, "src-a")
        real_save = loss_acks.save

        def forgotten_meanwhile(data_dir: Path, acks: Any) -> None:
            real_save(data_dir, acks)
            if "src-b" in store._writer.sources:  # retention's next pass, on its thread
                forget_source(store, "src-b")

        monkeypatch.setattr(loss_acks, "save", forgotten_meanwhile)
        staged.drop()
        monkeypatch.undo()
        assert set(loss_acks.load(tmp_path)) == set()


def test_sources_forgotten_during_each_rewrite_by_the_holder_are_all_left_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The holder of the lock rewrote the file once more for a source forgotten during
    its first rewrite, but not again for one forgotten during that second: retention's
    own rewrite had found the lock taken, and the file named the third source until the
    next acknowledgement or start (which handed it to a new source of that name)."""
    with open_store(tmp_path) as store:
        for name in ("src-a", "src-b", "src-c", "app-1"):
            write(store, name, [1, 3])
        store.acknowledge_losses({"src-a": 3, "src-b": 3, "src-c": 3}, by="alice",
                                 reason="known")
        staged = store.stage_loss_ack({"app-1": 3}, by="bob", reason="known too",
                                      record=events(1)[0]["id"])
        assert staged is not None
        forget_source(store, "src-a")
        real_save, later = loss_acks.save, ["src-b", "src-c"]

        def forgotten_meanwhile(data_dir: Path, acks: Any) -> None:
            real_save(data_dir, acks)
            if later:  # retention's next pass, on its thread, as each rewrite ends
                forget_source(store, later.pop(0))

        monkeypatch.setattr(loss_acks, "save", forgotten_meanwhile)
        staged.drop()
        monkeypatch.undo()
        assert later == []
        assert set(loss_acks.load(tmp_path)) == set()


def test_an_unknown_source_is_refused_naming_the_command_that_lists_the_losses(
        tmp_path: Path) -> None:
    """It named `audit-collector stats`, whose source list is every source, not the
    ones with losses (`audit-collector losses`)."""
    with open_store(tmp_path) as store:
        write(store, "app-1", [1, 3], numbered=3)
        with pytest.raises(UnknownSourceError,
                           match=r"no source 'app-2' .*`audit-collector losses`"):
            store.plan_loss_ack("app-2")
        assert store.plan_loss_ack("app-1") == {"app-1": 3}
