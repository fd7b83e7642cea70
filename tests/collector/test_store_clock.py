"""Rotation and retention by age when the collector's wall clock is stepped (NTP, a VM
resumed, someone with root): ages also count the time the store saw pass."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from collector.storage import store_clock
from tests.collector.storage_helpers import events, open_store, segment_files, wait_until

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
    assert "restart the collector" in caplog.text


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
