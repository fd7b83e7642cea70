"""The spool's size cap (``spool_cap``): the directory's, shared by every process spooling
there for one collector, and counted again only as often as it must be."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from audit_middleware.shipper import spool_cap
from audit_middleware.shipper.spool import Spool
from audit_middleware.shipper.spool_files import SUFFIX
from audit_middleware.shipper.spool_format import RECORD
from tests.shipper.spool_helpers import drain, spool_file_of, spool_files


def test_append_refuses_beyond_the_size_cap(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=3 * (100 + RECORD.size), file_bytes=150)
    assert [spool.append(b"x" * 100) for _ in range(4)] == [True, True, True, False]
    spool.peek()
    spool.commit()
    assert spool.append(b"x" * 100)  # room again once a file was replayed and deleted


def test_files_for_another_collector_do_not_fill_this_spools_cap(tmp_path: Path) -> None:
    """The cap counted every batch file in the directory: another app's, spooled for its
    collector and never replayed here, filled it, and this sink dropped its own batches
    (its own spool empty) for as long as they stayed."""
    record = RECORD.size + 100
    legacy = spool_file_of(tmp_path, [b"u" * 100])  # untagged: replayed here, so counted
    other = Spool(tmp_path, max_bytes=1 << 20, destination="tcp://a.example:7100")
    assert other.append(b"a" * 100) and other.append(b"a" * 100)
    other.close()
    this = Spool(tmp_path, max_bytes=2 * record, destination="tcp://b.example:7100")
    assert this.append(b"b" * 100)
    assert this.used_bytes == 2 * record
    assert not this.append(b"b" * 100)  # its own cap: the untagged file and its batch
    assert drain(this) == [b"u" * 100, b"b" * 100]
    assert not legacy.exists()


#: A worker process of a pre-forked server, as far as its spool goes: scans the spool
#: directory at start (as ``CollectorSink`` does), then appends a batch for each line
#: read and answers whether the spool took it.
_WORKER = """
import sys
from audit_middleware.shipper.spool import Spool
spool = Spool(sys.argv[1], max_bytes=int(sys.argv[2]))
spool.adopt_orphans()
print("ready", flush=True)
for _ in sys.stdin:
    print(spool.append(b"w" * 100), flush=True)
"""


def test_workers_sharing_a_spool_directory_share_its_cap(tmp_path: Path) -> None:
    """Each worker counted the directory at start and then only its own appends: four
    workers each filled the cap for itself, four times it on disk, the disk the cap is
    there to protect filled before any of them dropped a batch."""
    record = RECORD.size + 100
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path),
                                 str(4 * record)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        assert all(w.stdout is not None and w.stdout.readline() == "ready\n" for w in workers)
        taken = []
        for worker in workers:  # one after the other: no race, the count is exact
            assert worker.stdin is not None and worker.stdout is not None
            for _ in range(4):
                worker.stdin.write("append\n")
                worker.stdin.flush()
                taken.append(worker.stdout.readline() == "True\n")
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    assert taken.count(True) == 4, taken
    assert sum(p.stat().st_size for p in spool_files(tmp_path)) == 4 * record


class SteppingClock:
    """A clock that moves one step each time it is read: how long something took is
    counted in the clock reads made meanwhile, never in real time."""

    def __init__(self, step: float = 0.001) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def counting_listings(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The directory counts ``spool`` makes from now on (one entry each)."""
    counts: list[int] = []
    count_used = spool._count_used

    def counted() -> int:
        counts.append(1)
        return count_used()

    monkeypatch.setattr(spool, "_count_used", counted)
    return counts


def test_a_spool_of_many_files_is_not_counted_at_each_append(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared cap counted the whole directory at each append: 105 ms a batch at
    20,000 files, on the sink's thread during an outage, which spooled so slowly that
    the queue filled and dropped. It is counted again once the count is 100 times older
    than it took (here a step of the clock), or this process appended its share."""
    monkeypatch.setattr(spool_cap, "_clock", SteppingClock())
    spool = Spool(tmp_path, max_bytes=1 << 30)
    spool.adopt_orphans()
    for i in range(1000):  # other processes' files
        (tmp_path / f"{i:020d}-1-0000abcd{SUFFIX}").write_bytes(b"x" * 100)
    counts = counting_listings(spool, monkeypatch)
    for _ in range(200):
        assert spool.append(b"batch" * 20)
    assert 1 <= len(counts) <= 10, len(counts)
    assert spool.used_bytes == 1000 * 100 + 200 * (RECORD.size + 100)


def test_processes_pass_the_shared_cap_by_their_share_of_it_at_most(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the bounded count allows: a process that has not counted since another one
    filled the cap appends at most its share (``max_bytes // RECOUNT_SHARE``) before
    its count shows the cap reached; then it refuses, and goes on refusing on that count
    until the count is old; counted again then, it sees the room the others made."""
    clock = SteppingClock(step=0.0)  # frozen: only the share sends a process counting
    monkeypatch.setattr(spool_cap, "_clock", clock)
    cap = spool_cap.RECOUNT_SHARE * 1000
    slow, fast = Spool(tmp_path, max_bytes=cap), Spool(tmp_path, max_bytes=cap)
    assert slow.append(b"s" * 100)
    while fast.append(b"f" * 100):
        pass
    late = 0
    while slow.append(b"s" * 100):
        late += 1
    used = sum(p.stat().st_size for p in spool_files(tmp_path))
    assert 0 < late and cap < used <= cap + cap // spool_cap.RECOUNT_SHARE
    counts = counting_listings(slow, monkeypatch)
    assert not slow.append(b"s" * 100) and counts == []  # full, as just counted
    drain(fast)  # the other process replays its batches
    clock.step = 1.0  # the count grows old
    assert slow.append(b"s" * 100) and counts == [1]


def test_a_symbolic_link_named_like_a_spool_file_does_not_fill_the_cap(
        tmp_path: Path) -> None:
    """The cap counted each spool file's size through symbolic links (``stat``): a link
    named like a spool file (a backup tool's, a misconfigured shared directory) to a
    large file elsewhere filled it, and every batch was dropped while the spool held
    none. What is not a regular file holds no batch of ours: not counted."""
    big = tmp_path / "elsewhere"
    with big.open("wb") as f:
        f.truncate(1 << 30)  # sparse: no disk for it
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    (spool_dir / ("00000000000000000001-1-abcd" + SUFFIX)).symlink_to(big)
    spool = Spool(spool_dir, max_bytes=1 << 20)
    assert spool.append(b"x" * 100)
    assert spool.used_bytes == RECORD.size + 100
