"""Collector configuration: flags > AUDIT_* environment > TOML file > defaults, values
parsed with units, impossible combinations refused, secrets never printed."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from collector.config import CollectorConfig, ConfigError, add_arguments, load
from collector.ingest import IngestSettings
from collector.options import OPTIONS
from collector.serve import ingest_settings
from tests.collector.acl_helpers import READ, set_acl, write_systemd_credential


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text(text)
    return path


def test_defaults_without_any_source() -> None:
    config = load(parse(), environ={})
    assert config.data_dir == Path("audit-data")
    assert config.socket_path == Path("audit-data/collector.sock")
    assert config.max_frame == 4 * 1024 * 1024
    assert config.max_segment_age == 3600.0
    assert config.tcp_address is None
    assert set(config.sources.values()) == {"default"}


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    path = toml(tmp_path, 'max_connections = 10\nidle_timeout = "2m"\nretention_days = 30\n')
    environ = {"AUDIT_MAX_CONNECTIONS": "20", "AUDIT_IDLE_TIMEOUT": "90"}
    config = load(parse("--config", str(path), "--max-connections", "30"), environ)
    assert config.max_connections == 30
    assert config.idle_timeout == 90.0
    assert config.retention_days == 30
    assert config.read_timeout == 30.0
    assert config.sources["max_connections"] == "flag --max-connections"
    assert config.sources["idle_timeout"] == "env AUDIT_IDLE_TIMEOUT"
    assert config.sources["retention_days"] == f"file {path}"
    assert config.sources["read_timeout"] == "default"


def test_the_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    path = toml(tmp_path, 'data_dir = "/srv/audit"\n')
    config = load(parse(), {"AUDIT_CONFIG": str(path)})
    assert config.data_dir == Path("/srv/audit")
    assert config.config_file == path


@pytest.mark.parametrize(("flag", "value", "name", "expected"), [
    ("--max-frame", "8MiB", "max_frame", 8 * 1024 * 1024),
    ("--max-frame", "100000", "max_frame", 100_000),
    ("--max-segment-bytes", "64MB", "max_segment_bytes", 64_000_000),
    ("--max-segment-age", "1h", "max_segment_age", 3600.0),
    ("--read-timeout", "500ms", "read_timeout", 0.5),
    ("--write-stall-timeout", "1m", "write_stall_timeout", 60.0),
    ("--compress-sealed", "yes", "compress_sealed", True),
    ("--retention-bytes", "1GiB", "retention_bytes", 1024**3),
])
def test_values_are_parsed_with_units(flag: str, value: str, name: str,
                                      expected: object) -> None:
    assert getattr(load(parse(flag, value), {}), name) == expected


def test_toml_values_may_be_native_types(tmp_path: Path) -> None:
    path = toml(tmp_path, "max_frame = 1048576\ncompress_sealed = true\nidle_timeout = 1.5\n")
    config = load(parse("--config", str(path)), {})
    assert (config.max_frame, config.compress_sealed, config.idle_timeout) == (
        1048576, True, 1.5)


@pytest.mark.parametrize(("argv", "environ", "message"), [
    (["--max-frame", "lots"], {}, "max_frame from flag --max-frame: 'lots': expected a size"),
    ([], {"AUDIT_IDLE_TIMEOUT": "soon"}, "idle_timeout from env AUDIT_IDLE_TIMEOUT"),
    ([], {"AUDIT_COMPRESS_SEALED": "maybe"}, "expected true or false"),
    (["--max-frame", "1KiB"], {}, "max_frame must be between"),
    (["--max-connections", "0"], {}, "max_connections must be at least 1"),
    # A frame larger than the whole budget would wait for room that never comes.
    (["--max-frame", "8MiB", "--max-inflight-bytes", "4MiB"], {},
     "max_inflight_bytes .4194304. is below max_frame .8388608.: a frame of max_frame"),
    ([], {"AUDIT_WRITE_STALL_TIMEOUT": "0"}, "write_stall_timeout must be greater than 0"),
    (["--tcp", "127.0.0.1"], {}, "expected host:port"),
    (["--tcp", "127.0.0.1:7100"], {}, "needs a shared token"),
    (["--tcp", "0.0.0.0:7100", "--token", "t"], {}, "set tls_cert and tls_key"),
    (["--tls-cert", "c.pem"], {}, "TLS needs both"),
    (["--tls-cert", "c.pem", "--tls-key", "k.pem"], {}, "TLS is only for TCP"),
    # Infinity and its like passed, then failed where used: clients refused by a WELCOME
    # holding null, an OverflowError at start-up, "Integer exceeds 64-bit range".
    ([], {"AUDIT_IDLE_TIMEOUT": "inf"}, "expected a duration"),
    ([], {"AUDIT_DRAIN_TIMEOUT": "nan"}, "expected a duration"),
    (["--digest-interval", "99999999999999999999999d"], {}, "from 0 to ten years"),
    (["--max-connections", "²"], {}, "expected a whole number"),
    # lstrip("-") took every leading sign: int() said "invalid literal for int()"
    ([], {"AUDIT_MAX_CONNECTIONS": "--5"}, "expected a whole number"),
    (["--idle-timeout", "\u0667s"], {}, "expected a duration"),  # an Arabic-Indic 7
    # the README's durations go up to days: the message named hours as the largest
    (["--max-segment-age", "1w"], {}, "such as 30, 1.5, 500ms, 5m, 1h or 1d"),
    (["--max-frame", "\u0664MiB"], {}, "expected a size"),
    (["--retention-days", "nan"], {}, "expected a number such as 365"),
    # float() read these as 3 and 10: kept three days, not what anyone typed
    ([], {"AUDIT_RETENTION_DAYS": "\u0663"}, "expected a number such as 365"),
    (["--retention-days", "1_0"], {}, "expected a number such as 365"),
    # accepted, these failed every export, retried forever
    (["--forward-batch", "0"], {}, "forward_batch set but forward_endpoint is empty"),
    ([], {"AUDIT_FORWARD_HEADERS": "x=y"}, "forward_headers set but forward_endpoint"),
    (["--forward-endpoint", "http://"], {}, "names no host"),
    (["--forward-endpoint", "http://127.0.0.1:99999/v1/logs"], {}, "not 1-65535"),
    # credentials in the URL were printed at start-up, in stats, logs and the checkpoint
    (["--forward-endpoint", "https://ops:s3cret@otel.example/v1/logs"], {},
     "the URL holds credentials"),
    (["--forward-endpoint", "http://h:4318/v1/logs", "--forward-headers",
      "Authorization=Bearer tök€"], {}, "printable ASCII"),
    # a record refused alone held or skipped: nothing else, said how
    (["--forward-endpoint", "http://h:4318/v1/logs", "--forward-on-refused", "drop"], {},
     "forward_on_refused from flag --forward-on-refused: 'drop': expected 'hold' .* or 'skip'"),
    ([], {"AUDIT_FORWARD_ON_REFUSED": "skip"}, "forward_on_refused set but forward_endpoint"),
    # The token file is read stripped, these were not: a client sending the token
    # stripped (as CollectorSink must) was refused as unauthorized, as a wrong token is.
    ([], {"AUDIT_TOKEN": "s3cret\n"},
     "token from env AUDIT_TOKEN: .secret. has surrounding whitespace or a control character"),
    (["--token", " s3cret"], {}, "token from flag --token: .secret. .* give the file as token_file"),
    (["--token", "s3\tcret"], {}, "token from flag --token: .secret. has surrounding"),
])
def test_bad_values_and_combinations_are_refused_naming_their_source(
        argv: list[str], environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load(parse(*argv), environ)


@pytest.mark.parametrize(("headers", "says"), [
    ("Authorization: Bearer s3cr3t", "forward header number 1: expected key=value"),
    ("X-Org=acme,Authorization=Bearer s3c,r3t", "forward header number 3: expected"),
    ("Authorization: Basic s3cr3t==", "forward header number 1: its name is not"),
    ("Authorization: Bearer s3cr3t€=x", "forward header number 1: names and values"),
    ("Authorization=Bearer s3cr3t€", "forward header 'Authorization': names and"),
])
def test_a_bad_forward_header_is_named_without_showing_its_secret(
        headers: str, says: str) -> None:
    """forward_headers holds credentials: a pair written 'Name: value' (no '='), or one
    cut by a ',' in its value, was printed in the refusal, token and all."""
    with pytest.raises(ConfigError, match=says) as err:
        load(parse("--forward-endpoint", "http://127.0.0.1:4318/v1/logs",
                   "--forward-headers", headers), {})
    assert "s3c" not in str(err.value) and "r3t" not in str(err.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/v1/logs?api_key=s3cr3t",
                                 "http://:4318/v1/logs?token=s3cr3t"])
def test_a_refused_forward_endpoint_is_named_without_its_query_values(url: str) -> None:
    """A receiver's key in the query string was quoted in the refusal."""
    with pytest.raises(ConfigError, match=r"\?\w+=\*\*\*") as err:
        load(parse("--forward-endpoint", url), {})
    assert "s3cr3t" not in str(err.value)


def test_a_config_file_that_is_not_plain_utf8_says_how_to_save_it(tmp_path: Path) -> None:
    utf16 = tmp_path / "utf16.toml"
    utf16.write_bytes("max_frame = 1024\n".encode("utf-16"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load(parse("--config", str(utf16)), {})
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbfmax_frame = 1048576\n")
    with pytest.raises(ConfigError, match="byte order mark"):
        load(parse("--config", str(bom)), {})


def test_an_infinite_duration_in_toml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="idle_timeout.*from 0 to ten years"):
        load(parse("--config", str(toml(tmp_path, "idle_timeout = inf\n"))), {})


def test_unknown_and_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option.*max_frames.*did you mean "
                                          "'max_frame'"):
        load(parse("--config", str(toml(tmp_path, "max_frames = 1\n"))), {})
    # By spelling alone max_segment_age is the closer; by what it says, bytes.
    with pytest.raises(ConfigError, match="'max_segment_size' .did you mean "
                                          "'max_segment_bytes'"):
        load(parse("--config", str(toml(tmp_path, "max_segment_size = 1\n"))), {})
    with pytest.raises(ConfigError, match="cannot be read"):
        load(parse("--config", str(toml(tmp_path, "max_frame = \n"))), {})
    with pytest.raises(ConfigError, match="does not exist"):
        load(parse("--config", str(tmp_path / "nope.toml")), {})


def test_a_misspelt_option_using_our_own_words_is_matched_by_spelling(
        tmp_path: Path) -> None:
    """A word our options use themselves (``length``, ``interval``) is never read as
    another's, nor is a translated word's match taken over a closer one by spelling:
    ``max_feld_length`` and ``max_field_size`` were taken for ``max_inflight_bytes``."""
    for typo, meant in (("max_feld_length", "max_field_length"),
                        ("max_fied_length", "max_field_length"),
                        ("max_field_size", "max_field_length")):
        with pytest.raises(ConfigError, match=f"'{typo}' .did you mean '{meant}'"):
            load(parse("--config", str(toml(tmp_path, f"{typo} = 1\n"))), {})


def test_no_word_translated_for_a_guess_is_one_our_options_use() -> None:
    """Translated, a word of our own made a typo of one option look like another's
    (``max_feld_length`` as ``max_feld_bytes``: ``max_inflight_bytes``)."""
    from collector.config import _OUR_WORDS

    used = {word for option in OPTIONS for word in option.name.split("_")}
    assert not used & set(_OUR_WORDS), used & set(_OUR_WORDS)


def test_a_missing_config_file_names_what_named_it(tmp_path: Path) -> None:
    """An ``AUDIT_CONFIG`` exported in another shell, or by a unit, named a file that is
    not there: the message said only the path, and the operator looked for a flag
    never given."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope.toml \(from AUDIT_CONFIG\) does not exist: "
                                          r"correct the path, or give no AUDIT_CONFIG"):
        load(parse(), {"AUDIT_CONFIG": str(missing)})
    with pytest.raises(ConfigError, match=r"\(from --config\)"):
        load(parse("--config", str(missing)), {"AUDIT_CONFIG": str(missing)})


def test_an_empty_token_is_no_token_and_does_not_hide_the_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file\n")
    token_file.chmod(0o600)
    config = load(parse("--tcp", "127.0.0.1:7100", "--token", "",
                        "--token-file", str(token_file)), {})
    assert config.token == "from-the-file"
    with pytest.raises(ConfigError, match="needs a shared token"):
        load(parse("--tcp", "127.0.0.1:7100", "--token", "  "), {})


def test_loopback_tcp_with_a_token_file_needs_no_tls(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    token_file.chmod(0o600)
    config = load(parse("--tcp", "127.0.0.1:7100", "--token-file", str(token_file)), {})
    assert config.token == "s3cret-token"
    assert config.tcp_address == ("127.0.0.1", 7100)


@pytest.mark.parametrize("text", ["Xq7tok\tZk9rest\n", "Xq7tok\nZk9rest\n"],
                         ids=["tab", "two lines"])
def test_a_token_file_with_a_control_character_inside_is_refused(
        tmp_path: Path, text: str) -> None:
    """Stripped, the file's token kept a tab or a second line inside it, which no app can
    send (CollectorSink refuses such a token): every app was refused as unauthorized,
    and the collector never said why."""
    token_file = tmp_path / "token"
    token_file.write_text(text)
    token_file.chmod(0o600)
    with pytest.raises(ConfigError, match=f"{token_file} holds a control character") as err:
        load(parse("--tcp", "127.0.0.1:7100", "--token-file", str(token_file)), {})
    assert "Xq7tok" not in str(err.value) and "Zk9rest" not in str(err.value)  # no secret


def test_a_missing_token_file_says_what_to_put_there(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    with pytest.raises(ConfigError, match=f"{token_file} does not exist: create it") as err:
        load(parse("--tcp", "127.0.0.1:7100", "--token-file", str(token_file)), {})
    assert "umask 077" in str(err.value) and "AUDIT_TOKEN" in str(err.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_token_file_other_users_can_reach_is_refused_without_showing_it(
        tmp_path: Path, mode: int) -> None:
    """Whoever holds the shared token writes events into the audit log: a token file
    other users could read was used as it was."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    token_file.chmod(mode)
    with pytest.raises(ConfigError, match=f"other users \\(mode {mode:o}\\): chmod 600") as err:
        load(parse("--tcp", "127.0.0.1:7100", "--token-file", str(token_file)), {})
    assert "s3cret-token" not in str(err.value)


@pytest.mark.parametrize("setting", ['token = "s3cret-token"',
                                     'forward_headers = "Authorization=Bearer s3cret-token"'])
def test_a_secret_in_a_config_file_other_users_can_read_is_refused(
        tmp_path: Path, setting: str) -> None:
    """A token file others can read is refused; the same token in a TOML file of mode
    644 was used (and masked in the start-up summary, as if it were kept secret)."""
    config_file = toml(tmp_path, f'{setting}\nforward_endpoint = "http://h:4318/v1/logs"\n')
    config_file.chmod(0o644)
    with pytest.raises(ConfigError, match="can be read or written by other users "
                                          r"\(mode 644\): chmod 600") as err:
        load(parse("--config", str(config_file)), {})
    assert "s3cret-token" not in str(err.value)
    assert load(parse("--config", str(config_file)), {}, for_serve=False)  # query, stats...
    config_file.chmod(0o600)
    assert "s3cret-token" in str(load(parse("--config", str(config_file)), {}))


def test_the_remedy_for_an_exposed_config_file_leaves_serve_able_to_read_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/deploy installs collector.toml 0640 root:audit, serve running as audit:
    with a forward_headers in it, the refusal said "chmod 600", which locks serve out
    of a file root owns. Given as /dev/stdin (/dev/fd/N), "chmod 600 /dev/stdin" would
    change the mode of the shell's terminal, not of the file."""
    config_file = toml(tmp_path, 'forward_headers = "Authorization=Bearer s3cret"\n'
                                 'forward_endpoint = "http://h:4318/v1/logs"\n')
    config_file.chmod(0o640)
    with open(config_file) as f:
        given = f"/dev/fd/{f.fileno()}"
        with pytest.raises(ConfigError) as err:
            load(parse("--config", given), {})
    assert f"chmod 600 {config_file}" in str(err.value)
    assert "/dev/fd" not in str(err.value).split("):", 1)[1]  # what to do names the file
    monkeypatch.setattr(os, "geteuid", lambda: 4242)  # serve runs as a user not its owner
    with pytest.raises(ConfigError, match=f"chown 4242 {config_file} && chmod 600 "
                                          f"{config_file}") as err:
        load(parse("--config", str(config_file)), {})
    assert "s3cret" not in str(err.value)


def test_a_systemd_credential_is_taken(tmp_path: Path) -> None:
    """systemd (LoadCredential) lets the service's user read the credential through an
    ACL entry: the mode's group bits, the ACL's mask, said 440, and the token file was
    refused as one other users can read: a deployment as examples/deploy/ failed to
    start."""
    token_file = tmp_path / "token"
    write_systemd_credential(token_file, "s3cret-token\n")
    assert token_file.stat().st_mode & 0o777 == 0o440
    config = load(parse("--tcp", "127.0.0.1:7100", "--token-file", str(token_file)), {})
    assert config.token == "s3cret-token"


@pytest.mark.parametrize(("acl", "says"), [
    ({"users": {os.geteuid() + 1: READ}}, f"user {os.geteuid() + 1}"),
    ({"users": {os.geteuid(): READ}, "group_obj": READ}, "its group"),
    ({"groups": {4242: READ}}, "group 4242"),
])
def test_a_token_file_whose_acl_lets_others_in_is_refused(
        tmp_path: Path, acl: dict[str, Any], says: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    token_file.chmod(0o400)
    set_acl(token_file, **acl)
    with pytest.raises(ConfigError, match=f"mode 440, its ACL lets in {says}\\): chmod 600"):
        load(parse("--tcp", "127.0.0.1:7100", "--token-file", str(token_file)), {})


def test_a_token_file_another_user_owns_is_refused_though_its_acl_names_the_reader(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ACL entry naming the reader is how systemd hands a credential over, but the
    credential is root's. A file owned by another user (not root) who let the reader in
    by name was taken as "only the reader's": its owner reads and writes the token."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    token_file.chmod(0o400)
    owner = 4321 if os.geteuid() == 0 else os.geteuid()
    if owner != os.geteuid():
        os.chown(token_file, owner, -1)
    reader = owner + 1
    set_acl(token_file, users={reader: READ})
    monkeypatch.setattr(os, "geteuid", lambda: reader)  # the collector's user
    with pytest.raises(ConfigError, match=f"its ACL lets in user {owner} \\(its owner\\)"):
        load(parse("--tcp", "127.0.0.1:7100", "--token-file", str(token_file)), {})


def test_a_token_file_that_is_no_regular_file_is_refused_without_waiting(
        tmp_path: Path) -> None:
    """A FIFO held serve in open() for as long as no one wrote to it; a device was read
    without end."""
    fifo = tmp_path / "token"
    os.mkfifo(fifo, 0o600)
    for path, kind in ((fifo, "a FIFO"), (Path("/dev/zero"), "a character device"),
                       (tmp_path, "a directory")):
        with pytest.raises(ConfigError, match=f"is {kind}, not a regular file: give token_file a file"):
            load(parse("--tcp", "127.0.0.1:7100", "--token-file", str(path)), {})


@pytest.mark.parametrize(("content", "says"), [
    (b"", "is empty"), (b" \n", "is empty"), (b"\xff\xfe", "is not text"),
    (b"x" * 5000, "is over 4096 bytes")])
def test_a_token_file_that_holds_no_token_is_refused(tmp_path: Path, content: bytes,
                                                      says: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(content)
    token_file.chmod(0o600)
    with pytest.raises(ConfigError, match=says):
        load(parse("--tcp", "127.0.0.1:7100", "--token-file", str(token_file)), {})


def test_the_summary_masks_the_token_and_names_sources() -> None:
    config = load(parse("--tcp", "[::1]:7100"), {"AUDIT_TOKEN": "s3cret-token"})
    summary = "\n".join(config.describe())
    assert "s3cret-token" not in summary
    assert "(set)" in summary
    assert "env AUDIT_TOKEN" in summary
    assert "flag --tcp" in summary
    assert len(config.describe()) == len(OPTIONS)


def test_the_summary_shows_every_value_in_one_column() -> None:
    # forward_backoff_max, the longest name, pushed its value out of the column
    lines = load(parse(), {}).describe()
    assert len({line.index(" = ") for line in lines}) == 1, "\n".join(lines)


def test_every_option_is_a_config_field_and_back() -> None:
    names = {f.name for f in fields(CollectorConfig)} - {"config_file", "sources"}
    assert names == {o.name for o in OPTIONS}
    defaults = load(None, {})
    for option in OPTIONS:
        assert option.env == "AUDIT_" + option.name.upper()
        assert getattr(defaults, option.name) == option.default


def test_without_options_the_ingest_server_gets_its_own_defaults() -> None:
    config = load(None, {})
    assert ingest_settings(config) == IngestSettings(socket_path=config.socket_path)


def test_retention_is_a_positive_number_of_days() -> None:
    assert load(parse("--retention-days", "0.5"), {}).retention_days == 0.5
    with pytest.raises(ConfigError, match="retention_days must be greater than 0"):
        load(parse("--retention-days", "0"), {})
    with pytest.raises(ConfigError, match="expected a number"):
        load(parse("--retention-days", "1y"), {})


@pytest.mark.parametrize("value", [10**400, -1, float("nan"), float("inf")])
def test_a_duration_out_of_range_from_python_is_a_value_error(value: object) -> None:
    """From the Python API an int too large for a float raised OverflowError (TOML cannot
    hold one, a caller can); every out-of-range duration is the same ValueError."""
    from collector.options import parse_duration

    with pytest.raises(ValueError, match="from 0 to ten years") as caught:
        parse_duration(value)
    assert len(str(caught.value)) < 120


def test_the_start_up_summary_names_the_signing_key_serve_uses(tmp_path: Path) -> None:
    """It printed ``signing_key = -`` for the default, which is a file in the data
    directory (a new-user review)."""
    config = load(parse("--data-dir", str(tmp_path / "data")), {})
    (line,) = [line for line in config.describe() if line.strip().startswith("signing_key")]
    assert str(tmp_path / "data" / "keys" / "signing-key.pem") in line and "[default]" in line


def _file_limit(monkeypatch: pytest.MonkeyPatch, soft: int) -> None:
    """The process's soft open-files limit, as the connection limits read it."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    monkeypatch.setattr(resource, "getrlimit", lambda which: (soft, hard))


def test_the_default_max_connections_is_a_quarter_of_the_file_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ingest's limit was a fixed 256 whatever the file limit, while the query API's is
    a quarter of it: at 200 files, 256 silent connections exhausted the process's files
    (the store's and the API's too). Its default is now the API's, read when used, and
    the start-up summary says what it is."""
    _file_limit(monkeypatch, 128)
    config = load(None, {})
    assert config.max_connections is None
    (line,) = [line for line in config.describe()
               if line.strip().startswith("max_connections")]
    assert "= 32 (a quarter of the open-files limit)" in line and "[default]" in line
    assert load(None, {"AUDIT_MAX_CONNECTIONS": "300"}).max_connections == 300
