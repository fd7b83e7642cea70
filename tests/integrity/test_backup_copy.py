"""A backup of a running store, copied file by file as docs/operations.md says: the
order of the copies decides whether it verifies. A checkpoint digest signed between
the two copies is what a busy collector does every digest_interval."""

from __future__ import annotations

import shutil
from pathlib import Path

from collector.integrity.findings import RECORD_MISSING
from tests.collector.storage_helpers import events, open_store, wait_until
from tests.integrity.helpers import check, digest_paths, lines_of, reasons


def digest_count(data_dir: Path) -> int:
    return sum(len(lines_of(p)) for p in digest_paths(data_dir))


def test_digests_copied_before_segments_verify_and_after_them_do_not(
        tmp_path: Path) -> None:
    live = tmp_path / "live"
    first, last = tmp_path / "digests-first", tmp_path / "segments-first"
    with open_store(live, digest_interval=0.2) as store:
        store.write(events(3))
        wait_until(lambda: digest_count(live) >= 2)  # start, then the records' checkpoint
        shutil.copytree(live / "digests", first / "digests")
        shutil.copytree(live / "segments", last / "segments")
        signed = digest_count(live)
        store.write(events(3))
        # a checkpoint between the two copies signs records the segments copy lacks
        wait_until(lambda: digest_count(live) > signed)
        shutil.copytree(live / "segments", first / "segments")
        shutil.copytree(live / "digests", last / "digests")
        for copy in (first, last):
            shutil.copytree(live / "keys", copy / "keys")
    # digests first: the later records are only not signed yet in the copy
    assert check(first).valid, reasons(check(first))
    # segments first: a digest signs more records than the copied segment holds
    found = reasons(check(last))
    assert any(RECORD_MISSING in r for rs in found.values() for r in rs), found
