"""``GET /metrics`` under ``metrics_auth = reader``: its token is checked as every route
that checks a reader's token checks it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from collector.readers import Readers
from tests.api.served import served_app
from tests.collector.storage_helpers import open_store


def test_a_scrape_with_two_authorizations_is_refused_under_metrics_auth_reader(
        tmp_path: Path) -> None:
    """As every route that checks a reader's token (docs/api.md): 400, not the first
    header's reader, nor the 401 of a token that fails."""
    data = tmp_path / "data"
    token = Readers(data).add("prometheus", root=False)
    with open_store(data) as store:
        app = served_app(data, store, AUDIT_METRICS_AUTH="reader")

        async def run() -> tuple[httpx.Response, httpx.Response]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport,
                                         base_url="http://localhost") as client:
                one = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
                two = await client.get("/metrics", headers=[
                    ("Authorization", f"Bearer {token}"), ("Authorization", "Bearer x")])
            return one, two

        one, two = asyncio.run(run())
    assert one.status_code == 200
    assert two.status_code == 400, two.text
    assert "one Authorization header" in two.text
