"""Every ``audit-collector`` command line in a shell block of the README and docs/ is
one the command line takes: a renamed subcommand or flag, or a value a choice no longer
has, fails here rather than in the hands of the reader who copies it. The lines are
parsed by the collector's own parser, never run."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from collector.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Where a command's arguments end on its line: a comment, a redirection, a pipe, the
# end of a ``$( )`` or ``( )``, a background ``&`` or a ``;``.
END = re.compile(r"\s+#|\s*(?:>|\||\)|&(?!&)|;)")


def shell_commands(doc: Path) -> list[str]:
    """The arguments of each ``audit-collector`` command in ``doc``'s shell blocks, as
    written (continuation lines joined), synopsis lines (``[--root]``) left out."""
    text = doc.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```(?:sh|bash|console)\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            found = re.search(r"(?:^|[\s(;$])audit-collector\s+(.*)", line)
            if found and "[" not in END.split(found.group(1))[0]:
                commands.append(END.split(found.group(1))[0])
    return commands


def documented() -> list[tuple[str, str]]:
    return [(doc.relative_to(ROOT).as_posix(), command)
            for doc in DOCS for command in shell_commands(doc)]


def test_the_docs_show_commands_to_check() -> None:
    """The extraction finds the README's query lines and docs/api.md's; a change of
    block syntax that found none would pass every check below vacuously."""
    docs = {doc for doc, _ in documented()}
    assert {"README.md", "docs/api.md", "docs/shipping.md", "docs/operations.md"} <= docs, docs


@pytest.mark.parametrize(("doc", "command"), documented())
def test_each_documented_command_is_one_the_cli_takes(doc: str, command: str) -> None:
    argv = shlex.split(command)
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            parsed = build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{doc}: `audit-collector {command}`: exit {exc.code}: "
                    f"{said.getvalue().strip()}")
    assert isinstance(parsed, argparse.Namespace)
