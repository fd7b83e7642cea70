"""The benchmark harness and the benchmarks' own checks. No timing is asserted here: the
cases below return fixed durations, and the smoke run's numbers are ignored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from audit_middleware.event import FIELDS
from benchmarks import MODULES
from benchmarks import _harness as h
from benchmarks._asgi import Driver
from benchmarks._sinks import DictLinesQueue, check_written
from tests.environment import unavailable


def fixed(ns_per_op: float, calls: list[int] | None = None) -> h.CaseRun:
    def run(n: int) -> dict[str, int]:
        if calls is not None:
            calls.append(n)
        return {h.REQUEST: int(ns_per_op * n)}
    return run


def test_rotation_starts_each_round_with_the_next_case() -> None:
    names = ["a", "b", "c"]
    assert [h.rotation(names, r)[0] for r in range(4)] == ["a", "b", "c", "a"]
    assert sorted(h.rotation(names, 1)) == names


def test_measure_runs_every_case_once_per_round_at_its_calibrated_size() -> None:
    calls: list[int] = []
    m = h.measure([h.Case("x", fixed(1000, calls)), h.Case("y", fixed(3000))],
                  h.Options(rounds=5, min_batch_seconds=0.0))
    assert len(m.per_op_ns["x"][h.REQUEST]) == 5
    assert calls[-5:] == [m.batch_sizes["x"]] * 5
    assert m.median_ns("x") == 1000
    assert m.ratio("y", "x") == 3.0
    assert m.difference_ns("y", "x") == 2000


def test_calibration_grows_the_batch_until_it_lasts_long_enough() -> None:
    # 1 ms per operation: 50 ms needs at least 50 operations.
    n = h.calibrate(h.Case("slow", fixed(1_000_000)), 0.05)
    assert n >= 50


def test_ratios_are_medians_of_same_round_ratios() -> None:
    m = h.Measurements({}, {"base": {h.REQUEST: [10, 20, 40]},
                            "case": {h.REQUEST: [11, 22, 60]}})
    # Per round: 1.1, 1.1, 1.5 -> 1.1 (the ratio of medians would be 22/20 too, but a
    # slow round must not pair one case's fast value with another's slow one).
    assert m.ratio("case", "base") == pytest.approx(1.1)
    assert m.difference_ns("case", "base") == 2


def test_a_case_must_report_its_request_thread_time() -> None:
    with pytest.raises(h.BenchmarkError, match="request"):
        h.measure([h.Case("bad", lambda n: {"other": n})], h.Options.smoke())


def test_duplicate_case_names_are_refused() -> None:
    with pytest.raises(h.BenchmarkError, match="duplicate"):
        h.measure([h.Case("a", fixed(1)), h.Case("a", fixed(1))], h.Options.smoke())


@pytest.mark.parametrize(("value", "limit", "higher", "verdict"), [
    (0.1, 0.2, False, "PASS"), (0.2, 0.2, False, "PASS"), (0.3, 0.2, False, "MISS"),
    (2.0, 1.5, True, "PASS"), (1.0, 1.5, True, "MISS"),
])
def test_target_verdicts(value: float, limit: float, higher: bool, verdict: str) -> None:
    assert h.Target("t", value, limit, higher_is_better=higher).verdict == verdict


def test_machine_info_names_cpu_cores_python_and_date() -> None:
    info = h.machine_info()
    assert info["cpu_model"] and info["cores"] >= 1
    assert info["python"].endswith(sys.version.split()[0])
    assert info["date"].endswith("Z")


def test_report_files_hold_tables_targets_and_machine(tmp_path: Path) -> None:
    m = h.Measurements({"a": 8}, {"a": {h.REQUEST: [1.0, 2.0, 3.0]}})
    report = h.Report("demo", "Demo", [h.Table("T", ["col"], [["v"]])],
                      [h.Target("fast enough", 0.5, 0.2, "x")], ["a note"], m)
    json_path, md_path = h.write_report(report, h.machine_info(), tmp_path)
    assert json_path.name.startswith("demo-") and md_path.suffix == ".md"
    data = json.loads(json_path.read_text())
    assert data["targets"][0]["verdict"] == "MISS"
    assert data["measurements"]["a"][h.REQUEST]["median_ns"] == 2.0
    assert data["machine"]["cpu_model"]
    md = md_path.read_text()
    assert "**MISS**" in md and "| col |" in md and "a note" in md


def test_check_written_refuses_a_capture_that_lost_events(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"type": "credentials_deleted", "target": "c-42"}\n')
    assert check_written(path, 1, "demo", target="c-42") == 1
    with pytest.raises(h.BenchmarkError, match="expected 2"):
        check_written(path, 2, "demo")
    with pytest.raises(h.BenchmarkError, match="differ"):
        check_written(path, 1, "demo", target="other")


def test_naive_capture_writes_a_schema_v1_record(tmp_path: Path) -> None:
    from benchmarks import request_path

    queue = DictLinesQueue(tmp_path / "naive.jsonl")
    driver = Driver()
    try:
        for build in (request_path.starlette_app, request_path.fastapi_app):
            status, _ = driver.request(build("basehttp", queue.submit), request_path.SCOPE)
            assert status == 200
        queue.flush()
    finally:
        driver.close()
        queue.close()
    records = [json.loads(line) for line in (tmp_path / "naive.jsonl").read_text().splitlines()]
    assert [tuple(r) for r in records] == [FIELDS, FIELDS]
    assert {(r["type"], r["target"], r["client_ip"]) for r in records} == {
        ("credentials_deleted", "c-42", "10.0.0.7")}


ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_smoke_run_of_every_benchmark_writes_results(tmp_path: Path) -> None:
    done = run_cli("--smoke", "--results", str(tmp_path))
    assert done.returncode == 0, done.stderr
    for name in MODULES:
        (json_file,) = tmp_path.glob(f"{name}-*.json")
        data = json.loads(json_file.read_text())
        assert data["tables"] and all(t["verdict"] in ("PASS", "MISS") for t in data["targets"])
        assert (tmp_path / f"{json_file.stem}.md").exists()
    assert "[PASS]" in done.stdout or "[MISS]" in done.stdout


def test_one_benchmark_can_be_run_alone() -> None:
    done = run_cli("emit_cost", "--smoke", "--no-write")
    assert done.returncode == 0, done.stderr
    assert "Emit cost" in done.stdout and "Request path" not in done.stdout


def test_unknown_benchmark_name_lists_the_choices() -> None:
    done = run_cli("nope")
    assert done.returncode == 2
    assert "unknown benchmark(s) nope" in done.stderr and "request_path" in done.stderr


# -- the collector benchmarks (issue 3): their machinery and checks, no timing -------------
def test_fixed_rounds_run_each_case_once_per_round_at_its_own_size() -> None:
    from benchmarks._rounds import fixed_rounds

    calls: dict[str, list[int]] = {"slow": [], "fast": []}

    def case(name: str, ns_per_op: int) -> h.CaseRun:
        def run(n: int) -> dict[str, int]:
            calls[name].append(n)
            return {"wall": ns_per_op * n}
        return run

    m = fixed_rounds([h.Case("slow", case("slow", 9000)), h.Case("fast", case("fast", 1000))],
                     {"slow": 1, "fast": 50}, 3, "wall")
    assert calls == {"slow": [1, 1, 1], "fast": [50, 50, 50]}
    assert m.median_ns("slow", "wall") == 9000
    assert m.ratio("slow", "fast", "wall") == 9.0


def test_fixed_rounds_refuse_a_case_without_a_size_or_its_metric() -> None:
    from benchmarks._rounds import fixed_rounds

    with pytest.raises(h.BenchmarkError, match="batch size"):
        fixed_rounds([h.Case("a", fixed(1))], {}, 1, h.REQUEST)
    with pytest.raises(h.BenchmarkError, match="'wall'"):
        fixed_rounds([h.Case("a", fixed(1))], {"a": 1}, 1, "wall")


def test_generated_traffic_is_deterministic_and_covers_the_catalogue() -> None:
    import random

    from audit_middleware.catalogue import Catalogue
    from benchmarks._events import Population

    population = Population()
    draws = population.draw(5000, random.Random(1))
    assert draws == Population().draw(5000, random.Random(1))
    assert {d[0] for d in draws} == Catalogue().types
    assert len({d[2] for d in draws}) > 300  # many principals, not a handful
    for kind, _, principal, status, org_id, _, ws_id, _, client_ip in draws:
        assert (principal == "system") == (client_ip == "")
        if kind == "user_sign_in":
            assert status in ("password", "github", "google", "saml") and not org_id
        if ws_id:
            assert org_id  # a workspace always belongs to an organization


def test_generated_records_are_schema_v1_in_arrival_order() -> None:
    import re

    from benchmarks._events import Population

    start = 1_793_059_200 * 10**9  # 2026-10-27T00:00:00Z
    (records,) = list(Population().records(2000, start, 3600 * 10**9, batch=5000))
    assert all(tuple(r) == FIELDS for r in records)
    created = [r["created"] for r in records]
    assert created == sorted(created)
    assert created[0].startswith("2026-10-27T00:") and created[-1] < "2026-10-27T01:"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", c) for c in created)
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-"
                            r"[0-9a-f]{12}", r["id"]) for r in records)
    assert len({r["id"] for r in records}) == len(records)
    traced = [r for r in records if r["trace_id"]]
    assert traced and all(len(r["trace_id"]) == 32 and r["principal"] != "system"
                          for r in traced)


def test_query_dataset_is_built_once_then_read_from_the_cache(tmp_path: Path) -> None:
    from benchmarks import _dataset
    from collector.query import Filters, iter_records

    built = _dataset.cached(3000, tmp_path)
    again = _dataset.cached(3000, tmp_path)
    assert (built.cached, again.cached) == (False, True)
    assert again.data_dir == built.data_dir == tmp_path / _dataset.cache_key(3000)
    assert [p.name for p in tmp_path.iterdir()] == [built.data_dir.name]
    sel = built.selection
    matching = list(iter_records(built.data_dir, Filters(
        principal=sel.principal, org=sel.org, since=sel.since, until=sel.until)))
    assert matching and all((r["principal"], r["org_id"]) == (sel.principal, sel.org)
                            for r in matching)
    assert sel.since.endswith(":00:00.000000Z") and sel.until.endswith(":00:00.000000Z")
    assert built.segment_bytes > 0 and built.index_bytes > 0


def test_rg_pattern_prefix_covers_exactly_the_window() -> None:
    from benchmarks.query_speed import created_prefix

    assert created_prefix("2026-11-14T00:00:00.000000Z", "2026-11-14T01:00:00.000000Z") \
        == "2026-11-14T00:"
    assert created_prefix("2026-11-14T23:00:00.000000Z", "2026-11-15T00:00:00.000000Z") \
        == "2026-11-14T23:"
    # Across a day boundary the prefix is only a prefilter: the exact check does the rest.
    assert created_prefix("2026-11-14T23:30:00.000000Z", "2026-11-15T00:30:00.000000Z") \
        == "2026-11-1"


def test_query_cases_must_agree_on_a_non_empty_result() -> None:
    from benchmarks import query_speed
    from benchmarks._dataset import Dataset, Selection

    sel = Selection("usr_1", "org_1", "2026-11-14T00:00:00.000000Z",
                    "2026-11-14T01:00:00.000000Z")
    data = Dataset(Path("/nowhere"), 10, sel, 0.0, cached=True)
    assert "same 2 events" in query_speed._check({"search": {"a", "b"}, "rg": {"a", "b"}},
                                                 data, sel)
    with pytest.raises(h.BenchmarkError, match="disagree"):
        query_speed._check({"search": {"a", "b"}, "jq": {"a"}}, data, sel)
    with pytest.raises(h.BenchmarkError, match="matched nothing"):
        query_speed._check({"search": set(), "rg": set()}, data, sel)


def test_index_breakdown_gives_each_table_its_bytes(tmp_path: Path) -> None:
    import sqlite3

    from benchmarks.query_speed import index_breakdown

    path = tmp_path / "index.sqlite"
    con = sqlite3.connect(path)
    for name, rows in (("events", 200), ("ix_principal", 50), ("ids", 10)):
        con.execute(f"CREATE TABLE {name}(x)")
        con.executemany(f"INSERT INTO {name} VALUES (?)", [("x" * 500,)] * rows)
    con.commit()
    con.close()
    sizes = index_breakdown(path)
    if not sizes:
        unavailable("this SQLite is built without the dbstat table (SQLITE_ENABLE_DBSTAT_VTAB)")
    assert [name for name, _ in sizes][:3] == ["events", "ix_principal", "ids"]


def test_durable_batch_is_void_unless_every_event_was_acknowledged() -> None:
    from benchmarks.durable_throughput import _check_acknowledged

    zero = {"acknowledged": 0, "spooled": 0, "dropped": 0, "rejected": 0}
    _check_acknowledged(zero, zero | {"acknowledged": 10}, 10)
    with pytest.raises(h.BenchmarkError, match="acknowledge them all"):
        _check_acknowledged(zero, zero | {"acknowledged": 9, "dropped": 1}, 10)
    with pytest.raises(h.BenchmarkError, match="acknowledge them all"):
        _check_acknowledged(zero, zero | {"acknowledged": 10, "spooled": 1}, 10)


def test_emit_switch_submits_through_the_targets_own_method() -> None:
    from benchmarks.emit_collector import _Switch

    class Target:
        def __init__(self) -> None:
            self.events: list[object] = []

        def submit(self, event: object) -> None:
            self.events.append(event)

        def flush(self, timeout: float | None = None) -> bool:
            return True

        def stats(self) -> dict[str, int]:
            return {"n": len(self.events)}

    first, second = Target(), Target()
    switch = _Switch(first)
    switch.submit("a")
    switch.use(second)
    switch.submit("b")
    switch.close()  # the benchmark closes its targets itself
    assert (first.events, second.events) == (["a"], ["b"])
    assert switch.submit == second.submit and switch.stats() == {"n": 1}


def test_memory_is_read_from_proc_and_sampled_with_progress() -> None:
    import os

    from benchmarks._collector import RssSampler, status_kib
    from benchmarks.collector_memory import rss_at

    assert status_kib(os.getpid(), "VmRSS") > 0
    with pytest.raises(h.BenchmarkError, match="no VmNothing"):
        status_kib(os.getpid(), "VmNothing")
    with RssSampler(os.getpid(), interval=0.01) as sampler:
        sampler.progress = 7
    assert sampler.samples and sampler.peak_kib > 0
    samples = [(0.0, 0, 100), (0.1, 50, 300), (0.2, 100, 200)]
    assert [rss_at(samples, p) for p in (0, 50, 100)] == [100, 300, 300]


def test_callgrind_totals_are_read_from_the_totals_line() -> None:
    from benchmarks._callgrind import parse_totals

    out = b"version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 999\ntotals: 123456\n"
    assert parse_totals(out) == 123456
    with pytest.raises(h.BenchmarkError, match="no totals line"):
        parse_totals(b"events: Ir\n")


def test_callgrind_self_costs_are_summed_by_object_without_the_calls_inclusive_lines() -> None:
    from benchmarks._callgrind import by_part, self_cost_by_object

    out = b"""events: Ir
ob=(1) /usr/lib/libpython3.11.so.1.0
fl=(1) ???
fn=(1) _PyEval_EvalFrameDefault
0 100
+2 50
cob=(2) /usr/lib/x86_64-linux-gnu/libsqlite3.so.0
cfi=(2) ???
cfn=(2) sqlite3_step
calls=3 0
0 700
ob=(2)
fn=(2)
0 700
ob=(3) /usr/lib/x86_64-linux-gnu/libc.so.6
fn=(3) memcpy
* 25
ob=(1)
fn=(1)
0 5
totals: 880
"""
    # The 700 after calls= is sqlite3_step's inclusive cost, seen from its caller: it is
    # counted once, where it ran (libsqlite3), not twice.
    assert self_cost_by_object(out) == {"/usr/lib/libpython3.11.so.1.0": 155,
                                        "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0": 700,
                                        "/usr/lib/x86_64-linux-gnu/libc.so.6": 25}
    assert by_part(self_cost_by_object(out)) == {
        "CPython (bytecode, objects, builtins)": 155, "SQLite": 700,
        "libc (memcpy, malloc, syscalls' user side)": 25}


def test_the_floor_note_sums_the_floor_middleware_and_a_bare_decorator_layer() -> None:
    from benchmarks.capture_instructions import _floor_notes

    per_request = {"starlette/bare": 100_000.0, "starlette/floor-middleware": 108_000.0,
                   "starlette/middleware": 110_000.0, "starlette/middleware+wrapper": 112_000.0,
                   "starlette/ours": 125_000.0}
    (note,) = _floor_notes(per_request)
    # 8,000 + 2,000 = 10,000 (10.0%); 15% of 100,000 leaves 5,000; ours spends 15,000.
    assert "8,000 (a context object" in note and "+ 2,000 (a bare async" in note
    assert "= 10,000 instructions, 10.0% of the bare route" in note
    assert "(15,000) leaves 5,000" in note and "ours spends 15,000" in note
    assert "the event's fields, its time and queue)" in note


def test_panel_dataset_is_rebuilt_when_the_storage_code_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import _dataset, panel_latency

    built = panel_latency.cached(2000, tmp_path)
    assert panel_latency.cached(2000, tmp_path).data_dir == built.data_dir  # kept
    source = tmp_path / "store.py"
    source.write_text("# a storage layout the index schema's number does not name\n")
    monkeypatch.setattr(_dataset, "_storage_sources", lambda: [source])
    rebuilt = panel_latency.cached(2000, tmp_path)
    assert rebuilt.data_dir != built.data_dir and rebuilt.events == 2000
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [rebuilt.data_dir.name]


def test_the_storage_digest_reads_every_part_of_the_store() -> None:
    """``Store`` is ``store.py`` and the parts it inherits (``store_*.py``): split out of
    ``store.py``, its opening, settings and the rest were no longer in the datasets' key,
    and a change there timed queries over a dataset the old code had laid out."""
    import collector
    from benchmarks import _dataset

    package = Path(collector.__file__).resolve().parent
    assert set(package.glob("store*.py")) <= set(_dataset._storage_sources())


def test_panel_dataset_rebuild_keeps_the_other_sizes(tmp_path: Path) -> None:
    from benchmarks import panel_latency

    # 10,000,000 begins with 1,000,000: a prefix glob deleted the big one.
    others = [tmp_path / "panel-v2-s5-10000000", tmp_path / "panel-v2-10000000-abc123"]
    old = [tmp_path / "panel-v2-s5-1000000", tmp_path / "panel-v2-1000000-abc123",
           tmp_path / "panel-v2-1000000-abc123.building-42"]
    for path in others + old:
        path.mkdir()
    assert sorted(panel_latency._stale(1_000_000, tmp_path)) == sorted(old)


def test_results_say_when_the_checkout_had_uncommitted_changes(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@example.org", *args],
                       cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "store.py").write_text("A = 1\n")
    git("add", "store.py")
    git("commit", "-q", "-m", "one")
    (tmp_path / "result.json").write_text("{}\n")  # a new result file is no change
    commit, dirty = h.git_state(tmp_path)
    assert commit and dirty is False
    (tmp_path / "store.py").write_text("A = 2\n")  # measured, but not what commit names
    assert h.git_state(tmp_path) == (commit, True)
    md = h.render_markdown(h.Report("demo", "Demo"),
                           h.machine_info() | {"git_commit": commit, "git_dirty": True})
    assert f"- commit: {commit} plus uncommitted changes" in md
