"""Collector configuration: command-line flags > ``AUDIT_*`` environment > TOML file >
defaults, for every option of ``collector.options``, and a start-up summary that says
where each value came from.
"""

from __future__ import annotations

import argparse
import difflib
import os
import pwd
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from audit_middleware.shipper.endpoint import is_loopback
from audit_middleware.wire import MIN_MAX_FRAME, token_is_unclean

from .accepting import default_max_connections
from .ingest import inflight_below_frame
from .options import BY_NAME, ENV_PREFIX, OPTIONS, Option, split_host_port
from .token_files import TokenFileError, TokenFileKind, others_with_access, read_token_file

MAX_FRAME_LIMIT: Final = 64 * 1024 * 1024


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names its source."""


@dataclass(frozen=True)
class CollectorConfig:
    """Every option's value (see ``collector.options`` for what each means and its
    default: ``load`` fills them all, so no default is repeated here)."""

    data_dir: Path
    socket: Path | None
    tcp: str
    token: str | None
    token_file: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    max_frame: int
    max_inflight_bytes: int
    max_connections: int | None
    handshake_timeout: float
    idle_timeout: float
    read_timeout: float
    drain_timeout: float
    max_field_length: int
    max_segment_bytes: int
    max_segment_age: float
    compress_sealed: bool
    write_stall_timeout: float
    retention_days: float
    retention_bytes: int
    signing_key: Path | None
    digest_interval: float
    api_listen: str
    api_tls_cert: Path | None
    api_tls_key: Path | None
    api_public_url: str | None
    metrics_auth: str
    trace_url_template: str | None
    query_timeout: float
    forward_endpoint: str
    forward_headers: str | None
    forward_batch: int
    forward_timeout: float
    forward_backoff_max: float
    forward_from: str
    forward_on_refused: str
    config_file: Path | None = None
    #: where each value came from: "default", "flag --x", "env AUDIT_X", "file PATH"
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def socket_path(self) -> Path:
        return self.socket if self.socket is not None else self.data_dir / "collector.sock"

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        return split_host_port(self.tcp) if self.tcp else None

    @property
    def api_address(self) -> tuple[str, int] | None:
        return split_host_port(self.api_listen) if self.api_listen else None

    def describe(self) -> list[str]:
        """One line per option for the start-up summary; secrets are masked."""
        lines = []
        width = max(len(option.name) for option in OPTIONS)  # the values in one column
        for option in OPTIONS:
            value = getattr(self, option.name)
            shown = ("(set)" if value else "(not set)") if option.secret else _show(option, value)
            if option.name == "socket" and value is None:
                shown = f"{self.socket_path}"
            elif option.name == "max_connections" and value is None:
                # what ingest uses, from the file limit as serve raised it
                shown = f"{default_max_connections()} (a quarter of the open-files limit)"
            elif option.name == "signing_key" and value is None:
                from collector.integrity.keys import default_signing_key_path

                shown = f"{default_signing_key_path(self.data_dir)}"  # what serve uses
            source = self.sources.get(option.name, "default")
            lines.append(f"  {option.name:<{width}} = {shown:<40} [{source}]")
        return lines


def _displayed(option: Option, value: Any) -> Any:
    """``value`` as it may be printed: through ``option.shown`` when it is text."""
    return option.shown(value) if option.shown is not None and isinstance(value, str) \
        else value


def _show(option: Option, value: Any) -> str:
    if value is None or value == "":
        return "-"
    return str(_displayed(option, value))


def _quoted(option: Option, raw: Any) -> str:
    """``raw`` as a refusal quotes it."""
    return repr(_displayed(option, raw))


# -- loading ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser,
                  names: Iterable[str] | None = None) -> None:
    """Add ``--config`` and a flag for each option (all, or the ``names`` given). Flags
    default to None so that only flags actually given override other sources."""
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help=f"TOML file of options (or {ENV_PREFIX}CONFIG)")
    for option in OPTIONS if names is None else [BY_NAME[n] for n in names]:
        parser.add_argument(option.flag, dest=option.name, default=None,
                            metavar=option.metavar,
                            help=f"{option.help} [{option.env}]")


def load(args: argparse.Namespace | None = None,
         environ: Mapping[str, str] | None = None, *,
         for_serve: bool = True) -> CollectorConfig:
    """Resolve every option: flag, else environment, else the TOML file, else default.

    ``for_serve=False`` (the other commands, which read a few options such as the data
    directory): each value is still parsed, but the checks of how serve's options go
    together are skipped, and so is reading the token file. A shell that exports
    ``AUDIT_TCP`` for its collector made ``query`` ask for a token."""
    environ = os.environ if environ is None else environ
    flags = vars(args) if args is not None else {}
    config_file = flags.get("config") or (
        Path(environ[ENV_PREFIX + "CONFIG"]) if environ.get(ENV_PREFIX + "CONFIG") else None)
    named_by = "--config" if flags.get("config") else ENV_PREFIX + "CONFIG"
    from_file = _read_toml(config_file, named_by) if config_file is not None else {}
    if for_serve and config_file is not None:
        _refuse_exposed_secrets(config_file, from_file)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        if flags.get(option.name) is not None:
            raw, source = flags[option.name], f"flag {option.flag}"
        elif environ.get(option.env) is not None:
            raw, source = environ[option.env], f"env {option.env}"
        elif option.name in from_file:
            raw, source = from_file[option.name], f"file {config_file}"
        else:
            values[option.name] = option.default
            sources[option.name] = "default"
            continue
        try:
            values[option.name] = option.parse(raw)
        except (ValueError, TypeError) as exc:
            shown = "(secret)" if option.secret else _quoted(option, raw)
            raise ConfigError(f"{option.name} from {source}: {shown}: {exc}") from None
        sources[option.name] = source
    if values["token"] is not None and not values["token"].strip():
        values["token"] = None  # '' or spaces: no token (it hid token_file, or passed as one)
    elif for_serve and values["token"] is not None and token_is_unclean(values["token"]):
        # Not stripped here: the clients must send it stripped too (CollectorSink refuses
        # it otherwise), and a token kept with its newline matched none of them.
        raise ConfigError(f"token from {sources['token']}: (secret) has surrounding "
                          f"whitespace or a control character (a newline kept from the "
                          f"file it was read from?): give it stripped, or give the file "
                          f"as token_file, which is read stripped")
    if values["token"] is None and values["token_file"] is not None and for_serve:
        values["token"] = _read_token(values["token_file"])
        sources["token"] = f"token_file, {sources['token_file']}"
    config = CollectorConfig(**values, config_file=config_file, sources=sources)
    if for_serve:
        check(config)
    return config


def _read_toml(path: Path, named_by: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw.startswith(b"\xef\xbb\xbf"):
            raise ConfigError(f"config file {path} starts with a byte order mark (BOM): "
                              f"save it as UTF-8 without BOM")
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        # Named by the environment, it may come from another shell's or a unit's
        # export: the message says where, or the operator looks for a flag never given.
        raise ConfigError(f"config file {path} (from {named_by}) does not exist: correct "
                          f"the path, or give no {named_by}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text (TOML must be): save it "
                          f"as UTF-8") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    unknown = sorted(set(data) - set(BY_NAME))
    if unknown:
        guesses = [f"{name!r} (did you mean {close!r}?)" if close else repr(name)
                   for name in unknown for close in [_closest_option(name)]]
        raise ConfigError(f"config file {path}: unknown option(s) {', '.join(guesses)}; "
                          f"known: {', '.join(o.name for o in OPTIONS)}")
    return data


#: Words of option names as people often write them, and ours: ``max_segment_size`` is
#: ``max_segment_bytes`` (by spelling alone the closest is ``max_segment_age``). None is
#: a word an option of ours uses (``length``, ``interval``): translated, ``max_feld_length``
#: (``max_feld_bytes``) was taken for ``max_inflight_bytes`` (a test holds this).
_OUR_WORDS: Final = {"size": "bytes", "mb": "bytes", "mib": "bytes", "time": "age",
                     "duration": "age", "seconds": "age"}


def _closest_option(name: str) -> str | None:
    """The option an unknown TOML key most likely meant, or None."""
    ours = "_".join(_OUR_WORDS.get(word, word) for word in name.lower().split("_"))
    # The closer of the two matches: the translated one first alone, ``max_field_size``
    # (``max_field_bytes``) was taken for ``max_inflight_bytes``, not ``max_field_length``.
    found = [(difflib.SequenceMatcher(None, candidate, close[0]).ratio(), close[0])
             for candidate in (ours, name)
             for close in [difflib.get_close_matches(candidate, BY_NAME, n=1)] if close]
    return max(found)[1] if found else None


def _refuse_exposed_secrets(path: Path, from_file: Mapping[str, Any]) -> None:
    """A secret option (the shared token, the forwarder's headers) in a TOML file other
    users can reach is refused, as a token file they can reach is (token_files.py):
    masked in the start-up summary, it was used from a file anyone could read."""
    secrets = [option.name for option in OPTIONS if option.secret and from_file.get(option.name)]
    if not secrets:
        return
    try:
        others = others_with_access(path)
        remedy = _private_remedy(path) if others is not None else ""
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    if others is not None:
        instead = " or, for the token, a token_file" if "token" in secrets else ""
        raise ConfigError(
            f"config file {path} sets {' and '.join(secrets)}, a secret, and can be read or "
            f"written by other users ({others}): {remedy}, or give it in the environment "
            f"({', '.join(BY_NAME[name].env for name in secrets)}){instead}; if others may "
            f"have read it, change it")


def _private_remedy(path: Path) -> str:
    """The commands that leave the file at ``path`` to serve's user alone. Its mode
    alone is no remedy for a file another user owns (examples/deploy: 0640 root:audit,
    serve running as audit): chmod 600 locked serve out of it."""
    # /dev/stdin (/dev/fd/N): the file behind it; chmod of /dev/stdin itself changes
    # whatever the shell's stdin is when it runs, the terminal.
    target = path.resolve()
    owner, me = target.stat().st_uid, os.geteuid()
    if owner == me:
        return f"chmod 600 {target}"
    return (f"chown {_user_name(me)} {target} && chmod 600 {target} (user {owner} owns it: "
            f"chmod alone locks serve's user out)")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # no name (a container's user by number)
        return str(uid)


_TOKEN_FILE: Final = TokenFileKind(
    name="the token file",
    renew="change the shared token, here and in every client's configuration",
    instead=f"give token_file a file holding the shared token (or set {ENV_PREFIX}TOKEN)",
    source="as the clients present it",
    create=("create it, readable by its owner alone (`umask 077`), holding the shared "
            f"token the clients present (or set {ENV_PREFIX}TOKEN)"))


def _read_token(path: Path) -> str:
    """The shared ingest token from ``token_file``: whoever holds it can write events
    into the audit log, so a file other users can reach is refused (token_files.py)."""
    try:
        token = read_token_file(path, _TOKEN_FILE)
    except TokenFileError as exc:
        raise ConfigError(str(exc)) from None
    if token_is_unclean(token):  # stripped: a tab or a line break inside it
        # No app can send it (CollectorSink refuses such a token): every app was refused
        # as unauthorized, and nothing said why. The token itself is never shown.
        raise ConfigError(f"token_file {path} holds a control character inside its token "
                          f"(a tab, a second line?): put only the token in it, on one line")
    return token


def check(config: CollectorConfig) -> None:
    """Combinations that cannot work, refused before anything starts."""
    if not MIN_MAX_FRAME <= config.max_frame <= MAX_FRAME_LIMIT:
        raise ConfigError(f"max_frame must be between {MIN_MAX_FRAME} and {MAX_FRAME_LIMIT} "
                          f"bytes, got {config.max_frame}")
    if config.max_inflight_bytes < config.max_frame:
        raise ConfigError(inflight_below_frame(config.max_inflight_bytes, config.max_frame))
    for name in ("max_connections", "max_field_length"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    for name in ("handshake_timeout", "idle_timeout", "read_timeout", "max_segment_age",
                 "digest_interval", "write_stall_timeout", "query_timeout"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be greater than 0")
    if config.retention_days <= 0:
        raise ConfigError("retention_days must be greater than 0")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("TLS needs both tls_cert and tls_key")
    if config.tcp:
        host, _ = split_host_port(config.tcp)
        if not config.token:
            raise ConfigError(f"tcp = {config.tcp} needs a shared token (token_file, or "
                              f"{ENV_PREFIX}TOKEN): TCP clients must prove who they are")
        if config.tls_cert is None and not is_loopback(host):
            raise ConfigError(f"tcp = {config.tcp} is not a loopback address: set tls_cert and "
                              "tls_key so tokens and events are never sent in clear")
    elif config.tls_cert is not None:
        raise ConfigError("tls_cert/tls_key are set but tcp is not: TLS is only for TCP")
    if (config.api_tls_cert is None) != (config.api_tls_key is None):
        raise ConfigError("API TLS needs both api_tls_cert and api_tls_key")
    if config.api_listen:
        host, _ = split_host_port(config.api_listen)
        if config.api_tls_cert is None and not is_loopback(host):
            raise ConfigError(f"api_listen = {config.api_listen} is not a loopback address: "
                              "set api_tls_cert and api_tls_key so reader tokens and audit "
                              "logs are never sent in clear")
    elif config.api_tls_cert is not None:
        raise ConfigError("api_tls_cert/api_tls_key are set but api_listen is empty")
    elif config.api_public_url is not None:
        raise ConfigError("api_public_url is set but api_listen is empty: there is no panel")
    if not config.forward_endpoint:
        # As the API's TLS files without api_listen: a forwarder setting without a
        # forwarder is a mistake to say, not to ignore.
        given = [name for name in ("forward_headers", "forward_batch", "forward_timeout",
                                   "forward_backoff_max", "forward_from",
                                   "forward_on_refused")
                 if config.sources.get(name, "default") != "default"]
        if given:
            raise ConfigError(f"{', '.join(given)} set but forward_endpoint is empty: set "
                              f"the OTLP/HTTP logs URL to forward to, or drop them")
    if config.forward_endpoint:
        from .forward_config import ForwardError, forward_settings

        try:
            forward_settings(config)
        except ForwardError as exc:
            raise ConfigError(str(exc)) from None


