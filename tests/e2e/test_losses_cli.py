"""``audit-collector losses`` and ``losses ack`` against a real ``serve`` subprocess: the
list read from the data directory's files, the acknowledgement made by the running
collector through its API (recorded with the reader's name), and plain errors for what
the operator can fix."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.e2e.harness import ROOT, CollectorProcess, RawClient, stored_events, wire_line

pytestmark = pytest.mark.e2e

SOURCE = "test:1:ab"  # RawClient's


def cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    if token is not None:
        env["AUDIT_READER_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "collector", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def add_reader(data_dir: Path, name: str, *root: str) -> str:
    done = cli("users", "add", name, *root, "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def listed(data_dir: Path) -> dict[str, Any]:
    done = cli("losses", "--data-dir", str(data_dir), "--format", "json")
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)  # type: ignore[no-any-return]


def lose_events(process: CollectorProcess) -> None:
    """Numbers 1 and 4 delivered: 2 and 3 lost (a gap of 2)."""
    client = RawClient(process.socket)
    try:
        client.hello()
        client.batch(1, [wire_line(1), wire_line(4)], seqs=[1, 4])
    finally:
        client.close()


def test_losses_are_listed_and_acknowledged_through_the_running_collector(root: Path) -> None:
    data_dir = root / "data"
    process = CollectorProcess(data_dir).start()
    try:
        api_url = re.search(r"http://127\.0\.0\.1:\d+", process.ready_line)[0]  # type: ignore[index]
        port = api_url.rsplit(":", 1)[1]
        ops, plain = add_reader(data_dir, "ops", "--root"), add_reader(data_dir, "plain")
        lose_events(process)

        [row] = listed(data_dir)["sources"]
        assert (row["source"], row["gap_events"], row["unacknowledged_gap_events"],
                row["acknowledged_through"], row["latest"]) == (SOURCE, 2, 2, 0, 4)
        table = cli("losses", "--data-dir", str(data_dir))
        assert table.returncode == 0 and SOURCE in table.stdout, table.stderr
        assert "unacknowledged: 2 gap" in table.stderr

        # What the operator can fix is said, exit 2, and nothing is acknowledged.
        for args, token, said in [
                (("--api-url", api_url), None, "AUDIT_READER_TOKEN"),
                (("--api-url", api_url), plain, "root reader"),
                (("--api-url", api_url, "--through", "0"), ops, "through must be"),
                # int() read it as 3: the losses acknowledged through a number not typed
                (("--api-url", api_url, "--through", "\u0663"), ops,
                 "'\u0663' is not a whole number: give one in digits 0-9"),
                (("--api-url", api_url, "--reason", " "), ops, "reason"),
        ]:
            done = cli("losses", "ack", "--source", SOURCE, "--reason", "known", *args,
                       token=token)
            assert done.returncode == 2 and said in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
        unknown = cli("losses", "ack", "--source", "nope", "--reason", "known",
                      "--api-url", api_url, token=ops)
        assert unknown.returncode == 2 and "no source 'nope'" in unknown.stderr
        assert listed(data_dir)["sources"][0]["unacknowledged_gap_events"] == 2

        # The API found from api_listen, as serve reads it (here its flag).
        done = cli("losses", "ack", "--source", SOURCE, "--through", "3",
                   "--reason", "killed for the upgrade", "--api-listen", f"127.0.0.1:{port}",
                   token=ops)
        assert done.returncode == 0, done.stderr
        assert f"acknowledged the losses of {SOURCE} through 3" in done.stdout
        [row] = listed(data_dir)["sources"]
        assert (row["acknowledged_through"], row["unacknowledged_gap_events"]) == (3, 0)
        [record] = [r for r in stored_events(data_dir)
                    if r["type"] == "audit_loss_acknowledged"]
        assert (record["principal"], record["target"]) == ("ops", SOURCE)
        assert orjson.loads(record["status"]) == {"reason": "killed for the upgrade",
                                                  "through": 3}
    finally:
        assert process.stop() == 0, "".join(process.output)

    # Stopped: the list still reads the files; an acknowledgement says what is missing.
    assert listed(data_dir)["sources"][0]["acknowledged_through"] == 3
    done = cli("losses", "ack", "--source", SOURCE, "--reason", "again", "--api-url",
               api_url, token=ops)
    assert done.returncode == 2 and "is the collector running" in done.stderr, done.stderr


def test_an_acknowledgement_reaches_an_api_served_over_tls(root: Path) -> None:
    """api_tls_cert, read as serve reads it (here from the TOML file), is trusted for
    the collector's own certificate."""
    from tests.certificates import self_signed_certificate

    certs = root / "certs"
    certs.mkdir()
    cert, key = self_signed_certificate(certs)
    data_dir = root / "data"
    process = CollectorProcess(data_dir, "--api-tls-cert", str(cert),
                               "--api-tls-key", str(key)).start()
    try:
        port = re.search(r"https://127\.0\.0\.1:(\d+)", process.ready_line)[1]  # type: ignore[index]
        config = root / "collector.toml"
        config.write_text(f'api_listen = "127.0.0.1:{port}"\napi_tls_cert = "{cert}"\n')
        ops = add_reader(data_dir, "ops", "--root")
        lose_events(process)
        done = cli("losses", "ack", "--source", SOURCE, "--reason", "known",
                   "--config", str(config), token=ops)
        assert done.returncode == 0, done.stderr
        assert listed(data_dir)["sources"][0]["acknowledged_through"] == 4
        untrusted = cli("losses", "ack", "--source", SOURCE, "--reason", "known",
                        "--api-url", f"https://127.0.0.1:{port}", token=ops)
        assert untrusted.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        # The collector runs: the certificate is what to fix, and the message says so.
        assert "is the collector running" not in untrusted.stderr
        assert "api_tls_cert" in untrusted.stderr, untrusted.stderr
    finally:
        assert process.stop() == 0, "".join(process.output)
