from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import short_tmp
from tests.faults.fleet import kill_leftovers, started_mark


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A short temporary directory (unix socket paths must stay under 104 bytes)."""
    with short_tmp() as path:
        yield path


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    """A test that fails half-way leaves no collector or app running."""
    mark = started_mark()  # processes of module fixtures live on
    yield
    kill_leftovers(mark)
