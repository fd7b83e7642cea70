"""The tables of the documentation, read as data, so that a test can hold a table that
lists every option, parameter, error code or metric to the code's own list of them."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def table_rows(doc: str, heading: str) -> list[list[str]]:
    """The body rows (cells stripped) of the tables in the section of ``doc`` (a path
    from the repository's root) under the heading line ``heading`` (``## Options``),
    up to the next heading of that level or higher."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    level = heading.split(" ", 1)[0]
    assert f"\n{heading}\n" in text, f"{doc} has no heading {heading!r}"
    section = text.split(f"\n{heading}\n", 1)[1]
    for prefix in ("#" * n + " " for n in range(1, len(level) + 1)):
        section = section.split(f"\n{prefix}", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")]
            for row in rows[2:]]  # past the header and its |---| line
