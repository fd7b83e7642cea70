"""The "Lost events" tab of the admin panel, in Chromium: a root user sees the sources
that lost events, acknowledges one with a reason, and the row says so; the reason and
the reader are an audit record. A hostile source id is shown as text."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from collector.storage.records import encode_events
from collector.store import StorageSettings, Store
from tests.api.served import add_reader, serving
from tests.browser.conftest import screenshot
from tests.browser.test_panel import expect, sign_in_at
from tests.collector.storage_helpers import events
from tests.e2e.harness import short_tmp, wire_line

pytestmark = pytest.mark.e2e

KILLED = "web-1:4242:9f3c"  # lost 2-3 (a gap) and 5-6 (its unreceived tail)
HOSTILE = "<img src=x onerror=\"window.__pwned = 1\">\u202e"  # lost number 2
WHOLE = "web-2:77:aa01"  # lost nothing


@dataclass
class Served:
    url: str
    root: str


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with short_tmp() as tmp:
        data = tmp / "data"
        store = Store(StorageSettings(data_dir=data))
        store.open()
        try:
            for source, seqs, numbered in ((KILLED, [1, 4], 6), (HOSTILE, [1, 3], 0),
                                           (WHOLE, [1, 2], 2)):
                store.submit_encoded(encode_events(events(len(seqs))), source, seqs,
                                     numbered).result()
        finally:
            store.close()
        root = add_reader(data, "ops", root=True)
        with serving(data) as (_, url):
            yield Served(url, root)


def losses(page: Any) -> dict[str, list[str]]:
    """{source: its other cells}, the "Last seen" cell checked and left out."""
    rows = page.eval_on_selector_all(
        "#losses tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    for row in rows:
        assert re.fullmatch(r"\d{4}(-\d\d){5}", row[5]), row  # the seed's date form
    return {row[0]: row[1:5] + row[6:] for row in rows}


def test_a_root_user_acknowledges_a_sources_lost_events(page: Any, served: Served) -> None:
    sign_in_at(page, f"{served.url}/admin/audit-logs", served.root)
    page.wait_for_selector("#events")
    page.click("#tab-losses")
    expect(page.locator("#losses-summary")).to_have_text("5 lost events not acknowledged.")
    assert page.url.endswith("/admin/audit-logs#lost-events")
    assert page.get_attribute("#tab-losses", "aria-current") == "page"
    assert page.is_hidden("#audit-logs-view")
    shown = losses(page)
    # Text, not markup; the bidi override shown as an escape, not obeyed.
    hostile = HOSTILE.replace("\u202e", "\\u202E")
    assert shown == {KILLED: ["4", "2", "2", "", "Acknowledge…"],
                     hostile: ["1", "1", "0", "", "Acknowledge…"]}, shown
    assert list(shown) == [KILLED, hostile]  # the most not acknowledged first
    assert page.evaluate("() => window.__pwned") is None
    page.click(f"#losses tbody tr[data-source='{KILLED}'] button")
    expect(page.locator("#ack-source")).to_have_text(KILLED)
    page.fill("#ack-reason", "killed during the 2026-11 upgrade")
    with page.expect_response(lambda r: "/api/v1/sources/losses" in r.url):
        page.click("#ack-form button[type=submit]")
    expect(page.locator("#losses-summary")).to_have_text("1 lost event not acknowledged.")
    assert losses(page)[KILLED] == ["0", "2", "2", "6", "Acknowledged"]
    assert page.is_hidden("#ack-form")
    screenshot(page, "lost-events")
    page.click("#tab-audit-logs")
    expect(page.locator("#tab-audit-logs")).to_have_attribute("aria-current", "page")
    assert page.is_visible("#events") and page.is_hidden("#losses-view")
    assert page.problems == []
    recorded = httpx.get(f"{served.url}/api/v1/audit-logs",
                         params={"type": "audit_loss_acknowledged"},
                         headers={"Authorization": f"Bearer {served.root}"}).json()
    [record] = recorded["records"]
    assert (record["principal"], record["target"]) == ("ops", KILLED)
    assert orjson.loads(record["status"]) == {"reason": "killed during the 2026-11 upgrade",
                                              "through": 6}


def test_a_refused_acknowledgement_says_why(page: Any, served: Served) -> None:
    sign_in_at(page, f"{served.url}/admin/audit-logs#lost-events", served.root)
    page.wait_for_selector("#losses tbody tr")
    page.click("#losses tbody tr:first-child button")
    page.fill("#ack-reason", "two\u0007bells")  # not one line of printable text
    page.click("#ack-form button[type=submit]")
    expect(page.locator("#losses-error")).to_contain_text("printable characters")
    assert page.problems == []


def test_a_loss_made_while_the_form_is_open_is_not_acknowledged_unseen(page: Any) -> None:
    """The reader acknowledges the losses the row showed: a source that loses more
    events meanwhile (the list is a snapshot) keeps those new losses unacknowledged."""
    from tests.e2e.harness import RawClient

    with short_tmp() as tmp:
        data = tmp / "data"
        root = add_reader(data, "ops", root=True)
        with serving(data) as (collector, url):
            client = RawClient(collector.socket)
            client.hello()
            client.batch(1, [wire_line(1), wire_line(4)], [1, 4])  # 2-3 lost
            sign_in_at(page, f"{url}/admin/audit-logs#lost-events", root)
            expect(page.locator("#losses-summary")).to_have_text(
                "2 lost events not acknowledged.")
            page.click("#losses tbody tr:first-child button")
            client.batch(2, [wire_line(7)], [7])  # 5-6 lost while the form is open
            client.close()
            page.fill("#ack-reason", "the gap I was shown")
            with page.expect_response(lambda r: "/api/v1/sources/losses" in r.url):
                page.click("#ack-form button[type=submit]")
            expect(page.locator("#losses-summary")).to_have_text(
                "2 lost events not acknowledged.")
            assert losses(page)["test:1:ab"][:4] == ["2", "4", "0", "4"]
            assert page.problems == []


def test_the_selection_stays_in_the_url_across_the_tabs(page: Any, served: Served) -> None:
    """Back from the Lost events tab, the audit logs tab's URL holds the selection it
    shows (it is what a bookmark, a shared link or a reload runs); back through the
    history, it shows the selection its URL holds."""
    sign_in_at(page, f"{served.url}/admin/audit-logs?principal=alice", served.root)
    page.wait_for_selector("#events")
    principal = page.locator("#filters input[name=principal]")
    expect(principal).to_have_value("alice")
    page.click("#tab-losses")
    expect(page.locator("#losses-view")).to_be_visible()
    page.click("#tab-audit-logs")
    expect(page.locator("#audit-logs-view")).to_be_visible()
    assert "principal=alice" in page.url, page.url
    page.reload()
    page.wait_for_selector("#events")
    expect(principal).to_have_value("alice")
    principal.fill("bob")
    page.click("#filters button[type=submit]")
    assert "principal=bob" in page.url
    page.click("#tab-losses")
    expect(page.locator("#losses-view")).to_be_visible()
    page.go_back()  # to ?principal=bob
    expect(page.locator("#audit-logs-view")).to_be_visible()
    expect(principal).to_have_value("bob")
    page.go_back()  # the first visit to Lost events
    expect(page.locator("#losses-view")).to_be_visible()
    page.go_back()  # the page as first opened: ?principal=alice
    expect(page.locator("#audit-logs-view")).to_be_visible()
    expect(principal).to_have_value("alice")
    with page.expect_request(lambda r: "/api/v1/audit-logs?" in r.url) as asked:
        page.click("#filters button[type=submit]")
    assert "principal=alice" in asked.value.url
    assert page.problems == []
