"""File and socket permissions, checked on everything a collector and a shipper create,
run under ``umask 000`` (the most permissive an operator or a container may leave):
only the collector's user may write anything, nobody else may read anything, and the
secrets (the socket, reader hashes, signing keys, the spool) are the owner's alone."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from audit_middleware import configure, emit
from audit_middleware.shipper import CollectorSink
from tests.faults.fleet import Collector, report
from tests.security.test_access import add_reader

#: Paths (relative to the data directory) that hold secrets: owner only.
PRIVATE_NAMES = ("collector.sock", "readers.json")
PRIVATE_DIRS = ("keys",)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.lstat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def private(name: str) -> bool:
    return name in PRIVATE_NAMES or Path(name).parts[:1] in [(d,) for d in PRIVATE_DIRS]


def test_nothing_the_collector_or_shipper_creates_is_open_to_others(tmp: Path) -> None:
    # Neither directory exists, nor do their parents: made by the first to need them
    # (the reader's CLI edit, the spool's first file), parents included.
    data = tmp / "srv" / "audit" / "data"
    spool_dir = tmp / "app" / "state" / "spool"
    with umask(0):
        add_reader(data, "ops", root=True)
        collector = Collector(data, api=True).start()
        running = modes(data)  # the socket exists only while it runs
        sink = CollectorSink(collector.url, spool_dir=spool_dir)
        configure(sink=sink)
        for n in range(50):
            emit("team_created", f"t{n}")
        assert sink.wait_for_delivery(timeout=30)
        collector.sigkill()
        for n in range(50):  # while it is down: spooled
            emit("team_created", f"down{n}")
        assert sink.flush(timeout=30) and sink.stats()["spooled"] == 50
        spool = modes(spool_dir)
        segment = max((data / "segments").glob("segment-*.jsonl"))
        with open(segment, "ab") as f:
            f.write(b'{"torn')  # for a quarantine file
        collector.start()
        assert sink.wait_for_delivery(timeout=30)
        sink.close()
        assert collector.stop() == 0
    found = {**running, **modes(data)}
    # A public key may be read by anyone (it is inside the owner-only keys/ anyway).
    open_to_others = {n: oct(m) for n, m in found.items()
                      if m & (0o002 if n.endswith(".pub") else 0o007)}
    group_writable = {n: oct(m) for n, m in found.items() if m & 0o020}
    not_private = {n: oct(m) for n, m in found.items()
                   if private(n) and not n.endswith(".pub") and m & 0o077}
    spool_open = {n: oct(m) for n, m in spool.items() if m & 0o077}
    report("file and socket permissions (umask 000)", files=len(found) + len(spool),
           open_to_others=len(open_to_others), group_writable=len(group_writable),
           secrets_not_private=len(not_private), spool_not_private=len(spool_open))
    # ``mkdir -p`` would have made them 0777 less the umask: anyone could move the data
    # or spool directory aside and put their own in its place.
    parents = {str(d.relative_to(tmp)): oct(stat.S_IMODE(d.stat().st_mode))
               for d in (data.parent, data.parent.parent, spool_dir.parent,
                         spool_dir.parent.parent)}
    assert parents == {"srv/audit": "0o750", "srv": "0o750", "app/state": "0o700",
                       "app": "0o700"}
    assert any(n.startswith("quarantine/") for n in found)
    assert running.get("collector.sock") == 0o600, oct(running.get("collector.sock", 0))
    assert open_to_others == {}
    assert group_writable == {}
    assert not_private == {}
    assert spool_open == {}
