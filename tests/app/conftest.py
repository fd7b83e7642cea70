from __future__ import annotations

from collections.abc import Iterator

import pytest

from audit_middleware.event import AuditEvent
from audit_middleware.testing import capture_audit_events, reset_configuration


@pytest.fixture
def events() -> Iterator[list[AuditEvent]]:
    """Every event emitted during the test."""
    with capture_audit_events() as captured:
        yield captured
    reset_configuration()
