"""A test whose requirement the machine lacks skips outside CI and fails in it: a CI run
never passes by skipping the root-only tests (switching users, tmpfs) or any other."""

from __future__ import annotations

import os

import pytest

from tests.environment import require_root


def test_a_root_only_test_fails_under_ci_when_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and this test needs root"):
        require_root("to switch users")


def test_a_root_only_test_skips_outside_ci_when_not_root(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="run the suite as root"):
        require_root("to switch users")


def test_root_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("CI", "true")
    require_root("to switch users")  # neither skips nor fails


@pytest.mark.parametrize("runner", ["1", "True", "woodpecker"])
def test_a_ci_runners_own_value_of_ci_fails_it_too(monkeypatch: pytest.MonkeyPatch,
                                                   runner: str) -> None:
    """.ci/run keeps a CI the runner set: CI=1 (or True, or the runner's name) skipped
    the root-only and browser tests, and the run passed without them."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("CI", runner)
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception)) as outcome:
        require_root("to switch users")
    assert outcome.type is pytest.fail.Exception, outcome.value


@pytest.mark.parametrize("local", ["", "0", "false", "False"])
def test_ci_unset_or_false_skips(monkeypatch: pytest.MonkeyPatch, local: str) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("CI", local)
    with pytest.raises(pytest.skip.Exception, match="run the suite as root"):
        require_root("to switch users")
