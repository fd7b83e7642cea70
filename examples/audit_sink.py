"""Where the example apps send their events when they run for real, from the environment.

``flask --app ...``, ``uvicorn --factory ...`` and a WSGI server importing Django's
``wsgi.py`` give the app no other place to say where its audit events go: without a
sink configured, every audited request fails (``AuditConfigurationError``).

    AUDIT_COLLECTOR_URL=unix://$PWD/audit-data/collector.sock   # the collector (make run's)
    AUDIT_SPOOL_DIR=./audit-spool                               # its spool (default)
    AUDIT_EVENTS_FILE=audit-events.jsonl                        # or: a JSON-lines file
"""

from __future__ import annotations

import logging
import os

import audit_middleware as audit

log = logging.getLogger(__name__)


def configure_sink_from_environment() -> None:
    """The collector at ``AUDIT_COLLECTOR_URL`` (e.g. unix:///var/lib/audit/collector.sock),
    or the JSON-lines file ``AUDIT_EVENTS_FILE``. Neither set: the app's own configure()
    call decides (tests use capture_audit_events()), and a warning says so at start-up
    rather than a traceback at each audited request."""
    if os.environ.get("AUDIT_COLLECTOR_URL"):
        from audit_middleware.shipper import CollectorSink

        audit.configure(sink=CollectorSink(os.environ["AUDIT_COLLECTOR_URL"],
                                           spool_dir=os.environ.get("AUDIT_SPOOL_DIR", "./audit-spool")))
    elif os.environ.get("AUDIT_EVENTS_FILE"):
        audit.configure(sink=audit.JsonlFileSink(os.environ["AUDIT_EVENTS_FILE"]))
    else:
        log.warning(
            "neither AUDIT_COLLECTOR_URL nor AUDIT_EVENTS_FILE is set: every audited request "
            "fails (AuditConfigurationError) unless the app configures a sink itself; set "
            "AUDIT_COLLECTOR_URL=unix://$PWD/audit-data/collector.sock (make run's "
            "collector) or AUDIT_EVENTS_FILE=audit-events.jsonl")
