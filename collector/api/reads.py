"""Reads of the audit log are audit events too: who read what, with which filters, from
where. Each page, lookup and export is recorded in the collector's own store, durably,
before its data leaves the process; a read that cannot be recorded is refused.

The two event types are app-defined types of the collector (resource ``audit_log``,
actions ``view`` and ``export``), registered in a catalogue of their own so that their
names are checked against ``audit_middleware.catalogue.NAME_PATTERN`` at import time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Any, Final, Protocol

import orjson

from audit_middleware.catalogue import SEED_CATALOGUE, Catalogue
from audit_middleware.event import AuditEvent
from audit_middleware.sanitize import DEFAULT_MAX_FIELD_LENGTH, field_text
from collector.own_records import (
    AUDIT_LOG_ACCESS_DENIED,
    AUDIT_LOG_EXPORTED,
    AUDIT_LOG_VIEWED,
    AUDIT_LOSS_ACKNOWLEDGED,
    SOURCE,
)
from collector.readers import Reader
from collector.validation import Validator

#: The seed's catalogue plus the collector's own resource.
CATALOGUE: Final = Catalogue({**SEED_CATALOGUE,
                              "audit_log": {"view": AUDIT_LOG_VIEWED,
                                            "export": AUDIT_LOG_EXPORTED,
                                            "deny": AUDIT_LOG_ACCESS_DENIED,
                                            "acknowledge_loss": AUDIT_LOSS_ACKNOWLEDGED}})
#: ``target`` of a read of a selection (a lookup's target is the event id it read).
SELECTION_TARGET: Final = "audit-logs"
#: Characters a record's ``status`` holds (what was asked); past it, a field is cut.
MAX_STATUS: Final = DEFAULT_MAX_FIELD_LENGTH


class ReadNotRecordedError(RuntimeError):
    """The read could not be written to the audit log, so its data was not sent."""


class Submitter(Protocol):
    def submit(self, events: list[dict[str, Any]], source: str = ...) -> Any: ...


def status_text(details: dict[str, Any]) -> str:
    """A record's ``status``: what was asked, as compact JSON with sorted keys."""
    return orjson.dumps(details, option=orjson.OPT_SORT_KEYS).decode()


def read_event(kind: str, principal: str, *, target: str, status: str,
               client_ip: str | None) -> dict[str, Any]:
    """The record of one read (or refused attempt): the reader as principal ("" when
    unknown), what was asked in ``status`` (``status_text``; capped like any app's
    field)."""
    return AuditEvent(
        type=CATALOGUE.check(kind),
        target=field_text("target", target, DEFAULT_MAX_FIELD_LENGTH),
        principal=field_text("principal", principal, DEFAULT_MAX_FIELD_LENGTH),
        status=field_text("status", status, MAX_STATUS),
        org_id="", org_name="", workspace_id="", workspace_name="",
        client_ip=_ip(client_ip),
        created_ns=time.time_ns(),
    ).to_dict()


def _ip(host: str | None) -> str:
    try:
        return str(ipaddress.ip_address(host or ""))
    except ValueError:
        return ""


class ReadRecorder:
    def __init__(self, store: Submitter) -> None:
        self._store = store
        self._validator = Validator()

    async def record(self, kind: str, reader: Reader, *, target: str,
                     details: dict[str, Any], client_ip: str | None) -> str:
        """Write the read's event and wait until it is durable; returns its id."""
        return await self.write(self.event(kind, reader, target=target, details=details,
                                           client_ip=client_ip))

    @staticmethod
    def event(kind: str, reader: Reader, *, target: str, details: dict[str, Any],
              client_ip: str | None) -> dict[str, Any]:
        """The read's event, not yet written (``write``): its id known beforehand."""
        status = status_text(details)
        if len(status) > MAX_STATUS:
            # The endpoints refuse such a selection first (400): reaching this is a bug.
            # A cut status could hide a filter that was applied, so no data either.
            raise ReadNotRecordedError("the read's record cannot hold all it asked for, "
                                       "so it was refused")
        return read_event(kind, reader.name, target=target, status=status,
                          client_ip=client_ip)

    async def write(self, record: dict[str, Any]) -> str:
        """Write an ``event`` and wait until it is durable; returns its id."""
        return await self._write(record)

    async def record_denial(self, principal: str, *, target: str, details: dict[str, Any],
                            client_ip: str | None) -> str:
        """Write a refused attempt's event (``principal``: the reader, or "")."""
        return await self._write(read_event(AUDIT_LOG_ACCESS_DENIED, principal,
                                            target=target, status=status_text(details),
                                            client_ip=client_ip))

    async def _write(self, record: dict[str, Any]) -> str:
        checked = self._validator.validate(record)
        if isinstance(checked, str):  # a bug here, not bad input: say so loudly
            raise ReadNotRecordedError(f"the read's own event is invalid: {checked}")
        try:
            await asyncio.wrap_future(self._store.submit([checked], source=SOURCE))
        except Exception as exc:  # noqa: BLE001 - whatever failed, the read is refused
            raise ReadNotRecordedError(
                f"the read could not be recorded in the audit log ({exc}), so it was "
                f"refused: check the collector's storage (audit-collector stats)") from None
        return str(checked["id"])
