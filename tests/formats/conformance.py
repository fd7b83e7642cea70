"""Checks of an output document against the vendored schema excerpts in ``data/``: the
OCSF 1.3.0 class and object definitions, and the ECS 8.17 field list with its allowed
values. Each check returns the list of problems (empty: conforms)."""

from __future__ import annotations

import csv
import ipaddress
import json
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"


@cache
def ocsf_schema() -> dict[str, Any]:
    return json.loads((DATA / "ocsf-1.3.0-excerpt.json").read_text())  # type: ignore[no-any-return]


@cache
def ecs_fields() -> dict[str, str]:
    with open(DATA / "ecs-8.17-fields-excerpt.csv", newline="") as f:
        return {row["Field"]: row["Type"] for row in csv.DictReader(f)}


@cache
def ecs_allowed() -> dict[str, Any]:
    return json.loads((DATA / "ecs-8.17-allowed-values.json").read_text())  # type: ignore[no-any-return]


# -- OCSF ------------------------------------------------------------------------------------
def ocsf_problems(event: dict[str, Any]) -> list[str]:
    schema = ocsf_schema()
    cls = schema["classes"].get(str(event.get("class_uid")))
    if cls is None:
        return [f"class_uid {event.get('class_uid')!r} is not 6003 or 3002"]
    attributes = {**schema["base_event"], **cls["attributes"]}
    problems = _check_object(event, attributes, cls.get("constraints", {}), "event")
    if event.get("category_uid") != cls["category_uid"]:
        problems.append(f"category_uid {event.get('category_uid')} is not the class's "
                        f"{cls['category_uid']}")
    activity = str(event.get("activity_id"))
    if activity not in cls["activity_id"]:
        problems.append(f"activity_id {activity} is not in the class's enum")
    elif event.get("activity_name", cls["activity_id"][activity]) != cls["activity_id"][activity]:
        problems.append(f"activity_name {event.get('activity_name')!r} does not match "
                        f"activity_id {activity}")
    if event.get("type_uid") != event.get("class_uid", 0) * 100 + event.get("activity_id", 0):
        problems.append("type_uid is not class_uid * 100 + activity_id")
    if event.get("class_name", cls["caption"]) != cls["caption"]:
        problems.append(f"class_name {event.get('class_name')!r} is not {cls['caption']!r}")
    return problems


def _check_object(value: dict[str, Any], attributes: dict[str, Any],
                  constraints: dict[str, Any], where: str) -> list[str]:
    problems = []
    for name, spec in attributes.items():
        if spec["requirement"] == "required" and name not in value:
            problems.append(f"{where}.{name} is required")
    for name, item in value.items():
        spec = attributes.get(name)
        if spec is None:
            problems.append(f"{where}.{name} is not an attribute of the schema")
            continue
        if name == "unmapped":
            if not isinstance(item, dict):
                problems.append(f"{where}.unmapped must be an object")
            continue
        items = item if spec.get("is_array") else [item]
        if spec.get("is_array") and not isinstance(item, list):
            problems.append(f"{where}.{name} must be an array")
            continue
        for element in items:
            problems += _check_value(element, spec, f"{where}.{name}")
    at_least_one = constraints.get("at_least_one")
    if at_least_one and not any(n in value for n in at_least_one):
        problems.append(f"{where} needs at least one of {', '.join(at_least_one)}")
    return problems


def _check_value(value: Any, spec: dict[str, Any], where: str) -> list[str]:
    kind = spec["type"]
    if kind == "object_t":
        objects = ocsf_schema()["objects"]
        definition = objects.get(spec["object"])
        if definition is None:
            return [f"{where}: object {spec['object']} is not in the excerpt"]
        if not isinstance(value, dict):
            return [f"{where} must be an object"]
        return _check_object(value, definition["attributes"],
                             definition.get("constraints", {}), where)
    if kind in ("integer_t", "long_t", "timestamp_t"):
        if type(value) is not int:
            return [f"{where} must be an integer, got {value!r}"]
    elif kind == "boolean_t":
        if type(value) is not bool:
            return [f"{where} must be a boolean"]
    elif kind == "ip_t":
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return [f"{where} must be an IP address, got {value!r}"]
    elif kind == "string_t" and (not isinstance(value, str) or not value):
        return [f"{where} must be a non-empty string, got {value!r}"]
    if "enum" in spec and str(value) not in spec["enum"]:
        return [f"{where} = {value!r} is not in its enum"]
    return []


# -- ECS -------------------------------------------------------------------------------------
def flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name != "labels":
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def ecs_problems(doc: dict[str, Any]) -> list[str]:
    fields, allowed = ecs_fields(), ecs_allowed()
    problems = []
    flat = flatten(doc)
    for name, value in flat.items():
        kind = fields.get(name)
        if kind is None:
            problems.append(f"{name} is not an ECS field")
            continue
        for element in value if isinstance(value, list) else [value]:
            problems += _ecs_value(name, kind, element)
    for name in ("@timestamp", "ecs.version", "event.kind", "event.category", "event.type",
                 "event.action", "event.outcome"):
        if name not in flat:
            problems.append(f"{name} is missing")
    if flat.get("event.kind") not in allowed["event.kind"]:
        problems.append(f"event.kind {flat.get('event.kind')!r} is not an allowed value")
    if flat.get("event.outcome") not in allowed["event.outcome"]:
        problems.append(f"event.outcome {flat.get('event.outcome')!r} is not allowed")
    for category in flat.get("event.category", []):
        expected = allowed["event.category"].get(category)
        if expected is None:
            problems.append(f"event.category {category!r} is not an allowed value")
            continue
        for kind in flat.get("event.type", []):
            if kind not in expected:
                problems.append(f"event.type {kind!r} is not expected with category "
                                f"{category!r}")
    return problems


def _ecs_value(name: str, kind: str, value: Any) -> list[str]:
    if kind == "object":  # labels: keyword values only
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            return [f"{name} must hold keyword values"]
    elif kind == "ip":
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return [f"{name} must be an IP, got {value!r}"]
    elif kind == "date":
        try:
            datetime.fromisoformat(value)
        except (TypeError, ValueError):
            return [f"{name} must be an ISO 8601 date, got {value!r}"]
    elif kind == "long":
        if type(value) is not int:
            return [f"{name} must be a long"]
    elif not isinstance(value, str) or not value:
        return [f"{name} must be a non-empty string, got {value!r}"]
    return []
