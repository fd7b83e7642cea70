"""The collector's own records: reads of the audit log (``collector.api.reads``),
refused attempts (``collector.api.denials``) and acknowledged losses
(``collector.api.routes``). Their types and their source are the collector's alone:
ingest refuses them from clients, so that an app holding the ingest token cannot forge
or muddy the trail of who read the audit log, or of who acknowledged a loss."""

from __future__ import annotations

from typing import Final

AUDIT_LOG_VIEWED: Final = "audit_log_viewed"
AUDIT_LOG_EXPORTED: Final = "audit_log_exported"
#: A refused attempt to read (``collector.api.denials``).
AUDIT_LOG_ACCESS_DENIED: Final = "audit_log_access_denied"
#: An operator acknowledged a source's lost events (``collector.storage.loss_acks``).
AUDIT_LOSS_ACKNOWLEDGED: Final = "audit_loss_acknowledged"
#: The types above: refused from clients (``Validator(from_clients=True)``).
OWN_TYPES: Final = frozenset({AUDIT_LOG_VIEWED, AUDIT_LOG_EXPORTED, AUDIT_LOG_ACCESS_DENIED,
                              AUDIT_LOSS_ACKNOWLEDGED})
#: ``source`` of the collector's own records; no client may use it, in any case.
SOURCE: Final = "audit-collector-api"


def own_source(source: str) -> bool:
    """Whether ``source`` is the one the collector keeps for its own records (exactly:
    a shipper's ``host:pid:random`` cannot be it, whatever the host is called)."""
    return source.lower() == SOURCE


#: What each own type records, as a refusal names it.
_RECORDS: Final = {AUDIT_LOG_VIEWED: "reads of the audit log",
                   AUDIT_LOG_EXPORTED: "reads of the audit log",
                   AUDIT_LOG_ACCESS_DENIED: "refused reads of the audit log",
                   AUDIT_LOSS_ACKNOWLEDGED: "an operator's acknowledgement of lost events"}


def own_type_reason(kind: str) -> str:
    return (f"type {kind!r} is the collector's own record of "
            f"{_RECORDS.get(kind, 'what its readers did')}: an app cannot send it (name "
            f"the app's own resource, e.g. 'report_viewed')")


def own_source_reason(source: str) -> str:
    return (f"source {source[:40]!r} is kept for the collector's own records: name the app "
            f"(e.g. its host and process)")
