"""A disk to fill, for the disk-full fault tests: a small tmpfs (mounted as root;
otherwise the test runs itself again inside an unprivileged user and mount namespace,
``unshare -Urm``, where mounting a tmpfs is allowed), a ballast file that fills it to the
last byte, a collector whose data directory is on it with an app shipping to it, and the
end of such a test: the disk freed, the app finished, what was stored read."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from tests.e2e.harness import ROOT
from tests.environment import unavailable
from tests.faults.fleet import App, Collector, Stored

# Each of test_disk_full's episodes fills whatever is free with ballast, so the size
# only has to hold the events stored by the end (~0.7 KiB each with the index): at 24m
# a slow run (a busy machine, more events between episodes) left too little for the
# final start's index.
TMPFS_SIZE = "64m"
IN_NAMESPACE = "FAULTS_IN_NAMESPACE"
#: What a collector whose store cannot open on a full disk says while it waits.
WAITING = "Waiting for free space"
#: Seconds ``finish`` waits for the app's delivery: a few seconds' spool takes a few;
#: failing past it, a test says why within the disk-full tests' pytest timeout (180 s),
#: where the app's own 120 s ran into that timeout, which said nothing of the disk.
DELIVERY_WAIT = 90.0


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs",
                    str(path)], check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(path: Path) -> int:
    """Write a ballast file until the filesystem refuses (ENOSPC); its size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    chunk, total = b"\0" * (256 * 1024), 0
    try:
        while True:
            try:
                total += os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return total
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)


def segment_lines_are_whole_records(data_dir: Path) -> None:
    for segment in sorted((data_dir / "segments").glob("segment-*.jsonl")):
        data = segment.read_bytes()
        assert data.endswith(b"\n"), f"{segment.name} ends in a partial record"
        for line in data.splitlines():
            record = orjson.loads(line)
            assert "segment" in record or type(record.get("seq")) is int, line[:200]


def fill_paused(collector: Collector, ballast: Path) -> int:
    """Fill the disk to the last byte with ``ballast``, the collector paused meanwhile:
    otherwise a retention pass beside the fill signs while there is room and frees space
    after it. The ballast's size."""
    collector.pause()
    try:
        return fill(ballast)
    finally:
        collector.resume()


#: A collector whose records older than 4 s go: once the disk is full, retention has
#: something to delete.
RETAINING_4_S = ("--max-segment-bytes", "256KiB", "--retention-days", repr(4 / 86_400))


def retention_under_way(collector: Collector) -> bool:
    """Whether retention has deleted a segment, and the reserve it signs in on a full
    disk is made."""
    return ("retention: deleted" in "".join(collector.output)
            and (collector.data_dir / "reserve").exists())


class OnATmpfs(NamedTuple):
    collector: Collector
    app: App
    ballast: Path  # not there until the test fills the disk


@contextlib.contextmanager
def collector_and_app_on_a_tmpfs(tmp: Path, *collector_args: str, size: str = TMPFS_SIZE
                                 ) -> Iterator[OnATmpfs]:
    """A tmpfs of ``size`` at ``tmp/disk``, a collector started with its data directory
    on it (and ``collector_args``), an app shipping to it (its spool and logs under
    ``tmp``, off the disk). The tmpfs is unmounted at the end; the processes are the
    test's to end (``finish``), or the faults conftest's if it fails half-way."""
    with tmpfs(tmp / "disk", size) as disk:
        collector = Collector(disk / "data", *collector_args).start()
        app = App("app", collector.url, tmp / "spool", tmp / "logs", burst=10, pause=0.005)
        yield OnATmpfs(collector, app, disk / "ballast")


@contextlib.contextmanager
def shown_on_failure(collector: Collector) -> Iterator[None]:
    """The steps of a test on a full disk before its ``finish``: one that fails shows
    the collector's log with its failure, and the test ends there (the faults conftest
    kills its processes), not finished. ``finish`` in a ``finally`` made the app deliver
    all it had spooled while the failing step waited: in a CI run (2026-11-27) a wait of
    60 s in vain left ~100,000 events, more than the 64 MiB disk holds without
    retention; once the ballast went they filled it again, the collector rightly refused
    them, the app never finished, and pytest-timeout hid the step's own failure."""
    try:
        yield
    except BaseException:
        print("".join(collector.output)[-6000:])  # shown with the failure
        raise


def finish(collector: Collector, app: App, *, free: Path | None = None) -> dict[str, Any]:
    """The end of a test on a full disk: ``free`` (the ballast) deleted if given; the
    collector started again if it exited (as it did before its fixes: the app could not
    deliver, nor finish, otherwise); the app finished; the collector stopped, cleanly.
    What the app's ``finish`` says (emitted, delivered, dropped...). An app that has not
    delivered within ``DELIVERY_WAIT`` fails the test, saying how full the disk is."""
    if free is not None:
        free.unlink(missing_ok=True)
    if not collector.alive:
        collector.start()
    try:
        result = app.finish(timeout=DELIVERY_WAIT)
    except subprocess.TimeoutExpired:
        usage = shutil.disk_usage(collector.data_dir)
        raise AssertionError(
            f"the app did not deliver within {DELIVERY_WAIT:g} s; the collector's disk has "
            f"{usage.free} of {usage.total} bytes free (what the app spooled may not fit "
            f"it); the collector's log ends:\n{''.join(collector.output)[-3000:]}"
        ) from None
    assert collector.stop() == 0
    return result


def read_stored(collector: Collector) -> tuple[str, Stored]:
    """A stopped collector's log, and what it stored (every segment line checked to be
    a whole record first)."""
    segment_lines_are_whole_records(collector.data_dir)
    return "".join(collector.output), Stored.read(collector.data_dir)


def verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """``audit-collector verify`` of ``data_dir``, as an operator runs it (room for its
    own files, its SQLite reader's ``-shm``, is the caller's to make)."""
    return subprocess.run([sys.executable, "-m", "collector", "verify", "--data-dir",
                           str(data_dir)], capture_output=True, text=True, cwd=ROOT,
                          check=False)


def nothing_lost_nothing_twice(stored: Stored, app: App, result: dict[str, Any]) -> None:
    """Every event the app saw acknowledged is stored, each exactly once (segments and
    index alike), and every event it emitted was delivered, none dropped (``result``:
    what its ``finish`` said)."""
    assert stored.missing(app.acknowledged()) == []
    stored.check_exactly_once()
    assert result["delivered"] and result["dropped"] == 0, result
    assert len(stored.in_segments) == result["emitted"]


def rerun_in_a_user_namespace() -> None:
    """Not root: this test again, as root of a new user and mount namespace."""
    if subprocess.run(["unshare", "-Urm", "true"], check=False,
                      capture_output=True).returncode != 0:
        unavailable("disk full needs a tmpfs: run as root, or allow unprivileged user "
                    "namespaces (unshare -Urm)")
    caller = sys._getframe(1).f_code  # the test that called this
    test = f"{Path(caller.co_filename).relative_to(ROOT)}::{caller.co_name}"
    done = subprocess.run(["unshare", "-Urm", sys.executable, "-m", "pytest", "-q", "-s",
                           "-p", "no:cacheprovider", test], check=False, cwd=ROOT,
                          env={**os.environ, IN_NAMESPACE: "1"}, capture_output=True,
                          text=True, timeout=600)
    print(done.stdout[-4000:])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
