"""Where CollectorSink may spool: a spool directory that can never be made is refused at
construction (the default one only said), and a worker that drops root is told at once,
or spools in its own subdirectory of a directory made 1733."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from audit_middleware import AuditConfigurationError, configure
from audit_middleware.shipper import CollectorSink
from audit_middleware.testing import reset_configuration
from tests.environment import require_root
from tests.shipper.sink_helpers import emit_many


def test_a_default_spool_that_cannot_be_made_is_said_not_fatal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The default spool_dir is relative to a working directory the app may not own (a
    container's root-owned WORKDIR): refused, the app would not start at all, though the
    spool matters only during an outage (a diff review). Logged instead; an explicit
    spool_dir is still refused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "audit-spool").write_text("")  # where the default would go: a file
    with caplog.at_level(logging.ERROR, "audit_middleware"):
        sink = CollectorSink("unix:///x.sock")
    assert "cannot be used" in caplog.text and "will be dropped" in caplog.text
    sink.close(timeout=0.1)
    with pytest.raises(AuditConfigurationError, match="cannot be used"):
        CollectorSink("unix:///x.sock", spool_dir=tmp_path / "audit-spool")


WORKER_UID = 65534  # nobody: the user a root master's workers drop to


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are 0700, closed to the worker's user.
    parent = Path(tempfile.mkdtemp(prefix="spool-uid-", dir="/tmp"))
    parent.chmod(0o755)
    try:
        yield parent
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def in_worker(work: Callable[[], object]) -> Any:
    """``work()`` in a child forked from this root process that then drops to
    ``WORKER_UID``, as gunicorn --preload --user's workers do (the app, and its sink,
    made in the root master): the at-fork hooks run as root, before the drop."""
    results_r, results_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(results_r)
            os.setgroups([])
            os.setgid(WORKER_UID)
            os.setuid(WORKER_UID)
            try:
                result = work()
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                result = f"{type(exc).__name__}: {exc}"
            os.write(results_w, json.dumps(result).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(results_w)
    with os.fdopen(results_r, "rb") as results:
        data = results.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)


@pytest.fixture
def as_root() -> None:
    require_root("to switch users")


@pytest.mark.usefixtures("as_root")
@pytest.mark.parametrize("made", ["by the root master", "not yet, where only root can"])
def test_a_worker_that_drops_root_is_told_at_once_that_it_cannot_spool(
        open_tmp: Path, made: str, caplog: pytest.LogCaptureFixture) -> None:
    """gunicorn --preload --user app: the sink is made in the root master, the workers
    drop to app after the fork. Where app cannot make its spool (the spool directory
    root's and 0700, as the master made it; or not made yet, in a directory only root
    can write), nothing said so until the collector went away, and then every batch of
    the outage was dropped. Now checked for the worker's user at its first cycle and in
    stats(): said, with what to do, before any outage."""
    spool_dir = open_tmp / "spool"
    if made == "by the root master":
        spool_dir.mkdir(mode=0o700)
    else:
        open_tmp.chmod(0o711)  # the worker may pass through, not make anything there
    sink = CollectorSink(f"unix://{open_tmp}/no-collector.sock", spool_dir=spool_dir)
    try:
        root_unusable = sink.stats().get("spool_unusable")

        def worker() -> object:
            with caplog.at_level(logging.ERROR, "audit_middleware"):
                unusable = sink.stats().get("spool_unusable")
            return unusable, [r.getMessage() for r in caplog.records]

        unusable, said = in_worker(worker)
    finally:
        sink.close(timeout=1)
    assert [m for m in said if f"runs as uid {WORKER_UID}" in m and "will be dropped" in m
            and f"install -d -o USER -m 0700 {spool_dir}" in m
            and f"install -d -m 1733 {spool_dir}" in m], said
    assert (unusable, root_unusable) == (1, 0)  # root can spool there


@pytest.mark.usefixtures("as_root")
def test_a_worker_spools_in_its_own_subdirectory_of_a_root_directory_made_1733(
        open_tmp: Path) -> None:
    """What that error offers: a spool directory of root's, mode 1733 (others may make
    entries, not list or remove them). Each user spools in its private .uid-<uid>."""
    spool_dir = open_tmp / "spool"
    spool_dir.mkdir()
    spool_dir.chmod(0o1733)
    sink = CollectorSink(f"unix://{open_tmp}/no-collector.sock", spool_dir=spool_dir,
                         backoff_max=0.2)
    configure(sink=sink)
    try:
        def worker() -> object:
            emit_many(3)
            sink.flush(timeout=10)
            return {key: sink.stats()[key] for key in ("spooled", "dropped", "spool_unusable")}

        counts = in_worker(worker)
    finally:
        reset_configuration()
        sink.close(timeout=1)
    assert counts == {"spooled": 3, "dropped": 0, "spool_unusable": 0}
    private = spool_dir / f".uid-{WORKER_UID}"
    st = private.stat()
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (WORKER_UID, "0o700")
    assert len(list(private.glob("*.spool"))) == 1


def test_a_spool_directory_that_can_never_be_made_is_refused_at_construction(
        tmp_path: Path) -> None:
    """The spool is made when first needed, when the collector is away: a place where
    it can never be made (under a file, a read-only mount) dropped every event of the
    outage, and flush() said True (a new-user review)."""
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("")
    with pytest.raises(AuditConfigurationError, match="is not a directory this process can "
                                                       "write to"):
        CollectorSink("unix:///x.sock", spool_dir=a_file / "spool")
    sink = CollectorSink("unix:///x.sock", spool_dir=tmp_path / "new" / "spool")
    assert not (tmp_path / "new").exists()  # still made only when needed
    sink.close(timeout=0.1)
