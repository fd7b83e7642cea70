"""What a test needs of the machine it runs on, said one way everywhere.

Outside CI a missing requirement skips the test and says how to meet it; in CI
(``CI=true``, which ``.ci/run`` sets unless the runner set its own value, or any value
but ``NOT_CI``) it fails the test: a CI run must never pass by skipping one, as a
skipped test is a missing test."""

from __future__ import annotations

import os
from typing import Final, NoReturn

import pytest

#: What ``CI`` is set to outside CI, if set at all. Anything else is a CI runner's: .ci/run
#: keeps the runner's own value (``CI=1``, ``CI=woodpecker``...), which must not let its
#: run pass by skipping.
NOT_CI: Final = frozenset({"", "0", "false", "no"})


def unavailable(message: str) -> NoReturn:
    """Skip the calling test with ``message``, or fail it in CI (``CI`` set, not false)."""
    ci = os.environ.get("CI", "")
    if ci.strip().lower() not in NOT_CI:
        pytest.fail(f"CI={ci} and {message}", pytrace=False)
    pytest.skip(message)


def require_root(why: str) -> None:
    """The calling test runs as root (to switch users, mount a tmpfs...)."""
    if os.geteuid() != 0:
        unavailable(f"this test needs root {why}: run the suite as root")
