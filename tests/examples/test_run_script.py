"""``python -m examples.run`` (``make run``) as a real process on a real port: it starts
the collector on ./audit-data/ (or DATA_DIR), serves the platform shipping every catalogue event to it,
and stops (collector included) on ``--once`` or Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from audit_middleware.catalogue import SEED_CATALOGUE
from collector.query import iter_records
from collector.readers import Readers
from collector.storage.data_dir_lock import lock_data_dir
from examples.platform.auth import ALICE
from examples.run_data_dir import DataDirError, checked
from tests.examples.run_lineage import follow_runs
from tests.faults.fleet import wait_for
from tests.faults.test_unread_replies import Pusher

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SEED_TYPES = {t for actions in SEED_CATALOGUE.values() for t in actions.values()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "examples.run", *args]


def run(cwd: Path, port: int, *args: str, data_dir: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), cwd=cwd, env=environment(port, data_dir),
                          check=False, capture_output=True, text=True, timeout=60)


def environment(port: int, data_dir: str | None = None) -> dict[str, str]:
    # The collector's API on an ephemeral port: 8080 may be taken by a neighbour.
    env = {**os.environ, "PORT": str(port), "PYTHONPATH": str(REPO),
           "AUDIT_API_LISTEN": "127.0.0.1:0"}
    env.pop("DATA_DIR", None)  # the default unless a test sets it, whatever pytest's is
    return env if data_dir is None else {**env, "DATA_DIR": data_dir}


def records(cwd: Path, data_dir: str = "audit-data") -> list[dict[str, str]]:
    """What the collector stored, read back through its query API."""
    return list(iter_records(cwd / data_dir))


def test_once_ships_every_catalogue_event_to_the_collector_and_exits(tmp_path: Path) -> None:
    result = run(tmp_path, free_port(), "--once")
    assert result.returncode == 0, result.stderr
    written = records(tmp_path)
    assert {r["type"] for r in written} == SEED_TYPES
    # Every run event leads to its initial launch: the tour's launch, relaunched then
    # resumed (three runs), and its external run.
    launch_of = follow_runs(written)
    assert sorted(Counter(launch_of.values()).values()) == [1, 3], launch_of
    assert f"{len(written)} audit events from the example traffic acknowledged" in result.stdout
    assert str(tmp_path / "audit-data") in result.stdout
    assert "query --data-dir audit-data" in result.stdout
    assert "Creation date" in result.stdout  # the newest events, as a table
    # Nothing serves any more: no URL, token or curl line that would not work (a
    # new-user review).
    assert "curl" not in result.stdout and "/admin/audit-logs" not in result.stdout
    assert "token" not in result.stdout and "from another terminal" not in result.stdout
    assert {r["client_ip"] for r in written} == {"127.0.0.1", ""}
    assert not (tmp_path / "audit-data" / "collector.sock").exists()  # collector stopped


def until_serving(proc: subprocess.Popen[str]) -> str:
    """What the script printed up to its "Serving until Ctrl-C" line."""
    assert proc.stdout is not None
    printed = []
    for line in proc.stdout:  # ends (and the test fails) if the process dies
        printed.append(line)
        if "Serving until Ctrl-C" in line:
            break
    return "".join(printed)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serves_until_interrupted_and_client_ips_cannot_be_spoofed(
        tmp_path: Path, stop: signal.Signals) -> None:
    """Ctrl-C, or SIGTERM from a process manager: either stops the collector too."""
    port = free_port()
    proc = subprocess.Popen(command(), cwd=tmp_path, env=environment(port),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # _kill_all
    try:
        said = until_serving(proc)
        assert "curl" in said and "/admin/audit-logs" in said
        assert "demo root reader's token: ac_" in said
        # Every command it prints can be pasted as it is: `audit-collector` alone is not
        # on PATH when the virtualenv is not activated.
        cli = next(line.split(" query ")[0].strip() for line in said.splitlines()
                   if " query --data-dir" in line)
        assert f"(more readers: {cli} users add NAME --root" in said
        response = httpx.post(f"http://127.0.0.1:{port}/orgs", json={"name": "spoofed"},
                              headers={"Authorization": f"Bearer {ALICE.token}",
                                       "X-Forwarded-For": "192.0.2.66"})
        assert response.status_code == 201
        proc.send_signal(stop)
        assert proc.wait(timeout=30) == 0
    finally:
        _kill_all(proc, tmp_path)
    assert not (tmp_path / "audit-data" / "collector.sock").exists()  # collector stopped
    mine = [r for r in records(tmp_path) if r["org_name"] == "spoofed"]
    assert [(r["type"], r["client_ip"]) for r in mine] == [("organization_created", "127.0.0.1")]


def test_ctrl_c_in_a_terminal_stops_the_collector_once_and_cleanly(tmp_path: Path) -> None:
    """A terminal's Ctrl-C goes to its whole foreground process group. The collector,
    in the command's group, took it as its first stop, and the command's own SIGTERM
    after it as a second one: it ended at once, by SIGTERM, without its drain or the
    store's clean close. Here a client that never reads holds the collector's drain
    (up to its drain_timeout), so that the command's SIGTERM lands while it drains."""
    port = free_port()
    proc = subprocess.Popen(
        command(), cwd=tmp_path, env={**environment(port), "AUDIT_DRAIN_TIMEOUT": "15"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # a group of its own, as a shell gives it: never pytest's
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends (and the test fails) if the process dies
            if "Serving until Ctrl-C" in line:
                break
        pusher = Pusher(tmp_path / "audit-data" / "collector.sock")
        try:
            wait_for(pusher.stalled.is_set, 60, "the client to be stalled by the collector")
            os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
            assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            pusher.close()
    finally:
        _kill_all(proc, tmp_path)
    log = (tmp_path / "audit-data" / "collector.log").read_text()
    assert "stopping now" not in log, log[-3000:]
    assert log.rstrip().endswith("audit-collector: stopped"), log[-3000:]


def test_sigterm_while_the_collector_starts_leaves_nothing_running(tmp_path: Path) -> None:
    """Stopped as early as the collector's first log line: the command exits normally and
    the data directory is free (no collector left holding it)."""
    proc = subprocess.Popen(command(), cwd=tmp_path, env=environment(free_port()),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        log = tmp_path / "audit-data" / "collector.log"
        deadline = time.monotonic() + 30
        while not log.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, proc.stderr.read() if proc.stderr else ""
    finally:  # only the command: what it left running is what this test looks for
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # A collector started in the very moment of the signal took the data directory a
    # moment after the command had exited (and the lock was checked): look for any
    # process left working here, for a while.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        left = _processes_in(tmp_path)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, "a process was left running in the example's directory"
        time.sleep(0.1)
    lock_data_dir(tmp_path / "audit-data").close()  # DataDirInUseError if still held


def _kill_all(proc: subprocess.Popen[str], directory: Path) -> None:
    """The command and what it started (its collector), whatever happened: killing the
    command alone left its collector running after a failed test. Its process group
    (``start_new_session``, as a shell starts it) is not enough: the collector runs in
    a session of its own (``examples.run``), so it is found by its working directory,
    the command's, and waited for until it has ended."""
    with contextlib.suppress(ProcessLookupError):  # the group has ended already
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pid in _processes_in(directory):
        try:
            ended = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # ended meanwhile
        try:
            if pid in _processes_in(directory):  # the pidfd's, not a reused number's
                signal.pidfd_send_signal(ended, signal.SIGKILL)
                select.select([ended], [], [], 30)  # readable once it has ended
        finally:
            os.close(ended)


def test_a_failed_tests_cleanup_leaves_nothing_running(tmp_path: Path) -> None:
    """What a failed test's ``finally`` does (``_kill_all``) ends the collector too: the
    command's process group alone left it running, with the data directory, for it is
    in a session of its own."""
    proc = subprocess.Popen(command(), cwd=tmp_path, env=environment(free_port()),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends (and the test fails) if the process dies
            if "Serving until Ctrl-C" in line:
                break
    finally:
        _kill_all(proc, tmp_path)
    left = _processes_in(tmp_path)
    for pid in left:  # not left running by this test either
        os.kill(pid, signal.SIGKILL)
    assert not left, "the collector was left running"
    lock_data_dir(tmp_path / "audit-data").close()  # DataDirInUseError if still held


def _processes_in(directory: Path) -> list[int]:
    """The processes whose working directory is ``directory``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == directory:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run(tmp_path, busy.getsockname()[1], "--once")
    assert result.returncode == 2
    assert "choose another port" in result.stderr
    assert not (tmp_path / "audit-data").exists()


def test_a_data_directory_in_use_is_a_clear_error(tmp_path: Path) -> None:
    """A second ``make run`` beside a running one (another PORT, as the busy-port error
    suggests): the collector cannot take ``audit-data``, and the command says why, in
    the collector's words, instead of a traceback or only "see collector.log"."""
    (tmp_path / "audit-data").mkdir()
    held = lock_data_dir(tmp_path / "audit-data")
    try:
        result = run(tmp_path, free_port(), "--once")
    finally:
        held.close()
    assert result.returncode == 2, result.stderr
    assert "the collector did not start" in result.stderr
    assert "in use by another process" in result.stderr
    # `make run` has no --data-dir: the way to another one is said (a new-user review).
    assert "to run beside it: DATA_DIR=audit-data-2 make run" in result.stderr
    assert "Traceback" not in result.stderr


def test_data_dir_is_used_for_everything_the_command_does(tmp_path: Path) -> None:
    """DATA_DIR (``DATA_DIR=/tmp/demo make run``): the collector's data, its socket and
    log, the sink's spool, the panel's reader, the commands printed and the last line
    are all there; nothing in ./audit-data/ (a missing parent is made too)."""
    port = free_port()
    proc = subprocess.Popen(command(), cwd=tmp_path, env=environment(port, "demo/data"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # _kill_all
    data_dir = tmp_path / "demo" / "data"
    try:
        said = until_serving(proc)
        assert f"collector data in {data_dir}" in said
        assert "query --data-dir demo/data --type" in said
        assert "tail -f --data-dir demo/data" in said
        assert "users add NAME --root --data-dir demo/data)" in said
        assert [r.name for r in Readers(data_dir).all()] == ["demo-root"]
        assert (data_dir / "collector.sock").exists()
        assert (data_dir / "collector.log").exists()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        _kill_all(proc, tmp_path)
    assert f"Stopped. Audit data is in {data_dir}" in out
    assert {r["type"] for r in records(tmp_path, "demo/data")} == SEED_TYPES
    assert not (data_dir / "collector.sock").exists()  # collector stopped
    assert not (tmp_path / "audit-data").exists()  # no spool, log or socket there either


@pytest.mark.parametrize(("value", "said"), [
    ("", "DATA_DIR is empty: name the collector's data directory"),
    ("   ", "DATA_DIR is empty"),
    ("a-file", "DATA_DIR=a-file is a file, not a directory: choose a directory"),
    ("a-file/data", "DATA_DIR=a-file/data cannot be made: "),
    ("d" * 90, "is too long: the collector's socket would be "),
    ("~no-such-user-k4/data", "~no-such-user-k4 is no user's home directory here"),
], ids=["empty", "blank", "a-file", "under-a-file", "too-long", "no-such-home"])
def test_a_bad_data_dir_is_a_clear_error_before_anything_starts(
        tmp_path: Path, value: str, said: str) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    result = run(tmp_path, free_port(), "--once", data_dir=value)
    assert result.returncode == 2, result.stderr
    assert said in result.stderr
    assert "make run" in result.stderr  # what to run instead
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing made


def test_a_data_dir_this_user_may_not_write_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked in-process, with the system's answer for that directory given: root may
    write any directory, and CI runs as root (the script's exit for such an error is the
    other refusals' above)."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    access = os.access

    def denied(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        return False if Path(path) == locked else access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", denied)
    with pytest.raises(DataDirError) as refused:
        checked(locked / "data")
    assert (f"DATA_DIR={locked / 'data'}: {locked} is not writable by this user: choose a "
            f"directory you may write, e.g. DATA_DIR=/tmp/audit-data make run"
            ) == str(refused.value)
    assert not (locked / "data").exists()


def test_a_long_data_dir_names_the_socket_path_it_would_need(tmp_path: Path) -> None:
    """The limit is the socket's absolute path, the one the sink connects to: a short
    relative DATA_DIR in a deep working directory is refused too, by its full path."""
    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    result = run(deep, free_port(), "--once", data_dir="audit-data")
    assert result.returncode == 2, result.stderr
    socket_path = deep / "audit-data" / "collector.sock"
    assert f"socket would be {socket_path}, {len(str(socket_path))} bytes" in result.stderr
    assert "must stay under 104" in result.stderr
    assert not (deep / "audit-data").exists()


@pytest.mark.parametrize(("value", "link", "broken"), [
    ("dangling", "nowhere", "dangling"),
    ("loop", "loop", "loop"),
    ("loop/data", "loop", "loop"),
], ids=["dangling", "loop", "under-a-loop"])
def test_a_data_dir_through_a_broken_link_is_a_clear_error(
        tmp_path: Path, value: str, link: str, broken: str) -> None:
    """A link whose target is missing, or a loop: the collector could make no directory
    there (``mkdir`` finds the link), and the check let it through to a traceback."""
    name = value.split("/")[0]
    (tmp_path / name).symlink_to(link)
    result = run(tmp_path, free_port(), "--once", data_dir=value)
    assert result.returncode == 2, result.stderr
    assert (f"DATA_DIR={value} cannot be used: {tmp_path / broken} is a symbolic link to "
            f"nothing") in result.stderr
    assert "make run" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing made


def test_the_data_dir_suggested_is_quoted_for_the_shell(tmp_path: Path) -> None:
    """A name with a space, suggested as it is, split at the space when pasted."""
    (tmp_path / "my data").write_text("not a directory\n")
    with pytest.raises(DataDirError) as refused:
        checked(tmp_path / "my data")
    assert f"e.g. DATA_DIR='{tmp_path}/my data-2' make run" in str(refused.value)


def test_the_data_dir_suggested_is_not_a_link_to_nothing(tmp_path: Path) -> None:
    (tmp_path / "audit-data").write_text("not a directory\n")
    (tmp_path / "audit-data-2").symlink_to("nowhere")
    with pytest.raises(DataDirError) as refused:
        checked(tmp_path / "audit-data")
    assert f"e.g. DATA_DIR={tmp_path}/audit-data-3 make run" in str(refused.value)
