"""Reading request bodies: any malformed input is a 400/422 whose message says what to
send, never a 500. Values read here drive the app; none of them reaches an audit record
(edit events carry no parameters)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request

MAX_TEXT = 200


async def json_object(request: Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        if optional:
            return {}
        raise HTTPException(400, 'send a JSON object body, e.g. {"name": "demo"}')
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HTTPException(400, f"the body is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HTTPException(400, f"the body must be a JSON object, not {type(data).__name__}")
    return data


def text(
    body: dict[str, Any],
    key: str,
    *,
    choices: Collection[str] | None = None,
    max_length: int = MAX_TEXT,
) -> str:
    value = optional_text(body, key, choices=choices, max_length=max_length)
    if value is None:
        raise HTTPException(422, f"field {key!r} is required")
    return value


def optional_text(
    body: dict[str, Any],
    key: str,
    *,
    choices: Collection[str] | None = None,
    max_length: int = MAX_TEXT,
) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise HTTPException(422, f"field {key!r} must be a non-empty string")
    if len(value) > max_length:
        raise HTTPException(422, f"field {key!r} is longer than {max_length} characters")
    if choices is not None and value not in choices:
        raise HTTPException(422, f"field {key!r} must be one of {sorted(choices)}")
    return value


def string_map(body: dict[str, Any], key: str) -> dict[str, str]:
    value = body.get(key)
    if not isinstance(value, dict) or not value or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise HTTPException(422, f'field {key!r} must be a non-empty object of strings, '
                                 f'e.g. {{"access_key": "...", "secret_key": "..."}}')
    return value
