"""The README's "The collector" section, run as written against a real collector
process: its ``CollectorSink`` snippet ships to the socket ``serve --data-dir`` makes,
and its first query line finds what was shipped. Only the two paths are replaced (by a
temporary directory): a renamed option or import fails here."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from audit_middleware.testing import reset_configuration
from tests.e2e.harness import ROOT, CollectorProcess, stored_events

README = ROOT / "README.md"
DATA_DIR, SPOOL_DIR = "/var/lib/audit", "/var/spool/myapp-audit"  # as the README names them


def collector_section() -> str:
    return README.read_text(encoding="utf-8").split("\n## The collector\n", 1)[1] \
        .split("\n## ", 1)[0]


def sink_snippet() -> str:
    [block] = [b for b in re.findall(r"```python\n(.*?)```", collector_section(), re.DOTALL)
               if "CollectorSink(" in b]
    assert DATA_DIR in block and SPOOL_DIR in block, block
    return block


def first_query_line() -> list[str]:
    """The arguments of the section's first ``audit-collector query`` line."""
    found = re.search(r"^audit-collector (query --data-dir [^#\n]*)", collector_section(),
                      re.MULTILINE)
    assert found, "the README's collector section shows no query line"
    return shlex.split(found.group(1))


def test_the_readme_sink_ships_to_the_collector_its_query_line_reads(root: Path) -> None:
    data_dir, spool_dir = root / "data", root / "spool"
    snippet = sink_snippet().replace(DATA_DIR, str(data_dir)).replace(SPOOL_DIR,
                                                                      str(spool_dir))
    with CollectorProcess(data_dir):
        namespace: dict[str, Any] = {}
        try:
            exec(compile(snippet, "README.md (collector)", "exec"), namespace)  # noqa: S102
            audit = namespace["audit"]
            # What the query line asks for: a run_* type in org o-1, within 24 h.
            event = audit.emit("run_dropped", "run-1", org_id="o-1")
            audit.configure(sink=None)  # the sink it replaces is flushed and closed
        finally:
            reset_configuration()
        assert [r["id"] for r in stored_events(data_dir)] == [event.id]
        assert not list(spool_dir.rglob("*.spool"))  # delivered, not spooled

        argv = [a.replace(DATA_DIR, str(data_dir)) for a in first_query_line()]
        done = subprocess.run([sys.executable, "-m", "collector", *argv, "--format", "jsonl"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr
        assert [line for line in done.stdout.splitlines() if event.id in line], done.stdout
