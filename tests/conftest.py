from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import short_tmp


@pytest.fixture
def root() -> Iterator[Path]:
    """A short temporary directory: unix socket paths must stay under 104 bytes, and
    pytest's ``tmp_path`` can be longer than that."""
    with short_tmp() as path:
        yield path
