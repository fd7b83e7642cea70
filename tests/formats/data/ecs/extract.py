"""The extraction rule behind ``fields.csv`` and ``ecs_flat-categorization.yml`` here.

Both files are verbatim lines of the published ECS artifacts in github.com/elastic/ecs
(Apache-2.0), at the commits in ``SOURCES``; nothing in them is typed from memory:

- ``fields.csv``: the header line of ``generated/csv/fields.csv`` and every row whose
  ``Field`` is in ``FIELDS`` (the fields ``collector.formats.to_ecs`` can emit), in file
  order, byte for byte.
- ``ecs_flat-categorization.yml``: the top-level entries ``CATEGORIZATION`` of
  ``generated/ecs/ecs_flat.yml`` (each from its key line to the line before the next
  top-level key), in file order, byte for byte.

To re-derive or check them from a checkout of elastic/ecs::

    git -C ecs show 7b665790c7c477dc8452ff16024dda76c706cc9c:generated/csv/fields.csv > fields.orig.csv
    git -C ecs show 5d9f12bcddda896e4323ec37b5c71be42c9f64ba:generated/ecs/ecs_flat.yml > flat.orig.yml
    .venv/bin/python -m tests.formats.data.ecs.extract fields.orig.csv flat.orig.yml --check

``--check`` exits 1 naming the file that differs; without it the two files are rewritten.
Adding a field to ``to_ecs`` means adding it to ``FIELDS`` and re-running this.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Final

HERE = Path(__file__).parent
FIELDS_FILE: Final = HERE / "fields.csv"
CATEGORIZATION_FILE: Final = HERE / "ecs_flat-categorization.yml"

#: Where the originals are; the version is what every row's ECS_Version column says.
SOURCES: Final = {
    "repo": "elastic/ecs",
    "version": "8.12.0-dev",
    FIELDS_FILE.name: ("7b665790c7c477dc8452ff16024dda76c706cc9c", "generated/csv/fields.csv"),
    CATEGORIZATION_FILE.name: ("5d9f12bcddda896e4323ec37b5c71be42c9f64ba",
                               "generated/ecs/ecs_flat.yml"),
}
#: sha256 of the two extracts as committed: a test refuses an extract edited by hand.
SHA256: Final = {
    FIELDS_FILE.name: "cf57b958aa862ec460835cff163ae304a6227380e043815f10bb27ba23fdd794",
    CATEGORIZATION_FILE.name: "6807d76795a2f9087eb3e5da06a787a27af3a740999ca020c8f4e365fe0c8bde",
}

FIELDS: Final = frozenset({
    "@timestamp", "labels", "message", "ecs.version",
    "event.action", "event.category", "event.dataset", "event.id", "event.kind",
    "event.module", "event.outcome", "event.reason", "event.sequence", "event.type",
    "organization.id", "organization.name", "related.ip", "related.user", "source.ip",
    "span.id", "trace.id", "user.id", "user.target.id",
})
CATEGORIZATION: Final = ("event.category", "event.kind", "event.outcome", "event.type")


def extract_fields(original: str) -> str:
    """Header plus the rows of ``FIELDS``, verbatim. Every row of fields.csv is one line
    (descriptions there are the one-line ``short`` form), which this checks."""
    lines = original.splitlines(keepends=True)
    kept = [lines[0]]
    found = set()
    for line in lines[1:]:
        row = next(csv.reader([line]))
        if len(row) != 9:
            raise ValueError(f"not a one-line fields.csv row: {line[:80]!r}")
        if row[3] in FIELDS:
            kept.append(line)
            found.add(row[3])
    missing = FIELDS - found
    if missing:
        raise ValueError(f"not in this fields.csv: {', '.join(sorted(missing))}")
    return "".join(kept)


def extract_categorization(original: str) -> str:
    """The top-level entries ``CATEGORIZATION`` of ecs_flat.yml, verbatim."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in original.splitlines(keepends=True):
        if line[:1] not in (" ", "\n", ""):  # a top-level key starts an entry
            key = line.split(":", 1)[0]
            current = entries.setdefault(key, []) if key in CATEGORIZATION else None
        if current is not None:
            current.append(line)
    missing = [key for key in CATEGORIZATION if key not in entries]
    if missing:
        raise ValueError(f"not in this ecs_flat.yml: {', '.join(missing)}")
    return "".join("".join(entries[key]) for key in CATEGORIZATION)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fields_csv", type=Path, help="generated/csv/fields.csv, original")
    parser.add_argument("ecs_flat_yml", type=Path, help="generated/ecs/ecs_flat.yml, original")
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    outputs = {
        FIELDS_FILE: extract_fields(args.fields_csv.read_text(encoding="utf-8")),
        CATEGORIZATION_FILE: extract_categorization(
            args.ecs_flat_yml.read_text(encoding="utf-8")),
    }
    status = 0
    for path, text in outputs.items():
        if not args.check:
            path.write_text(text, encoding="utf-8")
        elif path.read_text(encoding="utf-8") != text:
            print(f"{path.name} differs from the extract of the original", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
