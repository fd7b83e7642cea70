"""``audit-collector serve`` as a process: the configuration it prints (with where each
value came from), a private socket, a clean stop on SIGTERM, a clear refusal of a
configuration that cannot work."""

from __future__ import annotations

import os
import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import ROOT, CollectorProcess

pytestmark = pytest.mark.e2e


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
        assert re.search(r"open files = \d+", output)
    finally:
        assert process.stop() == 0
    assert not process.socket.exists()


def _raised_in_a_child(soft: int, hard: int) -> tuple[str, int]:
    """What raise_open_files_limit says in a process started with these limits, and the
    soft limit it leaves."""
    code = ("import resource; from collector.serve import raise_open_files_limit as r; "
            "print(r()); print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    message, after = done.stdout.splitlines()
    return message, int(after)


def test_serve_raises_its_open_files_limit_toward_the_hard_one() -> None:
    """The API's connection cap is a quarter of the soft limit: at the common 1,024 a
    flood of API connections would leave too few files for ingest and the store."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = 200_000 if hard == resource.RLIM_INFINITY else hard  # a child may lower it
    top = min(hard, 65_536)
    assert _raised_in_a_child(1024, hard) == (f"{top} (raised from 1024)", top)
    assert _raised_in_a_child(512, 2048) == ("2048 (raised from 512)", 2048)  # hard caps
    assert _raised_in_a_child(top, hard) == (str(top), top)  # enough already: left alone


def test_a_stop_leaves_a_socket_file_another_collector_bound_since(root: Path) -> None:
    """An overlapping restart: during the old collector's drain the new one found the
    socket file with nobody listening, replaced it and bound its own. The old one's
    stop removed the path by name, the new one's socket with it (no app could connect
    to it again). Here the new collector is a socket bound at the path by the test."""
    process = CollectorProcess(root / "data")
    process.start()
    newer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process.socket.unlink()  # as the new collector replaces a socket nobody answers
        newer.bind(str(process.socket))
        newer.listen()
        bound = process.socket.lstat()
        assert process.stop() == 0
        after = process.socket.lstat()  # FileNotFoundError: the newer socket was removed
        assert (after.st_dev, after.st_ino) == (bound.st_dev, bound.st_ino)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as app:
            app.connect(str(process.socket))  # still the newer listener's
    finally:
        newer.close()
    assert "another's now" in "".join(process.output)


def test_serve_refuses_a_bad_configuration_with_a_clear_message(root: Path) -> None:
    process = CollectorProcess(root / "data", "--tcp", "0.0.0.0:7100", "--token", "t")
    with pytest.raises(AssertionError, match="set tls_cert and tls_key"):
        process.start()
    assert process.proc is not None and process.proc.wait(10) == 2


def _serve_failing(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``serve`` expected to fail at start-up: its exit, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "collector", "serve", "--data-dir", str(data),
         "--api-listen", "", *args], cwd=ROOT, text=True, capture_output=True, timeout=60,
        check=False, env={**os.environ, "AUDIT_CONFIG": ""})


def test_an_ingest_port_taken_after_the_socket_was_bound_leaves_no_socket_file(
        root: Path) -> None:
    """The unix socket is bound first, then the TCP port: taken, the start failed with
    the socket's file left behind, where apps and probes took it for a collector."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve_failing(root / "data", "--tcp", f"127.0.0.1:{port}", "--token", "t")
    assert done.returncode == 1, done.stderr
    assert not (root / "data" / "collector.sock").exists()
    assert (f"audit-collector serve: cannot listen on 127.0.0.1:{port}: [Errno 98] Address "
            f"already in use: something else listens there (another collector?): stop it, "
            f"or set tcp to a free HOST:PORT") in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.endswith("audit-collector: stopped\n")  # the store closed too


def test_a_failure_once_ingest_listens_leaves_no_socket_file(root: Path) -> None:
    """A forward checkpoint that cannot be read is found once ingest listens (the
    forwarder is made with the integrations): refused, with ingest's socket file gone."""
    data = root / "data"
    data.mkdir()
    (data / "forward-checkpoint.json").write_text("junk")
    done = _serve_failing(data, "--tcp", "127.0.0.1:0", "--token", "t",
                          "--forward-endpoint", "http://127.0.0.1:9/v1/logs")
    assert done.returncode == 2, done.stderr
    assert not (data / "collector.sock").exists()
    assert "audit-collector serve: configuration error: the forward checkpoint" in done.stderr
    assert "Traceback" not in done.stderr


def test_removing_quarantine_while_serving_breaks_neither_the_stats_nor_the_stop(
        root: Path) -> None:
    """An operator who reviews the quarantined torn tails and removes ``quarantine/``
    killed the stats task (ingest-stats.json frozen, without a word) and made the clean
    stop exit 2 (a lifecycle review). None is counted, and the stop is clean."""
    import shutil
    import time

    import orjson

    process = CollectorProcess(root / "data")
    process.start()
    stats_file = root / "data" / "ingest-stats.json"
    try:
        shutil.rmtree(root / "data" / "quarantine")
        deadline = time.monotonic() + 20
        first = stats_file.stat().st_mtime if stats_file.exists() else 0.0
        while not stats_file.exists() or stats_file.stat().st_mtime <= first:
            assert time.monotonic() < deadline, "the stats file stopped being written"
            time.sleep(0.2)
        assert orjson.loads(stats_file.read_bytes())["store"]["quarantined"] == 0
    finally:
        assert process.stop() == 0
    assert "Traceback" not in "".join(process.output)


def _served_certificate(host: str, port: int) -> bytes:
    import socket
    import ssl

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=10) as raw, \
            context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_sighup_loads_renewed_certificates_and_the_collector_goes_on(root: Path) -> None:
    """A hangup (a closed terminal, systemd's ExecReload) ended the collector at once:
    exit 129, no drain, no stop checkpoint, its socket left behind. Now it loads the
    certificates again from their files (a renewal without a restart) on both TLS
    listeners, and a stop afterwards is still clean."""
    import signal
    import ssl

    from tests.certificates import self_signed_certificate

    first, second = root / "first", root / "second"
    first.mkdir()
    second.mkdir()
    cert, key = self_signed_certificate(first)
    process = CollectorProcess(
        root / "data", "--tcp", "127.0.0.1:0", "--token", "s3cret",
        "--tls-cert", str(cert), "--tls-key", str(key),
        "--api-tls-cert", str(cert), "--api-tls-key", str(key))
    process.start()
    try:
        tls_port = int(re.search(r"tls:127\.0\.0\.1:(\d+)", process.ready_line)[1])
        api_port = int(re.search(r"https://127\.0\.0\.1:(\d+)", process.ready_line)[1])
        old = ssl.PEM_cert_to_DER_cert(cert.read_text())
        assert _served_certificate("127.0.0.1", tls_port) == old
        renewed_cert, renewed_key = self_signed_certificate(second)
        cert.write_bytes(renewed_cert.read_bytes())
        key.write_bytes(renewed_key.read_bytes())
        new = ssl.PEM_cert_to_DER_cert(cert.read_text())
        assert process.proc is not None
        process.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while _served_certificate("127.0.0.1", tls_port) != new:
            assert time.monotonic() < deadline, "".join(process.output)
            time.sleep(0.05)
        assert _served_certificate("127.0.0.1", api_port) == new
        assert process.proc.poll() is None
    finally:
        assert process.stop() == 0, "".join(process.output)
    output = "".join(process.output)
    assert "ingest: reloaded the TLS certificate" in output
    assert "could not be loaded again" not in output
    assert "query API: reloaded the TLS certificate" in output
    assert not process.socket.exists()


def test_the_version_is_printed_by_version_and_at_start_up(root: Path) -> None:
    """Upgrades were blind: `audit-collector --version` was an error, and the start-up
    summary did not say which version runs."""
    from importlib.metadata import version

    installed = version("audit-middleware")
    done = subprocess.run([sys.executable, "-m", "collector", "--version"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, f"audit-collector {installed}")
    with CollectorProcess(root / "data") as process:
        assert f"audit-collector serve {installed}: configuration" in "".join(process.output)


def test_a_certificate_that_cannot_be_loaded_again_leaves_the_old_one_serving(
        tmp_path: Path) -> None:
    """A renewed certificate with the old key (a mismatched pair): loaded into the live
    context, it replaced the certificate and dropped the key, and every handshake after
    it failed, while the log said the old certificate stayed in use."""
    from collector.listen import reload_certificate, tls_context
    from tests.certificates import self_signed_certificate

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, key = self_signed_certificate(tmp_path / "a")
    other_cert, _ = self_signed_certificate(tmp_path / "b")
    context = tls_context(cert, key)
    assert context is not None
    assert not reload_certificate(context, other_cert, key, "ingest")
    assert not reload_certificate(context, cert, tmp_path / "missing.pem", "ingest")
    assert _handshake_with(context) == ssl_der(cert)


def ssl_der(cert: Path) -> bytes:
    import ssl

    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def _handshake_with(server_context: object) -> bytes:
    """The certificate a server with ``server_context`` presents (one handshake)."""
    import socket
    import ssl
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_context.wrap_socket(conn, server_side=True):  # type: ignore[attr-defined]
                pass
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        return _served_certificate("127.0.0.1", port)
    finally:
        thread.join(10)
        listener.close()


def _query(data: Path) -> subprocess.CompletedProcess[str]:
    """``audit-collector query --all`` on ``data``: its exit, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "collector", "query", "--data-dir", str(data), "--all"],
        cwd=ROOT, text=True, capture_output=True, timeout=60, check=False,
        env={**os.environ, "AUDIT_CONFIG": ""})


def _fifo_in_place_of(segment: Path) -> None:
    segment.unlink()
    os.mkfifo(segment)


def _assert_said_in_serve_words(done: subprocess.CompletedProcess[str], segment: Path) -> None:
    """Refused, in the read commands' words (what it is, what to do) with serve's own
    "then": it said only "a FIFO, not a regular file"."""
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "[Errno" not in done.stderr, done.stderr
    assert (f"audit-collector serve: cannot open the store in {segment.parents[1]}: "
            f"{segment} is a FIFO, where the collector keeps a segment file (stored "
            f"records): look at what it is, move it out of the way (`mv {segment} "
            f"{segment}.aside`), then put the segment file back from a backup and start "
            f"the collector again (without a backup its records are lost: once the file "
            f"is moved away, the collector starts without them, dropping them from the "
            f"index, and `audit-collector verify` names the segment missing)\n"
            ) in done.stderr, done.stderr


def test_a_start_refused_before_touching_the_index_leaves_no_repair_mark(
        root: Path) -> None:
    """A FIFO in place of the active segment: serve refused it, but only after marking
    the index catching up, and query and tail then said a repair was in progress (none
    was, nor would one end). The index is marked only once recovery changes it: readers
    now read it as before the start, and name the FIFO when they reach it."""
    from tests.integrity.helpers import build_store, segment_paths

    data = build_store(root / "data", batches=3)
    assert _query(data).returncode == 0
    active = segment_paths(data)[-1]
    _fifo_in_place_of(active)
    done = _serve_failing(data)
    _assert_said_in_serve_words(done, active)
    read = _query(data)
    assert "brought up to date" not in read.stderr and "repair" not in read.stderr
    assert read.returncode == 2 and f"{active} is a FIFO, where the collector keeps" in \
        read.stderr, read.stderr


def test_a_start_that_failed_half_way_is_not_said_to_be_in_progress(root: Path) -> None:
    """A FIFO in place of a sealed segment is found once recovery has changed the index
    (the segment's rows dropped): the mark stays, rightly, but "wait for the start-up to
    finish" was the advice with no collector running. The data directory's lock tells
    a start-up at work from one that is gone."""
    from collector.storage.data_dir_lock import lock_data_dir
    from tests.integrity.helpers import build_store, segment_paths

    data = build_store(root / "data", batches=3)
    _fifo_in_place_of(first := segment_paths(data)[0])
    done = _serve_failing(data)
    _assert_said_in_serve_words(done, first)
    read = _query(data)
    assert read.returncode == 2
    assert "was left part way through being brought up to date" in read.stderr
    assert "No collector or reindex runs" in read.stderr and "Wait for" not in read.stderr
    assert "run `audit-collector reindex`" in read.stderr
    stats = subprocess.run([sys.executable, "-m", "collector", "stats", "--data-dir", str(data)],
                           cwd=ROOT, text=True, capture_output=True, timeout=60, check=False)
    assert "so far: the index was left part way" in stats.stdout, stats.stdout
    lock = lock_data_dir(data)  # as a start-up (or reindex) at work holds it
    try:
        read = _query(data)
    finally:
        lock.close()
    assert read.returncode == 2
    assert "is being brought up to date" in read.stderr and "Wait for" in read.stderr


def test_a_start_refused_after_creating_the_index_leaves_it_marked(root: Path) -> None:
    """No index.sqlite (removed by hand, to be rebuilt): the start creates an empty one,
    then is refused (a FIFO in place of the active segment) before recovery's first
    other change. Creating the index is a change: left unmarked, query answered "no
    events" from an empty index, as if whole, with every record still in the segments."""
    from tests.integrity.helpers import build_store, segment_paths

    data = build_store(root / "data", batches=3)
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (data / name).unlink(missing_ok=True)
    _fifo_in_place_of(active := segment_paths(data)[-1])
    done = _serve_failing(data)
    _assert_said_in_serve_words(done, active)
    read = _query(data)
    assert read.returncode == 2, read.stdout
    assert "was left part way through being brought up to date" in read.stderr, read.stderr
