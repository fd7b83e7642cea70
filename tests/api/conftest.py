"""A query API over a real Store: a known corpus, three readers (root, non-root, one to
remove), and a TestClient whose socket peer is 203.0.113.9."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from collector.api import ApiSettings, create_app
from collector.readers import Readers
from collector.store import Store
from tests.collector.storage_helpers import BASE_NS, event, open_store

HOUR = 3600 * 10**9
PEER = "203.0.113.9"
TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
# (type, principal, org, workspace, client_ip), cycled over 120 events 24 minutes apart.
KINDS = [("run_launched", "alice", "org-a", "ws-1", "10.1.2.3"),
         ("run_completed", "bob", "org-a", "ws-2", "10.1.200.9"),
         ("credentials_created", "alice", "org-b", "ws-3", "192.168.0.5"),
         ("user_sign_in", "carol", "org-b", "ws-3", "2001:db8::17"),
         ("pipeline_created", "system", "org-c", "", "")]
COUNT = 120


def corpus() -> list[dict[str, Any]]:
    rows = []
    for n in range(COUNT):
        kind, principal, org, ws, ip = KINDS[n % len(KINDS)]
        rows.append(event(type=kind, principal=principal, org_id=org, workspace_id=ws,
                          client_ip=ip, target=f"t-{n % 7}", created_ns=BASE_NS + n * HOUR * 2 // 5,
                          trace_id=TRACE if n == 3 else "", span_id=SPAN if n == 3 else ""))
    return rows


@dataclass
class Env:
    store: Store
    rows: list[dict[str, Any]]
    readers: Readers
    root: str
    plain: str  # a reader that is not root
    client: TestClient

    def get(self, path: str, token: str | None = None, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.get(path, params=params, headers=headers)

    def read_events(self) -> list[dict[str, Any]]:
        """The audit_log_* events stored so far, oldest first."""
        from collector.query import Filters, iter_records

        return list(iter_records(self.store, Filters(types=("audit_log_*",))))


def make_env(data: Path, **settings: Any) -> Iterator[Env]:
    with open_store(data, max_segment_bytes=16 * 1024) as store:
        rows = corpus()
        for i in range(0, len(rows), 30):
            store.write(rows[i:i + 30])
        readers = Readers(data)
        root, plain = readers.add("root-reader", root=True), readers.add("viewer", root=False)
        app = create_app(ApiSettings(data_dir=data, **settings), store, readers=readers)
        with TestClient(app, client=(PEER, 50000)) as client:
            yield Env(store, rows, readers, root, plain, client)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from make_env(tmp_path / "data",
                        trace_url_template="https://traces.example/trace/{trace_id}")
