"""The README's table of collector options is the list users read: it must name every
option the collector takes, with its flag and environment variable, and no other."""

from __future__ import annotations

import re

from collector.options import OPTIONS
from tests.e2e.harness import ROOT


def table_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Collector options", 1)[1].split("\n## ", 1)[0]
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| `")]


def test_the_readme_names_every_collector_option_with_its_flag_and_variable() -> None:
    named: dict[str, tuple[str, str]] = {}
    for name_cell, flag_cell, env_cell, *_ in table_rows():
        names = re.findall(r"`([a-z_]+)`", name_cell)
        flags = re.findall(r"`(--[a-z-]+)`", flag_cell)
        envs = re.findall(r"`(AUDIT_[A-Z_]+)`", env_cell)
        assert len(names) == len(flags) == len(envs), name_cell
        named.update({n: (f, e) for n, f, e in zip(names, flags, envs, strict=True)})
    assert named == {o.name: (o.flag, o.env) for o in OPTIONS}
