"""What a test needs of the machine it runs on, said one way everywhere.

Outside CI a missing requirement skips the test and says how to meet it; with
``CI=true`` (``.ci/run`` sets it) it fails the test: a CI run must never pass by
skipping one, as a skipped test is a missing test."""

from __future__ import annotations

import os

import pytest


def unavailable(message: str) -> None:
    """Skip the calling test with ``message``, or fail it under ``CI=true``."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def require_root(why: str) -> None:
    """The calling test runs as root (to switch users, mount a tmpfs...)."""
    if os.geteuid() != 0:
        unavailable(f"this test needs root {why}: run the suite as root")
