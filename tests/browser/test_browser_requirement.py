"""Without a browser the panel tests skip and say how to install one, except in CI
(CI=true), where they fail: a CI run must never pass by skipping them."""

from __future__ import annotations

import pytest

from tests.browser.conftest import _unavailable


def test_outside_ci_a_missing_browser_skips_with_install_instructions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        _unavailable("no chromium on PATH")


def test_in_ci_a_missing_browser_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and browser tests need a browser"):
        _unavailable("no chromium on PATH")
