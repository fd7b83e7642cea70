"""examples/deploy: the collector configuration loads as `serve` would load it, and the
systemd unit runs `serve` with it, as an unprivileged user, writing only the data
directory, stopping by SIGTERM with time to drain."""

from __future__ import annotations

from pathlib import Path

from collector import config as collector_config
from tests.collector.acl_helpers import write_systemd_credential

DEPLOY = Path(__file__).resolve().parents[2] / "examples" / "deploy"


def unit() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / "audit-collector.service").read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_example_configuration_is_valid_for_serve(tmp_path: Path) -> None:
    token = tmp_path / "token"
    write_systemd_credential(token, "a-long-random-token\n")  # as the unit's LoadCredential
    config = collector_config.load(environ={
        "AUDIT_CONFIG": str(DEPLOY / "collector.toml"), "AUDIT_TOKEN_FILE": str(token)})
    assert config.data_dir == Path("/var/lib/audit-collector")
    assert config.token == "a-long-random-token"
    assert config.tcp_address == ("127.0.0.1", 7100)
    assert config.compress_sealed is False
    assert config.max_segment_bytes == 64 * 1024 * 1024


def test_the_unit_runs_serve_with_that_configuration_unprivileged() -> None:
    service = unit()
    assert service["ExecStart"] == ["/opt/audit-collector/bin/audit-collector serve"]
    assert "AUDIT_CONFIG=/etc/audit-collector/collector.toml" in service["Environment"]
    assert "AUDIT_TOKEN_FILE=%d/token" in service["Environment"]
    assert service["LoadCredential"] == ["token:/etc/audit-collector/token"]
    assert service["User"] == ["audit"] and service["NoNewPrivileges"] == ["yes"]
    assert service["StateDirectory"] == ["audit-collector"]
    assert service["ReadWritePaths"] == ["/var/lib/audit-collector"]
    assert service["ProtectSystem"] == ["strict"]


def test_stopping_leaves_time_to_drain(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    token.chmod(0o600)
    config = collector_config.load(environ={"AUDIT_CONFIG": str(DEPLOY / "collector.toml"),
                                            "AUDIT_TOKEN_FILE": str(token)})
    service = unit()
    assert service["KillSignal"] == ["SIGTERM"]
    assert float(service["TimeoutStopSec"][0]) > config.drain_timeout


def test_the_unit_starts_after_the_clock_is_synchronized() -> None:
    """A clock set forward after the collector started (a board without a real-time
    clock, NTP stepping it at boot) is not believed by retention until the next reboot
    (the store clock's anchor): the unit starts once the clock is synchronized, where
    the system waits for that (systemd-time-wait-sync, chrony-wait)."""
    service = unit()
    assert "time-sync.target" in " ".join(service["After"]).split(), service["After"]
    # Ordered after it, never pulling it in (systemd.special(7)).
    assert "time-sync.target" not in " ".join(service.get("Wants", [])).split()
