"""Checks of the sinks' numeric and flag options, at construction: each option that is
wrong fails there, naming itself, rather than at first use on a worker thread (a NaN
delay spins it, a negative exit timeout loses the queue at exit)."""

from __future__ import annotations

from typing import Final

from .errors import AuditConfigurationError

MAX_SECONDS: Final = 86_400.0  # a longer timeout is a mistake, not a setting


def check_sizes(**values: object) -> None:
    for name, value in values.items():
        # isinstance, a bool excepted (True is no size): an IntEnum member is one.
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AuditConfigurationError(f"{name} must be a positive int, got {value!r}")


def check_seconds(**values: object) -> None:
    for name, value in values.items():
        # A number first ('5' compares only in a TypeError), a bool excepted (True is no
        # duration); a subclass is one (numpy.float64: ``type() in`` refused it).
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not 0 < value < MAX_SECONDS):
            raise AuditConfigurationError(
                f"{name} must be a number of seconds, more than 0 and less than "
                f"{MAX_SECONDS:g}, got {value!r}")


def check_flags(**values: object) -> None:
    for name, value in values.items():
        if type(value) is not bool:  # 'no' is truthy: it would turn the option on
            raise AuditConfigurationError(f"{name} must be True or False, got {value!r}")
