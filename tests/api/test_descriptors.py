"""Nothing of the data directory stays open once the query API and its store are
closed: each test on ``make_env`` left about six descriptors behind (the index, its
-wal and -shm, a segment), ~700 by the end of tests/api."""

from __future__ import annotations

from pathlib import Path

from tests.api.conftest import make_env
from tests.collector.storage_helpers import descriptors_into


def test_a_closed_api_and_store_leave_no_descriptor_into_the_data_directory(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    for env in make_env(data):  # one Env; the loop's end runs the fixture's teardown
        assert env.get("/api/v1/audit-logs", env.root, limit=5).status_code == 200
        assert env.get("/api/v1/audit-logs/export.csv", env.root).status_code == 200
        assert env.get("/api/v1/audit-logs", "wrong").status_code == 401
        # Read on this thread, as the tests do: through the module-level query API.
        assert [e["type"] for e in env.read_events()][-1] == "audit_log_access_denied"
        assert descriptors_into(data)  # the helper sees the open store
    assert descriptors_into(data) == []
