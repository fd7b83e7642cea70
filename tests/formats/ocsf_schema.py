"""An OCSF event checked against the published OCSF 1.3.0 schema.

The schema is the export that schema.ocsf.io serves for 1.3.0 (``/1.3.0/export/schema``:
every class with its attributes merged from ``base_event`` and its category, every object,
every data type), as shipped verbatim by the PyPI package ``ocsf-json-schema`` (test
extra; Apache-2.0 data, see ``data/README.md``). ``ocsf_problems`` returns the list of
ways an event breaks it (empty: conforms).

What is checked, all from the schema data: the class exists; every attribute is one of
the class's or object's; required attributes are present; each value has its type (the
base type of derived types, their regex and max_len); enum values are in the enum and a
sibling caption (``activity_name``, ``status``, ...) matches its id unless the id is 99
Other; ``at_least_one``/``just_one`` constraints; deprecated attributes are not used;
attributes of a profile only appear when ``metadata.profiles`` names it; ``type_uid`` is
``class_uid * 100 + activity_id``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import ipaddress
import json
import re
from functools import cache
from typing import Any, Final

OCSF_VERSION: Final = "1.3.0"
PACKAGE: Final = "ocsf-json-schema==1.2.0"
#: sha256 of ocsf_json_schema/ocsf/1.3.0.json in that release: another build of the data
#: is refused rather than silently checked against.
EXPORT_SHA256: Final = "161ae7ed5afd5cb942afe4175d9c05a17fe8af1645ef763a0c5ed4201ccc9e64"
OTHER: Final = 99  # an enum's "Other": its sibling carries the source's own text


def export_bytes() -> bytes:
    try:
        files = importlib.resources.files("ocsf_json_schema")
    except ModuleNotFoundError:
        raise RuntimeError(f"the OCSF schema comes from {PACKAGE}: install the test extra "
                           "(pip install -e '.[test]')") from None
    return (files / "ocsf" / f"{OCSF_VERSION}.json").read_bytes()


@cache
def ocsf_schema() -> dict[str, Any]:
    data = export_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != EXPORT_SHA256:
        raise RuntimeError(f"ocsf_json_schema/ocsf/{OCSF_VERSION}.json has sha256 {digest}, "
                           f"not the {PACKAGE} export {EXPORT_SHA256}: pin {PACKAGE}")
    schema: dict[str, Any] = json.loads(data)
    return schema


def ocsf_class(class_uid: object) -> dict[str, Any] | None:
    for cls in ocsf_schema()["classes"].values():
        if cls["uid"] == class_uid:
            return cls  # type: ignore[no-any-return]
    return None


def ocsf_problems(event: dict[str, Any]) -> list[str]:
    cls = ocsf_class(event.get("class_uid"))
    if cls is None:
        return [f"class_uid {event.get('class_uid')!r} is not an OCSF {OCSF_VERSION} class"]
    metadata = event.get("metadata")
    profiles = set(metadata.get("profiles", [])) if isinstance(metadata, dict) else set()
    checker = _Checker(profiles)
    checker.check_object(event, cls, "event")
    activity, class_uid = event.get("activity_id"), cls["uid"]
    if isinstance(activity, int) and event.get("type_uid") != class_uid * 100 + activity:
        checker.problems.append("type_uid is not class_uid * 100 + activity_id")
    return checker.problems


class _Checker:
    def __init__(self, profiles: set[str]) -> None:
        self.profiles = profiles
        self.problems: list[str] = []

    def check_object(self, value: dict[str, Any], definition: dict[str, Any],
                     where: str) -> None:
        attributes: dict[str, Any] = definition["attributes"]
        for name, spec in attributes.items():
            if (spec.get("requirement") == "required" and name not in value
                    and self._in_profile(spec)):
                self.problems.append(f"{where}.{name} is required")
        for name, item in value.items():
            spec = attributes.get(name)
            if spec is None:
                self.problems.append(f"{where}.{name} is not an attribute of the schema")
            elif not self._in_profile(spec):
                self.problems.append(f"{where}.{name} belongs to profile {spec['profile']}, "
                                     "which metadata.profiles does not name")
            else:
                self._check_attribute(name, item, spec, value, f"{where}.{name}")
        for kind, names in (definition.get("constraints") or {}).items():
            present = [n for n in names if n in value]
            if kind == "at_least_one" and not present:
                self.problems.append(f"{where} needs at least one of {', '.join(names)}")
            elif kind == "just_one" and len(present) != 1:
                self.problems.append(f"{where} needs exactly one of {', '.join(names)}")

    def _in_profile(self, spec: dict[str, Any]) -> bool:
        profile = spec.get("profile")
        return profile is None or profile in self.profiles

    def _check_attribute(self, name: str, item: Any, spec: dict[str, Any],
                         parent: dict[str, Any], where: str) -> None:
        if "@deprecated" in spec:
            self.problems.append(f"{where} is deprecated: {spec['@deprecated']}")
        if spec.get("is_array"):
            if not isinstance(item, list):
                self.problems.append(f"{where} must be an array")
                return
            for element in item:
                self._check_value(element, spec, where)
        else:
            self._check_value(item, spec, where)
        sibling = spec.get("sibling")
        if "enum" in spec and sibling in parent and item != OTHER:
            caption = spec["enum"].get(str(item), {}).get("caption")
            if caption is not None and parent[sibling] != caption:
                self.problems.append(f"{where[:-len(name)]}{sibling} {parent[sibling]!r} is "
                                     f"not {caption!r}, the caption of {name} {item}")

    def _check_value(self, value: Any, spec: dict[str, Any], where: str) -> None:
        if spec["type"] == "object_t":
            self._check_nested(value, spec["object_type"], where)
            return
        problem = type_problem(value, spec["type"])
        if problem:
            self.problems.append(f"{where} {problem}")
        elif "enum" in spec and str(value) not in spec["enum"]:
            self.problems.append(f"{where} = {value!r} is not in its enum "
                                 f"({', '.join(sorted(spec['enum'], key=int))})")

    def _check_nested(self, value: Any, object_type: str, where: str) -> None:
        if not isinstance(value, dict):
            self.problems.append(f"{where} must be an object")
        elif object_type != "object":  # `object` is OCSF's free-form object (unmapped)
            self.check_object(value, ocsf_schema()["objects"][object_type], where)


def type_problem(value: Any, type_name: str) -> str | None:
    """What is wrong with ``value`` as an OCSF ``type_name`` (None: nothing)."""
    types = ocsf_schema()["types"]
    definition = types[type_name]
    base = definition.get("type", type_name)
    if base == "string_t":
        if not isinstance(value, str):
            return f"must be a string ({type_name}), got {value!r}"
        limit = definition.get("max_len", types["string_t"].get("max_len"))
        if limit is not None and len(value) > limit:
            return f"is longer than {limit} characters"
        if "regex" in definition and not re.search(definition["regex"], value):
            return f"= {value!r} does not match the {type_name} pattern"
        if type_name == "ip_t":  # the published regex is loose (unescaped dots)
            try:
                ipaddress.ip_address(value)
            except ValueError:
                return f"must be an IP address, got {value!r}"
    elif base in ("integer_t", "long_t"):
        if type(value) is not int:
            return f"must be an integer ({type_name}), got {value!r}"
        if "range" in definition and not definition["range"][0] <= value <= definition["range"][1]:
            return f"= {value} is outside {definition['range']}"
    elif base == "float_t":
        if type(value) not in (int, float):
            return f"must be a number ({type_name}), got {value!r}"
    elif base == "boolean_t":
        if type(value) is not bool:
            return f"must be a boolean, got {value!r}"
    elif base != "json_t":
        return f"has type {type_name}, which this checker does not know"
    return None
