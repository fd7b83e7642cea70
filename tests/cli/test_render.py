"""What people and spreadsheets see of a record: seed columns, dates, safe values."""

from __future__ import annotations

import csv
import io
import sys
import unicodedata

import pytest

from collector.render import csv_rows, display_width, table

RECORD = {
    "id": "019ac3f2-5e1a-7c3d-9a41-0f6d2b7e8c11", "type": "user_sign_in", "target": "u1",
    "principal": "\x1b[2J\x1b[31mroot\r\nforged line", "status": "password",
    "org_id": "o1", "org_name": "Acme", "workspace_id": "", "workspace_name": "",
    "client_ip": "198.51.100.7", "created": "2026-11-26T01:07:10.123456Z",
}


def test_table_shows_seed_columns_and_date_form() -> None:
    text = table([RECORD])
    header = text.splitlines()[0]
    assert header.split("  ")[0] == "Type"
    for column in ("Target", "Principal", "Status", "Organization ID", "Organization name",
                   "Workspace ID", "Workspace name", "Client IP", "Creation date"):
        assert column in header
    assert "2026-11-26-01-07-10" in text


def test_table_never_passes_control_characters_to_the_terminal() -> None:
    text = table([RECORD])
    assert "\x1b" not in text and "\r" not in text
    assert len(text.splitlines()) == 3  # header, rule, one row
    assert "\\x1b[2J" in text


def test_csv_neutralizes_formulas_and_round_trips() -> None:
    hostile = dict(RECORD, target="=HYPERLINK(\"http://x\")", status="+1", org_name="-2",
                   workspace_name="@SUM(A1)")
    rows = list(csv.reader(io.StringIO("".join(csv_rows([hostile, RECORD])))))
    assert rows[0][:2] == ["Type", "Target"]
    assert rows[1][1] == "'=HYPERLINK(\"http://x\")"
    assert (rows[1][3], rows[1][5], rows[1][7]) == ("'+1", "'-2", "'@SUM(A1)")
    assert rows[2][2] == RECORD["principal"]  # data kept, safely quoted
    assert rows[2][9] == "2026-11-26-01-07-10"
    assert len(rows) == 3


def test_csv_neutralizes_a_formula_after_a_semicolon() -> None:
    """Where the list separator is ';', a spreadsheet splits a .csv on it, quotes or not:
    x;=cmd|... would be a formula cell of its own."""
    hostile = dict(RECORD, target="x;=cmd|' /C calc'!A0;y", status="a;-1;+2;@3;ok")
    text = "".join(csv_rows([hostile]))
    cells = [cell for row in csv.reader(io.StringIO(text), delimiter=";") for cell in row]
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))]
    row = list(csv.reader(io.StringIO(text)))[1]
    assert row[1] == "x;'=cmd|' /C calc'!A0;y"  # the text is all there, as text
    assert row[3] == "a;'-1;'+2;'@3;ok"


#: What opens a formula, as a spreadsheet may read it: the ASCII signs, their full-width
#: forms (an East Asian IME's), and what else Unicode's NFKC folds into one of them.
FORMULA_SIGNS = ["=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20",
                 "\ufe66", "\ufe62", "\ufe63", "\ufe6b", "\u207a", "\u207c", "\u208a",
                 "\u208c", "\ufb29", "\u2a75", "\u2a76"]
#: What a spreadsheet may skip (or trim, LibreOffice's "Trim spaces") before that sign.
BLANKS = ["", " ", "   ", "\t", " \t ", "\u00a0", "\u3000", "\u2003", "\u200b", "\ufeff",
          "\x00", "\x0b"]


@pytest.mark.parametrize("blank", BLANKS)
@pytest.mark.parametrize("sign", FORMULA_SIGNS)
def test_csv_neutralizes_every_form_of_a_formula_sign_after_blanks(sign: str,
                                                                   blank: str) -> None:
    """OWASP: a ' before a cell a spreadsheet may evaluate. Only = + - @ (tab, CR) at
    the very start were: ' =1+1' (trimmed on import) and a full-width '\uff1d1+1' passed,
    at a cell's start and after a ';' (a cell of its own in ';' locales)."""
    formula = f"{blank}{sign}HYPERLINK(\"http://x\")"
    hostile = dict(RECORD, target=formula, status=f"a;{formula}", org_name=f"a\n{formula}")
    row = list(csv.reader(io.StringIO("".join(csv_rows([hostile])))))[1]
    assert row[1] == "'" + formula
    assert row[3] == "a;'" + formula
    assert row[5] == "a\n'" + formula


def test_every_character_that_folds_into_a_formula_sign_is_a_test_case() -> None:
    """The list above is every character whose NFKC form starts with = + - or @ (the
    full-width, small, superscript and subscript forms): none is left out."""
    folding = {chr(c) for c in range(0x80, sys.maxunicode + 1)
               if unicodedata.normalize("NFKC", chr(c))[:1] in ("=", "+", "-", "@")}
    assert folding <= set(FORMULA_SIGNS)


def test_csv_leaves_cells_that_only_contain_a_sign_later_alone() -> None:
    hostile = dict(RECORD, target="a=b", status="x \uff1d y", org_name="1-2")
    row = list(csv.reader(io.StringIO("".join(csv_rows([hostile])))))[1]
    assert (row[1], row[3], row[5]) == ("a=b", "x \uff1d y", "1-2")


def test_no_value_can_pass_itself_off_as_another_column() -> None:
    """Blank-looking wide characters (a Hangul filler, two columns of nothing) and
    combining marks were counted as one column each: a target padded with them pushed
    the rest of its row so that another user's id stood under Principal (an app-side
    security review). They are escaped, and widths are counted in terminal columns."""
    from collector.render import display_width

    forged = dict(RECORD, principal="usr_alice",
                  target="q" + "\u3164" * 12 + "usr_root")  # shown blank, 24 columns
    wide = dict(RECORD, principal="usr_bob", target="文件名")  # 6 columns for 3 characters
    text = table([forged, wide, RECORD])
    assert "\u3164" not in text and "\\u3164" in text
    header, _, *rows = text.splitlines()
    start = header.index("Principal")
    principals = ["usr_alice", "usr_bob", "\\x1b[2J"]
    # Each row's principal begins at the header's column, counted in terminal columns.
    assert [display_width(row[:row.index(p)]) for row, p in zip(rows, principals)] == [start] * 3


def test_jsonl_output_has_no_raw_c1_controls() -> None:
    from collector.render import jsonl

    (line,) = jsonl([dict(RECORD, principal="csi \x9b2J osc \x9d0;x\x07")])
    assert b"\xc2\x9b" not in line and b"\\u009b" in line


def test_marks_of_combining_class_zero_take_no_column() -> None:
    """Nonspacing marks were counted as a column unless their combining class was not 0,
    and many have class 0 (Thai vowel signs): a target of one letter and twenty such
    marks was padded as 21 columns wide while it drew as one, so the rest of its row
    stood 20 columns left, its status under Principal."""
    forged = dict(RECORD, target="x" + "\u0e31" * 20, principal="usr_alice", status="root")
    text = table([forged, dict(RECORD, principal="usr_bob")])
    header, _, row, _ = text.splitlines()
    before = row[:row.index("usr_alice")]
    assert len(before) - before.count("\u0e31") == header.index("Principal")


def test_invisible_marks_are_escaped_as_zero_width_characters_are() -> None:
    """A variation selector or a combining grapheme joiner draws nothing: the principal
    'root' followed by one read as 'root', though it is another principal."""
    text = table([dict(RECORD, principal="root\u034f", target="t\ufe0f", status="s\U000e0100")])
    assert "\u034f" not in text and "\ufe0f" not in text and "\U000e0100" not in text
    assert "root\\u034f" in text and "t\\ufe0f" in text and "s\\U000e0100" in text


def test_conjoining_jamo_and_skin_tones_take_no_column_of_their_own() -> None:
    """A Hangul name in NFD (as macOS writes names) is a leading consonant, two columns,
    then a vowel and a final drawn into it; a skin tone is drawn into the emoji before
    it. Each was counted as columns of its own ("한국" in NFD as 8, "👍🏽" as 4), and the
    rest of the row was padded short, out from under its header."""
    assert display_width(unicodedata.normalize("NFD", "한국")) == display_width("한국") == 4
    assert display_width("\U0001f44d\U0001f3fd") == 2  # thumbs up, medium skin tone
    assert display_width("\U0001f3fd") == 2  # alone, the swatch is drawn
    name = unicodedata.normalize("NFD", "한국")
    header, _, row, _ = table([dict(RECORD, target=name, principal="usr_alice"),
                               dict(RECORD, principal="usr_bob")]).splitlines()
    before = row[:row.index("usr_alice")]
    assert display_width(before) == header.index("Principal")
