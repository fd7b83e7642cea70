"""``audit-collector stats`` and ``verify`` on a hung data disk (``hung_reads``: one read
of theirs blocks): a monitoring script or a cron job running them there hung for good,
without a word. Under ``--timeout`` they end at about their limit (exit status 2), as
``query`` does; verify saying that it reached no verdict (exit 1 would read as INVALID,
0 as valid)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from collector.stats_file import STATS_FILE
from collector.storage.time_limit import QueryTimeoutError, time_limit
from tests.collector.storage_helpers import events, open_store
from tests.faults.fleet import wait_for
from tests.faults.hung_reads import read_hung_at
from tests.faults.test_cli_hung_reads import BOUND, HUNG, command, ended
from tests.integrity.helpers import build_store, check, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

NO_VERDICT = "no verdict: the files were found neither valid nor INVALID"


def stored(data: Path) -> None:
    """Three events, and the stats file a collector stopped there leaves."""
    with open_store(data) as store:
        store.write(events(3))
    (data / STATS_FILE).write_bytes(orjson.dumps({"state": "stopped"}))


@pytest.mark.parametrize("at", ["index_count", "segment_listing", "stats_file"])
def test_stats_timeout_ends_stats_stuck_in_a_read(tmp: Path, at: str) -> None:
    stored(tmp / "data")
    with command(tmp, "stats", "--timeout", "1s", at=at) as (proc, gate, out, err):
        wait_for(read_hung_at(gate).exists, BOUND, f"stats' {at} read to hang")
        code = ended(proc)  # the disk still hangs
        assert code == 2, err.read_text()
    assert out.read_text() == ""  # all of the stats or none
    message = err.read_text()
    assert message == STATS_STOPPED, message


#: Its reads never look at the limit: a read under way past it may be a large store's
#: (an index's count, a long listing) as well as a hung disk's, and stats says both.
STATS_STOPPED = (
    "audit-collector stats: the command ran longer than 1 s (--timeout) and was stopped: "
    "a read of the data directory was still under way, slow or hung (stats cannot tell "
    "which: a large store's index count or segment listing is not stopped at the limit; "
    "a hung disk or a frozen network file system never answers); if the store is large, "
    "give it a longer --timeout; else check the data disk and run stats again; --timeout "
    "sets the limit\n")


def test_stats_timeout_is_no_bound_on_a_disk_that_answers(tmp: Path) -> None:
    stored(tmp / "data")
    # The gate named, the read it names answering: the stats are printed whole.
    with command(tmp, "stats", "--json", "--timeout", "60s",
                 at="stats_file") as (proc, gate, out, err):
        gate.unlink()
        assert ended(proc) == 0, err.read_text()
    report = orjson.loads(out.read_text())
    assert report["events_indexed"] == 3 and report["collector"] == {"state": "stopped"}


def test_verify_timeout_ends_verify_stuck_in_a_segment_read_with_no_verdict(
        tmp: Path) -> None:
    build_store(tmp / "data")
    with command(tmp, "verify", "--no-progress", "--timeout", "1s",
                 at="verify_segment_read") as (proc, gate, out, err):
        wait_for(read_hung_at(gate).exists, BOUND, "verify's segment read to hang")
        code = ended(proc)
        assert code == 2, err.read_text()  # not 1 (INVALID), not 0 (valid)
    assert out.read_text() == ""  # no file said valid or INVALID
    message = err.read_text()
    assert message.startswith("audit-collector verify: the verification ran longer than "
                              f"1 s (--timeout) and was stopped: {HUNG}"), message
    assert f"; {NO_VERDICT}; check the data disk and run verify again" in message, message
    assert "Traceback" not in message


def test_verify_past_its_limit_between_chunks_stops_with_no_verdict(
        tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A verify slow rather than hung (a large store) is stopped at its limit, between
    a segment's chunks, and not blamed on the disk: a limit of 0 has passed at once."""
    from collector.integrity import digest_chain
    from collector.integrity.verify_timeout import limited  # (new with --timeout)

    data = build_store(tmp / "data")
    # The digest chain, read first, looks at the limit too (the test below): not here.
    monkeypatch.setattr(digest_chain, "checked", iter)
    with time_limit(0.0, "--timeout"), pytest.raises(QueryTimeoutError) as stopped:
        check(data, progress=limited(None, 0.0))
    assert str(stopped.value) == (
        f"the verification ran longer than 0 s (--timeout) and was stopped: {NO_VERDICT}; "
        f"give it a longer --timeout, or check part of the store with --from/--to")


def test_verify_past_its_limit_in_the_digest_chain_stops_with_no_verdict(
        tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digests are read and their signatures checked before any segment, with no
    look at the limit: a store's many digests ran on past it, and 1 s later verify was
    stopped as if a read had hung (check the data disk) on a disk that answered."""
    from collector.integrity import verify as verifying
    from collector.integrity.verify_timeout import verify_within

    def reached(*args: object) -> None:
        raise AssertionError("went on to the segments past its limit")

    data = build_store(tmp / "data")
    monkeypatch.setattr(verifying._Segments, "check", reached)
    with pytest.raises(QueryTimeoutError) as stopped:
        verify_within(lambda: check(data), 0.0)  # a limit of 0 has passed at once
    assert str(stopped.value) == (
        f"the verification ran longer than 0 s (--timeout) and was stopped: {NO_VERDICT}; "
        f"give it a longer --timeout, or check part of the store with --from/--to")


@pytest.mark.parametrize("name", ["stats", "verify"])
def test_timeout_takes_what_query_takes(tmp: Path, name: str) -> None:
    stored(tmp / "data")
    bad = run_cli(name, "--data-dir", str(tmp / "data"), "--timeout", "0")
    assert bad.returncode == 2 and "--timeout: give a duration above 0" in bad.stderr
    ok = run_cli(name, "--data-dir", str(tmp / "data"), "--timeout", "5m")
    assert ok.returncode == 0, ok.stderr
