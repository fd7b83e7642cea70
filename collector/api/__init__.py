"""The collector's query API and admin panel (Starlette, served by uvicorn inside
``audit-collector serve``). See docs/api.md."""

from __future__ import annotations

from .app import create_app
from .context import ApiSettings

__all__ = ["ApiSettings", "create_app"]
