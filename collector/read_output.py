"""How ``query`` and ``tail`` print records: table, jsonl, csv, ocsf or ecs, a batch at a
time (``query --all`` and ``tail -f`` print as they read), under one header (a table's
printed again when a column must widen).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO

from . import formats, render


def _writer(fmt: str, out: TextIO) -> Callable[[list[dict[str, Any]], bool], None]:
    """A function printing one batch of records in ``fmt``. A CSV header comes once, with
    the first batch written with ``header=True``; a table's header before the first
    records (or alone, for ``header=True`` and none). A table's
    later rows keep the columns as wide as before, under that header; when a value needs
    a wider column, the header is printed again above them (``tail -f`` printed each
    batch at its own widths, out of line with the header)."""
    headed = [False]
    widths: list[list[int] | None] = [None]

    def write(records: list[dict[str, Any]], header: bool = True) -> None:
        if fmt == "jsonl":
            out.writelines(line.decode("utf-8") for line in render.jsonl(records))
        elif fmt in formats.FORMATTERS:
            out.writelines(line.decode("utf-8") for line in formats.json_lines(records, fmt))
        elif fmt == "csv":
            # Only when asked: a follower appending to a file (``tail -f -n 0 >> x.csv``)
            # must not put a header line in the middle of it.
            rows = render.csv_rows(records, terminal=out.isatty())
            head = next(rows)
            if header and not headed[0]:
                out.write(head)
            headed[0] = True
            out.writelines(rows)
        elif records or (header and not headed[0]):
            before = widths[0]
            text, widths[0] = render.table_with_widths(records, at_least=before)
            out.write(text.split("\n", 2)[2] if headed[0] and widths[0] == before else text)
            headed[0] = True
        out.flush()

    return write
