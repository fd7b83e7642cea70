"""docs/protocol.md's tables are what another client's author and an app's operator
read: its table of error codes must list every code the wire knows, fatal and
retryable as the codec says, and its table of ``CollectorSink`` parameters every
parameter with its default."""

from __future__ import annotations

import inspect
import re
from typing import Any

from audit_middleware.shipper import CollectorSink
from audit_middleware.wire import RETRYABLE, ErrorCode, ErrorReply
from collector.options import parse_duration, parse_size
from tests.doc_tables import table_rows

DOC = "docs/protocol.md"


def test_the_error_table_lists_every_code_as_fatal_and_retryable_as_it_is() -> None:
    documented = {row[0].strip("`"): (row[1], row[2]) for row in table_rows(DOC, "## Errors")}
    yes_no = {True: "yes", False: "no"}
    assert documented == {
        code.value: (yes_no[ErrorReply(code, "").fatal], yes_no[code in RETRYABLE])
        for code in ErrorCode}


def documented_value(cell: str) -> Any:
    """``None``, ``False``, `` `text` ``, ``10,000``, ``256 MiB``, ``0.05 s``, as Python."""
    literal = re.fullmatch(r"`([^`]*)`", cell)
    if literal:
        text = literal.group(1)
        return {"None": None, "False": False, "True": True}.get(text, text)
    if cell.endswith(" MiB"):
        return parse_size(cell.replace(" ", ""))
    if cell.endswith(" s"):
        return parse_duration(cell.replace(" ", ""))
    return int(cell.replace(",", ""))


def test_the_collector_sink_table_gives_every_parameter_and_its_default() -> None:
    rows = table_rows(DOC, "### `CollectorSink` parameters")
    documented = {row[0].strip("`"): documented_value(row[1]) for row in rows}
    parameters = list(inspect.signature(CollectorSink).parameters.values())
    assert documented == {p.name: p.default for p in parameters}
