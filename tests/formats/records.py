"""Stored records (schema fields plus the collector's storage fields) for format tests."""

from __future__ import annotations

from typing import Any

from audit_middleware.catalogue import SEED_CATALOGUE

SEED_TYPES = sorted(t for actions in SEED_CATALOGUE.values() for t in actions.values())


def stored(seq: int = 1, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "v": 1, "id": f"019ac3f2-5e1a-7c3d-9a41-{seq:012x}", "type": "credentials_deleted",
        "target": "c-42", "principal": "u-7", "status": "", "org_id": "o-1",
        "org_name": "Acme", "workspace_id": "w-1", "workspace_name": "genomics",
        "client_ip": "198.51.100.7", "created": "2026-11-26T01:07:10.123456Z",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
    }
    record.update(fields)
    record.update({"seq": seq, "source": "web-1:4242:9f2c01aa", "source_seq": seq})
    return record


def variety() -> list[dict[str, Any]]:
    """Every seed type, plus the shapes that change the mapping: a system event, a
    failure, a proxied request, IPv6, empty org and workspace, no trace, an app type."""
    records = [stored(i, type=t) for i, t in enumerate(SEED_TYPES, 1)]
    n = len(records)
    records += [
        stored(n + 1, type="run_dropped", principal="system", client_ip=""),
        stored(n + 2, status="failed: HTTP 500"),
        stored(n + 3, client_ip="192.0.2.50", peer_ip="10.0.0.2"),
        stored(n + 4, client_ip="2001:db8::7", org_id="", org_name="", workspace_id="",
               workspace_name="", trace_id="", span_id=""),
        stored(n + 5, type="user_sign_in", target="u-7", status="saml"),
        stored(n + 6, type="user_sign_in", target="u-7", status=""),
        stored(n + 7, type="report_exported", target="r-1"),
        stored(n + 8, type="quota_rebalanced", target=""),
        # A proxy trusted as "unix" (a unix socket: no address) vouched for the client.
        stored(n + 9, client_ip="192.0.2.50", peer_ip="unix"),
        stored(n + 10, client_ip="", peer_ip="unix"),
        # A server's peer text that is no address (a test client's "testclient").
        stored(n + 11, client_ip="testclient"),
    ]
    return records
