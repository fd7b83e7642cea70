"""The adoption lock (``ADOPTING``): one adopter at a time replays a dead process's files,
in order; the lock goes with a process that dies, and a forked child leaves it to its
parent."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from audit_middleware.shipper import spool_adoption
from audit_middleware.shipper.spool import Spool
from tests.shipper.spool_helpers import drain, orphans, reads_refused, spool_files

#: A worker that adopts orphans (``ADOPT_MAX`` set by its third argument) and says how
#: many; on a line read, replays what it holds (each batch appended to the file that
#: stands for the collector) and says how many; then scans and replays until no spool
#: file is left in the directory.
_ORDERED_ADOPTER = """
import os, sys, time
from pathlib import Path
from audit_middleware.shipper import spool_adoption
from audit_middleware.shipper.spool import Spool
spool_adoption.ADOPT_MAX = int(sys.argv[3])
spool = Spool(sys.argv[1], max_bytes=1 << 30)
print("adopted", spool.adopt_orphans(), flush=True)
sys.stdin.readline()

def replay():
    n = 0
    while (body := spool.peek()) is not None:
        fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, body + b"\\n")
        os.close(fd)
        spool.commit()
        n += 1
    return n

print("replayed", replay(), flush=True)
while list(Path(sys.argv[1]).glob("*.spool")):
    if not spool.adopt_orphans():
        time.sleep(0.01)  # another process replays them: look again
    replay()
"""


def adopter(directory: Path, collector: Path, adopt_max: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _ORDERED_ADOPTER, str(directory),
                             str(collector), str(adopt_max)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def ask(worker: subprocess.Popen[str], say: str | None = None) -> str:
    assert worker.stdin is not None and worker.stdout is not None
    if say is not None:
        worker.stdin.write(say)
        worker.stdin.flush()
    return worker.stdout.readline().strip()


def test_two_adopters_replay_a_dead_processs_files_in_order(tmp_path: Path) -> None:
    """With more orphans than one scan adopts, a second worker's scan found the first
    ``ADOPT_MAX`` locked (adopted by the first worker) and adopted the next ones: both
    replayed at once, and the dead process's later batches reached the collector before
    its earlier ones. One adopter at a time now: the second adopts nothing meanwhile."""
    bodies = orphans(tmp_path / "spool", 12)
    collector = tmp_path / "collector"
    first = adopter(tmp_path / "spool", collector, 4)
    try:
        assert ask(first) == "adopted 4"
        second = adopter(tmp_path / "spool", collector, 4)
        try:
            ask(second)  # its scan, while the first holds the oldest 4
            ask(second, "go\n")  # it replays what it holds before the first does
            ask(first, "go\n")
            assert first.wait() == 0 and second.wait() == 0
        finally:
            second.kill()
            second.wait()
    finally:
        first.kill()
        first.wait()
    assert collector.read_bytes().splitlines() == bodies


def test_orphans_are_taken_over_from_an_adopter_that_died(tmp_path: Path) -> None:
    """The adoption lock goes with the process that held it: the next one adopts what it
    left, from where its progress files say."""
    bodies = orphans(tmp_path / "spool", 6)
    code = ("import os, sys\nfrom audit_middleware.shipper import spool, spool_adoption\n"
            "spool_adoption.ADOPT_MAX = 3\ns = spool.Spool(sys.argv[1], max_bytes=1 << 30)\n"
            "assert s.adopt_orphans() == 3\ns.peek()\ns.commit()\nos._exit(9)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "spool")], check=False)
    survivor = Spool(tmp_path / "spool", max_bytes=1 << 30)
    replayed = []
    while not survivor.empty or survivor.adopt_orphans():
        replayed += drain(survivor)
    assert replayed == bodies[1:]


def test_a_child_forked_without_the_hook_does_not_keep_the_adoption_lock(
        tmp_path: Path) -> None:
    """Under a server that forks without the at-fork hook (uWSGI), a child holds a copy
    of its parent's adoption lock descriptor until its first event: an ``flock`` is the
    open file's, so the parent's close released nothing while an idle child kept its
    copy, and no process adopted an orphan again (not even the parent). The parent lets
    go of the lock itself now; the child only closes its copy."""
    orphans(tmp_path, 2)
    parent = Spool(tmp_path, max_bytes=1 << 30)
    assert parent.adopt_orphans() == 2
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: idle (no event yet, so no after_fork) until told to exit
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    try:
        assert drain(parent) == [b"orphan 0", b"orphan 1"]  # the lock is let go here
        lock = os.open(tmp_path / spool_adoption.ADOPTING, os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free for another adopter
        finally:
            os.close(lock)
    finally:
        os.close(write_end)
        os.waitpid(pid, 0)


def test_a_forked_childs_hook_leaves_its_parent_the_adoption_lock(tmp_path: Path) -> None:
    """The parent unlocks the adoption lock when it lets go of it; a child's at-fork
    hook must only close its copy: unlocked there, the lock (the open file's, shared
    with the parent) was released under a parent still replaying, and a second adopter
    replayed the dead process's later batches beside its earlier ones."""
    orphans(tmp_path, 2)
    parent = Spool(tmp_path, max_bytes=1 << 30)
    assert parent.adopt_orphans() == 2
    pid = os.fork()
    if pid == 0:
        parent.after_fork()  # what the child's at-fork hook does
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    lock = os.open(tmp_path / spool_adoption.ADOPTING, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):  # still the parent's
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(lock)
    assert drain(parent) == [b"orphan 0", b"orphan 1"]


def test_an_adopted_file_the_disk_cannot_read_does_not_stop_others_adopting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An adopted file the disk refused to read (EIO), held aside and tried again at
    each scan, kept its adopter holding the adoption lock: no other process adopted
    any orphan for as long as the disk refused it. The adoption lock is let go while
    it waits; the file's own lock still keeps every other process from replaying it."""
    (first,) = orphans(tmp_path, 1)
    (bad,) = spool_files(tmp_path)
    monkeypatch.setattr(os, "pread", reads_refused(bad))
    holder = Spool(tmp_path, max_bytes=1 << 20)
    assert holder.adopt_orphans() == 1
    assert drain(holder) == [] and holder.unread_files == 1  # held aside
    (later,) = orphans(tmp_path, 1)  # another process died meanwhile
    other = Spool(tmp_path, max_bytes=1 << 20)  # another open file: flock tells them apart
    assert other.adopt_orphans() == 1  # the new orphan, never the file held aside
    assert holder.adopt_orphans() == 1  # tried again meanwhile: still refused
    assert drain(holder) == []
    assert drain(other) == [later]
    assert other.adopt_orphans() == 0  # still the holder's
    monkeypatch.undo()  # the disk reads it again
    assert holder.adopt_orphans() == 1
    assert drain(holder) == [first]
    assert spool_files(tmp_path) == [] and not holder.replay_pending
