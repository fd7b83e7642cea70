"""HTML and script in every field of the admin panel, in a real headless Chromium: events
whose every text field (and the peer address) holds markup that would run if parsed are
stored, and a root reader lists them, filters for them and opens each one. Every value
shows as the exact text it is, no element is created from it, no script runs, no dialog
opens, and the page's Content-Security-Policy is never violated.

(The browser and page fixtures come from tests/browser/conftest.py: without Chromium
these tests skip, or fail under CI=true, as the panel's own browser tests do.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from tests.browser.conftest import browser, page  # noqa: F401 - fixtures
from tests.e2e.harness import short_tmp
from tests.faults.fleet import Collector, report
from tests.security.test_access import add_reader

pytestmark = pytest.mark.e2e

FIELDS = ("target", "principal", "status", "org_id", "org_name", "workspace_id",
          "workspace_name", "client_ip", "peer_ip")
PAYLOADS = [
    "<img src=x onerror=\"window.__pwned='img'\">",
    "<script>window.__pwned='script'</script>",
    "\"><svg onload=\"window.__pwned='svg'\">",
    "<iframe srcdoc=\"<script>parent.__pwned='iframe'</script>\"></iframe>",
    "javascript:window.__pwned='href'",
    "{{constructor.constructor('window.__pwned=1')()}}",
    "</td></tr><tr><td onmouseover=\"window.__pwned='td'\">x",
    "<a href=\"javascript:window.__pwned='a'\">click</a>",
]
INGEST_TOKEN = "panel-html-ingest-token"


@dataclass
class Hostile:
    url: str
    token: str
    events: list[dict[str, Any]]


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    events = []
    for n, payload in enumerate(PAYLOADS):
        event = {"v": 1, "id": str(uuid.uuid4()), "type": "user_updated",
                 "created": f"2026-11-26T01:07:{10 + n:02d}.123456Z", "trace_id": "",
                 "span_id": ""}
        for field in FIELDS:  # every field at once, each a little different
            value = f"{payload}{field}"
            event[field] = value if field not in ("client_ip", "peer_ip") else value[:64]
        events.append(event)
    with short_tmp() as tmp:
        data = tmp / "data"
        data.mkdir()
        token = add_reader(data, "ops", root=True)
        collector = Collector(data, api=True, env={"AUDIT_TOKEN": INGEST_TOKEN}).start()
        try:
            url = collector.api_url()
            stored = httpx.post(f"{url}/api/v1/events",
                                content=b"\n".join(orjson.dumps(e) for e in events),
                                headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
            assert stored.status_code == 200, stored.text
            assert len(stored.json()["written"]) == len(events), stored.text
            yield Hostile(url, token, events)
        finally:
            collector.kill()


def signed_in(page: Any, hostile: Hostile) -> None:  # noqa: F811 - the fixture's name
    page.goto(f"{hostile.url}/admin/audit-logs")
    page.fill("#token", hostile.token)
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_selector("#events tbody tr")


def injected_elements(page: Any) -> int:  # noqa: F811 - the fixture's name
    return int(page.eval_on_selector_all(
        "#events img, #events script, #events svg, #events iframe, #events a[href^=javascript],"
        " #detail img, #detail script, #detail svg, #detail iframe,"
        " #detail a[href^=javascript], #events td[onmouseover]", "found => found.length"))


def test_markup_in_every_field_is_shown_as_text_and_never_runs(page: Any,  # noqa: F811
                                                                hostile: Hostile) -> None:
    signed_in(page, hostile)
    cells = page.eval_on_selector_all(
        "#events tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    shown = " ".join(cell for row in cells for cell in row)
    for event in hostile.events:
        for field in ("target", "principal", "status", "org_id", "org_name",
                      "workspace_id", "workspace_name", "client_ip"):
            assert event[field] in shown, (field, event[field])
    opened = 0
    for n in range(len(cells)):
        page.click(f"#events tbody tr:nth-child({n + 1})")
        page.wait_for_selector("#detail:not([hidden])")
        detail = page.text_content("#detail-fields") or ""
        if any(e["id"] in detail for e in hostile.events):
            event = next(e for e in hostile.events if e["id"] in detail)
            for field in FIELDS:
                assert event[field] in detail, (field, event[field])
            opened += 1
    report("HTML/script in every panel field (Chromium)", payloads=len(PAYLOADS),
           fields=len(FIELDS), events_opened=opened, executed=int(
               page.evaluate("window.__pwned !== undefined")), dialogs=len(page.problems))
    assert opened == len(hostile.events)
    assert injected_elements(page) == 0
    assert page.evaluate("window.__pwned === undefined")
    assert page.problems == []
