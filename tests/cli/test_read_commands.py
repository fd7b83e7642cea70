"""`audit-collector query/tail/stats/reindex` as a user runs them: real processes, a
real collector fed through the CollectorSink."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_middleware import configure, emit
from audit_middleware.shipper import CollectorSink
from audit_middleware.testing import reset_configuration
from collector.read_commands import FOLLOW_INTERVAL
from tests.e2e.harness import ROOT, CollectorProcess, outcome_within, short_tmp

# (type, target, principal, org, client_ip) of the events the collector stores.
EVENTS = [
    ("run_launched", "run-1", "alice", "o1", "198.51.100.7"),
    ("run_relaunched", "run-1", "alice", "o1", "198.51.100.7"),
    ("run_dropped", "run-1", "system", "o1", ""),
    ("credentials_created", "cred-1", "bob", "o2", "2001:db8::7"),
    ("credentials_accessed", "cred-1", "system", "o2", ""),
    ("user_sign_in", "bob", "bob", "", "203.0.113.5"),
]
ORG_NAMES = {"o1": "Initech", "o2": "Globex", "": ""}
# run_* events happen in a workspace named Lab; run_dropped has a status.
STATUSES = {"run_dropped": "dropped by admin", "user_sign_in": "=cmd|' /C calc'!A0"}


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    with short_tmp() as tmp, CollectorProcess(tmp / "data") as collector:
        sink = CollectorSink(collector.url, spool_dir=tmp / "spool")
        configure(sink=sink)
        for etype, target, principal, org, ip in EVENTS:
            in_lab = etype.startswith("run_")
            emit(etype, target, principal=principal, org_id=org, org_name=ORG_NAMES[org],
                 workspace_id="w1" if in_lab else "", workspace_name="Lab" if in_lab else "",
                 client_ip=ip or None, status=STATUSES.get(etype, ""))
        assert sink.flush(timeout=20)
        assert sink.stats()["acknowledged"] == len(EVENTS)
        configure(sink=None)
        reset_configuration()
        yield collector.data_dir


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "collector", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=60, check=False,
                          env={**os.environ, "AUDIT_CONFIG": ""})
    if check:
        assert done.returncode == 0, done.stderr
    return done


def jsonl(done: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize(("flags", "expected"), [
    (["--type", "run_*"], {"run_launched", "run_relaunched", "run_dropped"}),
    (["--type", "user_sign_in", "--type", "credentials_created"],
     {"user_sign_in", "credentials_created"}),
    (["--principal", "system"], {"run_dropped", "credentials_accessed"}),
    (["--target", "cred-1"], {"credentials_created", "credentials_accessed"}),
    (["--org", "o1", "--principal", "alice"], {"run_launched", "run_relaunched"}),
    (["--client-ip", "198.51.100.0/24"], {"run_launched", "run_relaunched"}),
    (["--client-ip", "2001:db8::/32"], {"credentials_created"}),
    (["--since", "1h"], {e[0] for e in EVENTS}),
    (["--until", "2000-01-01-00-00-00"], set()),
    (["--org-name", "Initech"], {"run_launched", "run_relaunched", "run_dropped"}),
    (["--org-name", "Globex", "--principal", "system"], {"credentials_accessed"}),
    (["--workspace-name", "Lab", "--status", "dropped by admin"], {"run_dropped"}),
    (["--status", "dropped by admin", "--org-name", "Globex"], set()),
    (["--status", ""], {"run_launched", "run_relaunched", "credentials_created",
                        "credentials_accessed"}),
])
def test_query_filters(data_dir: Path, flags: list[str], expected: set[str]) -> None:
    done = cli("query", "--data-dir", str(data_dir), "--format", "jsonl", *flags)
    assert {r["type"] for r in jsonl(done)} == expected


def test_query_pages_with_a_cursor(data_dir: Path) -> None:
    first = cli("query", "--data-dir", str(data_dir), "--format", "jsonl", "--limit", "4")
    cursor = first.stderr.split("--cursor ")[1].split()[0]
    second = cli("query", "--data-dir", str(data_dir), "--format", "jsonl", "--limit", "4",
                 "--cursor", cursor)
    ids = [r["id"] for r in jsonl(first) + jsonl(second)]
    assert len(ids) == len(set(ids)) == len(EVENTS)
    assert "--cursor" not in second.stderr
    seqs = [r["seq"] for r in jsonl(first) + jsonl(second)]
    assert seqs == sorted(seqs, reverse=True)  # newest first


def test_query_table_uses_seed_columns_and_dates(data_dir: Path) -> None:
    done = cli("query", "--data-dir", str(data_dir), "--type", "run_launched")
    header, _rule, row = done.stdout.splitlines()
    assert header.startswith("Type") and "Creation date" in header
    assert row.startswith("run_launched") and "alice" in row
    assert len(row.split()[-1]) == len("YYYY-MM-DD-HH-MM-SS")


def test_query_csv_neutralizes_formulas(data_dir: Path) -> None:
    done = cli("query", "--data-dir", str(data_dir), "--format", "csv", "--type", "user_sign_in")
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[1][3] == "'=cmd|' /C calc'!A0"


def test_query_all_streams_every_record(data_dir: Path) -> None:
    done = cli("query", "--data-dir", str(data_dir), "--all", "--oldest-first",
               "--format", "jsonl")
    assert [r["type"] for r in jsonl(done)] == [e[0] for e in EVENTS]


def test_query_takes_the_apis_order_words_too(data_dir: Path) -> None:
    """``--order oldest|newest`` as the API's ``order=`` (a new-user review: only
    ``--oldest-first`` was known, and ``--order oldest`` an unrecognized argument)."""
    oldest = cli("query", "--data-dir", str(data_dir), "--all", "--order", "oldest",
                 "--format", "jsonl")
    newest = cli("query", "--data-dir", str(data_dir), "--all", "--order", "newest",
                 "--format", "jsonl")
    assert [r["type"] for r in jsonl(oldest)] == [e[0] for e in EVENTS]
    assert [r["type"] for r in jsonl(newest)] == [e[0] for e in reversed(EVENTS)]
    both = cli("query", "--data-dir", str(data_dir), "--order", "newest", "--oldest-first",
               check=False)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


@pytest.mark.parametrize("flags", [[], ["--all"]])
def test_query_timeout_stops_the_query_with_a_clear_error(data_dir: Path,
                                                          flags: list[str]) -> None:
    """``--timeout``: none by default (every other test here), and past it the query is
    stopped, the whole command's (``--all`` included). A microsecond: past it by the time
    the index's first chunk is walked."""
    done = cli("query", "--data-dir", str(data_dir), "--timeout", "0.000001", *flags,
               check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("audit-collector query: the query ran longer than 1e-06 s "
                                  "(--timeout) and was stopped: narrow it"), done.stderr
    assert done.stdout == ""
    bad = cli("query", "--data-dir", str(data_dir), "--timeout", "0", check=False)
    assert bad.returncode == 2 and "--timeout: give a duration above 0" in bad.stderr


@pytest.mark.parametrize(("flags", "message"), [
    (["--since", "yesterday"], "is not a time"),
    (["--since", "2026-11-27T12:00:00Z", "--until", "2026-11-26T12:00:00Z"], "is after until"),
    (["--since", "1h", "--until", "24h"], "give the earlier time as since"),
    (["--client-ip", "10.0.0.300"], "client"),
    (["--limit", "0"], "--limit"),
    (["--cursor", "garbage"], "cursor"),
])
def test_bad_filters_get_a_clear_error(data_dir: Path, flags: list[str], message: str) -> None:
    done = cli("query", "--data-dir", str(data_dir), *flags, check=False)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("flags", [
    # int() read these as 3: tail printed three records, query pages of three
    ["tail", "-n", "\u0663"],
    ["query", "--limit", "\u0663"],
    ["tail", "-n", "\uff13"],  # a fullwidth 3
])
def test_a_count_in_other_digits_than_0_9_is_refused(tmp_path: Path,
                                                     flags: list[str]) -> None:
    done = cli(flags[0], "--data-dir", str(tmp_path), *flags[1:], check=False)
    assert done.returncode == 2
    assert f"'{flags[2]}' is not a whole number: give one in digits 0-9" in done.stderr, \
        done.stderr


@pytest.mark.parametrize(("flags", "note"), [
    (["--type", "run_launchd"], ("no stored event has type 'run_launchd' (did you mean "
                                 "'run_launched'")),
    (["--type", "rn_*"], "no stored event type matches 'rn_*'"),
])
def test_a_type_matching_nothing_stored_is_named_beside_the_empty_answer(
    data_dir: Path, flags: list[str], note: str
) -> None:
    """A typo'd type is not an error (an app may register its own types, not seen yet),
    but an empty answer alone reads as "nothing happened"."""
    for extra in ([], ["--all"]):
        done = cli("query", "--data-dir", str(data_dir), "--format", "jsonl", *flags, *extra)
        assert done.stdout == ""
        assert note in done.stderr


@pytest.mark.parametrize("flags", [
    ["--type", "run_launched"],            # stored
    ["--type", "bucket_hidden"],           # in the catalogue, just not stored yet
    ["--type", "run_*", "--org", "o2"],    # the type is fine: the other filter excludes
])
def test_a_known_type_gets_no_note(data_dir: Path, flags: list[str]) -> None:
    done = cli("query", "--data-dir", str(data_dir), "--format", "jsonl", *flags)
    assert "note:" not in done.stderr


@pytest.mark.parametrize("command", ["query", "tail"])
def test_help_names_every_output_format(command: str) -> None:
    """The --format help said "jsonl or csv": ocsf and ecs were only in the usage line."""
    text = " ".join(cli(command, "--help").stdout.split())
    described = text.split("--format {table,jsonl,csv,ocsf,ecs}")[-1].split("--")[0]
    assert "ocsf" in described and "ecs" in described


def test_missing_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    done = cli("query", "--data-dir", str(tmp_path / "nowhere"), check=False)
    assert done.returncode == 2 and "no audit data" in done.stderr


def test_tail_prints_the_last_records_oldest_first(data_dir: Path) -> None:
    done = cli("tail", "-n", "2", "--data-dir", str(data_dir))
    assert [r["type"] for r in jsonl(done)] == ["credentials_accessed", "user_sign_in"]


def test_tail_follow_prints_new_records(tmp_path: Path) -> None:
    with short_tmp() as tmp, CollectorProcess(tmp / "data") as collector:
        sink = CollectorSink(collector.url, spool_dir=tmp / "spool")
        configure(sink=sink)
        try:
            emit("team_created", "t-old")
            assert sink.flush(20)
            follower = subprocess.Popen(
                [sys.executable, "-m", "collector", "tail", "-f", "-n", "1", "--data-dir",
                 str(collector.data_dir)], cwd=ROOT, text=True, stdout=subprocess.PIPE)
            try:
                assert follower.stdout is not None
                assert orjson.loads(follower.stdout.readline())["target"] == "t-old"
                time.sleep(0.3)
                emit("team_created", "t-new")
                assert sink.flush(20)
                assert orjson.loads(follower.stdout.readline())["target"] == "t-new"
                emit("team_created", "t-newer")
                assert sink.flush(20)
                # Each new record once: a page that was not full kept its old cursor,
                # and every poll printed the same records again, without end.
                assert orjson.loads(follower.stdout.readline())["target"] == "t-newer"
                time.sleep(1.0)  # several polls
            finally:
                follower.terminate()
                rest, _ = follower.communicate(timeout=10)
        finally:
            configure(sink=None)
            reset_configuration()
        assert rest == ""  # nothing printed twice


def test_stats_reports_counts(data_dir: Path) -> None:
    report = orjson.loads(cli("stats", "--data-dir", str(data_dir), "--json").stdout)
    assert report["events_indexed"] == len(EVENTS)
    assert report["segments"]["count"] >= 1


def test_stats_shows_the_live_collectors_counters_and_source_gaps() -> None:
    with short_tmp() as tmp, CollectorProcess(tmp / "data") as collector:
        sink = CollectorSink(collector.url, spool_dir=tmp / "spool")
        configure(sink=sink)
        try:
            emit("team_created", "t1")
            assert sink.flush(20)
        finally:
            configure(sink=None)
            reset_configuration()
        collector.stop()  # a clean stop writes the final counters
        report = orjson.loads(cli("stats", "--data-dir", str(collector.data_dir),
                                  "--json").stdout)
    live = report["collector"]
    assert live["store"]["written"] == 1 and live["store"]["duplicates"] == 0
    [(source, ranges)] = live["store"]["sources"].items()
    assert source == sink.source and ranges["gaps"] == []
    assert "connections_open" in live
    assert report["collector_state"].startswith("stopped (a clean stop")


def test_stats_tells_a_running_collector_from_one_that_died(tmp_path: Path) -> None:
    """After a stop, stats showed the last counters as if a collector still ran (only
    collector_stats_age_s told otherwise). A running one's file is rewritten every
    STATS_INTERVAL; one that died leaves its last write, which says "running"."""
    from collector.stats_file import STATS_FILE, STATS_INTERVAL, StatsFile

    data = tmp_path / "data"
    (data / "segments").mkdir(parents=True)
    StatsFile(data / STATS_FILE).write({"state": "running", "store": {"written": 3}})

    def state() -> str:
        report = orjson.loads(cli("stats", "--data-dir", str(data), "--json").stdout)
        return str(report["collector_state"])

    assert state() == "running"
    old = time.time() - 10 * STATS_INTERVAL
    os.utime(data / STATS_FILE, (old, old))
    assert state().startswith("not running, or its writes hang: its stats are ")


def odd_stats_file(path: Path, shape: str) -> None:
    """``path`` made the odd stats file ``shape`` names."""
    if shape == "FIFO":
        os.mkfifo(path)
    elif shape == "/dev/zero":
        path.symlink_to("/dev/zero")
    elif shape == "future":
        path.write_bytes(b'{"state": "stopped"}')
        ahead = time.time() + 86_400
        os.utime(path, (ahead, ahead))
    else:
        path.write_bytes(shape.encode())


@pytest.mark.parametrize(("shape", "says"), [
    # a FIFO held stats for good (its open waited for a writer); /dev/zero never ended
    ("FIFO", "collector: unreadable ingest-stats.json (.* a FIFO, not a regular file"),
    ("/dev/zero", "a character device, not a regular file"),
    # read as a running collector's stats
    ("[1, 2]", "collector: unreadable ingest-stats.json (a JSON list, not the object"),
    ('"running"', "(a JSON str, not the object"),
    ('{"state": "banana"}', "collector_state: unknown: its state is 'banana', which no"),
    # "stopped (a clean stop, -86400 s ago)"
    ("future", "collector_state: unknown: its stats are dated 8639.* s in the future"),
])
def test_stats_says_what_is_odd_about_its_stats_file(tmp_path: Path, shape: str,
                                                     says: str) -> None:
    from collector.stats_file import STATS_FILE

    data = tmp_path / "data"
    (data / "segments").mkdir(parents=True)
    odd_stats_file(data / STATS_FILE, shape)
    done = cli("stats", "--data-dir", str(data))  # its own timeout fails a hang
    shown = "\n".join(" ".join(line.split(None, 1)).replace(" ", ": ", 1)
                      for line in done.stdout.splitlines())
    assert re.search(says.replace("(", r"\(").replace("[", r"\["), shown), done.stdout
    assert "collector_state: running" not in shown


def test_stats_shows_what_others_wrote_escaped_one_line_per_key(tmp_path: Path) -> None:
    """The forwarder's last_error holds up to 200 characters of the OTLP receiver's
    answer (collector/otlp_http.py): printed raw, its line breaks forged lines of their
    own in `stats` (a zero for the loss an operator checks) and its escape sequences
    reached the terminal."""
    from collector.stats_file import STATS_FILE, StatsFile

    data = tmp_path / "data"
    (data / "segments").mkdir(parents=True)
    answer = ("HTTP 500 Internal Server Error: oops\n"
              "collector.store.unacknowledged_gap_events 0\x1b[2K\r")
    StatsFile(data / STATS_FILE).write({"store": {"unacknowledged_gap_events": 7},
                                        "forwarder": {"last_error": answer}})
    shown = cli("stats", "--data-dir", str(data)).stdout.splitlines()
    [gaps] = [line for line in shown if "unacknowledged_gap_events" in line.split(" ")[0]]
    assert gaps.split() == ["collector.store.unacknowledged_gap_events", "7"]
    [error] = [line for line in shown if line.startswith("collector.forwarder.last_error")]
    assert error.endswith(r"oops\ncollector.store.unacknowledged_gap_events 0\x1b[2K\r")
    assert not [line for line in shown if not line.isprintable()]


def test_reindex_rebuilds_a_deleted_index(data_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns("*.sock"))
    for index_file in copy.glob("index.sqlite*"):
        index_file.unlink()
    done = cli("reindex", "--data-dir", str(copy))
    assert "reindex: 100%" in done.stderr
    # A line for an operator, not the report object's repr.
    assert done.stdout == (f"reindexed {copy}: index rebuilt (reindex requested); "
                           f"{len(EVENTS)} records indexed\n")
    again = cli("query", "--data-dir", str(copy), "--all", "--oldest-first", "--format", "jsonl")
    assert [r["type"] for r in jsonl(again)] == [e[0] for e in EVENTS]


def start_follower(data: Path) -> tuple[Any, Any]:
    """``tail -f -n 0`` on a store holding one record ("before"), in a thread: the
    event that stops it, and the thread."""
    import argparse
    import threading

    from collector import read_commands
    from tests.collector.storage_helpers import event, open_store

    with open_store(data) as store:
        store.write([event(target="before")])
    done = threading.Event()
    args = argparse.Namespace(
        data_dir=str(data), config=None, types=[], principal=None, target=None, org=None,
        workspace=None, client_ip=None, since=None, until=None, status=None,
        org_name=None, workspace_name=None, lines=0, follow=True, format="jsonl",
        timeout=None)
    follower = threading.Thread(target=read_commands.run_tail, args=(args,),
                                kwargs={"stop": done.is_set})
    follower.start()
    return done, follower


def test_tail_follow_goes_on_across_an_index_rebuilt_at_a_restart(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A follower runs for hours; the collector may restart meanwhile and rebuild its
    index (a new file). The follower reads the new index and goes on (it kept reading
    the old file, and saw nothing new), each record once."""
    from tests.collector.storage_helpers import event, open_store

    data = tmp_path / "data"
    done, follower = start_follower(data)
    try:
        time.sleep(0.5)
        with open_store(data) as store:
            store.write([event(target="first")])
        for index_file in data.glob("index.sqlite*"):  # damaged, say: the next start
            index_file.unlink()  # builds a new one from the segments (a new file)
        with open_store(data) as store:
            store.write([event(target="after the rebuild")])
        deadline, out = time.monotonic() + 10, ""
        while "after the rebuild" not in out:
            assert time.monotonic() < deadline, "the follower did not see the new index"
            time.sleep(0.1)
            out += capsys.readouterr().out
        time.sleep(0.5)  # more polls: nothing again
        out += capsys.readouterr().out
    finally:
        done.set()
        follower.join(10)
    targets = [orjson.loads(line)["target"] for line in out.splitlines()]
    assert targets == ["first", "after the rebuild"]


def test_tail_follow_says_a_lasting_problem_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """While the index is gone (a collector down, mid-rebuild), a follower waits and
    retries every FOLLOW_INTERVAL; it says so once, not a line a poll, and says when it
    reads again."""
    from tests.collector.storage_helpers import event, open_store

    data = tmp_path / "data"
    done, follower = start_follower(data)
    try:
        time.sleep(0.3)
        for index_file in data.glob("index.sqlite*"):
            index_file.unlink()
        time.sleep(FOLLOW_INTERVAL * 6)  # six polls without an index
        missing = capsys.readouterr().err
        with open_store(data) as store:
            store.write([event(target="after")])
        deadline, out, err = time.monotonic() + 10, "", ""
        while "after" not in out:
            assert time.monotonic() < deadline, "the follower did not read again"
            time.sleep(0.1)
            captured = capsys.readouterr()
            out, err = out + captured.out, err + captured.err
    finally:
        done.set()
        follower.join(10)
    assert missing.count("retrying") == 1, missing
    assert "tail: reading again" in err
    assert [orjson.loads(line)["target"] for line in out.splitlines()] == ["after"]


def test_tail_follow_prints_a_record_arriving_at_its_start_once(tmp_path: Path) -> None:
    """A record stored between reading "the last N" and starting to follow was printed
    by both (found by a review: 6 of 20 starts next to a busy store)."""
    import argparse
    import contextlib
    import io

    from collector import query as q
    from collector import read_commands
    from tests.collector.storage_helpers import event, open_store

    data = tmp_path / "data"
    with open_store(data) as store:
        store.write([event(target=f"old-{i}") for i in range(3)])
        real_newest = q.newest_seq

        def newest_then_one_more(*args: Any, **kwargs: Any) -> int:
            newest = real_newest(*args, **kwargs)
            store.write([event(target="arrived-at-the-start")])
            return newest

        args = argparse.Namespace(
            data_dir=str(data), config=None, types=[], principal=None, target=None,
            org=None, workspace=None, client_ip=None, since=None, until=None, status=None,
            org_name=None, workspace_name=None, lines=10, follow=True, format="jsonl",
            timeout=None)
        polls = iter(range(3))
        out = io.StringIO()
        q.newest_seq = newest_then_one_more  # type: ignore[assignment]
        try:
            with contextlib.redirect_stdout(out):
                read_commands.run_tail(args, stop=lambda: next(polls, None) is None)
        finally:
            q.newest_seq = real_newest  # type: ignore[assignment]
    targets = [orjson.loads(line)["target"] for line in out.getvalue().splitlines()]
    assert targets == ["old-0", "old-1", "old-2", "arrived-at-the-start"]


def test_a_cursor_without_its_fingerprint_is_a_clear_error_not_a_traceback(
        data_dir: Path) -> None:
    import base64

    forged = base64.urlsafe_b64encode(orjson.dumps({"v": 1, "s": 5, "a": None,
                                                    "b": None})).decode()
    done = subprocess.run([sys.executable, "-m", "collector", "query", "--data-dir",
                           str(data_dir), "--cursor", forged], cwd=ROOT, text=True,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "next_cursor unchanged" in done.stderr


@pytest.mark.parametrize("command", ["reindex", "query"])
@pytest.mark.parametrize("name", ["index.sqlite", "index.sqlite-shm"])
def test_a_fifo_in_place_of_an_index_file_is_named_with_what_to_do(
        data_dir: Path, tmp_path: Path, command: str, name: str) -> None:
    """SQLite opened it and said "disk I/O error": reindex crashed with that traceback,
    query passed it on. Each says what is there, and what to do (a FIFO holds nothing
    of the index: move it away, and it is rebuilt from the segments)."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns("*.sock"))
    (copy / name).unlink(missing_ok=True)
    os.mkfifo(copy / name)
    done = outcome_within(60, lambda: cli(command, "--data-dir", str(copy), check=False))
    assert isinstance(done, subprocess.CompletedProcess), done
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert "a FIFO, not a regular file: move it away" in done.stderr, done.stderr
    assert str(copy / name) in done.stderr, done.stderr


@pytest.mark.parametrize("command", [["query"], ["tail"], ["tail", "-f"], ["reindex"]])
def test_a_fifo_in_place_of_a_segment_file_is_named_with_what_to_do(
        tmp_path: Path, command: list[str]) -> None:
    """query and tail said "a FIFO, not a regular file (<path>)" (reindex too): what,
    not what to do. Opened without waiting for a writer (a command that blocked there
    would not end: ``outcome_within``), it is named in the words of the store's other
    wrong-kind refusals, with what to do."""
    from tests.collector.storage_helpers import events, open_store

    data = tmp_path / "data"
    with open_store(data) as store:
        store.write(events(3))
    [segment] = (data / "segments").glob("segment-*.jsonl")
    segment.unlink()
    os.mkfifo(segment)
    done = outcome_within(60, lambda: cli(*command, "--data-dir", str(data), check=False))
    assert isinstance(done, subprocess.CompletedProcess), done
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert (f"audit-collector {command[0]}: {segment} is a FIFO, where the collector keeps "
            f"a segment file (stored records): look at what it is, move it out of the way "
            f"(`mv {segment} {segment}.aside`), then put the segment file back from a "
            f"backup") in done.stderr, done.stderr
    # The command's own words kept (the collector's log has its own), the path said
    # once, not again after them now that the error keeps its filename.
    assert done.stderr.endswith(
        "and run this again (without a backup its records are lost: `audit-collector "
        "verify` names the segment missing, and `audit-collector reindex`, the collector "
        "stopped, indexes the store without it)\n"), done.stderr


@pytest.mark.parametrize("content", [b"", b"not a database at all" * 10])
def test_an_index_being_built_or_damaged_is_a_clear_error(tmp_path: Path,
                                                           content: bytes) -> None:
    """An empty index.sqlite is what a starting collector's rebuild shows for a moment:
    query says so (exit 2), tail -f would wait; no sqlite3 traceback."""
    data = tmp_path / "data"
    (data / "segments").mkdir(parents=True)
    (data / "index.sqlite").write_bytes(content)
    done = subprocess.run([sys.executable, "-m", "collector", "query", "--data-dir",
                           str(data)], cwd=ROOT, text=True, capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "not a complete index" in done.stderr


def test_query_all_takes_no_limit_and_continues_after_a_cursor(data_dir: Path) -> None:
    """--all --limit 5 printed everything without a word; --all --cursor ignored the
    cursor. Now: one or the other; and everything after the cursor."""
    def query(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "collector", "query", "--data-dir",
                               str(data_dir), "--format", "jsonl", *args], cwd=ROOT,
                              text=True, capture_output=True, timeout=60, check=False)

    refused = query("--all", "--limit", "5")
    assert refused.returncode == 2 and "give one or the other" in refused.stderr
    first = query("--limit", "2")
    cursor = first.stderr.split("--cursor ")[1].split()[0]
    everything = [orjson.loads(x)["id"] for x in query("--all").stdout.splitlines()]
    rest = [orjson.loads(x)["id"] for x in query("--all", "--cursor", cursor).stdout.splitlines()]
    assert rest == everything[2:] and len(rest) >= 1


def test_tail_with_a_negative_count_is_refused(data_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "collector", "tail", "-n", "-5",
                           "--data-dir", str(data_dir)], cwd=ROOT, text=True,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 2 and "0 or more" in done.stderr


def test_a_followed_table_stays_in_line_with_its_header() -> None:
    """``tail -f --format table`` printed each batch at its own column widths, out of
    line with the header printed once (a new-user review). Later rows keep the widths;
    a value that needs a wider column brings the header again, at the new widths."""
    import io

    from collector.read_output import _writer
    from tests.collector.storage_helpers import event

    out = io.StringIO()
    write = _writer("table", out)
    write([event(1, target="t-1")], False)  # tail -f -n 0: the first followed batch
    write([event(2, target="t-2")], False)
    write([event(3, target="a-much-longer-target")], False)
    write([event(4, target="t-4")], False)
    lines = out.getvalue().splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("Type")]
    assert headers == [0, 4]  # again when the target column grew, not for every batch
    for i, line in enumerate(lines):
        header = lines[max(h for h in headers if h <= i)]
        start = header.index("Principal")  # the column after Target
        if not line.startswith(("Type", "-")):
            assert line[start - 2:start] == "  " and line[start] != " ", line


def test_a_followed_csv_gets_no_header_unless_asked() -> None:
    """``tail -f -n 0 --format csv >> events.csv`` appends to a file that has its header
    already: a header line in the middle of it would be a bad row."""
    import io

    from collector.read_output import _writer
    from tests.collector.storage_helpers import event

    out = io.StringIO()
    write = _writer("csv", out)
    write([event(1)], False)
    write([event(2)], False)
    assert len(out.getvalue().splitlines()) == 2 and not out.getvalue().startswith("Type")
    asked = io.StringIO()
    write = _writer("csv", asked)
    write([event(1)], True)
    write([event(2)], False)
    assert asked.getvalue().startswith("Type") and len(asked.getvalue().splitlines()) == 3


def test_a_csv_printed_on_a_terminal_escapes_what_would_act_on_it() -> None:
    """``query --format csv`` with nothing redirected wrote stored values raw to the
    operator's terminal: an ANSI sequence in a principal cleared the screen, a bidi
    override reordered the row. On a terminal the cells are escaped as a table's; into a
    file or a pipe they stay exact."""
    import io

    from collector.read_output import _writer
    from tests.collector.storage_helpers import event

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    hostile = event(1, principal="\x1b[2J\x1b[31mroot", target="\u202eevil", status="a\rb")
    screen, piped = Terminal(), io.StringIO()
    _writer("csv", screen)([hostile], True)
    _writer("csv", piped)([hostile], True)
    assert not {"\x1b", "\u202e", "\r"} & set(screen.getvalue())
    assert "\\x1b[2J\\x1b[31mroot" in screen.getvalue() and "\\u202eevil" in screen.getvalue()
    row = list(csv.reader(io.StringIO(piped.getvalue())))[1]
    assert row[1:4] == ["\u202eevil", "\x1b[2J\x1b[31mroot", "a\rb"]


def test_tail_takes_more_lines_than_a_page_holds(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """``-n`` is a count of lines, as tail's: ``tail -n 20000`` was refused, with an error
    about a "limit" the user never gave, because one page holds at most MAX_LIMIT. The
    last N are read a page at a time (MAX_LIMIT made 2 here, so that 5 take pages)."""
    from collector import query, render
    from collector.cli import build_parser
    from collector.read_commands import run_tail
    from tests.collector.storage_helpers import events, open_store

    stored = events(5)
    with open_store(tmp_path / "data") as store:
        store.write(stored)
    monkeypatch.delenv("AUDIT_CONFIG", raising=False)
    monkeypatch.delenv("AUDIT_DATA_DIR", raising=False)
    monkeypatch.setattr(query, "MAX_LIMIT", 2)

    def tail(count: int) -> list[str]:
        args = build_parser().parse_args(["tail", "-n", str(count), "--data-dir",
                                          str(tmp_path / "data")])
        assert run_tail(args) == 0
        return [str(orjson.loads(line)["id"]) for line in capsys.readouterr().out.splitlines()]

    ids = [str(e["id"]) for e in stored]
    assert tail(4) == ids[1:]
    assert tail(20000) == ids
    assert tail(0) == []
    # Printed a page at a time, never all held at once: tail -n 5000000 held the store.
    batches: list[int] = []
    jsonl = render.jsonl

    def counted(records: list[dict[str, Any]]) -> Iterator[bytes]:
        batches.append(len(records))
        return jsonl(records)

    monkeypatch.setattr(render, "jsonl", counted)
    assert tail(4) == ids[1:] and tail(5) == ids
    assert batches and max(batches) <= 2, batches
    # A record stored after tail's moment is the follower's, not one of the last N.
    newest = query.newest_seq(tmp_path / "data")
    monkeypatch.setattr(query, "newest_seq", lambda data_dir: newest - 1)
    assert tail(3) == ids[1:4]
    query.close_readers(tmp_path / "data")


def follow_args(data: Path, types: list[str]) -> Any:
    import argparse

    return argparse.Namespace(
        data_dir=str(data), config=None, types=types, principal=None, target=None, org=None,
        workspace=None, client_ip=None, since=None, until=None, status=None,
        org_name=None, workspace_name=None, lines=0, follow=True, format="jsonl",
        timeout=None)


def polls_doing(*steps: Callable[[], object]) -> Callable[[], bool]:
    """A follower's ``stop``: before each poll, the next step; then stop."""
    pending = iter(steps)

    def stop() -> bool:
        step = next(pending, None)
        if step is None:
            return True
        step()
        return False
    return stop


@pytest.mark.parametrize(("types", "says"), [
    ([], ("tail: retention deleted {n} record(s), seq {low}-{high}, before tail could "
          "show them; going on")),
    (["credentials_created"], ("tail: retention deleted the records of seq {low}-{high} "
                               "(those that matched: it cannot be told now) before tail "
                               "could show them; going on"))])
def test_tail_follow_says_what_retention_deleted_before_it_was_shown(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], types: list[str],
        says: str) -> None:
    """A follower behind retention (a slow pipe, a suspended terminal, a small
    retention_bytes) went on from the oldest record left without a word: the records
    retention deleted before it printed them were skipped silently. It says which, on
    stderr, and goes on."""
    from collector import read_commands
    from tests.collector.storage_helpers import event, events, open_store
    from tests.e2e.harness import wait_until

    data = tmp_path / "data"
    with open_store(data, max_segment_bytes=4096, retention_bytes=9000) as store:
        store.write([event(target="before")])

        def fall_behind() -> None:  # stored and deleted between two polls
            for _ in range(10):
                store.write(events(8))
            wait_until(lambda: store.stats()["retention_deleted"] >= 3
                       and store.stats()["segments_dropping"] == 0, 20, "retention")

        read_commands.run_tail(follow_args(data, types), stop=polls_doing(
            lambda: store.write([event(target="seen")]), fall_behind,
            lambda: store.write([event(target="after")])))
    captured = capsys.readouterr()
    shown = [orjson.loads(line) for line in captured.out.splitlines()]
    assert shown[0]["target"] == "seen" and shown[-1]["target"] == "after"
    seqs = [record["seq"] for record in shown]
    low, high = seqs[0] + 1, seqs[1] - 1  # what the follower did not show
    assert high > low and seqs[1:] == list(range(seqs[1], seqs[-1] + 1))
    assert captured.err.splitlines() == [says.format(n=high - low + 1, low=low, high=high)]


def test_tail_follow_says_what_retention_deleted_while_it_read_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The index named the records, then retention deleted their segment before the
    follower read it (the segment it was reading): they were left out without a word.
    Every record after the first shown is shown or said deleted, none both."""
    import re

    from collector import read_commands
    from collector.storage.reader import RecordReader
    from tests.collector.storage_helpers import event, events, open_store
    from tests.e2e.harness import wait_until

    data = tmp_path / "data"
    real_records = RecordReader.records
    armed: list[Callable[[], None]] = []

    def records(self: RecordReader, hits: list[tuple[int, int, int, int]],
                *args: Any) -> list[dict[str, Any]]:
        if hits and armed:
            armed.pop()()  # between the index's answer and reading the segments
        return real_records(self, hits, *args)

    monkeypatch.setattr(RecordReader, "records", records)
    with open_store(data, max_segment_bytes=4096, retention_bytes=9000) as store:
        store.write([event(target="before")])

        def delete_them() -> None:
            for _ in range(10):
                store.write(events(8))
            wait_until(lambda: store.stats()["retention_deleted"] >= 3, 20, "retention")

        def behind() -> None:
            store.write(events(8, target="named-then-deleted"))
            armed.append(delete_them)

        read_commands.run_tail(follow_args(data, []), stop=polls_doing(
            lambda: store.write([event(target="seen")]), behind, lambda: None,
            lambda: store.write([event(target="after")])))
    captured = capsys.readouterr()
    shown = [orjson.loads(line)["seq"] for line in captured.out.splitlines()]
    said = [(int(low), int(high)) for low, high in re.findall(
        r"^tail: retention deleted .*?seq (\d+)-(\d+),? .*; going on$", captured.err,
        re.MULTILINE)]
    assert "matching record(s)" in captured.err.partition("\n")[0], captured.err  # while read
    assert said[0][1] - said[0][0] == 7, captured.err  # those 8
    deleted = [seq for low, high in said for seq in range(low, high + 1)]
    assert sorted(shown[1:] + deleted) == list(range(shown[0] + 1, shown[-1] + 1))


def test_a_follower_keeps_one_reader_open_across_its_polls(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Each ``tail -f`` poll ran on a thread of its own (``read_deadline``: a read the
    disk never answers must not hold the follower silently), which opened the index and
    the segment files and closed them again: every 0.5 s for as long as it follows, and
    a page 40 % slower while it catches up (a 300,000-record store). One thread takes
    the polls now, keeping its Reader (which reopens an index rebuilt meanwhile), and
    closes it when the follower stops."""
    import threading

    from collector import query, query_thread_readers, read_commands
    from tests.collector.storage_helpers import event, open_store
    from tests.e2e.harness import wait_until

    real = query_thread_readers.Reader
    opened: list[tuple[str, Any]] = []

    def counted(data_dir: Path) -> Any:
        reader = real(data_dir)
        opened.append((threading.current_thread().name, reader))
        return reader

    closed: list[Any] = []
    close = real.close

    def closing(reader: Any) -> None:
        closed.append(reader)
        close(reader)

    monkeypatch.setattr(query_thread_readers, "Reader", counted)
    monkeypatch.setattr(real, "close", closing)
    data = tmp_path / "data"
    with open_store(data) as store:
        store.write([event(target="before")])
        arrive = [lambda: store.write([event(target="new")])] * 4
        read_commands.run_tail(follow_args(data, []), stop=polls_doing(*arrive))
    query.close_readers(data)  # the start's, on this thread
    assert capsys.readouterr().out.count('"target":"new"') == 4
    polls = [reader for name, reader in opened if name != threading.current_thread().name]
    assert len(polls) == 1, opened
    wait_until(lambda: polls[0] in closed, 10, "the follower's Reader closed")
