"""Stores to verify, the tampering done to them, and ``verify`` run in-process or as the
real ``audit-collector verify`` subprocess."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector.integrity.verify import Report, verify
from tests.collector.storage_helpers import events, open_store, wait_until
from tests.e2e.harness import ROOT

SMALL = 2048  # max_segment_bytes: ~3 records a segment


def build_store(data_dir: Path, batches: int = 6, per_batch: int = 3, **settings: Any) -> Path:
    """A closed store of ``batches`` segments (one per batch, sealed but the last)."""
    settings.setdefault("max_segment_bytes", SMALL)
    with open_store(data_dir, **settings) as store:
        for _ in range(batches):
            store.write(events(per_batch))
    return data_dir


def copy_of(data_dir: Path, target: Path) -> Path:
    shutil.copytree(data_dir, target)
    return target


def segment_paths(data_dir: Path) -> list[Path]:
    """The segments, plain and compressed; not a ``.tmp`` a rotation cut short by a kill
    left behind (it is no segment yet: start-up removes it)."""
    return sorted(p for p in (data_dir / "segments").glob("segment-*.jsonl*")
                  if not p.name.endswith(".tmp"))


def digest_paths(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "digests").glob("*.digests.jsonl"))


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def check(data_dir: Path, **options: Any) -> Report:
    return verify(data_dir, **options)


def reasons(report: Report) -> dict[str, list[str]]:
    """{file path: its reasons, most specific first} of the INVALID files."""
    return {r.path: r.reasons for r in report.invalid}


def run_verify(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m collector verify ARGS`` as a subprocess."""
    return subprocess.run([sys.executable, "-m", "collector", "verify", "--no-progress",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def refuse_digests(monkeypatch: Any, kind: str) -> dict[str, bool]:
    """Make every digest of ``kind`` (seal, retention...) fail to be written, as a full
    disk does, while the returned switch's ``"on"`` is True (it starts True)."""
    import errno

    from collector.integrity import digests

    real_append = digests.append
    switch = {"on": True}
    marker = f'"kind":"{kind}"'.encode()

    def append(directory: Path, segment_name: str, line: bytes) -> Path:
        if switch["on"] and marker in line:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(directory, segment_name, line)

    monkeypatch.setattr(digests, "append", append)
    return switch


def compressed_store(data_dir: Path) -> Path:
    """A closed store of three segments, the two sealed ones compressed."""
    with open_store(data_dir, max_segment_bytes=2048, compress_sealed=True) as live:
        for _ in range(3):
            live.write(events(3))
        wait_until(lambda: len(list((data_dir / "segments").glob("*.gz"))) == 2)
    return data_dir


#: 2027-01-15T08:00:00Z: the collector's (fake) wall clock in the tests that set it.
EIGHT_AM_NS = 1_800_000_000 * 10**9


def wall_clock_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """The collector's wall clock, set by the test: ``set_clock(minutes after 08:00)``."""
    now = [EIGHT_AM_NS]
    monkeypatch.setattr(time, "time_ns", lambda: now[0])

    def set_clock(minutes: int) -> None:
        now[0] = EIGHT_AM_NS + minutes * 60 * 10**9
    return set_clock


def minutes_us(minutes: int) -> int:
    return (EIGHT_AM_NS + minutes * 60 * 10**9) // 1000


def tamper(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"cred-", b"CRED-", 1))
