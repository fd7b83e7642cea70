from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import short_tmp


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A short temporary directory (unix socket paths must stay under 104 bytes)."""
    with short_tmp() as path:
        yield path
