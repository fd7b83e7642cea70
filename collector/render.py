"""Records rendered for people and spreadsheets: the seed's columns and date form.

Stored values are untrusted data. For a terminal, control characters are shown escaped
(an ANSI sequence in a principal must not recolour or rewrite the operator's screen);
for CSV, cells that a spreadsheet would evaluate as a formula are neutralized.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any, Final

import orjson

from audit_middleware.event import escape_raw_controls, seed_date

#: The seed's columns, in its order: (header, record field).
COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("Type", "type"),
    ("Target", "target"),
    ("Principal", "principal"),
    ("Status", "status"),
    ("Organization ID", "org_id"),
    ("Organization name", "org_name"),
    ("Workspace ID", "workspace_id"),
    ("Workspace name", "workspace_name"),
    ("Client IP", "client_ip"),
    ("Creation date", "created"),
)

#: The CSV's columns after ``COLUMNS``: header -> record field.
CSV_EXTRA: Final = {"ID": "id", "Peer IP": "peer_ip"}

#: What opens a formula (OWASP: = + - @, tab, CR, NUL), and the forms Unicode's NFKC
#: folds into = + - @ (full-width, small, superscript, subscript: an East Asian IME
#: types the full-width ones, and a spreadsheet may read them as the ASCII sign).
_FORMULA_SIGNS: Final = ("=+-@\t\r\0" "\uff1d\uff0b\uff0d\uff20" "\ufe66\ufe62\ufe63\ufe6b"
                         "\u207a\u207c\u208a\u208c\ufb29\u2a75\u2a76")
#: What a spreadsheet may skip before the sign (LibreOffice's "Trim spaces" on import, a
#: cell read as a number or formula after blanks): spaces of every width, controls,
#: zero-width characters, a BOM. ' =1+1' was left alone and evaluated.
_BLANKS: Final = r"[\s\x00-\x1f\x7f-\x9f\u00ad\u180e\u200b-\u200f\u2060-\u2064\ufeff]*"
_FORMULA_START: Final = re.compile(f"{_BLANKS}[{re.escape(_FORMULA_SIGNS)}]")
# Quotes between the ';' and the formula too: the writer doubles them, and a reader
# splitting on ';' takes a leading "" for an empty quoted string and the rest as the cell.
_FORMULA_AFTER_BOUNDARY: Final = re.compile(
    f'([;\r\n])(?="*{_BLANKS}[{re.escape(_FORMULA_SIGNS)}])')


def display_value(record: dict[str, Any], field: str) -> str:
    value = record.get(field, "")
    if field == "created" and isinstance(value, str) and len(value) >= 19:
        return seed_date(value)
    return "" if value is None else str(value)


#: Printable characters that draw as blank space, one or two columns wide: in a table
#: they pass for padding, and a value could push another into the next column (a
#: principal that reads as another user's).
_BLANK_LOOKING: Final = frozenset("\u115f\u1160\u3164\uffa0\u2800")

#: Marks that draw nothing at all (default-ignorable: the combining grapheme joiner,
#: variation and Mongolian free variation selectors, Khmer inherent vowels): as the
#: zero-width format characters, "usr_root" followed by one reads as "usr_root".
_INVISIBLE_MARKS: Final = frozenset(
    "\u034f\u17b4\u17b5\u180b\u180c\u180d\u180f"
    + "".join(map(chr, range(0xFE00, 0xFE10)))
    + "".join(map(chr, range(0xE0100, 0xE01F0))))

#: Characters drawn over the one before them, taking no column of their own (nonspacing
#: and enclosing marks). Their canonical combining class is no test: many have class 0.
_ZERO_WIDTH_CATEGORIES: Final = frozenset({"Mn", "Me"})


def _hidden(ch: str) -> bool:
    return not ch.isprintable() or ch in _BLANK_LOOKING or ch in _INVISIBLE_MARKS


def terminal_safe(text: str) -> str:
    """Control and format characters (C0, DEL, C1, line/paragraph separators, bidi
    overrides, zero-width characters), invisible marks and blank-looking fillers as
    visible escapes."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(ch.encode("unicode_escape").decode("ascii") if _hidden(ch) else ch
                   for ch in text)


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal: East Asian wide and full-width characters
    two; nonspacing and enclosing marks, Hangul conjoining vowels and finals, and a skin
    tone after its emoji, none. (Each counted as a column, a value padded with such
    marks, Thai vowel signs of combining class 0 for one, shifted every column after it
    left, under the header of the one before.)"""
    if text.isascii():
        return len(text)
    return sum(map(_char_width, text, " " + text))


#: Hangul conjoining vowels and finals (U+1160-U+11FF, U+D7B0-U+D7FF): drawn into the
#: syllable their leading consonant starts, as in a name in NFD, which macOS writes.
_CONJOINING_JAMO: Final = (range(0x1160, 0x1200), range(0xD7B0, 0xD800))
#: Emoji skin tone modifiers: drawn into the emoji before them (alone, as a swatch).
_SKIN_TONES: Final = range(0x1F3FB, 0x1F400)


def _char_width(ch: str, before: str) -> int:
    """Columns ``ch`` takes after ``before``, as wcwidth counts them."""
    code = ord(ch)
    if (unicodedata.category(ch) in _ZERO_WIDTH_CATEGORIES
            or any(code in jamo for jamo in _CONJOINING_JAMO)
            or (code in _SKIN_TONES and unicodedata.east_asian_width(before) == "W")):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in "WF" else 1


def csv_safe(text: str) -> str:
    """OWASP's CSV-injection rule: prefix a cell that starts like a formula with ' (a
    sign of ``_FORMULA_SIGNS``, after any ``_BLANKS``).

    And the same after each ``;``, CR or LF in the cell: where the list separator is
    ``;`` (German, French, Dutch locales...), a spreadsheet opening a ``.csv`` splits on
    it, quotes or not, and ``x;=cmd|...`` would put a formula at the start of a cell of
    its own; its quoting then no longer matches ours either, so a line break inside a
    cell can start a row there."""
    if _FORMULA_START.match(text):
        text = "'" + text
    if ";" in text or "\r" in text or "\n" in text:
        text = _FORMULA_AFTER_BOUNDARY.sub(r"\1'", text)
    return text


def json_line(value: Any) -> bytes:
    """``value`` as one line of JSON, ``\n`` included: as stored, no C1 control reaches
    a terminal raw and no U+2028 splits the line for a reader (escape_raw_controls)."""
    line = orjson.dumps(value)
    if not line.isascii():
        line = escape_raw_controls(line)
    return line + b"\n"  # a copy, cheap to keep (AuditEvent.to_json_line)


def jsonl(records: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    return map(json_line, records)


def csv_rows(records: Iterable[dict[str, Any]], *, terminal: bool = False) -> Iterator[str]:
    """CSV text, a header line then a line per record, produced incrementally.
    ``terminal``: for a screen, not a file; each cell is also ``terminal_safe`` (a CSV
    printed where no one redirected it put an ANSI sequence or a bidi override of a
    stored value to work on the operator's terminal)."""
    shown = terminal_safe if terminal else str
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # The csv module quotes a cell for the characters of its line terminator only: a bare
    # "\r" went out unquoted, and spreadsheets end the row there, so the rest of the cell
    # became a row of its own whose first cell was never neutralized (row injection).
    quoted = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)

    def take() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    # After the seed's columns: the event id, and the proxy that vouched for the client
    # IP (or the peer of a client that could not be attributed): without it, a CSV lost
    # how the client IP was decided.
    writer.writerow([header for header, _ in COLUMNS] + list(CSV_EXTRA))
    yield take()
    for record in records:
        row = ([csv_safe(shown(display_value(record, f))) for _, f in COLUMNS]
               + [csv_safe(shown(str(record.get(f, "")))) for f in CSV_EXTRA.values()])
        (quoted if any("\r" in cell for cell in row) else writer).writerow(row)
        yield take()


def table(records: list[dict[str, Any]], *, max_width: int = 40) -> str:
    """A fixed-width text table with the seed's columns."""
    return table_with_widths(records, max_width=max_width)[0]


def table_with_widths(records: list[dict[str, Any]], *, max_width: int = 40,
                      at_least: list[int] | None = None) -> tuple[str, list[int]]:
    """``table``, its columns at least ``at_least`` wide (those of rows printed before,
    so that a follower's later rows line up under the header), and the widths used."""
    headers = [header for header, _ in COLUMNS]
    rows = [[_clip(terminal_safe(display_value(r, f)), max_width) for _, f in COLUMNS]
            for r in records]
    widths = [max([len(h), at_least[i] if at_least else 0]
                  + [display_width(row[i]) for row in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c + " " * (w - display_width(c))
                           for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in rows)
    return "\n".join(lines) + "\n", widths


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
