"""What a query asks: ``Filters`` (re-exported by ``collector.query``).

The values are checked, and compiled into what each index chunk is asked, by
``collector.storage.filters`` and ``collector.storage.conditions``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Filters:
    types: tuple[str, ...] = ()  # exact names or globs like "run_*" (OR)
    principal: str | None = None
    target: str | None = None
    org: str | None = None  # matches org_id
    workspace: str | None = None  # matches workspace_id
    client_ip: str | None = None  # an IP or a CIDR (IPv4/IPv6)
    since: str | None = None  # RFC 3339, YYYY-MM-DD-HH-MM-SS (UTC), or "15m"/"24h"/"7d"
    until: str | None = None  # exclusive
    status: str | None = None  # exact ("" matches the events without a status)
    org_name: str | None = None  # exact: the name the event carried
    workspace_name: str | None = None  # exact: the name the event carried
