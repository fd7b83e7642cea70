"""An ECS document checked against the published ECS field list and allowed values.

The data is ``data/ecs/``: verbatim lines of elastic/ecs's ``generated/csv/fields.csv``
and ``generated/ecs/ecs_flat.yml`` (the rule, the commits and the version they carry are in
``data/ecs/extract.py``). ``ecs_problems`` returns the ways a document breaks them (empty:
conforms): every field is a listed ECS field, each value has the field's type (``array``
normalization: a list, otherwise a single value), ``event.kind``/``category``/``type``/
``outcome`` hold allowed values and each ``event.type`` is expected for each category.

The extract lists only the fields ``to_ecs`` can emit, so a field outside it is reported
as "not in the ECS extract": add it to ``FIELDS`` in extract.py and re-derive the extract
from the original, which fails if ECS has no such field.
"""

from __future__ import annotations

import csv
import hashlib
import ipaddress
from datetime import datetime
from functools import cache
from typing import Any

import yaml  # type: ignore[import-untyped]

from tests.formats.data.ecs.extract import (
    CATEGORIZATION_FILE,
    FIELDS_FILE,
    SHA256,
    SOURCES,
)

#: The ECS string types: values are JSON strings.
STRING_TYPES = frozenset({"keyword", "constant_keyword", "wildcard", "match_only_text", "text"})


def _verified(path_name: str, data: bytes) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256[path_name]:
        raise RuntimeError(f"data/ecs/{path_name} has sha256 {digest}, not the extract's "
                           f"{SHA256[path_name]}: re-derive it with data/ecs/extract.py")
    return data


@cache
def ecs_fields() -> dict[str, dict[str, str]]:
    """Field name -> its fields.csv row (Type, Normalization, ECS_Version, ...)."""
    text = _verified(FIELDS_FILE.name, FIELDS_FILE.read_bytes()).decode()
    return {row["Field"]: row for row in csv.DictReader(text.splitlines())}


@cache
def ecs_allowed() -> dict[str, dict[str, list[str]]]:
    """Categorization field -> {allowed value: its expected_event_types (categories)}."""
    text = _verified(CATEGORIZATION_FILE.name, CATEGORIZATION_FILE.read_bytes()).decode()
    flat = yaml.safe_load(text)
    return {name: {value["name"]: value.get("expected_event_types", [])
                   for value in entry["allowed_values"]}
            for name, entry in flat.items()}


def flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted names -> values; ``labels`` (an ECS ``object`` field) stays whole."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and ecs_fields().get(name, {}).get("Type") != "object":
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def ecs_problems(doc: dict[str, Any]) -> list[str]:
    fields, allowed = ecs_fields(), ecs_allowed()
    problems = []
    flat = flatten(doc)
    for name, value in flat.items():
        row = fields.get(name)
        if row is None:
            problems.append(f"{name} is not in the ECS extract ({SOURCES['version']})")
            continue
        if row["Normalization"] == "array":
            if not isinstance(value, list):
                problems.append(f"{name} must be an array")
                continue
            values = value
        elif isinstance(value, list):
            problems.append(f"{name} is not an array field")
            continue
        else:
            values = [value]
        for element in values:
            problem = _type_problem(row["Type"], element)
            if problem:
                problems.append(f"{name} {problem}")
    # ECS requires these two of every document; the mapping always sets the others.
    for name in ("@timestamp", "ecs.version", "event.kind", "event.category", "event.type",
                 "event.outcome"):
        if name not in flat:
            problems.append(f"{name} is missing")
    for name in ("event.kind", "event.outcome"):
        if name in flat and flat[name] not in allowed[name]:
            problems.append(f"{name} {flat[name]!r} is not an allowed value")
    types = flat.get("event.type") or []
    for kind in types:
        if kind not in allowed["event.type"]:
            problems.append(f"event.type {kind!r} is not an allowed value")
    for category in flat.get("event.category") or []:
        expected = allowed["event.category"].get(category)
        if expected is None:
            problems.append(f"event.category {category!r} is not an allowed value")
            continue
        problems += [f"event.type {kind!r} is not expected with category {category!r}"
                     for kind in types if kind not in expected]
    return problems


def _type_problem(kind: str, value: Any) -> str | None:
    if kind in STRING_TYPES:
        if not isinstance(value, str) or not value:
            return f"must be a non-empty string, got {value!r}"
    elif kind == "object":  # labels: ECS maps its values as keyword
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            return "must be an object of keyword values"
    elif kind == "ip":
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return f"must be an IP address, got {value!r}"
    elif kind == "date":
        try:
            datetime.fromisoformat(value)
        except (TypeError, ValueError):
            return f"must be an ISO 8601 date, got {value!r}"
    elif kind == "long":
        if type(value) is not int or not -2**63 <= value < 2**63:
            return f"must be a long, got {value!r}"
    else:
        return f"has ECS type {kind}, which this checker does not know"
    return None
