"""The "Audit logs" tab of the admin panel, as a root user uses it in Chromium: sign in,
filter by type and time, page, open an event, download the selection as CSV. A user
that is not root is refused; a stored ``<script>`` principal is shown as text and never
runs. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from audit_middleware.event import seed_date
from collector.api.routes import MAX_LISTED_TYPES
from collector.render import COLUMNS
from collector.store import StorageSettings, Store
from tests.api.served import add_reader, serving
from tests.browser.conftest import screenshot
from tests.collector.storage_helpers import event
from tests.e2e.harness import short_tmp

pytestmark = pytest.mark.e2e

START_NS = int(datetime(2026, 11, 20, 10, 0, tzinfo=UTC).timestamp()) * 10**9
MINUTE = 60 * 10**9
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SCRIPT_PRINCIPAL = "<script>window.__pwned = 'script'</script>"
IMG_PRINCIPAL = "<img src=x onerror=\"window.__pwned = 'img'\">"
BIDI_PRINCIPAL = "\u202egnp\u3164.exe"  # reads as "exe.png" where the override is obeyed
# Drawn as "user-1" where its marks and separators are not shown: a combining grapheme
# joiner, a variation selector, a line separator, a no-break space, a Khmer inherent vowel.
LOOKALIKE_PRINCIPAL = "user-\u034f\ufe0f1\u2028\u00a0\u17b4"
# A kanji with an ideographic variation selector (U+E0100: a name's glyph), and the same
# kanji with the private-use U+E010 and a "0": both were shown as "\uE0100".
IVS_PRINCIPALS = ("kanji-\u845b\U000e0100", "kanji-\u845b\ue0100")
TYPES = ["run_launched", "credentials_created", "run_completed", "user_sign_in"]
FAILED = "failed: TimeoutError"


@dataclass
class Panel:
    url: str
    root: str
    plain: str
    rows: list[dict[str, Any]]  # stored order (oldest first)

    def api(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params,
                             headers={"Authorization": f"Bearer {self.root}"})
        assert response.status_code == 200, response.text
        return response


@pytest.fixture(scope="module")
def panel() -> Iterator[Panel]:
    """60 events a minute apart from 2026-11-20 10:00 UTC (every tenth failed), two
    hostile principals in another organization (one failed), a traced event; readers
    `ops` (root) and `viewer`; the collector serving them."""
    rows = [event(type=TYPES[n % 4], principal=f"user-{n % 3}", target=f"t-{n}",
                  org_id="org-1", org_name="Acme & Co", status=FAILED if n % 10 == 3 else "",
                  created_ns=START_NS + n * MINUTE)
            for n in range(60)]
    rows[7]["trace_id"], rows[7]["span_id"] = TRACE, "00f067aa0ba902b7"
    rows.append(event(type="team_deleted", principal=BIDI_PRINCIPAL, target="t-bidi",
                      org_id="org-3", created_ns=START_NS + 59 * MINUTE + 30 * 10**9))
    rows.append(event(type="team_updated", principal=LOOKALIKE_PRINCIPAL, target="t-marks",
                      org_id="org-3", created_ns=START_NS + 59 * MINUTE + 40 * 10**9))
    for n, principal in enumerate(IVS_PRINCIPALS):
        rows.append(event(type="team_renamed", principal=principal, target=f"t-ivs-{n}",
                          org_id="org-3", created_ns=START_NS + 59 * MINUTE + (50 + n) * 10**9))
    rows.append(event(type="user_updated", principal=SCRIPT_PRINCIPAL, target="t-script", org_id="org-2",
                      status=FAILED, created_ns=START_NS + 60 * MINUTE))
    rows.append(event(type="user_updated", principal=IMG_PRINCIPAL, target="t-img", org_id="org-2",
                      created_ns=START_NS + 61 * MINUTE))
    with panel_of(rows) as served:
        yield served


@contextmanager
def panel_of(rows: list[dict[str, Any]]) -> Iterator[Panel]:
    """A collector serving a store of ``rows``, with readers `ops` (root) and `viewer`."""
    with short_tmp() as tmp:
        data = tmp / "data"
        store = Store(StorageSettings(data_dir=data))
        store.open()
        try:
            store.write(rows)
        finally:
            store.close()
        root, plain = add_reader(data, "ops", root=True), add_reader(data, "viewer", root=False)
        with serving(data, "--trace-url-template",
                     "https://traces.example/trace/{trace_id}") as (_, url):
            yield Panel(url, root, plain, rows)


def expect(locator: Any) -> Any:
    # Playwright's assertions run without eval: the panel's CSP forbids it, so
    # page.wait_for_function cannot poll there.
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def sign_in_at(page: Any, url: str, token: str) -> None:
    """Open the panel at ``url`` (a page of it, with its query or fragment) and submit
    the sign-in form with ``token``."""
    page.goto(url)
    page.fill("#token", token)
    page.click("#sign-in-form button[type=submit]")


def sign_in(page: Any, panel: Panel, token: str) -> None:
    sign_in_at(page, f"{panel.url}/admin/audit-logs", token)


def signed_in(page: Any, panel: Panel) -> None:
    sign_in(page, panel, panel.root)
    page.wait_for_selector("#events tbody tr")


def table(page: Any) -> list[list[str]]:
    return page.eval_on_selector_all(
        "#events tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")


def apply(page: Any, **fields: str) -> None:
    for name, value in fields.items():
        page.fill(f"#filters [name={name}]", value)
    with page.expect_response(lambda r: "/api/v1/audit-logs?" in r.url):
        page.click("#filters button[type=submit]")
    expect(page.locator("#summary")).not_to_have_text("Loading…")


def test_root_signs_in_and_sees_the_seed_columns(page: Any, panel: Panel) -> None:
    signed_in(page, panel)
    headers = page.eval_on_selector_all("#events thead th", "ths => ths.map(t => t.textContent)")
    assert headers == [h for h, _ in COLUMNS]
    assert page.text_content("#tab-audit-logs") == "Audit logs"
    assert page.text_content("#who-name") == "ops"
    newest = panel.rows[-1]
    first = table(page)[0]
    assert first[0] == newest["type"] and first[2] == newest["principal"]
    assert first[9] == seed_date(newest["created"])  # YYYY-MM-DD-HH-MM-SS, UTC
    screenshot(page, "signed-in")
    assert page.problems == []


def test_filter_by_type_and_time_range(page: Any, panel: Panel) -> None:
    signed_in(page, panel)
    apply(page, type="run_*", since="2026-11-20-10-10-00", until="2026-11-20-10-30-00")
    want = [r for r in panel.rows[10:30] if r["type"].startswith("run_")][::-1]
    rows = table(page)
    assert [(r[0], r[1]) for r in rows] == [(w["type"], w["target"]) for w in want]
    assert "type=run_*" in page.url.replace("%2A", "*")  # the selection is in the URL
    screenshot(page, "filtered")
    assert page.problems == []


def test_types_beyond_the_suggested_ones_are_said_and_still_filter(
        page: Any, panel: Panel) -> None:
    """The API suggests at most MAX_LISTED_TYPES stored types and says when more are
    stored; the panel did not say so, and a type not suggested read as one never
    stored. Said under the type field now, and what is typed there is asked for; the
    filter takes it, and a glob, as before."""
    signed_in(page, panel)
    expect(page.locator("#types option").first).to_be_attached()  # the types loaded
    expect(page.locator("#types-more")).to_be_hidden()
    flood = [event(type=f"a_flood_{n:04d}", created_ns=START_NS + n * 10**9)
             for n in range(MAX_LISTED_TYPES)]
    with panel_of([*flood, event(type="zz_last", target="t-last")]) as many:
        signed_in(page, many)
        expect(page.locator("#types-more")).to_be_visible()
        assert page.locator("#types option[value=zz_last]").count() == 0
        # Typing its first characters asks for the types beginning with them: the type
        # the flood hid is suggested.
        page.fill("#filters input[name=type]", "zz")
        expect(page.locator("#types option[value=zz_last]")).to_be_attached()
        assert page.locator("#types option[value=a_flood_0000]").count() == 0
        page.fill("#filters input[name=type]", "run_launched, a_flood_00*")
        expect(page.locator("#types option[value=a_flood_0001]")).to_be_attached()
        assert page.locator("#types option[value=zz_last]").count() == 0
        for typed in ("zz_last", "zz_*"):
            apply(page, type=typed)
            assert [(row[0], row[1]) for row in table(page)] == [("zz_last", "t-last")]
    assert page.problems == []


def test_a_filter_is_sent_as_typed_so_a_look_alike_principal_is_its_own(
        page: Any, panel: Panel) -> None:
    """"user-1 " (a trailing space) is another principal than "user-1": the panel does
    not trim it away, and a link carrying it selects it."""
    signed_in(page, panel)
    apply(page, principal="user-1 ")
    assert "principal=user-1+&" in page.url + "&" or "principal=user-1%20" in page.url
    expect(page.locator("#summary")).to_have_text("No events match these filters.")
    apply(page, principal="user-1")
    assert {row[2] for row in table(page)} == {"user-1"}
    assert page.problems == []


def test_filter_by_status_and_organization_name(page: Any, panel: Panel) -> None:
    signed_in(page, panel)
    apply(page, status=FAILED, org_name="Acme & Co")
    want = [r for r in panel.rows if r["status"] == FAILED and r["org_name"] == "Acme & Co"]
    assert len(want) == 6  # the failed event of the other organization is left out
    assert [(r[1], r[3], r[5]) for r in table(page)] == [
        (w["target"], w["status"], w["org_name"]) for w in want[::-1]]
    assert "org_name=Acme+%26+Co" in page.url  # escaped in the URL and the CSV link
    assert "status=failed%3A+TimeoutError" in page.get_attribute("#download", "href")
    screenshot(page, "filtered-by-status-and-org-name")
    assert page.problems == []


def test_a_bad_filter_says_what_is_accepted(page: Any, panel: Panel) -> None:
    signed_in(page, panel)
    apply(page, since="last tuesday")
    assert "is not a time" in page.text_content("#error")
    assert page.problems == []


def test_paging_forward_and_back(page: Any, panel: Panel) -> None:
    signed_in(page, panel)
    page.select_option("#filters [name=limit]", "25")
    apply(page, org="org-1")  # the 60 events (reads of earlier tests are stored too)
    first = table(page)
    assert len(first) == 25 and page.is_disabled("#previous")
    with page.expect_response(lambda r: "cursor=" in r.url):
        page.click("#next")
    expect(page.locator("#page-label")).to_have_text("Page 2")
    second = table(page)
    assert len(second) == 25 and not set(map(tuple, first)) & set(map(tuple, second))
    want = [(r["type"], r["target"]) for r in panel.rows[:60][::-1][25:50]]
    assert [(r[0], r[1]) for r in second] == want
    page.click("#next")
    expect(page.locator("#page-label")).to_have_text("Page 3")
    assert len(table(page)) == 10 and page.is_disabled("#next")
    page.click("#previous")
    expect(page.locator("#page-label")).to_have_text("Page 2")
    assert table(page) == second
    screenshot(page, "page-2")
    assert page.problems == []


def test_open_an_event_with_its_trace_link(page: Any, panel: Panel) -> None:
    signed_in(page, panel)
    traced = panel.rows[7]
    apply(page, target=traced["target"])
    page.click("#events tbody tr")
    page.wait_for_selector("#detail:not([hidden])")
    fields = dict(zip(page.eval_on_selector_all("#detail-fields dt", "e => e.map(x => x.textContent)"),
                      page.eval_on_selector_all("#detail-fields dd", "e => e.map(x => x.textContent)"),
                      strict=True))
    assert fields["id"] == traced["id"] and fields["org_name"] == "Acme & Co"
    assert fields["created"].startswith(seed_date(traced["created"]))
    link = page.query_selector("#detail-fields a")
    assert link.text_content() == TRACE
    assert link.get_attribute("href") == f"https://traces.example/trace/{TRACE}"
    assert link.get_attribute("rel") == "noopener noreferrer"
    screenshot(page, "event-detail")
    assert page.problems == []


def test_download_the_current_selection_as_csv(page: Any, panel: Panel,
                                                tmp_path: Path) -> None:
    signed_in(page, panel)
    apply(page, type="credentials_created", principal="user-1")
    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.suggested_filename.startswith("audit-logs-")
    saved = tmp_path / "export.csv"
    download.save_as(saved)
    rows = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"))))
    want = [r for r in panel.rows if r["type"] == "credentials_created"
            and r["principal"] == "user-1"][::-1]
    assert want and [r["ID"] for r in rows] == [w["id"] for w in want]
    assert rows[0]["Creation date"] == seed_date(want[0]["created"])
    assert rows[0]["Organization name"] == "Acme & Co"
    assert [row[:2] for row in table(page)] == [[r["Type"], r["Target"]] for r in rows]
    assert page.problems == []


def test_a_user_that_is_not_root_is_refused(page: Any, panel: Panel) -> None:
    sign_in(page, panel, panel.plain)
    page.wait_for_selector("#sign-in-error:not([hidden])")
    assert "not root" in page.text_content("#sign-in-error")
    assert page.is_hidden("#admin") and table(page) == []
    assert page.context.cookies() == []
    screenshot(page, "not-root")
    assert page.problems == []


def test_a_wrong_token_is_refused(page: Any, panel: Panel) -> None:
    sign_in(page, panel, "ac_0123456789abcdef_" + "A" * 43)
    page.wait_for_selector("#sign-in-error:not([hidden])")
    assert "not valid" in page.text_content("#sign-in-error")
    assert page.is_hidden("#admin")


def test_a_stored_script_principal_is_text_and_never_runs(page: Any, panel: Panel) -> None:
    signed_in(page, panel)
    apply(page, type="user_updated")
    principals = [row[2] for row in table(page)]
    assert principals == [IMG_PRINCIPAL, SCRIPT_PRINCIPAL]  # shown exactly, as text
    page.click("#events tbody tr")
    page.wait_for_selector("#detail:not([hidden])")
    assert IMG_PRINCIPAL in page.text_content("#detail-fields")
    assert page.evaluate("window.__pwned") is None
    assert page.query_selector("#events img, #detail img, #events script") is None
    screenshot(page, "hostile-principals")
    assert page.problems == []


def test_invisible_characters_are_shown_not_obeyed(page: Any, panel: Panel) -> None:
    """A bidi override (U+202E) made "\u202egnp.exe" read as "exe.png" in a cell, and
    blank-looking fillers pass for spacing (an app-side security review): format
    characters, controls and fillers are shown as \\u escapes, in the table and in the
    event's details."""
    signed_in(page, panel)
    apply(page, type="team_deleted")
    assert [row[2] for row in table(page)] == ["\\u202Egnp\\u3164.exe"]
    page.click("#events tbody tr")
    page.wait_for_selector("#detail:not([hidden])")
    assert "\\u202Egnp\\u3164.exe" in page.text_content("#detail-fields")
    assert "\u202e" not in page.text_content("#detail-fields")
    assert page.problems == []


def test_invisible_marks_and_separators_are_shown_as_the_cli_shows_them(
        page: Any, panel: Panel) -> None:
    """Marks that draw nothing (U+034F, variation selectors, U+17B4), the line separator
    and spaces other than " " were drawn as they are, so "user-\\u034f1" read as
    "user-1", another principal: escaped as the CLI's table escapes them."""
    signed_in(page, panel)
    apply(page, type="team_updated")
    shown = "user-\\u034F\\uFE0F1\\u2028\\u00A0\\u17B4"
    assert [row[2] for row in table(page)] == [shown]
    page.click("#events tbody tr")
    page.wait_for_selector("#detail:not([hidden])")
    assert shown in page.text_content("#detail-fields")
    assert page.problems == []


def test_an_escape_above_u_ffff_is_told_apart_from_one_below_and_a_digit(
        page: Any, panel: Panel) -> None:
    """U+E0100 was shown as "\\uE0100", which reads as U+E010 and a "0", and is how
    that pair is shown: two principals passed for one. Eight digits after \\U now, as
    the CLI writes them."""
    signed_in(page, panel)
    apply(page, type="team_renamed")
    assert sorted(row[2] for row in table(page)) == [
        "kanji-\u845b\\U000E0100", "kanji-\u845b\\uE0100"]
    assert page.problems == []


def test_signing_out_returns_to_the_sign_in_form(page: Any, panel: Panel) -> None:
    signed_in(page, panel)
    page.click("#sign-out")
    page.wait_for_selector("#sign-in:not([hidden])")
    page.reload()
    page.wait_for_selector("#sign-in:not([hidden])")
    assert page.is_hidden("#admin")


def test_panel_views_are_recorded_as_reads_by_the_signed_in_user(page: Any,
                                                                  panel: Panel) -> None:
    signed_in(page, panel)
    apply(page, principal="user-2")
    reads = panel.api("/api/v1/audit-logs", type="audit_log_viewed", limit=5).json()["records"]
    assert any(r["principal"] == "ops" and '"principal":"user-2"' in r["status"]
               for r in reads)
