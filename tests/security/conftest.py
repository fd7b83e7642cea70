from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_middleware.testing import reset_configuration
from tests.e2e.harness import short_tmp
from tests.faults.fleet import kill_leftovers, started_mark


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A short temporary directory (unix socket paths must stay under 104 bytes)."""
    with short_tmp() as path:
        yield path


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    """No sink configured and no collector or app process left behind after a test."""
    mark = started_mark()  # processes of module fixtures live on
    yield
    reset_configuration()
    kill_leftovers(mark)
