"""Checks of the sinks' numeric and flag options, at construction: each option that is
wrong fails there, naming itself, rather than at first use on a worker thread (a NaN
delay spins it, a negative exit timeout loses the queue at exit)."""

from __future__ import annotations

from typing import Final

from .errors import AuditConfigurationError

MAX_SECONDS: Final = 86_400.0  # a longer timeout is a mistake, not a setting


def check_sizes(**values: object) -> None:
    for name, value in values.items():
        if type(value) is not int or value < 1:  # (not a bool: True is no size)
            raise AuditConfigurationError(f"{name} must be a positive int, got {value!r}")


def check_seconds(**values: object) -> None:
    for name, value in values.items():
        # type(), not isinstance: True is no duration; '5' compares only in a TypeError.
        if type(value) not in (int, float) or not 0 < value < MAX_SECONDS:  # type: ignore[operator]
            raise AuditConfigurationError(
                f"{name} must be a number of seconds, more than 0 and less than "
                f"{MAX_SECONDS:g}, got {value!r}")


def check_flags(**values: object) -> None:
    for name, value in values.items():
        if type(value) is not bool:  # 'no' is truthy: it would turn the option on
            raise AuditConfigurationError(f"{name} must be True or False, got {value!r}")
