"""Adoption of orphans (``spool_adoption``): files of dead processes are adopted oldest
first, never those of live ones nor of another collector; a scan that cannot claim one
goes on; a backlog does not take every descriptor."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit_middleware.shipper import spool_adoption
from audit_middleware.shipper import spool_files as spool_files_module
from audit_middleware.shipper.spool import Spool
from audit_middleware.shipper.spool_files import SUFFIX
from tests.shipper.spool_helpers import (
    FcntlWithoutFlock,
    drain,
    orphans,
    spool_file_of,
    spool_files,
    types_unread,
)


def test_a_file_replayed_and_deleted_while_another_process_opened_it_is_not_adopted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between a scanner's open and its lock, the owner may replay the file whole,
    unlink it and close it (which frees the lock): the scanner then adopted the dead
    file and sent its batches again (a review helper)."""
    import fcntl

    old = Spool(tmp_path, max_bytes=1 << 20)
    old.append(b"a")
    old.append(b"b")
    old.close()
    owner = Spool(tmp_path, max_bytes=1 << 20)
    assert owner.adopt_orphans() == 1
    real_flock = fcntl.flock
    finished: list[list[bytes]] = []

    def owner_finishes_first(fd: int, operation: int) -> None:
        if operation & fcntl.LOCK_NB and not finished:
            finished.append(drain(owner))  # unlinks, then closes: the lock comes free
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", owner_finishes_first)
    scanner = Spool(tmp_path, max_bytes=1 << 20)
    assert scanner.adopt_orphans() == 0
    assert finished == [[b"a", b"b"]] and scanner.peek() is None


def test_files_left_by_a_closed_spool_are_adopted_oldest_first(tmp_path: Path) -> None:
    old = Spool(tmp_path, max_bytes=1 << 20, file_bytes=10)
    for i in range(3):
        old.append(f"old-{i}".encode())
    old.close()
    new = Spool(tmp_path, max_bytes=1 << 20)
    new.append(b"new")  # appending first scans for orphans: the old files go first
    assert drain(new) == [b"old-0", b"old-1", b"old-2", b"new"]


def test_files_of_a_live_process_are_never_adopted(tmp_path: Path) -> None:
    owner = Spool(tmp_path, max_bytes=1 << 20)
    owner.append(b"mine")
    other = Spool(tmp_path, max_bytes=1 << 20)
    assert other.adopt_orphans() == 0
    assert other.peek() is None
    assert owner.peek() == b"mine"


def test_a_forked_child_keeps_its_hands_off_the_parents_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(b"parent's")
    pid = os.fork()
    if pid == 0:  # child
        spool.after_fork()
        ok = spool.peek() is None and spool.adopt_orphans() == 0 and spool.append(b"child's")
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert spool.peek() == b"parent's"  # the parent's lock survived the child closing its copy
    spool.commit()
    assert spool.adopt_orphans() == 1  # the child exited: its file is an orphan now
    assert drain(spool) == [b"child's"]


def test_a_child_forked_while_its_parent_adopts_lets_go_of_the_adopted_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork between a file's lock and its entry in the spool's list (another thread
    adopting): after_fork did not close the child's copy, so once the parent died the
    child kept the orphan locked, and no process could adopt it for the child's life."""
    import fcntl

    code = ("import os, sys\nfrom audit_middleware.shipper.spool import Spool\n"
            "Spool(sys.argv[1], max_bytes=1 << 20).append(b'orphan')\nos._exit(9)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    child: list[int] = []
    real_flock = fcntl.flock
    ready, told = os.pipe()  # the child says when its fork hook has run

    class ForkAfterLocking:
        def __getattr__(self, name: str) -> object:
            return getattr(fcntl, name)

        @staticmethod
        def flock(fd: int, operation: int) -> None:
            real_flock(fd, operation)
            # The spool file's lock, not the adoption lock taken before it: forked at
            # that one, the adopted file was not open yet, and this tested nothing.
            if child or not os.readlink(f"/proc/self/fd/{fd}").endswith(SUFFIX):
                return
            pid = os.fork()
            if pid == 0:  # the child: what the shipper's fork hook does, then lives on
                adopter.after_fork()
                os.write(told, b"x")
                time.sleep(3)
                os._exit(0)
            child.append(pid)

    monkeypatch.setattr(spool_adoption, "fcntl", ForkAfterLocking())
    assert adopter.adopt_orphans() == 1
    monkeypatch.undo()
    adopter.close()  # the parent dies (its descriptors closed), the child lives on
    try:
        assert os.read(ready, 1) == b"x"
        assert Spool(tmp_path, max_bytes=1 << 20).adopt_orphans() == 1
    finally:
        os.waitpid(child[0], 0)
        os.close(ready)
        os.close(told)


def test_a_crashed_process_leaves_files_others_adopt(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "from audit_middleware.shipper.spool import Spool\n"
        "s = Spool(sys.argv[1], max_bytes=1 << 20)\n"
        "s.append(b'from the crashed process')\n"
        "os._exit(9)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    survivor = Spool(tmp_path, max_bytes=1 << 20)
    assert drain(survivor) == []  # nothing adopted yet: adoption is an explicit scan
    assert survivor.adopt_orphans() == 1
    assert drain(survivor) == [b"from the crashed process"]


def test_a_partial_file_is_removed_only_once_it_is_surely_abandoned(tmp_path: Path) -> None:
    """A file another process has just created but not yet locked looks abandoned: taken
    for it and deleted, that process's batch was lost. Only old partial files go."""
    fresh = tmp_path / "00000000000000000001-99-aa.spool-new"
    old = tmp_path / "00000000000000000000-98-bb.spool-new"
    fresh.write_bytes(b"")
    old.write_bytes(b"")
    long_ago = time.time() - spool_adoption.PARTIAL_GRACE - 10
    os.utime(old, (long_ago, long_ago))
    assert Spool(tmp_path, max_bytes=1 << 20).adopt_orphans() == 0
    assert fresh.exists() and not old.exists()


def test_an_orphan_that_cannot_be_claimed_is_let_go_and_the_scan_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """An OSError from an orphan's fstat (EIO, an NFS ESTALE) escaped adopt_orphans: the
    files claimed before it in that scan stayed open and locked for the process's life,
    replayed by nobody, and so did the one that failed. Now that one is let go (said)
    and the others adopted; a later scan takes it."""
    writer = Spool(tmp_path, max_bytes=1 << 20, file_bytes=1)  # a file for each batch
    for body in (b"first", b"second", b"third"):
        assert writer.append(body)
    writer.close()
    failing = spool_files(tmp_path)[1]

    class FstatFails:
        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        @staticmethod
        def fstat(fd: int) -> os.stat_result:
            if os.readlink(f"/proc/self/fd/{fd}") == str(failing):
                raise OSError(errno.EIO, "Input/output error")
            return os.fstat(fd)

    monkeypatch.setattr(spool_adoption, "os", FstatFails())
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 2
    monkeypatch.undo()
    assert f"cannot adopt {failing}" in caplog.text and "Input/output error" in caplog.text
    fd = os.open(failing, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # not held: let go at once
    finally:
        os.close(fd)
    assert drain(adopter) == [b"first", b"third"]
    assert adopter.adopt_orphans() == 1 and drain(adopter) == [b"second"]


def test_a_close_that_fails_while_claiming_is_not_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """close() that reports an error (EIO: NFS, FUSE) has still freed the descriptor.
    A failed close in a claim was retried by the claim's error path: a second close of
    that number, which another thread may have reused meanwhile (its socket closed)."""
    live = Spool(tmp_path, max_bytes=1 << 20)
    assert live.append(b"held by a live process")  # its lock is taken: not an orphan
    closes: list[int] = []

    class CloseFails:
        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        @staticmethod
        def close(fd: int) -> None:
            closes.append(fd)
            spool_file = os.readlink(f"/proc/self/fd/{fd}").endswith(SUFFIX)
            os.close(fd)
            if spool_file:
                raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_files_module, "os", CloseFails())
    assert Spool(tmp_path, max_bytes=1 << 20).adopt_orphans() == 0
    monkeypatch.undo()
    live.close()
    assert closes and len(closes) == len(set(closes))


def test_an_orphan_whose_progress_cannot_be_checked_does_not_end_the_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A progress file's check (does its spool file still exist?) raised any error but
    ENOENT (EIO) out of adopt_orphans: the orphans claimed before it in that scan stayed
    open and locked for the process's life, replayed by nobody. Now said, left for a
    later scan, and the scan goes on."""
    writer = Spool(tmp_path, max_bytes=1 << 20)
    assert writer.append(b"one") and writer.append(b"two")
    writer.close()
    replayer = Spool(tmp_path, max_bytes=1 << 20)
    assert replayer.adopt_orphans() == 1
    assert replayer.peek() == b"one"
    replayer.commit()  # its progress file is written beside it
    replayer.close()
    later = Spool(tmp_path, max_bytes=1 << 20, file_bytes=1)
    assert later.append(b"three")
    later.close()
    first = spool_files(tmp_path)[0]
    real_stat = os.stat

    def stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if os.fspath(path) == str(first):  # type: ignore[arg-type]
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    adopter = Spool(tmp_path, max_bytes=1 << 20)
    monkeypatch.setattr(os, "stat", stat)
    adopted = adopter.adopt_orphans()
    monkeypatch.undo()
    assert adopted == 2 and "Input/output error" in caplog.text
    assert drain(adopter) == [b"two", b"three"]


def test_files_spooled_for_another_collector_are_left_for_a_sink_of_that_collector(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two apps started in one directory share the default spool: batches one spooled
    for its collector were replayed by the other into another collector's audit log."""
    first = Spool(tmp_path, max_bytes=1 << 20, destination="unix:///srv/a/collector.sock")
    assert first.append(b"for a")
    first.close()
    other = Spool(tmp_path, max_bytes=1 << 20, destination="tcp://audit.example:7100")
    with caplog.at_level("WARNING", logger="audit_middleware"):
        assert other.adopt_orphans() == 0
        assert other.adopt_orphans() == 0  # said once, not at every scan
    assert other.peek() is None
    said = [r.getMessage() for r in caplog.records if "another collector" in r.getMessage()]
    assert len(said) == 1 and "1 spool file(s)" in said[0], said
    assert "no app ships to its old url" in said[0] and ".spool-read" in said[0], said
    again = Spool(tmp_path, max_bytes=1 << 20, destination="unix:///srv/a/collector.sock")
    assert again.adopt_orphans() == 1 and drain(again) == [b"for a"]


def test_a_file_without_a_destination_is_adopted_by_any_spool(tmp_path: Path) -> None:
    """Files of an older version (no tag in their name) are replayed as before, and a
    file renamed without its tag (the way out the warning names, for a collector that
    has moved) is replayed by whichever sink finds it."""
    legacy = spool_file_of(tmp_path, [b"older"])
    tagged = Spool(tmp_path / "moved", max_bytes=1 << 20, destination="tcp://old:7100")
    assert tagged.append(b"for the old address")
    tagged.close()
    (moved,) = spool_files(tmp_path / "moved")
    assert "~" in moved.name
    moved.rename(tmp_path / moved.name.replace("~" + moved.name.split("~")[1], SUFFIX))
    anyone = Spool(tmp_path, max_bytes=1 << 20, destination="tcp://new:7100")
    assert anyone.adopt_orphans() == 2
    assert drain(anyone) == [b"older", b"for the old address"]
    assert not legacy.exists()


#: A process with 128 descriptors at most adopts a backlog of spool files, then opens a
#: socket and spools a batch of its own; then it replays everything, scanning as it goes.
_ADOPTER = """
import resource, socket, sys
from audit_middleware.shipper.spool import Spool
resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
spool = Spool(sys.argv[1], max_bytes=1 << 30)
print("adopted", spool.adopt_orphans())
socket.socket().close()
assert spool.append(b"its own")
replayed = []
while not spool.empty or spool.adopt_orphans():
    replayed.append(spool.peek())
    spool.commit()
for body in replayed:
    print(body.decode())
"""


def test_a_backlog_of_spool_files_does_not_take_every_descriptor(tmp_path: Path) -> None:
    """Each orphan is held open once adopted: 1,500 of them (workers crash-looping
    through an outage, each leaving its file) took all the 1,024 descriptors an app had,
    its sockets failed (EMFILE) and so did its own spooling."""
    bodies = orphans(tmp_path, 160)
    done = subprocess.run([sys.executable, "-c", _ADOPTER, str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    adopted, *replayed = done.stdout.splitlines()
    assert adopted == f"adopted {spool_adoption.ADOPT_MAX}"
    # Every orphan, oldest first, the rest adopted as the spool emptied; its own batch
    # too (another source: where it falls among them does not matter).
    assert [line for line in replayed if line != "its own"] == [b.decode() for b in bodies]
    assert replayed.count("its own") == 1


def test_a_symbolic_link_named_like_a_spool_file_is_said_for_what_it_is(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A symbolic link named like a spool file (spool files moved away by hand or by a
    backup tool, a link left in their place) is never followed (anyone it points at
    could be replayed under this app's name): it was left with "cannot adopt ...
    (Too many levels of symbolic links): ...; check the disk", which sends an operator
    to a disk that is fine. Now it is named for what it is, with what to do, once."""
    moved = spool_file_of(tmp_path / "backup", [b"moved away"])
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    link = spool_dir / moved.name
    link.symlink_to(moved)
    adopter = Spool(spool_dir, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 0
    assert adopter.adopt_orphans() == 0  # said once, not at every scan
    said = [r.getMessage() for r in caplog.records if link.name in r.getMessage()]
    assert len(said) == 1, said
    assert "symbolic link" in said[0] and "check the disk" not in said[0], said
    assert f"move {moved}" in said[0], said  # what to do, naming the file it points at
    assert adopter.peek() is None and moved.exists()


def test_orphans_on_a_file_system_without_flock_are_said_not_to_be_replayed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Files spooled before the spool directory moved to a file system without
    ``flock`` (an NFS mount without its lock manager): the adoption lock's ENOLCK was
    taken for another process adopting, and nothing said why they were never
    replayed. Now said once, with what to do."""
    orphans(tmp_path, 1)
    monkeypatch.setattr(spool_adoption, "fcntl", FcntlWithoutFlock(errno.ENOLCK))
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 0
    assert adopter.adopt_orphans() == 0  # said once, not at every scan
    said = [r.getMessage() for r in caplog.records if "flock" in r.getMessage()]
    assert len(said) == 1, caplog.text
    assert "not replayed" in said[0] and "local file system" in said[0], said


def test_no_flock_is_said_after_the_adoption_lock_could_not_be_opened(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """"Cannot lock the adoption lock" (no ``flock``) shared its once-only flag with
    "cannot open the adoption lock": once the lock could not be opened (a directory
    unwritable for a while), the spool directory moved onto a mount without ``flock``
    later had its orphans never replayed, and nothing said why. Each is said once now."""
    orphans(tmp_path, 1)

    class AdoptionLockRefused:
        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        @staticmethod
        def open(path: Path, flags: int, mode: int = 0o777) -> int:
            if Path(path).name.startswith(spool_adoption.ADOPTING):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return os.open(path, flags, mode)

    monkeypatch.setattr(spool_adoption, "os", AdoptionLockRefused())
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 1  # adopted without the lock: said
    assert drain(adopter) == [b"orphan 0"]
    monkeypatch.undo()
    assert "cannot open the adoption lock" in caplog.text
    orphans(tmp_path, 1)
    monkeypatch.setattr(spool_adoption, "fcntl", FcntlWithoutFlock(errno.ENOLCK))
    assert adopter.adopt_orphans() == 0
    said = [r.getMessage() for r in caplog.records
            if "cannot lock the adoption lock" in r.getMessage()]
    assert len(said) == 1 and "local file system" in said[0], caplog.text


def test_an_orphan_whose_type_the_disk_cannot_read_does_not_end_the_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Telling a batch file from a link reads the entry's type (an ``lstat`` where the
    directory does not give it); a read the disk refused (EIO) escaped the scan, and
    the orphans after it were not adopted. Left for a later scan, said."""
    old = Spool(tmp_path, max_bytes=1 << 20, file_bytes=10)
    for i in range(2):
        old.append(f"old-{i}".encode())
    old.close()
    first = min(p.name for p in spool_files(tmp_path))
    listed = os.scandir
    monkeypatch.setattr(os, "scandir", types_unread(lambda place, name: name == first))
    new = Spool(tmp_path, max_bytes=1 << 20)
    assert new.adopt_orphans() == 1
    assert f"cannot adopt {tmp_path / first}" in caplog.text
    monkeypatch.setattr(os, "scandir", listed)  # the disk reads it again
    assert new.adopt_orphans() == 1
    assert drain(new) == [b"old-0", b"old-1"]  # the older file first, adopted last
