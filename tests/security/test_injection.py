"""Log injection in every field and CSV formula injection in every export, through the
real path: an app emits hostile values (line breaks of every kind, a forged record,
terminal escapes, NUL, formula prefixes) in each text field; the shipper delivers them
to a collector process; then what the collector stored, what ``audit-collector query``
prints (table, CSV, JSON lines) and what the API exports (CSV, JSON lines) are read.

One event is one line everywhere, a value reads back exactly as it was emitted, no
control character reaches the operator's terminal, and no CSV cell starts like a
formula."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from audit_middleware import configure, emit
from audit_middleware.event import AuditEvent
from audit_middleware.shipper import CollectorSink
from audit_middleware.testing import reset_configuration
from tests.e2e.harness import ROOT, short_tmp
from tests.faults.fleet import Collector, report

FIELDS = ("target", "principal", "status", "org_id", "org_name", "workspace_id",
          "workspace_name", "client_ip")
FORGED = '{"v":1,"id":"00000000-0000-7000-8000-000000000000","type":"user_deleted"}'
LINE_INJECTIONS = [
    "a\nb", "a\r\nb", "a\rb", f"x\n{FORGED}", "a\u2028b", "a\u2029b", "a\x85b", "a\x0bb",
    "a\x0cb", "a\x1cb", "a\x1eb",
]
TERMINAL_INJECTIONS = ["\x1b[2J\x1b[H", "\x1b[31mred\x1b[0m", "\x1b]0;title\x07", "\x9b31m",
                       "a\x00b", "a\x08\x08\x08b", "\x7f", "\u202egnp.exe"]
FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(1,2)",
            "\t=1+1", "\r=1+1", "=cmd|' /C calc'!A0",
            # a cell of its own where spreadsheets split on ';' (the list separator of
            # German, French, Dutch... locales), quoted or not
            "x;=cmd|' /C calc'!A0;y", "a;+1+1", "a\";\"@SUM(1,2)",
            # blanks a spreadsheet may trim first, and the full-width signs of an IME
            " =1+1", " \t=cmd|' /C calc'!A0", "\u3000@SUM(1,2)", "\uff1d1+1", "\uff0b1",
            "\uff0d1", "\uff20SUM(1,2)", "x; \uff1d1+1"]
#: What may be skipped before a formula's sign (OWASP: tab, CR and NUL open one too).
BLANKS = " \t\r\n\x00\u00a0\u3000\u200b\ufeff"


def starts_like_formula(cell: str) -> bool:
    """= + - @ after any blanks, in any form that folds into them (full-width ＝)."""
    first = cell.lstrip(BLANKS)[:1]
    return cell.startswith(("\t", "\r", "\x00")) or (
        first != "" and unicodedata.normalize("NFKC", first)[:1] in ("=", "+", "-", "@"))
PAYLOADS = LINE_INJECTIONS + TERMINAL_INJECTIONS + FORMULAS


@dataclass
class Hostile:
    data_dir: Path
    token: str
    api: str
    emitted: list[dict[str, str]]  # the hostile values of each event, by field


def cli(data_dir: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "collector", *args, "--data-dir",
                           str(data_dir)], cwd=ROOT, check=True, capture_output=True,
                          timeout=60).stdout.decode("utf-8")


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    """One event per payload and field: the payload in that field, the others plain."""
    with short_tmp() as tmp:
        data = tmp / "data"
        data.mkdir()
        token = subprocess.run([sys.executable, "-m", "collector", "users", "add", "ops",
                                "--root", "--data-dir", str(data)], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.strip()
        collector = Collector(data, api=True).start()
        try:
            yield Hostile(data, token, collector.api_url(), emit_hostile(collector, tmp))
        finally:
            collector.kill()


def emit_hostile(collector: Collector, tmp: Path) -> list[dict[str, str]]:
    sink = CollectorSink(collector.url, spool_dir=tmp / "spool")
    configure(sink=sink)
    emitted = []
    try:
        for field in FIELDS:
            for payload in PAYLOADS:
                values = {f: f"plain-{f}" for f in FIELDS} | {field: payload}
                if field == "client_ip":
                    if len(payload) > 60:
                        continue
                    # emit() takes only an address there now; another client (or an
                    # older version of this one) may send any text: the collector's
                    # side is what this holds, so the event is made as emit makes it.
                    values["client_ip"] = payload
                    sink.submit(AuditEvent("user_updated", *(values[f] for f in FIELDS),
                                           time.time_ns()))
                else:
                    values["client_ip"] = ""  # plain: not an address, refused by emit
                    emit("user_updated", **values)
                emitted.append(values)
        assert sink.wait_for_delivery(timeout=30)
        assert sink.stats()["rejected"] == 0
    finally:
        sink.close()
        reset_configuration()
    return emitted


def hostile_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] == "user_updated"]


def test_each_event_is_one_stored_line_and_reads_back_exactly(hostile: Hostile) -> None:
    segments = sorted((hostile.data_dir / "segments").glob("segment-*.jsonl"))
    lines = [line for p in segments for line in p.read_bytes().split(b"\n")[1:] if line]
    records = hostile_records([orjson.loads(line) for line in lines])
    assert len(records) == len(hostile.emitted)
    for line in lines:
        assert not any(c in line for c in (b"\r", b"\x1b", b"\x00", b"\xe2\x80\xa8",
                                           b"\xe2\x80\xa9", b"\xc2\x85"))
    assert [{f: r[f] for f in FIELDS} for r in records] == hostile.emitted
    report("log injection: stored records", events=len(records), fields=len(FIELDS),
           payloads=len(PAYLOADS), forged_records=0,
           lines_per_event=len(lines) / max(len(records), 1))


def test_the_cli_table_prints_one_row_per_event_and_no_control_character(hostile: Hostile
                                                                         ) -> None:
    out = cli(hostile.data_dir, "query", "--type", "user_updated", "--all")
    rows = out.splitlines()
    assert len(rows) == 2 + len(hostile.emitted)  # header, rule, one row per event
    bad = [(n, row) for n, row in enumerate(rows)
           if any(not c.isprintable() for c in row)]
    assert bad == [], bad[:3]


def test_the_cli_jsonl_is_one_line_per_event_and_exact(hostile: Hostile) -> None:
    out = cli(hostile.data_dir, "query", "--type", "user_updated", "--all", "--oldest-first",
              "--format", "jsonl")
    records = [orjson.loads(line) for line in out.split("\n") if line]
    assert len(out.split("\n")) == len(hostile.emitted) + 1
    assert [{f: r[f] for f in FIELDS} for r in records] == hostile.emitted


def formula_cells(text: str) -> tuple[int, list[list[str]]]:
    """The number of data rows of a CSV and the cells that start like a formula, read
    with ',' as the separator and again with ';' (what a spreadsheet does in a locale
    whose list separator it is)."""
    rows = list(csv.reader(io.StringIO(text, newline="")))
    split = list(csv.reader(io.StringIO(text, newline=""), delimiter=";"))
    return len(rows) - 1, [[c for c in row if starts_like_formula(c)]
                           for row in rows + split
                           if any(starts_like_formula(c) for c in row)]


def test_cli_csv_neutralizes_formulas_in_every_column(hostile: Hostile) -> None:
    out = cli(hostile.data_dir, "query", "--type", "user_updated", "--all", "--format", "csv")
    count, formulas = formula_cells(out)
    assert count == len(hostile.emitted) and formulas == []
    neutralized = out.count("'=") + out.count("'+") + out.count("'-") + out.count("'@")
    assert neutralized >= len(FIELDS) * 4  # the formulas are there, as text


@pytest.mark.parametrize("export", ["export.csv", "export.jsonl", "export.ocsf.jsonl",
                                    "export.ecs.jsonl"])
def test_api_exports_neutralize_formulas_and_keep_one_event_per_line(hostile: Hostile,
                                                                      export: str) -> None:
    response = httpx.get(f"{hostile.api}/api/v1/audit-logs/{export}",
                         params={"type": "user_updated"},
                         headers={"Authorization": f"Bearer {hostile.token}"}, timeout=60)
    assert response.status_code == 200, response.text
    if export == "export.csv":
        count, formulas = formula_cells(response.text)
        report("CSV formula injection (CLI and API exports)", cells=count * 11,
               formulas=len(FORMULAS) * len(FIELDS), unneutralized=len(formulas))
        assert count == len(hostile.emitted) and formulas == []
    else:
        lines = response.content.split(b"\n")
        assert lines[-1] == b"" and len(lines) - 1 == len(hostile.emitted)
        for line in lines[:-1]:
            orjson.loads(line)
