"""Rotation and retention by age when the collector's wall clock is stepped (NTP, a VM
resumed, someone with root): ages also count the time the store saw pass."""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path

import orjson
import pytest

from audit_middleware.wire import FrameType, Result
from collector.storage import clock_anchor, store_clock
from tests.collector.storage_helpers import events, open_store, segment_files, wait_until
from tests.e2e.harness import (
    CollectorProcess,
    RawClient,
    short_tmp,
    stored_events,
    wire_line,
)

YEAR_NS = 366 * 86_400 * 10**9


def step_clocks(monkeypatch: pytest.MonkeyPatch, wall: list[int], elapsed: list[int]) -> None:
    """Move the wall clock by ``wall[0]`` and the elapsed-time clock by ``elapsed[0]``
    (nanoseconds, changeable while the store runs)."""
    real_wall, real_elapsed = time.time_ns, store_clock.elapsed_ns
    monkeypatch.setattr(time, "time_ns", lambda: real_wall() + wall[0])
    monkeypatch.setattr(store_clock, "elapsed_ns", lambda: real_elapsed() + elapsed[0])


def test_a_clock_stepped_forward_a_year_deletes_no_segment_until_a_year_has_passed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A wall clock stepped forward a year made retention by age delete every sealed
    segment in its next pass: the whole history, gone for a clock error."""
    wall, elapsed = [0], [0]
    step_clocks(monkeypatch, wall, elapsed)
    with caplog.at_level(logging.WARNING, logger="collector.store"), \
            open_store(tmp_path, max_segment_bytes=4096) as store:
        for _ in range(6):
            store.write(events(6))
        sealed = store.stats()["segments"]["sealed"]
        wall[0] = YEAR_NS
        store.write(events(1))
        wait_until(lambda: store.stats()["retention_deleted"]
                   or "wall clock moved" in caplog.text)
        assert store.stats()["retention_deleted"] == 0
        assert store.stats()["segments"]["sealed"] >= sealed
        elapsed[0] = YEAR_NS  # a year has really passed now: retention deletes them
        wait_until(lambda: store.stats()["retention_deleted"] >= sealed)
    # A restart no longer counts from the stepped clock: the way out is said instead.
    assert f"delete {tmp_path / clock_anchor.NAME} and start it" in caplog.text


def test_a_clock_stepped_back_still_rotates_the_active_segment_by_age(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stepped back a day, the wall clock made the active segment look younger than
    its age limit for a day more: it was not rotated by age until then."""
    wall, elapsed = [0], [0]
    step_clocks(monkeypatch, wall, elapsed)
    with open_store(tmp_path, max_segment_age=3600) as store:
        store.write(events(2))
        wall[0] = -86_400 * 10**9
        elapsed[0] = 3601 * 10**9  # an hour and a second have passed
        wait_until(lambda: len(segment_files(tmp_path)) == 2
                   and store.stats()["active_segment"]["records"] == 0)


# -- the anchor: a restart in the same boot does not believe a clock stepped forward -----
S = 10**9


@pytest.fixture
def fixed_clocks(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The wall clock, the elapsed-time clock and the boot id, as the test sets them."""
    now = {"wall": 1_000_000 * S, "elapsed": 500 * S}
    monkeypatch.setattr(time, "time_ns", lambda: now["wall"])
    monkeypatch.setattr(store_clock, "elapsed_ns", lambda: now["elapsed"])
    monkeypatch.setattr(clock_anchor, "boot_id", lambda: "boot-1")
    return now


def write_anchor(data_dir: Path, wall_ns: int, elapsed_ns: int, boot_id: str) -> None:
    clock_anchor.save(data_dir / clock_anchor.NAME,
                      clock_anchor.Anchor(wall_ns, elapsed_ns, boot_id))


def test_a_start_in_the_same_boot_counts_from_the_anchor_advanced_by_elapsed_time(
        tmp_path: Path, fixed_clocks: dict[str, int],
        caplog: pytest.LogCaptureFixture) -> None:
    """Anchored at the wall clock of each start, a clock stepped forward a year was
    believed at the first restart, and retention deleted the whole history."""
    write_anchor(tmp_path, 900_000 * S, 400 * S, "boot-1")  # 100 s of this boot ago
    fixed_clocks["wall"] += YEAR_NS
    with caplog.at_level(logging.WARNING, logger="collector.store"):
        clock = store_clock.StoreClock(tmp_path)
        assert clock.retention_now_ns() == 900_100 * S
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "ahead of the time its last run's clock anchor" in said[0]
    assert f"delete {tmp_path / clock_anchor.NAME}" in said[0]  # the way out
    # Written again at once: the trusted time, never the stepped wall clock.
    assert clock_anchor.load(tmp_path / clock_anchor.NAME) == (900_100 * S, 500 * S, "boot-1")


def test_a_wall_clock_behind_the_anchor_is_believed(
        tmp_path: Path, fixed_clocks: dict[str, int]) -> None:
    write_anchor(tmp_path, 2_000_000 * S, 400 * S, "boot-1")
    assert store_clock.StoreClock(tmp_path).retention_now_ns() == 1_000_000 * S


def test_the_anchor_deleted_by_the_operator_counts_from_the_wall_clock(
        tmp_path: Path, fixed_clocks: dict[str, int]) -> None:
    """The way out the warning says, for a clock that had been behind and was set right."""
    store_clock.StoreClock(tmp_path)
    fixed_clocks["wall"] += YEAR_NS
    (tmp_path / clock_anchor.NAME).unlink()
    assert store_clock.StoreClock(tmp_path).retention_now_ns() == 1_000_000 * S + YEAR_NS


@pytest.mark.parametrize("boot_id", ["boot-0", None])
def test_an_anchor_of_another_boot_or_none_to_tell_counts_from_the_wall_clock(
        tmp_path: Path, fixed_clocks: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        boot_id: str | None) -> None:
    """After a reboot the elapsed clock starts again: the anchor says nothing."""
    write_anchor(tmp_path, 900_000 * S, 400 * S, "boot-1")
    monkeypatch.setattr(clock_anchor, "boot_id", lambda: boot_id)
    assert store_clock.StoreClock(tmp_path).retention_now_ns() == 1_000_000 * S


@pytest.mark.parametrize("content", [
    b"{not json", b"[]", b'{"format": 2}',
    b'{"format": 1, "wall_ns": true, "elapsed_ns": 1, "boot_id": "boot-1"}',
    b'{"format": 1, "wall_ns": 1, "elapsed_ns": 1, "boot_id": ""}',
    # an elapsed time later than this boot's now
    b'{"format": 1, "wall_ns": 1, "elapsed_ns": 600000000000, "boot_id": "boot-1"}',
])
def test_a_garbled_anchor_counts_from_the_wall_clock_and_is_said_and_replaced(
        tmp_path: Path, fixed_clocks: dict[str, int], caplog: pytest.LogCaptureFixture,
        content: bytes) -> None:
    (tmp_path / clock_anchor.NAME).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="collector.store"):
        clock = store_clock.StoreClock(tmp_path)
    assert clock.retention_now_ns() == 1_000_000 * S
    assert "cannot be used" in caplog.text
    assert clock_anchor.load(tmp_path / clock_anchor.NAME) == (1_000_000 * S, 500 * S,
                                                              "boot-1")


def test_an_anchor_that_cannot_be_read_or_written_does_not_stop_the_store(
        tmp_path: Path, fixed_clocks: dict[str, int],
        caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / clock_anchor.NAME).mkdir()  # neither read nor replaced
    with caplog.at_level(logging.WARNING, logger="collector.store"):
        clock = store_clock.StoreClock(tmp_path)
    assert clock.retention_now_ns() == 1_000_000 * S
    assert "cannot be used" in caplog.text and "cannot write the clock anchor" in caplog.text


def test_the_anchor_is_written_again_at_its_cadence_with_the_trusted_time(
        tmp_path: Path, fixed_clocks: dict[str, int]) -> None:
    clock = store_clock.StoreClock(tmp_path)
    fixed_clocks["wall"] += YEAR_NS  # stepped while it runs
    fixed_clocks["elapsed"] += store_clock.ANCHOR_EVERY_NS - 1
    clock.save_if_due()
    assert clock_anchor.load(tmp_path / clock_anchor.NAME) == (1_000_000 * S, 500 * S,
                                                              "boot-1")
    fixed_clocks["elapsed"] += 1
    clock.save_if_due()
    assert clock_anchor.load(tmp_path / clock_anchor.NAME) == (
        1_000_000 * S + store_clock.ANCHOR_EVERY_NS, 500 * S + store_clock.ANCHOR_EVERY_NS,
        "boot-1")
    assert stat.S_IMODE((tmp_path / clock_anchor.NAME).stat().st_mode) == 0o640


class SteppedClockCollector(CollectorProcess):
    module = "tests.collector.stepped_clock_collector"


def send_batches(collector: CollectorProcess, first_seq: int, batches: int) -> list[str]:
    """``batches`` acknowledged batches of 3 events (numbered on from ``first_seq``);
    their ids."""
    client = RawClient(collector.socket)
    ids: list[str] = []
    try:
        client.hello()
        for b in range(batches):
            seq = first_seq + 3 * b
            lines = [wire_line(n) for n in range(seq, seq + 3)]
            kind, body = client.batch(b + 1, lines, seqs=list(range(seq, seq + 3)))
            assert kind is FrameType.RESULT, body
            assert len(Result.decode(body).written) == 3, body
            ids += [orjson.loads(line)["id"] for line in lines]
    finally:
        client.close()
    return ids


def test_a_collector_restarted_after_its_clock_stepped_forward_deletes_nothing() -> None:
    """The clock stepped forward a year, then a restart (a crash, a deploy): the new
    process took the stepped wall clock for the truth, and its first retention pass
    deleted every sealed segment, signed as retention, so verify called it clean."""
    with short_tmp() as root:
        data_dir, args = root / "data", ("--max-segment-bytes", "1024")
        with SteppedClockCollector(data_dir, *args) as first:
            ids = send_batches(first, 1, 4)  # a segment each: 3 sealed, the 4th active
        stepped = SteppedClockCollector(data_dir, *args,
                                        env={"STEPPED_CLOCK_SECONDS": str(YEAR_NS // S)})
        with stepped:
            # Acknowledged after retention's first pass (it runs before the first batch).
            ids += send_batches(stepped, 13, 1)
        log = "".join(stepped.output)
        stored = {r["id"] for r in stored_events(data_dir)}
    assert set(ids) <= stored, log
    assert "retention: deleted" not in log, log
    assert "ahead of the time its last run's clock anchor says" in log, log


def test_a_boot_id_that_cannot_be_read_is_said_with_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Without the kernel's boot id (a unit hardened with ProcSubset=pid hides
    /proc/sys) no anchor is kept, and a restart believes a clock stepped forward: the
    whole history deleted at the next start. That went unsaid."""
    hidden = tmp_path / "hidden" / "boot_id"
    monkeypatch.setattr(clock_anchor, "_BOOT_ID", hidden)
    with caplog.at_level(logging.WARNING, logger="collector.store"):
        store_clock.StoreClock(tmp_path)
    assert not (tmp_path / clock_anchor.NAME).exists()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1, said
    assert f"cannot read this boot's id from {hidden}" in said[0]
    assert "a restart believes a wall clock stepped forward" in said[0]
    assert "ProcSubset=pid" in said[0]  # what to do


def test_without_a_boot_id_a_step_is_not_said_to_be_ignored_after_a_restart(
        tmp_path: Path, fixed_clocks: dict[str, int], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """With no anchor kept, the warning of a step still said retention deleted nothing
    early "after a restart too", and named deleting an anchor that does not exist."""
    monkeypatch.setattr(clock_anchor, "boot_id", lambda: None)
    clock = store_clock.StoreClock(tmp_path)
    fixed_clocks["wall"] += YEAR_NS
    with caplog.at_level(logging.WARNING, logger="collector.store"):
        assert clock.retention_now_ns() == 1_000_000 * S
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1, said
    assert "until the collector restarts" in said[0], said
    assert "after a restart too" not in said[0] and clock_anchor.NAME not in said[0], said
