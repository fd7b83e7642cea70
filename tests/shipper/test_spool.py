"""The shipper's disk spool (``spool``): records come back in append order and stay until
committed, files are private and go once replayed, a clock stepped back or a file removed
under the spool loses no order and no batch."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from audit_middleware.shipper.spool import Spool
from audit_middleware.shipper.spool_format import RECORD
from tests.shipper.spool_helpers import drain, spool_files


def test_records_come_back_in_append_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    bodies = [f"batch {i}\n".encode() * (i + 1) for i in range(50)]
    for body in bodies:
        assert spool.append(body)
    assert drain(spool) == bodies
    assert spool.empty


def test_a_record_stays_until_committed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(b"one")
    spool.append(b"two")
    assert spool.peek() == b"one"
    assert spool.peek() == b"one"  # not acknowledged yet: offered again
    spool.commit()
    assert spool.peek() == b"two"


def test_files_are_private_and_deleted_once_replayed(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory, max_bytes=1 << 20, file_bytes=100)
    for i in range(10):
        spool.append(bytes([65 + i]) * 60)  # one record per file at this file size
    files = spool_files(directory)
    assert len(files) == 10
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {"0o600"}
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    assert spool.used_bytes == 10 * (60 + RECORD.size)
    assert len(drain(spool)) == 10
    assert spool_files(directory) == []
    assert spool.used_bytes == 0


def test_a_spool_seen_empty_has_its_bytes_counted_off(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The last file leaves the spool with an unlink, which releases the GIL: a reader
    without the worker's lock (stats) must not see it empty with its bytes still used
    (spool_bytes != 0 after wait_for_delivery: a rare flake)."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(b"x" * 1000)
    seen: list[tuple[bool, int]] = []
    unlink = os.unlink

    def watched_unlink(path: os.PathLike[str]) -> None:
        seen.append((spool.empty, spool.used_bytes))  # what another thread could see now
        unlink(path)

    monkeypatch.setattr(os, "unlink", watched_unlink)
    assert drain(spool) == [b"x" * 1000]
    assert seen == [(True, 0)]


def test_a_clock_stepped_back_does_not_reorder_the_spool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are replayed in name order, and a name starts with the wall clock: stepped
    back an hour (NTP, a VM restored) between two files, the newer file was named first,
    and the process that adopted them replayed the newer batches before the older."""
    now = [1_800_000_000 * 10**9]
    monkeypatch.setattr(time, "time_ns", lambda: now[0])
    spool = Spool(tmp_path, max_bytes=1 << 20, file_bytes=10)  # one batch a file
    assert spool.append(b"first")
    now[0] -= 3600 * 10**9
    assert spool.append(b"second")
    spool.close()
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 2
    assert drain(adopter) == [b"first", b"second"]


@pytest.mark.parametrize("other_link", [False, True])
def test_batches_are_not_spooled_into_a_file_removed_under_the_spool(
        tmp_path: Path, other_link: bool) -> None:
    """Its file removed while the process spooled (an operator emptying a spool grown
    large in an outage, a temporary-file cleaner), every later batch was appended to the
    deleted file, counted spooled, and lost when the process exited unreplayed.
    ``other_link``: removal was then told by the file's link count falling to 0, and a
    second link (a hard-link backup of the spool, ``cp -al``; an NFS client's
    ``.nfsXXXX`` name for a file removed while open) kept it at 1."""
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    assert spool.append(b"before")
    for path in spool_files(tmp_path / "spool"):
        if other_link:
            os.link(path, tmp_path / "backup")
        path.unlink()
    assert spool.append(b"after")
    spool.close()  # the process exits before the collector is back
    adopter = Spool(tmp_path / "spool", max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 1
    assert drain(adopter) == [b"after"]


def test_a_file_removed_under_the_spool_is_closed_once_replayed(tmp_path: Path) -> None:
    """A spool file removed by something else (an operator emptying the spool) is still
    replayed from its descriptor; its unlink then finds nothing. Setting unreadable files
    aside moved the close into the unlink's success branch: such a file's descriptor
    (and its lock) stayed open for the life of the process, one per file."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.append(b"one")
    [path] = spool_files(tmp_path)
    fd = spool._files[0].fd
    path.unlink()
    assert drain(spool) == [b"one"]
    with pytest.raises(OSError) as closed:
        os.fstat(fd)
    assert closed.value.errno == errno.EBADF
