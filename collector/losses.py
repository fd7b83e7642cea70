"""The sources that lost events, as ``GET /api/v1/sources/losses`` and
``audit-collector losses`` list them: one shape for both, from the store's ``stats``
(the API, in the collector) or from the files of a data directory (the command line,
in any process; see ``collector.loss_commands``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from collector.storage import loss_acks


def listing(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The sources of ``stats`` (``Store.stats()``, or its source keys) that lost events,
    those with losses not yet acknowledged first, with their counts and totals."""
    rows = []
    for source, report in stats["sources"].items():
        ranges, numbered = report["ranges"], report["numbered"]
        gap_events, tail_events = loss_acks.unacknowledged(ranges, numbered, 0)
        if not gap_events and not tail_events:
            continue
        through = report["acknowledged_through"]
        new_gaps, new_tail = loss_acks.unacknowledged(ranges, numbered, through)
        rows.append({"source": source, "received": report["received"],
                     "gap_events": gap_events, "unreceived_tail_events": tail_events,
                     "unacknowledged_gap_events": new_gaps,
                     "unacknowledged_tail_events": new_tail,
                     "acknowledged_through": through, "last_seen": report["last_seen"],
                     # What these counts reach: the through to acknowledge them, and no
                     # loss the reader was not shown.
                     "latest": loss_acks.latest(ranges, numbered)})
    rows.sort(key=lambda r: (-(r["unacknowledged_gap_events"]
                               + r["unacknowledged_tail_events"]), r["source"]))
    return {"sources": rows, "sources_total": stats["sources_total"],
            "sources_omitted": stats["sources_omitted"],
            "unacknowledged_gap_events": stats["unacknowledged_gap_events"],
            "unacknowledged_tail_events": stats["unacknowledged_tail_events"]}
