"""The command line under bad input and broken output: a specific message and exit code
2, never a traceback, and never a half-done action (found by a bad-input review)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import ROOT, short_tmp

ENV = {**os.environ, "AUDIT_CONFIG": ""}


def cli(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=60, check=False, env=ENV,
                          **kwargs)  # type: ignore[call-overload]


def test_serve_on_a_data_dir_that_is_a_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    done = cli("serve", "--data-dir", str(tmp_path / "afile"), "--api-listen", "")
    assert done.returncode == 2
    assert "exists and is not a directory" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_reader_whose_token_cannot_be_shown_is_not_added(tmp_path: Path) -> None:
    """The token is shown once: written to a closed pipe it was lost, the reader kept."""
    data = tmp_path / "data"
    (data / "segments").mkdir(parents=True)
    shown = subprocess.run(
        f"{sys.executable} -m collector users add zed --data-dir {data} | true",
        shell=True, cwd=ROOT, text=True, capture_output=True, timeout=60, env=ENV,
        check=False)
    assert "Traceback" not in shown.stderr and "was not added" in shown.stderr
    listed = cli("users", "list", "--data-dir", str(data))
    assert "zed" not in listed.stdout


def test_reindex_while_the_collector_runs_is_a_message(tmp_path: Path) -> None:
    from tests.e2e.harness import CollectorProcess

    with short_tmp() as tmp, CollectorProcess(tmp / "data", env={"AUDIT_API_LISTEN": ""}):
        done = cli("reindex", "--data-dir", str(tmp / "data"))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "reindex" in done.stderr


def test_keys_export_to_a_missing_directory_is_a_message(tmp_path: Path) -> None:
    from tests.integrity.helpers import build_store

    data = build_store(tmp_path / "data", batches=1)
    done = cli("keys", "export", "--data-dir", str(data), "--out",
               str(tmp_path / "missing" / "keys.pem"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "No such file or directory" in done.stderr


def test_serve_outlives_a_status_reader_that_went_away() -> None:
    """`serve | consumer` and the consumer exits: at SIGTERM the status line hit a broken
    pipe, which skipped the draining and left the socket behind."""
    with short_tmp() as tmp:
        data = tmp / "data"
        serve = subprocess.Popen(
            [sys.executable, "-m", "collector", "serve", "--data-dir", str(data),
             "--api-listen", ""], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        assert serve.stdout is not None
        for line in serve.stdout:
            if line.startswith("audit-collector ready:"):
                break
        serve.stdout.close()  # the consumer is gone
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=30)
        assert serve.returncode == 0, err
        assert "Traceback" not in err
        assert not (data / "collector.sock").exists()


def test_queries_refuse_an_index_whose_rebuild_was_interrupted(tmp_path: Path) -> None:
    """A reindex stopped half way (Ctrl-C) left an index with some of the records, and
    query answered from it as if whole. The index now says it is catching up until it
    has them all; readers refuse it meanwhile, and a new reindex completes it."""
    import pytest

    from collector import query as q
    from collector.storage import recovery
    from collector.storage.errors import IndexOutOfDateError
    from tests.integrity.helpers import build_store

    data = build_store(tmp_path / "data", batches=6)
    real_index_file, calls = recovery._index_file, {"n": 0}

    def interrupted(*args: object, **kwargs: object) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_index_file(*args, **kwargs)  # type: ignore[arg-type]

    recovery._index_file = interrupted  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            q.reindex(data)
    finally:
        recovery._index_file = real_index_file  # type: ignore[assignment]
    with pytest.raises(IndexOutOfDateError, match="brought up to date"):
        q.search(data, q.Filters())
    done = cli("query", "--data-dir", str(data), "--all")
    assert done.returncode == 2 and "run `audit-collector reindex`" in done.stderr
    q.reindex(data)
    assert len(list(q.iter_records(data))) == 18


def test_stats_reports_what_it_can_and_creates_nothing(tmp_path: Path) -> None:
    """No index, a damaged one, a stats file that is a directory: each said in its line,
    the rest reported; and stats leaves no empty index.sqlite behind."""
    data = tmp_path / "data"
    (data / "segments").mkdir(parents=True)
    done = cli("stats", "--data-dir", str(data))
    assert done.returncode == 0 and "no index.sqlite" in done.stdout
    assert not (data / "index.sqlite").exists()
    (data / "index.sqlite").write_text("junk")
    (data / "ingest-stats.json").mkdir()
    done = cli("stats", "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    assert "unreadable index" in done.stdout and "unreadable ingest-stats.json" in done.stdout
    assert "Traceback" not in done.stderr


def test_a_tls_certificate_that_is_not_pem_says_what_is_expected(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.der", tmp_path / "key.der"
    cert.write_bytes(b"\x30\x82garbage")
    key.write_bytes(b"\x30\x82garbage")
    with short_tmp() as tmp:
        done = cli("serve", "--data-dir", str(tmp / "data"), "--api-listen", "",
                   "--tcp", "127.0.0.1:0", "--token", "t", "--tls-cert", str(cert),
                   "--tls-key", str(key))
    assert done.returncode != 0
    assert "both must be PEM files" in done.stderr and "Traceback" not in done.stderr


def test_a_closed_stdout_is_said_not_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run(f"{sys.executable} -m collector stats --data-dir {tmp_path} >&-",
                          shell=True, cwd=ROOT, text=True, capture_output=False,
                          stderr=subprocess.PIPE, timeout=60, env=ENV, check=False)
    assert done.returncode == 2
    assert "standard output is closed" in done.stderr and "Traceback" not in done.stderr


def test_serve_settings_in_the_environment_do_not_break_the_other_commands(
        tmp_path: Path) -> None:
    """A shell that exports the collector's settings (AUDIT_TCP without a token, a token
    file elsewhere, a frame size for serve) made query, stats and users refuse to run;
    serve still refuses them."""
    data = tmp_path / "data"
    (data / "segments").mkdir(parents=True)
    env = {**ENV, "AUDIT_TCP": "0.0.0.0:7100", "AUDIT_TOKEN_FILE": "/nonexistent",
           "AUDIT_MAX_FRAME": "1"}
    for command in (["stats"], ["users", "list"], ["query", "--all"]):
        done = subprocess.run([sys.executable, "-m", "collector", *command, "--data-dir",
                               str(data)], cwd=ROOT, text=True, capture_output=True,
                              timeout=60, env=env, check=False)
        assert "token" not in done.stderr and "max_frame" not in done.stderr, (command,
                                                                               done.stderr)
    serve = subprocess.run([sys.executable, "-m", "collector", "serve", "--data-dir",
                            str(data)], cwd=ROOT, text=True, capture_output=True,
                           timeout=60, env=env, check=False)
    assert serve.returncode == 2 and "configuration error" in serve.stderr


def test_a_size_cap_below_one_segment_is_warned_about() -> None:
    with short_tmp() as tmp:
        serve = subprocess.Popen(
            [sys.executable, "-m", "collector", "serve", "--data-dir", str(tmp / "data"),
             "--api-listen", "", "--retention-bytes", "1MiB", "--max-segment-bytes", "8MiB"],
            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert serve.stdout is not None
        lines = []
        for line in serve.stdout:
            lines.append(line)
            if line.startswith("audit-collector ready:"):
                break
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=30)
    assert any("retention_bytes (1048576) is below max_segment_bytes" in x for x in lines)


def test_users_list_of_a_missing_directory_says_so(tmp_path: Path) -> None:
    done = cli("users", "list", "--data-dir", str(tmp_path / "typo"))
    assert done.returncode == 2 and "no such data directory" in done.stderr
    assert not (tmp_path / "typo").exists()


def test_a_reindex_killed_before_it_indexed_anything_is_refused_too(tmp_path: Path) -> None:
    """The mark comes before the rebuild's wipe: a kill right after the wipe left an
    empty index that read as complete (a review helper)."""
    import pytest

    from collector import query as q
    from collector.storage import recovery
    from collector.storage.errors import IndexOutOfDateError
    from tests.integrity.helpers import build_store

    data = build_store(tmp_path / "data", batches=3)
    real_reconcile = recovery._reconcile

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    recovery._reconcile = killed  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            q.reindex(data)
    finally:
        recovery._reconcile = real_reconcile
    with pytest.raises(IndexOutOfDateError, match="brought up to date"):
        q.search(data, q.Filters())


def test_a_reader_opened_before_an_in_place_repair_refuses_it_and_stats_says_so(
        tmp_path: Path) -> None:
    """The catching-up mark was checked only when a reader opened: one kept open (a
    ``tail -f``, an API worker) across a restart that repairs the index file in place
    answered from the partial index as if whole, and ``stats`` printed its partial count
    as the store's. Both now say the index is being brought up to date."""
    import pytest

    from collector import query as q
    from collector.index import CATCHING_UP, Index
    from collector.storage.data_dir_lock import lock_data_dir
    from collector.storage.errors import IndexOutOfDateError
    from tests.integrity.helpers import build_store

    data = build_store(tmp_path / "data", batches=3)
    reader = q.Reader(data)
    first = reader.search(q.Filters(), limit=1).records[0]
    lock = lock_data_dir(data)  # held by the start-up at work, as by ``Store.open``
    index = Index(data / "index.sqlite")  # what a start-up repair does to the same file
    index.set_meta(CATCHING_UP, "2 segment file(s) to index")
    try:
        with pytest.raises(IndexOutOfDateError, match="brought up to date"):
            reader.search(q.Filters())
        with pytest.raises(IndexOutOfDateError, match="brought up to date"):
            reader.find(first["id"])
        done = cli("stats", "--data-dir", str(data))
        assert done.returncode == 0
        assert "so far: the index is being brought up to date" in done.stdout
        index.set_meta(CATCHING_UP, None)
        assert reader.find(first["id"]) == first
    finally:
        index.close()
        reader.close()
        lock.close()


def _run_without(missing: str, command: list[str], data_dir: Path
                 ) -> subprocess.CompletedProcess[str]:
    """``audit-collector COMMAND --data-dir DATA_DIR`` in a process where importing
    ``missing`` raises ModuleNotFoundError (None in ``sys.modules``), as when it is not
    installed."""
    run = (f"import sys; sys.modules[{missing!r}] = None; from collector.cli import main; "
           f"sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", run, *command, "--data-dir", str(data_dir)],
                          cwd=ROOT, text=True, capture_output=True, timeout=60, check=False,
                          env=ENV)


@pytest.mark.parametrize(("missing", "command"), [
    ("uvicorn", ["serve", "--api-listen", ""]),
    ("opentelemetry.sdk", ["stats"]),
    ("cryptography", ["verify"]),
    ("cryptography", ["keys", "list"]),
])
def test_a_command_without_the_collector_extra_says_how_to_install_it(
        tmp_path: Path, missing: str, command: list[str]) -> None:
    """`pip install /path/to/audit-middleware` (the app side) installs the
    `audit-collector` script too: serve, stats, verify and keys ended in a
    ModuleNotFoundError traceback, without a word of the `collector` extra."""
    done = _run_without(missing, command, tmp_path / "data")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"audit-collector {command[0]}: {missing}" in done.stderr
    assert "is not installed" in done.stderr
    assert not (tmp_path / "data").exists()  # nothing made before the refusal
    assert "pip install '/path/to/audit-middleware[collector]'" in done.stderr


@pytest.mark.parametrize(("missing", "command"), [
    # A module of an installed dependency (a release that renamed or dropped it)
    ("opentelemetry.sdk._logs", ["stats"]),
    # A dependency's own import of a module it needs (a broken environment)
    ("click", ["serve", "--api-listen", ""]),
])
def test_a_missing_module_that_is_not_the_collector_extra_is_not_said_to_be(
        tmp_path: Path, missing: str, command: list[str]) -> None:
    """Only a module of the extra itself is 'not installed: install the extra': any
    other ModuleNotFoundError was told so too, its traceback hidden, and installing the
    extra again (already there) changed nothing."""
    done = _run_without(missing, command, tmp_path / "data")
    assert done.returncode == 1, done.stderr
    # Python words it by what was imported first ("import of X halted", or "No module
    # named 'X.sub'; 'X' is not a package" when a submodule of it was): its own line.
    last = done.stderr.strip().splitlines()[-1]
    assert "Traceback" in done.stderr and last.startswith("ModuleNotFoundError: "), last
    assert f"'{missing}'" in last or f"import of {missing} " in last, last
    assert "collector` extra" not in done.stderr


def test_every_package_of_the_collector_extra_is_known_as_its_modules() -> None:
    """A package added to the extra (pyproject.toml) and not to ``EXTRA_MODULES``: its
    absence would end in a traceback, not in the message to install the extra."""
    import re
    from importlib import metadata

    from collector.cli import EXTRA_MODULES

    extra = [re.match(r"[A-Za-z0-9_.-]+", req).group()  # type: ignore[union-attr]
             for req in metadata.requires("audit-middleware") or ()
             if re.search(r"extra\s*==\s*['\"]collector['\"]", req)]
    assert extra
    for package in extra:
        files = [f.as_posix() for f in metadata.files(package) or ()]
        assert any(f.startswith(module.replace(".", "/") + "/") for f in files
                   for module in EXTRA_MODULES), package


def _query_denied(data: Path, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> str:
    """What `query` says when reading ``data``'s index is refused (EACCES)."""
    import dataclasses
    import errno

    from collector import cli as cli_module

    def denied(args: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", str(data / "index.sqlite"))

    monkeypatch.setattr(cli_module, "COMMANDS", [
        dataclasses.replace(c, run=denied) if c.name == "query" else c
        for c in cli_module.COMMANDS])
    assert cli_module.main(["query", "--data-dir", str(data)]) == 2
    return capsys.readouterr().err


def test_a_file_this_user_may_not_read_says_whose_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Run by a user outside the collector's user and group, `query` (`stats`, `tail`,
    `losses`) said "Permission denied (<data dir>/index.sqlite)" alone: not whose files
    these are, nor as whom to run it. (In-process: as root, no mode denies a read.)"""
    import pwd

    data = tmp_path / "data"
    data.mkdir()
    owner = pwd.getpwuid(os.geteuid()).pw_name
    monkeypatch.setattr(os, "geteuid", lambda: 4242)  # a reader who is not its owner
    said = _query_denied(data, monkeypatch, capsys)
    assert f"Permission denied ({data / 'index.sqlite'}): {data} is {owner}'s (group " in said
    assert f"run this as {owner} (sudo -u {owner} audit-collector ...)" in said, said


def test_a_file_its_own_owner_may_not_read_says_its_mode_denies_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Refused to the files' own owner (a mode that denies even it, a file attribute),
    the hint told that user to run the command as themselves (sudo -u <them>), which
    they had just done."""
    import pwd

    data = tmp_path / "data"
    data.mkdir(mode=0o750)
    me = pwd.getpwuid(os.geteuid()).pw_name
    said = _query_denied(data, monkeypatch, capsys)
    assert f"run this as {me}" not in said and "sudo" not in said, said
    assert (f"Permission denied ({data / 'index.sqlite'}): {data} is this user's own "
            f"({me}), mode 0750: its mode or a file attribute denies this to its owner "
            f"too: mend it (chmod u+rwX)") in said, said


@pytest.mark.parametrize("command", ["serve", "reindex"])
@pytest.mark.parametrize(("name", "kind"), [("quarantine", "a FIFO"),
                                            ("quarantine", "a regular file"),
                                            ("store.lock", "a directory")])
def test_something_else_in_place_of_quarantine_or_the_lock_is_named_with_what_to_do(
        tmp_path: Path, command: str, name: str, kind: str) -> None:
    """A FIFO or a file where quarantine/ goes said "[Errno 17] File exists", a
    directory in place of store.lock "Is a directory": neither what nor what to do."""
    data = tmp_path / "data"
    (data / "segments").mkdir(parents=True)
    path = data / name
    {"a FIFO": os.mkfifo, "a regular file": Path.touch, "a directory": Path.mkdir}[kind](path)
    done = cli(command, "--data-dir", str(data), *(["--api-listen", ""]
                                                  if command == "serve" else []))
    assert done.returncode in (1, 2) and "Traceback" not in done.stderr, done.stderr
    assert f"{path} is {kind}, where the collector keeps" in done.stderr, done.stderr
    assert f"move it out of the way (`mv {path} {path}.aside`)" in done.stderr
    os.rename(path, f"{path}.aside")
    if command == "reindex":  # moved aside, it runs
        assert cli(command, "--data-dir", str(data)).returncode == 0


@pytest.mark.parametrize("command", [["reindex"], ["query"], ["verify"], ["keys", "rotate"],
                                     ["serve", "--api-listen", ""]])
@pytest.mark.parametrize(("kind", "index"), [("a FIFO", False), ("a regular file", True),
                                            ("a loop of symbolic links", True)])
def test_something_else_in_place_of_segments_is_named_with_what_to_do(
        tmp_path: Path, command: list[str], kind: str, index: bool) -> None:
    """reindex, verify and keys rotate said "has no segments/ (directory): not a
    collector data directory" of a FIFO or a file there; query, "no audit data" (or, an
    index beside it, whatever the index said); serve, to start again for a new one (a
    link to a disk not mounted: a new store beside the records). Each names it now, with
    what to do: the records were in segments/, so it is put back, not made anew."""
    data = tmp_path / "data"
    data.mkdir()
    if index:
        (data / "index.sqlite").touch()
    path = data / "segments"
    {"a FIFO": os.mkfifo, "a regular file": Path.touch,
     "a loop of symbolic links": lambda p: p.symlink_to(p.name)}[kind](path)
    done = cli(*command, "--data-dir", str(data))
    # serve: 1, as for any store it cannot open
    assert done.returncode == (1 if command[0] == "serve" else 2), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert (f"{path} is {kind}, where the collector keeps the segments/ directory (the "
            f"stored records): look at what it is, move it out of the way (`mv {path} "
            f"{path}.aside`), then put segments/ back from a backup and run this "
            f"again") in done.stderr, done.stderr
    assert "not a collector data directory" not in done.stderr
