"""Process-wide mutable configuration, in one place, with a reset for tests.

Everything else in the package is configured at construction and then immutable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .catalogue import Catalogue, default_catalogue
from .sanitize import DEFAULT_MAX_FIELD_LENGTH
from .sinks.base import Sink


@dataclass
class Settings:
    sink: Sink | None = None
    catalogue: Catalogue = field(default_factory=lambda: default_catalogue)
    max_field_length: int = DEFAULT_MAX_FIELD_LENGTH


settings = Settings()


def reset() -> None:
    """Back to the import-time defaults (no sink). Does not close the previous sink."""
    global settings
    settings = Settings()
