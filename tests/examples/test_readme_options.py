"""The README's table of collector options is the list users read: it must name every
option the collector takes, with its flag, environment variable and default, and no
other. The tables of docs/api.md (the API's options) and docs/shipping.md (the
forwarder's) give the same defaults."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from collector.options import BY_NAME, OPTIONS, Option, parse_duration, parse_size
from tests.doc_tables import table_rows


def readme_rows() -> list[list[str]]:
    return table_rows("README.md", "## Collector options")


def test_the_readme_names_every_collector_option_with_its_flag_and_variable() -> None:
    named: dict[str, tuple[str, str]] = {}
    for name_cell, flag_cell, env_cell, *_ in readme_rows():
        names = re.findall(r"`([a-z_]+)`", name_cell)
        flags = re.findall(r"`(--[a-z-]+)`", flag_cell)
        envs = re.findall(r"`(AUDIT_[A-Z_]+)`", env_cell)
        assert len(names) == len(flags) == len(envs), name_cell
        named.update({n: (f, e) for n, f, e in zip(names, flags, envs, strict=True)})
    assert named == {o.name: (o.flag, o.env) for o in OPTIONS}


def documented_default(option: Option, cell: str) -> Any:
    """What a default cell says, as the option's own value; ``None`` for a default the
    cell describes rather than gives (``<data_dir>/collector.sock``, "a quarter of
    ...") or for "none", "(off)" or nothing."""
    literal = re.fullmatch(r"`([^`]*)`", cell)
    if literal and "<" not in literal.group(1):
        return option.parse(literal.group(1))
    amount = re.match(r"(\d+(?:\.\d+)?) ?(MiB|s)?\b(?! of)", cell)
    if cell.lower() in ("true", "false") or amount is None:
        return {"true": True, "false": False}.get(cell.lower())
    if option.parse in (parse_size, parse_duration):
        return option.parse("".join(amount.groups(default="")))
    return option.parse(amount.group(1))


def empty_as_none(value: Any) -> Any:
    """The options whose "no value" is an empty string (``tcp``) read as "none"."""
    return None if value == "" else value


def assert_defaults_documented(rows: list[list[str]], default_column: int) -> None:
    for row in rows:
        for name in re.findall(r"`([a-z_]+)`", row[0]):
            option = BY_NAME[name]
            said = documented_default(option, row[default_column])
            assert said == empty_as_none(option.default), (name, row[default_column])


def test_the_readme_gives_every_options_default() -> None:
    assert_defaults_documented(readme_rows(), default_column=3)


def test_the_api_page_gives_its_options_defaults() -> None:
    assert_defaults_documented(table_rows("docs/api.md", "## Options"), default_column=1)


def test_the_shipping_page_gives_the_forwarders_defaults() -> None:
    rows = table_rows("docs/shipping.md", "## The forwarder (OTLP/HTTP)")
    assert {name.strip("`") for name, *_ in rows} == {
        o.name for o in OPTIONS if o.name.startswith("forward_")}
    assert_defaults_documented(rows, default_column=1)


def test_a_wrong_default_in_the_table_is_caught() -> None:
    """The comparison above can fail: a documented 5 MiB is not the 4 MiB of max_frame,
    nor is a path another path."""
    max_frame, data_dir = BY_NAME["max_frame"], BY_NAME["data_dir"]
    # Read as the values they say (a parser that read None would pass a != alone) ...
    assert documented_default(max_frame, "5 MiB") == 5 * 2**20 != max_frame.default
    assert documented_default(data_dir, "`./data`") == Path("./data") != data_dir.default
    # ... and a row saying them is refused.
    with pytest.raises(AssertionError):
        assert_defaults_documented([["`max_frame`", "5 MiB"]], default_column=1)
