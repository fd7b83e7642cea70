"""Stored records in the formats SIEMs read: OCSF and the Elastic Common Schema.

- ``ocsf``: OCSF 1.3.0. Sign-ins (``user_sign_in``) are Authentication events (class
  3002, activity Logon); every other event is API Activity (class 6003), its activity
  (Create, Read, Update, Delete, Other) taken from the seed action of the event type.
- ``ecs``: ECS 8.x. ``@timestamp``, ``event.action`` (the type), ``event.outcome``,
  ``event.category``/``event.type`` from the same actions, ``user.id``, ``source.ip``,
  ``organization.id``/``name``, ``trace.id``/``span.id``; what ECS has no field for goes
  to ``labels``.

``docs/formats.md`` has the whole mapping as a table; ``tests/formats`` check each
output against the published schema (OCSF) and field list (ECS). The functions are pure:
one stored record (a dict as ``collector.query`` returns it) in, one JSON object out.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

from audit_middleware.catalogue import SEED_CATALOGUE, USER_SIGN_IN
from audit_middleware.event import DENIED_STATUS_PREFIXES, SYSTEM

from .own_records import AUDIT_LOG_ACCESS_DENIED
from .render import json_line

OCSF_VERSION: Final = "1.3.0"
ECS_VERSION: Final = "8.17.0"
PRODUCT: Final = "audit-middleware"
PRODUCT_VERSION: Final = "0.1.0"

Record = Mapping[str, Any]

# -- what an event type does -----------------------------------------------------------------
CREATE, READ, UPDATE, DELETE, OTHER = 1, 2, 3, 4, 99
ACTIVITY_NAMES: Final = {CREATE: "Create", READ: "Read", UPDATE: "Update", DELETE: "Delete",
                         OTHER: "Other"}

#: The seed's actions (catalogue.SEED_CATALOGUE) as CRUD activities.
_ACTION_ACTIVITY: Final = {
    "add": CREATE, "create": CREATE, "launch": CREATE, "relaunch": CREATE, "upload": CREATE,
    "access": READ, "download": READ, "preview": READ,
    "edit": UPDATE, "update_role": UPDATE, "hide": UPDATE, "show": UPDATE, "resume": UPDATE,
    "status_change": UPDATE, "complete": UPDATE,
    "delete": DELETE, "drop": DELETE,
}
#: Event type -> (resource, activity) for the seed catalogue.
_SEED_TYPES: Final = {
    event_type: (resource, _ACTION_ACTIVITY.get(action, OTHER))
    for resource, actions in SEED_CATALOGUE.items() for action, event_type in actions.items()
}
#: App-registered types are read by their last word: report_exported -> ("report", ...).
_SUFFIX_ACTIVITY: Final = (
    (re.compile(r"(.+)_(created|added|launched|uploaded|registered)"), CREATE),
    (re.compile(r"(.+)_(accessed|read|viewed|downloaded|previewed|exported)"), READ),
    (re.compile(r"(.+)_(updated|changed|edited|renamed|hidden|shown|resumed|completed)"), UPDATE),
    (re.compile(r"(.+)_(deleted|removed|dropped|revoked)"), DELETE),
)


def classify(event_type: str) -> tuple[str, int]:
    """(resource, CRUD activity) of an event type: seed types by their catalogue action,
    others by their suffix (``report_exported`` -> ``("report", READ)``), else
    ``(event_type, OTHER)``."""
    known = _SEED_TYPES.get(event_type)
    if known is not None:
        return known
    for pattern, activity in _SUFFIX_ACTIVITY:
        match = pattern.fullmatch(event_type)
        if match:
            return match[1], activity
    return event_type, OTHER


#: How the status of an action that did not happen begins: ``failed: ...``
#: (``@audited(record_failure=True)``) or a denied request's ``HTTP 403 on DELETE``
#: (the middleware's ``denied_event``), the same statuses OpenTelemetry's severity
#: calls WARN (``audit_middleware.otel.severity``).
_FAILED: Final = ("failed", *DENIED_STATUS_PREFIXES)


def failed(record: Record) -> bool:
    """Whether the action did not happen: it failed, or the request was denied (a
    denial exported as OCSF ``Success`` or ECS ``success`` told a SIEM the refused
    access was granted), the collector's own refusals of audit-log reads too (their
    status holds the refusal's details, not one of those prefixes: a SIEM rule on
    failures missed every refused token, a guessing attack on the panel included)."""
    status = record.get("status")
    return ((isinstance(status, str) and status.startswith(_FAILED))
            or record.get("type") == AUDIT_LOG_ACCESS_DENIED)


def epoch_millis(created: str) -> int:
    from collector.storage.records import created_micros

    return created_micros(created) // 1000


def _text(record: Record, field: str) -> str:
    value = record.get(field)
    return value if isinstance(value, str) else ""


def _ip(record: Record, field: str) -> str:
    """``field`` when it holds an IP address, else "": the formats' IP fields take an IP
    only, and ``peer_ip`` may say ``unix`` (a trusted proxy on a unix socket, which has
    no address: ``audit_middleware.client_ip``); ``client_ip`` holds whatever peer text
    a server handed over (a test client's ``testclient``; uvicorn ``--proxy-headers``
    copies a client's own X-Forwarded-For text there): an index mapped to ECS, or an
    OCSF validator, refused the whole event over it."""
    value = _text(record, field)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return ""
    return value


# -- OCSF ----------------------------------------------------------------------------------------
API_ACTIVITY: Final = 6003
AUTHENTICATION: Final = 3002
LOGON: Final = 1
#: Sign-in methods (``status`` of ``user_sign_in``) -> OCSF auth_protocol_id.
_AUTH_PROTOCOLS: Final = {"saml": 5, "oidc": 4, "openid": 4, "openid_connect": 4,
                          "oauth": 6, "oauth2": 6, "github": 6, "google": 4, "ldap": 99,
                          "password": 99, "token": 99, "mfa": 99}
_AUTH_PROTOCOL_NAMES: Final = {0: "Unknown", 4: "OpenID", 5: "SAML", 6: "OAUTH 2.0",
                               99: "Other"}


def to_ocsf(record: Record) -> dict[str, Any]:
    """One stored record as an OCSF 1.3.0 event (API Activity, or Authentication for
    ``user_sign_in``)."""
    if record.get("type") == USER_SIGN_IN:
        return _ocsf_authentication(record)
    return _ocsf_api_activity(record)


def _ocsf_common(record: Record, class_uid: int, class_name: str, category_uid: int,
                 category_name: str, activity_id: int, activity_name: str) -> dict[str, Any]:
    outcome_failed = failed(record)
    event: dict[str, Any] = {
        "activity_id": activity_id,
        "activity_name": activity_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "class_uid": class_uid,
        "class_name": class_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{class_name}: {activity_name}",
        "time": epoch_millis(record["created"]),
        "severity_id": 1,
        "severity": "Informational",
        "status_id": 2 if outcome_failed else 1,
        "status": "Failure" if outcome_failed else "Success",
        "message": _message(record),
        "metadata": _ocsf_metadata(record),
    }
    status = _text(record, "status")
    if status:
        event["status_detail"] = status
    return event


def _ocsf_metadata(record: Record) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": {"name": PRODUCT, "vendor_name": PRODUCT, "version": PRODUCT_VERSION},
        "uid": _text(record, "id"),
        "event_code": _text(record, "type"),
        "original_time": _text(record, "created"),
        "log_name": "audit",
    }
    if record.get("trace_id"):
        metadata["correlation_uid"] = record["trace_id"]  # joins the event to its trace
    return metadata


def _ocsf_user(uid: str, system: bool = False) -> dict[str, Any]:
    user: dict[str, Any] = {"uid": uid}
    user["type_id"], user["type"] = (3, "System") if system else (1, "User")
    return user


def _ocsf_actor(record: Record) -> dict[str, Any]:
    principal = _text(record, "principal")
    # The application's own events carry no client IP; a user whose id merely is
    # "system" acted from an address (docs/record.md).
    user = _ocsf_user(principal or "unknown",
                      system=principal == SYSTEM and not record.get("client_ip"))
    if record.get("org_id") or record.get("org_name"):
        user["org"] = {k: v for k, v in (("uid", _text(record, "org_id")),
                                         ("name", _text(record, "org_name"))) if v}
    return {"user": user}


def _ocsf_src_endpoint(record: Record) -> dict[str, Any]:
    ip = _ip(record, "client_ip")
    endpoint: dict[str, Any] = {"ip": ip} if ip else {"name": "system" if _text(
        record, "principal") == SYSTEM and not record.get("client_ip") else "unknown"}
    if _ip(record, "peer_ip"):
        endpoint["intermediate_ips"] = [record["peer_ip"]]  # the proxy that vouched
    return endpoint


def _ocsf_unmapped(record: Record) -> dict[str, Any]:
    extra = {k: record[k] for k in ("span_id", "seq", "source", "source_seq")
             if record.get(k) not in (None, "")}
    for field in ("workspace_id", "workspace_name"):
        if record.get(field):
            extra[field] = record[field]
    for field in ("client_ip", "peer_ip"):  # no address: "unix", a server's peer text
        if record.get(field) and not _ip(record, field):
            extra[field] = record[field]
    return extra


def _ocsf_api_activity(record: Record) -> dict[str, Any]:
    resource_type, activity = classify(_text(record, "type"))
    event = _ocsf_common(record, API_ACTIVITY, "API Activity", 6, "Application Activity",
                         activity, ACTIVITY_NAMES[activity])
    event["actor"] = _ocsf_actor(record)
    event["api"] = {"operation": _text(record, "type"),
                    "service": {"name": PRODUCT}}
    event["src_endpoint"] = _ocsf_src_endpoint(record)
    target = _text(record, "target")
    if target:
        resource: dict[str, Any] = {"uid": target, "type": resource_type}
        if record.get("workspace_id") or record.get("workspace_name"):
            resource["group"] = {k: v for k, v in (("uid", _text(record, "workspace_id")),
                                                   ("name", _text(record, "workspace_name")))
                                 if v}
        event["resources"] = [resource]
    unmapped = _ocsf_unmapped(record)
    if unmapped:
        event["unmapped"] = unmapped
    return event


def _ocsf_authentication(record: Record) -> dict[str, Any]:
    event = _ocsf_common(record, AUTHENTICATION, "Authentication", 3,
                         "Identity & Access Management", LOGON, "Logon")
    method = _text(record, "status")
    protocol = _AUTH_PROTOCOLS.get(method.lower(), 99) if method else 0
    event["auth_protocol_id"] = protocol
    event["auth_protocol"] = method if protocol == 99 else _AUTH_PROTOCOL_NAMES[protocol]
    # The subject is the user who signed in (the target); the actor, the principal.
    event["user"] = _ocsf_user(_text(record, "target") or _text(record, "principal")
                               or "unknown")
    event["actor"] = _ocsf_actor(record)
    event["src_endpoint"] = _ocsf_src_endpoint(record)
    event["service"] = {"name": PRODUCT}
    unmapped = _ocsf_unmapped(record)
    if unmapped:
        event["unmapped"] = unmapped
    return event


def _message(record: Record) -> str:
    target = _text(record, "target")
    return (f"{_text(record, 'principal') or 'unknown'} {_text(record, 'type')}"
            + (f" {target}" if target else ""))


# -- ECS -------------------------------------------------------------------------------------
#: Resources whose events are identity and access management in ECS terms.
_IAM_USER_RESOURCES: Final = frozenset({"user", "participant", "access_token"})
_IAM_GROUP_RESOURCES: Final = frozenset({"team", "organization", "workspace"})
_CHANGE_TYPES: Final = {CREATE: "creation", READ: "access", UPDATE: "change",
                        DELETE: "deletion", OTHER: "info"}


def ecs_categorization(event_type: str) -> tuple[list[str], list[str]]:
    """(event.category, event.type) of an event type, within ECS's allowed pairs."""
    if event_type == USER_SIGN_IN:
        return ["authentication"], ["start"]
    resource, activity = classify(event_type)
    change = _CHANGE_TYPES[activity]
    if resource in _IAM_USER_RESOURCES or resource in _IAM_GROUP_RESOURCES:
        kind = "user" if resource in _IAM_USER_RESOURCES else "group"
        # iam allows admin, change, creation, deletion, group, info, user (not access).
        return ["iam"], [kind, "info" if change == "access" else change]
    return ["configuration"], [change]


def to_ecs(record: Record) -> dict[str, Any]:
    """One stored record as an ECS document (dotted fields nested as objects)."""
    event_type = _text(record, "type")
    category, types = ecs_categorization(event_type)
    principal = _text(record, "principal")
    event: dict[str, Any] = {
        "kind": "event",
        "category": category,
        "type": types,
        "action": event_type,
        "outcome": "failure" if failed(record) else "success",
        "id": _text(record, "id"),
        "module": "audit_middleware",
        "dataset": "audit_middleware.audit",
    }
    if record.get("status"):
        event["reason"] = record["status"]
    if isinstance(record.get("seq"), int):
        event["sequence"] = record["seq"]
    doc: dict[str, Any] = {
        "@timestamp": _text(record, "created"),
        "ecs": {"version": ECS_VERSION},
        "message": _message(record),
        "event": event,
    }
    user: dict[str, Any] = {}
    if principal:
        user["id"] = principal
    target = _text(record, "target")
    resource, _ = classify(event_type)
    if target and resource == "user":  # user_created, ...: the user acted upon
        user["target"] = {"id": target}
    if user:
        doc["user"] = user
    client_ip = _ip(record, "client_ip")
    ips = [ip for ip in (client_ip, _ip(record, "peer_ip")) if ip]
    if client_ip:
        doc["source"] = {"ip": client_ip}
    if record.get("org_id") or record.get("org_name"):
        doc["organization"] = {k: v for k, v in (("id", _text(record, "org_id")),
                                                 ("name", _text(record, "org_name"))) if v}
    if record.get("trace_id"):
        doc["trace"] = {"id": record["trace_id"]}
    if record.get("span_id"):
        doc["span"] = {"id": record["span_id"]}
    related: dict[str, Any] = {}
    if ips:
        related["ip"] = ips
    users = sorted({u for u in (principal, user.get("target", {}).get("id")) if u})
    if users:
        related["user"] = users
    if related:
        doc["related"] = related
    labels = {k: v for k, v in (("target", target), ("resource", resource),
                                ("workspace_id", _text(record, "workspace_id")),
                                ("workspace_name", _text(record, "workspace_name")),
                                ("peer_ip", _text(record, "peer_ip")),
                                ("client_ip", "" if client_ip
                                 else _text(record, "client_ip"))) if v}
    if labels:
        doc["labels"] = labels
    return doc


# -- output ------------------------------------------------------------------------------------
FORMATTERS: Final[Mapping[str, Callable[[Record], dict[str, Any]]]] = {
    "ocsf": to_ocsf,
    "ecs": to_ecs,
}


def formatter(name: str) -> Callable[[Record], dict[str, Any]]:
    try:
        return FORMATTERS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}: use one of "
                         f"{', '.join(sorted(FORMATTERS))}") from None


def json_lines(records: Iterable[Record], name: str) -> Iterator[bytes]:
    """Each record in format ``name``, one JSON object per line."""
    convert = formatter(name)
    for record in records:
        # Escaped as ``jsonl`` is: the converted fields carry the stored values, and a
        # raw C1 control (an 8-bit ESC [) or U+2028 went to the terminal or split the line.
        yield json_line(convert(record))
