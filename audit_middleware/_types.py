"""ASGI and WSGI type aliases used across the package."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

__all__ = ["ASGIApp", "Environ", "Message", "Receive", "Scope", "Send", "StartResponse",
           "WSGIApp"]
