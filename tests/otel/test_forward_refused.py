"""forward_on_refused: a record the OTLP receiver refuses on its own (HTTP 400) is held
(the default: forwarding stops there, visibly) or, with "skip", given up after a few
refusals in a row: counted, logged, kept in the checkpoint file, and forwarding goes on
after it. A 400 that is a body limit never leads to a skip."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from pathlib import Path

import pytest

from collector.forward_checkpoint import CHECKPOINT_FILE, CheckpointError, CheckpointFile
from collector.forward_config import ForwardError, ForwardSettings
from collector.forward_refused import KEPT, SKIP_AFTER, RefusedInARow, SkippedRecord
from collector.forwarder import ExportFailed, Forwarder
from collector.store import Store
from tests.otel.otlp_receiver import OTLPReceiver
from tests.otel.test_forwarder import (
    checkpoint_save_fails_once,
    forwarder,
    leave_checkpoint,
    step_until,
    stored,
    write,
)

REASON = "log record 6: attribute audit.target.id is not valid UTF-8"


def steps(fwd: Forwarder, count: int) -> None:
    """``count`` steps of ``fwd``, its refused exports included (the backoff between
    them is the loop's, not a step's)."""
    for _ in range(count):
        with contextlib.suppress(ExportFailed):
            fwd.step()


def test_hold_retries_a_record_refused_alone_for_good(store: Store,
                                                      receiver: OTLPReceiver) -> None:
    write(store, 8)
    receiver.poison = {6}
    fwd = forwarder(store, receiver, batch_size=8)  # on_refused: "hold", the default
    steps(fwd, 5 + 3 * SKIP_AFTER)  # up to seq 5 in 5 steps, then 6 alone, refused
    with pytest.raises(ExportFailed, match=r"\(seq 6-6\): HTTP 400"):
        fwd.step()  # still: never given up
    assert receiver.seqs() == [1, 2, 3, 4, 5]
    stats = fwd.stats()
    assert (stats["checkpoint_seq"], stats["skipped_refused"]) == (5, 0)


def test_skip_gives_up_a_record_refused_alone_and_forwards_the_rest(
        store: Store, receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture) -> None:
    write(store, 8)
    receiver.poison, receiver.poison_reason = {6}, REASON
    fwd = forwarder(store, receiver, batch_size=8, on_refused="skip")
    with caplog.at_level(logging.ERROR, "collector.forward"):
        step_until(fwd, lambda: fwd.stats()["checkpoint_seq"], 8, 20, ExportFailed)
    assert receiver.seqs() == [1, 2, 3, 4, 5, 7, 8]  # nothing else lost, none twice
    # 8, 5-8 and 5-6 refused as they narrowed, then 6 alone SKIP_AFTER times
    assert receiver.refused == 3 + SKIP_AFTER
    poison = stored(store)[5]
    stats = fwd.stats()
    assert (stats["forwarded"], stats["skipped_refused"], stats["skipped"]) == (7, 1, 0)
    assert stats["last_skipped_refused"] == f"seq 6 ({poison['id']})"
    (line,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert "at seq 6 (event " + poison["id"] in line and REASON in line


def test_a_record_skipped_stays_skipped_across_a_restart_and_is_kept_in_the_checkpoint(
        store: Store, receiver: OTLPReceiver) -> None:
    write(store, 8)
    receiver.poison, receiver.poison_reason = {6}, REASON
    first = forwarder(store, receiver, batch_size=8, on_refused="skip")
    step_until(first, lambda: first.stats()["checkpoint_seq"], 8, 20, ExportFailed)
    write(store, 2, start=9)
    second = forwarder(store, receiver, batch_size=8, on_refused="skip")
    assert second.step() == 2 and second.step() == 0
    assert receiver.seqs() == [1, 2, 3, 4, 5, 7, 8, 9, 10]
    kept = json.loads((store.settings.data_dir / CHECKPOINT_FILE).read_text())
    (skipped,) = kept["skipped_refused"]
    assert (skipped["seq"], skipped["event_id"]) == (6, stored(store)[5]["id"])
    assert REASON in skipped["reason"] and skipped["skipped"].endswith("Z")


def test_a_skip_whose_checkpoint_save_failed_is_counted_once(
        store: Store, receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    write(store, 2)
    receiver.poison = {1}
    leave_checkpoint(store, receiver.endpoint, 0)  # (no first save of its own)
    fwd = forwarder(store, receiver, batch_size=1, on_refused="skip")
    steps(fwd, SKIP_AFTER - 1)
    checkpoint_save_fails_once(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        fwd.step()  # the refusal that skips it: not saved, so not skipped
    assert fwd.stats()["skipped_refused"] == 0
    assert fwd.step() == 1  # refused again: skipped now
    assert fwd.step() == 1 and receiver.seqs() == [2]
    assert fwd.stats()["skipped_refused"] == 1
    kept = json.loads((store.settings.data_dir / CHECKPOINT_FILE).read_text())
    assert [r["seq"] for r in kept["skipped_refused"]] == [1]


def test_a_body_limit_answered_400_never_skips_a_record(store: Store,
                                                        receiver: OTLPReceiver) -> None:
    write(store, 32, target="x" * 2048)
    receiver.max_body = 20_000  # 4 records (about 4.5 KB of request each)
    receiver.too_large_status = 400
    fwd = forwarder(store, receiver, batch_size=16, on_refused="skip")
    step_until(fwd, lambda: len(set(receiver.seqs())), 32, 40, ExportFailed)
    assert sorted(receiver.seqs()) == list(range(1, 33))
    assert fwd.stats()["skipped_refused"] == 0


def test_only_refusals_in_a_row_skip_and_another_answer_ends_the_row() -> None:
    row = RefusedInARow("skip")
    assert [row.refused_alone(6) for _ in range(SKIP_AFTER - 1)] == [False] * (SKIP_AFTER - 1)
    row.answered()  # a 503 for it, say
    assert [row.refused_alone(6) for _ in range(SKIP_AFTER)] == [False] * (SKIP_AFTER - 1) + [
        True]
    assert not row.refused_alone(7)  # another record starts its own row
    held = RefusedInARow("hold")
    assert not any(held.refused_alone(6) for _ in range(10 * SKIP_AFTER))


def test_a_bad_on_refused_value_is_refused_naming_the_allowed_ones(
        receiver: OTLPReceiver) -> None:
    with pytest.raises(ForwardError, match="forward_on_refused must be 'hold' .* or 'skip'"):
        ForwardSettings(endpoint=receiver.endpoint, on_refused="drop")  # type: ignore[arg-type]


def test_the_checkpoint_keeps_the_last_records_skipped_for_its_endpoint_only(
        tmp_path: Path) -> None:
    file = CheckpointFile(tmp_path / CHECKPOINT_FILE)
    endpoint = "http://127.0.0.1:4318/v1/logs"
    ids = [str(uuid.UUID(int=n, version=4)) for n in range(1, KEPT + 3)]
    for seq, event_id in enumerate(ids, start=1):
        file.save(endpoint, seq, event_id, SkippedRecord.now(seq, event_id, "HTTP 400"))
    file.save(endpoint, len(ids) + 1, ids[0])  # an accepted batch's save keeps them
    again = CheckpointFile(tmp_path / CHECKPOINT_FILE).of(endpoint)
    assert again is not None
    assert [r.seq for r in again.skipped_refused] == list(range(3, KEPT + 3))
    other = CheckpointFile(tmp_path / CHECKPOINT_FILE)
    assert other.of("http://elsewhere:4318/v1/logs") is None
    other.save("http://elsewhere:4318/v1/logs", 0, None)  # another endpoint's: not carried
    assert "skipped_refused" not in json.loads((tmp_path / CHECKPOINT_FILE).read_text())


def test_a_checkpoint_whose_records_skipped_are_damaged_is_refused_with_what_to_do(
        store: Store, receiver: OTLPReceiver) -> None:
    leave_checkpoint(store, receiver.endpoint, 0, skipped_refused=[{"seq": "6"}])
    # its own damage, its own remedy: the position is sound, not a file to move away
    with pytest.raises(CheckpointError, match=r"has a damaged skipped_refused \(entry 1 is "
                       r"not an object .* delete skipped_refused from the file \(the "
                       r"position is kept"):
        forwarder(store, receiver)


def test_a_receiver_refusing_every_record_has_at_most_kept_skipped_then_holds(
        store: Store, receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture) -> None:
    # Not a poison record but a receiver that takes nothing (a schema it no longer
    # accepts): skipping on would give up the whole store, one record at a time.
    write(store, KEPT + 5)
    receiver.poison = set(range(1, KEPT + 6))
    fwd = forwarder(store, receiver, batch_size=1, on_refused="skip")
    with caplog.at_level(logging.ERROR, "collector.forward"):
        steps(fwd, (KEPT + 3) * SKIP_AFTER)
    stats = fwd.stats()
    assert (stats["checkpoint_seq"], stats["skipped_refused"]) == (KEPT, KEPT)
    assert receiver.seqs() == []
    held = [r.getMessage() for r in caplog.records if "held, not skipped" in r.getMessage()]
    assert len(held) == 1 and f"seq {KEPT + 1} " in held[0]
    # Once the receiver takes a record again, a record it refuses alone is skipped again.
    receiver.poison = {KEPT + 3}
    steps(fwd, 2 + SKIP_AFTER + 2)
    assert receiver.seqs() == [KEPT + 1, KEPT + 2, KEPT + 4, KEPT + 5]
    assert fwd.stats()["skipped_refused"] == KEPT + 1


def test_skips_in_a_row_are_bounded_and_an_accepted_export_resets_them() -> None:
    row = RefusedInARow("skip")
    for seq in range(KEPT):
        assert [row.refused_alone(seq) for _ in range(SKIP_AFTER)][-1]
        row.skipped()
    assert not any(row.refused_alone(KEPT) for _ in range(3 * SKIP_AFTER))
    assert row.held_for_want_of_acceptance()
    row.accepted()
    assert [row.refused_alone(KEPT) for _ in range(SKIP_AFTER)][-1]


def test_a_checkpoint_file_holding_more_records_skipped_than_kept_is_cut_at_its_next_save(
        tmp_path: Path) -> None:
    """Only ``save`` with a record skipped cut the list to ``KEPT``: a file holding more
    (edited by hand) had them all carried over, and written again, at every checkpoint
    save (one per batch forwarded), however many."""
    endpoint = "http://127.0.0.1:4318/v1/logs"
    ids = [str(uuid.UUID(int=n, version=4)) for n in range(1, KEPT + 6)]
    path = tmp_path / CHECKPOINT_FILE
    CheckpointFile(path).save(endpoint, 1, ids[0])
    written = json.loads(path.read_text())
    written["skipped_refused"] = [SkippedRecord.now(seq, event_id, "HTTP 400").as_json()
                                  for seq, event_id in enumerate(ids, start=1)]
    path.write_text(json.dumps(written))  # more than KEPT, as no save writes them
    file = CheckpointFile(path)
    assert file.of(endpoint) is not None
    file.save(endpoint, len(ids) + 1, ids[0])  # an accepted batch's save
    kept = json.loads(path.read_text())["skipped_refused"]
    assert [r["seq"] for r in kept] == list(range(6, KEPT + 6))


def test_a_restart_allows_kept_skips_in_a_row_again(store: Store,
                                                    receiver: OTLPReceiver) -> None:
    # As docs/shipping.md says: the bound of skips in a row is the process's (bounded
    # per restart, not for good: an operator who restarts has looked at it).
    write(store, KEPT + 5)
    receiver.poison = set(range(1, KEPT + 6))
    held = forwarder(store, receiver, batch_size=1, on_refused="skip")
    steps(held, (KEPT + 3) * SKIP_AFTER)
    assert held.stats()["checkpoint_seq"] == KEPT  # held at the next one
    held.stop()
    restarted = forwarder(store, receiver, batch_size=1, on_refused="skip")
    steps(restarted, SKIP_AFTER)
    assert (restarted.stats()["checkpoint_seq"], restarted.stats()["skipped_refused"]) == (
        KEPT + 1, 1)
