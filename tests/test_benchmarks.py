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
