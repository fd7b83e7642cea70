"""Progress files (``spool_progress``): an adopter goes on where the file's owner stopped;
a damaged or planted progress file is said and its spool file replayed from its start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from audit_middleware.shipper import spool_progress
from audit_middleware.shipper.spool import Spool
from audit_middleware.shipper.spool_files import SUFFIX
from audit_middleware.shipper.spool_format import RECORD
from tests.shipper.spool_helpers import (
    batch_bodies,
    damaged_spool,
    drain,
    leftovers,
    progress_path_of,
    spool_file_of,
    spool_files,
)


def test_a_process_that_adopts_a_half_replayed_file_goes_on_where_its_owner_stopped(
        tmp_path: Path) -> None:
    """Read progress lived in memory: a process that died after replaying part of a
    damaged file (its records acknowledged, its corrupt region counted) left a file the
    next process replayed from the start. Acknowledged batches were sent again, and the
    corrupt region counted again: ``dropped`` inflated across processes."""
    bodies = batch_bodies(3)
    damaged_spool(tmp_path, bodies, {1})
    code = ("import json, os, sys\nfrom audit_middleware.shipper.spool import Spool\n"
            "s = Spool(sys.argv[1], max_bytes=1 << 30)\nassert s.adopt_orphans() == 1\n"
            "first = s.peek()\ns.commit()\n"
            "third = s.peek()  # past the corrupt record, counted; not acknowledged\n"
            "print(json.dumps([first.decode(), third.decode(), s.lost_events]))\n"
            "sys.stdout.flush()\nos._exit(9)  # dies before the third is acknowledged\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False,
                         capture_output=True, text=True)
    first, third, lost = json.loads(out.stdout)
    assert (first.encode(), third.encode(), lost) == (bodies[0], bodies[2], 3)
    adopter = Spool(tmp_path, max_bytes=1 << 30)
    assert adopter.adopt_orphans() == 1
    assert drain(adopter) == [bodies[2]]  # the acknowledged first one is not sent again
    assert (adopter.corrupt_bytes, adopter.lost_events) == (0, 0)  # counted once, above
    assert leftovers(tmp_path) == []  # the progress file went with its spool file


def test_a_damaged_region_is_logged_even_if_its_process_dies_once_past_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The progress past a damaged region was written before the region was logged: a
    process killed in between had counted it in memory only, and its adopter went on
    past it: a loss logged nowhere, counted in no living process."""
    bodies = batch_bodies(3)
    damaged_spool(tmp_path, bodies, {1})
    code = ("import logging, os, sys\n"
            "logging.basicConfig(stream=sys.stderr, level=logging.ERROR)\n"
            "from audit_middleware.shipper import spool\n"
            "s = spool.Spool(sys.argv[1], max_bytes=1 << 30)\nassert s.adopt_orphans() == 1\n"
            "s.peek()\ns.commit()\nsave = spool.Spool._save_progress\n"
            "def killed_once_saved(self, f):\n"
            "    save(self, f)\n"
            "    os._exit(9)  # a SIGKILL right after the progress write\n"
            "spool.Spool._save_progress = killed_once_saved\n"
            "s.peek()  # skips the damaged second record\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 9, out.stderr
    adopter = Spool(tmp_path, max_bytes=1 << 30)
    assert adopter.adopt_orphans() == 1
    assert drain(adopter) == [bodies[2]]
    logged = out.stderr + caplog.text
    assert "torn or corrupt" in logged and "with the 3 events" in logged, logged


def test_a_damaged_progress_file_replays_its_spool_file_from_the_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bodies = batch_bodies(2)
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for body in bodies:
        spool.append(body)
    assert spool.peek() == bodies[0]
    spool.commit()
    spool.close()
    (progress,) = tmp_path.glob("*" + spool_progress.PROGRESS)
    progress.write_bytes(b"\xff" * 12)  # garbled
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 1
    assert drain(adopter) == bodies  # sent again: the collector drops what it has
    assert "replay progress" in caplog.text and "from its start" in caplog.text


def test_a_damaged_progress_file_too_long_is_mended_by_the_next_progress(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A progress file longer than one offset was found damaged (its spool file replayed
    from the start, as it should), but rewritten in place it stayed too long: every
    later adopter found it damaged again, resent the file's acknowledged batches and
    counted its damaged regions again."""
    bodies = batch_bodies(3)
    damaged_spool(tmp_path, bodies, {1})
    (progress,) = [tmp_path / (path.name[:-len(SUFFIX)] + spool_progress.PROGRESS)
                   for path in spool_files(tmp_path)]
    progress.write_bytes(b"\xff" * 40)
    first = Spool(tmp_path, max_bytes=1 << 20)
    assert first.adopt_orphans() == 1
    assert first.peek() == bodies[0]
    first.commit()
    assert first.peek() == bodies[2]  # past the damaged second record, counted
    assert first.lost_events == 3
    first.close()  # this process exits before the third is acknowledged
    caplog.clear()
    second = Spool(tmp_path, max_bytes=1 << 20)
    assert second.adopt_orphans() == 1
    assert drain(second) == [bodies[2]]
    assert (second.corrupt_bytes, second.lost_events) == (0, 0)
    assert "replay progress" not in caplog.text


def test_a_progress_file_left_without_its_spool_file_is_removed(tmp_path: Path) -> None:
    """A process killed between removing a replayed spool file and its progress file."""
    left = tmp_path / ("00000000000000000001-99-aa" + spool_progress.PROGRESS)
    left.write_bytes(bytes(12))
    assert Spool(tmp_path, max_bytes=1 << 20).adopt_orphans() == 0
    assert not left.exists()


def test_a_spool_file_written_before_progress_files_existed_is_replayed(
        tmp_path: Path) -> None:
    """The record format is unchanged: a file from an older version (no progress file)
    is replayed whole."""
    bodies = batch_bodies(2)
    path = tmp_path / ("00000000000000000001-99-aa" + SUFFIX)
    path.write_bytes(b"".join(RECORD.pack(len(b), zlib.crc32(b)) + b for b in bodies))
    path.chmod(0o600)
    tmp_path.chmod(0o700)
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 1
    assert drain(adopter) == bodies


def plant(progress: Path, planted: str) -> None:
    """Put ``planted`` (what the spool names it) at a progress file's path."""
    if planted == "directory":
        progress.mkdir()
    elif planted == "symbolic link":
        progress.symlink_to(progress.parent / "elsewhere")
    else:
        os.mkfifo(progress, 0o600)


def test_a_fifo_at_a_progress_path_does_not_block_adoption(tmp_path: Path) -> None:
    """The progress file was opened without O_NONBLOCK: a FIFO planted at its path
    blocked the sink's worker in open() for ever (nobody writes to it). Now it is
    refused as what it is, and its spool file replayed from its start."""
    bodies = batch_bodies(2)
    path = spool_file_of(tmp_path, bodies)
    plant(progress_path_of(path), "named pipe (FIFO)")
    code = ("import logging, sys\nlogging.basicConfig(stream=sys.stderr)\n"
            "from audit_middleware.shipper.spool import Spool\n"
            "s = Spool(sys.argv[1], max_bytes=1 << 20)\nassert s.adopt_orphans() == 1\n"
            "out = []\nwhile (body := s.peek()) is not None:\n"
            "    out.append(body.decode())\n    s.commit()\n"
            "print(len(out), out == sys.argv[2:])\n")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path),
                               *(b.decode() for b in bodies)],
                              check=False, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("adopting a spool file whose progress path is a FIFO never returned")
    assert done.stdout.split() == ["2", "True"], done.stderr
    assert "is a named pipe (FIFO)" in done.stderr and "remove it" in done.stderr
    assert "check the disk" not in done.stderr


@pytest.mark.parametrize("planted", ["symbolic link", "directory"])
def test_something_planted_at_a_progress_path_is_named_with_what_to_do(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, planted: str) -> None:
    """A symbolic link or a directory at ``<name>.spool-read`` (progress cannot be kept
    for that file) was logged as a read error ending "check the disk": the disk is
    fine, and nothing said to remove what is there."""
    bodies = batch_bodies(2)
    path = spool_file_of(tmp_path, bodies)
    progress = progress_path_of(path)
    plant(progress, planted)
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 1
    assert drain(adopter) == bodies  # replayed from its start, nothing lost
    assert f"is a {planted}" in caplog.text and "remove it" in caplog.text
    assert str(progress) in caplog.text
    assert "check the disk" not in caplog.text


@pytest.mark.parametrize("planted", ["symbolic link", "directory", "named pipe (FIFO)"])
def test_something_planted_at_a_progress_path_while_replaying_is_named_too(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, planted: str) -> None:
    """Met at the first progress write of a file this process spooled itself: the
    write's error (ELOOP, EISDIR, ESPIPE) ended "check the disk" too."""
    bodies = batch_bodies(3)
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for body in bodies:
        assert spool.append(body)
    (path,) = spool_files(tmp_path)
    progress = progress_path_of(path)
    plant(progress, planted)
    assert drain(spool) == bodies
    assert f"is a {planted}" in caplog.text and "remove it" in caplog.text
    assert str(progress) in caplog.text
    assert "check the disk" not in caplog.text
