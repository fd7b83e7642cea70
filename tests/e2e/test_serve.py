"""``audit-collector serve`` as a process: the configuration it prints (with where each
value came from), a private socket, a clean stop on SIGTERM, a clear refusal of a
configuration that cannot work."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import CollectorProcess, short_tmp

pytestmark = pytest.mark.e2e


@pytest.fixture
def root() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def test_serve_prints_its_configuration_and_stops_cleanly(root: Path) -> None:
    config = root / "collector.toml"
    config.write_text('max_frame = "1MiB"\nidle_timeout = "2m"\n')
    process = CollectorProcess(root / "data", "--config", str(config), "--idle-timeout", "90",
                               env={"AUDIT_MAX_CONNECTIONS": "12"})
    process.start()
    try:
        output = "".join(process.output)
        assert re.search(r"max_frame\s+= 1048576\s+\[file .*collector.toml\]", output)
        assert re.search(r"idle_timeout\s+= 90.0\s+\[flag --idle-timeout\]", output)
        assert re.search(r"max_connections\s+= 12\s+\[env AUDIT_MAX_CONNECTIONS\]", output)
        assert oct(process.socket.stat().st_mode & 0o777) == "0o600"
    finally:
        assert process.stop() == 0
    assert not process.socket.exists()


def test_serve_refuses_a_bad_configuration_with_a_clear_message(root: Path) -> None:
    process = CollectorProcess(root / "data", "--tcp", "0.0.0.0:7100", "--token", "t")
    with pytest.raises(AssertionError, match="set tls_cert and tls_key"):
        process.start()
    assert process.proc is not None and process.proc.wait(10) == 2
