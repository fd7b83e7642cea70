"""Collector configuration: command-line flags > ``AUDIT_*`` environment > TOML file >
defaults, for every option, and a start-up summary that says where each value came from.

One table (:data:`OPTIONS`) declares each option once; the flag (``--max-frame``), the
environment variable (``AUDIT_MAX_FRAME``) and the TOML key (``max_frame``) all derive
from its name, so the three sources can never disagree about what exists.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from audit_middleware.wire import DEFAULT_MAX_FRAME, MIN_MAX_FRAME

ENV_PREFIX: Final = "AUDIT_"
MAX_FRAME_LIMIT: Final = 64 * 1024 * 1024


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names its source."""


# -- value parsers: text (flag, environment) or TOML value -> typed value --------------------
_SIZE = re.compile(r"(?i)\s*(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*")
_SIZE_UNITS = {None: 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2,
               "mb": 1000**2, "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3}
_DURATION = re.compile(r"(?i)\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise ValueError("expected a size in bytes such as 4194304, 4MiB or 64MB")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _SIZE_UNITS[unit]


def parse_duration(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise ValueError("expected a duration in seconds such as 30, 1.5, 500ms, 5m or 1h")
    unit = match.group(2).lower() if match.group(2) else None
    return float(match.group(1)) * _DURATION_UNITS[unit]


def parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("expected a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError("expected a whole number")


def parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("expected a number")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError("expected a number such as 365 or 0.5")


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def parse_path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a path")
    return Path(value).expanduser()


def parse_listen(value: Any) -> str:
    """``host:port`` for the TCP listener; empty means no TCP listener."""
    if not isinstance(value, str):
        raise TypeError("expected host:port such as 127.0.0.1:7100")
    if value == "":
        return value
    split_host_port(value)
    return value


def split_host_port(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError("expected host:port such as 127.0.0.1:7100 or [::1]:7100")
    return host, int(port_text)


def parse_forward_endpoint(value: Any) -> str:
    """The OTLP/HTTP logs URL of the forwarder; empty means no forwarding."""
    if not isinstance(value, str):
        raise TypeError("expected a URL such as http://otel-collector:4318/v1/logs")
    if value and (not value.startswith(("http://", "https://"))
                  or any(c.isspace() for c in value)):
        raise ValueError("expected an http(s) URL such as http://otel-collector:4318/v1/logs")
    return value


def parse_forward_from(value: Any) -> str:
    if value not in ("beginning", "now"):
        raise ValueError("expected 'beginning' (every stored event) or 'now' (new ones)")
    return str(value)


def parse_trace_url(value: Any) -> str:
    """An http(s) URL with ``{trace_id}`` (and optionally ``{span_id}``) in it."""
    if not isinstance(value, str):
        raise TypeError("expected a URL such as https://jaeger.example/trace/{trace_id}")
    if not value.startswith(("https://", "http://")) or "{trace_id}" not in value:
        raise ValueError("expected an http(s) URL containing {trace_id}, such as "
                         "https://jaeger.example/trace/{trace_id}")
    rest = value.replace("{trace_id}", "").replace("{span_id}", "")
    if "{" in rest or "}" in rest or any(c.isspace() or c in "\"<>" for c in value):
        raise ValueError("only {trace_id} and {span_id} may be substituted, and the URL "
                         "may not contain spaces, quotes or angle brackets")
    return value


@dataclass(frozen=True)
class Option:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str | None = None
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: Final[tuple[Option, ...]] = (
    Option("data_dir", parse_path, Path("./audit-data"),
           "directory of segments, index and the default socket", "DIR"),
    Option("socket", parse_path, None,
           "unix socket path (default: <data_dir>/collector.sock)", "PATH"),
    Option("tcp", parse_listen, "",
           "also listen on TCP host:port (needs a token; TLS unless loopback)", "HOST:PORT"),
    Option("token", parse_text, None,
           "shared token TCP clients must present (prefer --token-file or AUDIT_TOKEN)",
           "TOKEN", secret=True),
    Option("token_file", parse_path, None, "read the shared token from this file", "PATH"),
    Option("tls_cert", parse_path, None, "TLS certificate (PEM) for the TCP listener", "PATH"),
    Option("tls_key", parse_path, None, "TLS private key (PEM) for the TCP listener", "PATH"),
    Option("max_frame", parse_size, DEFAULT_MAX_FRAME,
           "largest frame a client may send, e.g. 4MiB", "SIZE"),
    Option("max_connections", parse_int, 256, "most clients connected at once", "N"),
    Option("handshake_timeout", parse_duration, 10.0,
           "a new connection must say hello within this", "DURATION"),
    Option("idle_timeout", parse_duration, 300.0,
           "close connections idle this long", "DURATION"),
    Option("read_timeout", parse_duration, 30.0,
           "a frame must arrive completely within this once it started", "DURATION"),
    Option("drain_timeout", parse_duration, 10.0,
           "on shutdown, wait this long for batches in flight", "DURATION"),
    Option("max_field_length", parse_int, 4096,
           "reject events with a text field longer than this (characters)", "N"),
    Option("max_segment_bytes", parse_size, 64 * 1024 * 1024,
           "rotate the active segment at this size", "SIZE"),
    Option("max_segment_age", parse_duration, 3600.0,
           "rotate the active segment at this age", "DURATION"),
    Option("compress_sealed", parse_bool, False, "compress sealed segments", "BOOL"),
    Option("retention_days", parse_float, 365.0,
           "delete sealed segments older than this many days", "DAYS"),
    Option("retention_bytes", parse_size, 0,
           "delete the oldest sealed segments beyond this total (0: no limit)", "SIZE"),
    # Tamper evidence (collector/integrity, docs/integrity.md).
    Option("signing_key", parse_path, None,
           "Ed25519 key that signs digests (default <data_dir>/keys/signing-key.pem; "
           "made on first start)", "PATH"),
    Option("digest_interval", parse_duration, 300.0,
           "sign the active segment this often while events arrive", "DURATION"),
    Option("api_listen", parse_listen, "127.0.0.1:8080",
           "query API and admin panel on host:port (empty: none; TLS unless loopback)",
           "HOST:PORT"),
    Option("api_tls_cert", parse_path, None, "TLS certificate (PEM) for the query API", "PATH"),
    Option("api_tls_key", parse_path, None, "TLS private key (PEM) for the query API", "PATH"),
    Option("trace_url_template", parse_trace_url, None,
           "link trace ids in the panel, e.g. https://jaeger.example/trace/{trace_id}", "URL"),
    # The forwarder (collector/forwarder.py, docs/shipping.md).
    Option("forward_endpoint", parse_forward_endpoint, "",
           "export stored events to this OTLP/HTTP logs URL (empty: no forwarding)", "URL"),
    Option("forward_headers", parse_text, None,
           "HTTP headers for the OTLP endpoint: key=value,key2=value2", "HEADERS",
           secret=True),
    Option("forward_batch", parse_int, 512, "events per OTLP export request", "N"),
    Option("forward_timeout", parse_duration, 10.0, "one OTLP export request", "DURATION"),
    Option("forward_backoff_max", parse_duration, 30.0,
           "longest wait between retries while the OTLP endpoint fails", "DURATION"),
    Option("forward_from", parse_forward_from, "beginning",
           "where a new OTLP endpoint starts: beginning or now", "WHERE"),
)
_BY_NAME: Final = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class CollectorConfig:
    data_dir: Path = Path("./audit-data")
    socket: Path | None = None
    tcp: str = ""
    token: str | None = None
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    max_connections: int = 256
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    read_timeout: float = 30.0
    drain_timeout: float = 10.0
    max_field_length: int = 4096
    max_segment_bytes: int = 64 * 1024 * 1024
    max_segment_age: float = 3600.0
    compress_sealed: bool = False
    retention_days: float = 365.0
    retention_bytes: int = 0
    signing_key: Path | None = None
    digest_interval: float = 300.0
    api_listen: str = "127.0.0.1:8080"
    api_tls_cert: Path | None = None
    api_tls_key: Path | None = None
    trace_url_template: str | None = None
    forward_endpoint: str = ""
    forward_headers: str | None = None
    forward_batch: int = 512
    forward_timeout: float = 10.0
    forward_backoff_max: float = 30.0
    forward_from: str = "beginning"
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
        for option in OPTIONS:
            value = getattr(self, option.name)
            shown = ("(set)" if value else "(not set)") if option.secret else _show(value)
            if option.name == "socket" and value is None:
                shown = f"{self.socket_path}"
            source = self.sources.get(option.name, "default")
            lines.append(f"  {option.name:<18} = {shown:<40} [{source}]")
        return lines


def _show(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return str(value)


# -- loading ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser,
                  names: Iterable[str] | None = None) -> None:
    """Add ``--config`` and a flag for each option (all, or the ``names`` given). Flags
    default to None so that only flags actually given override other sources."""
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help=f"TOML file of options (or {ENV_PREFIX}CONFIG)")
    for option in OPTIONS if names is None else [_BY_NAME[n] for n in names]:
        parser.add_argument(option.flag, dest=option.name, default=None,
                            metavar=option.metavar,
                            help=f"{option.help} [{option.env}]")


def load(args: argparse.Namespace | None = None,
         environ: Mapping[str, str] | None = None) -> CollectorConfig:
    """Resolve every option: flag, else environment, else the TOML file, else default."""
    environ = os.environ if environ is None else environ
    flags = vars(args) if args is not None else {}
    config_file = flags.get("config") or (
        Path(environ[ENV_PREFIX + "CONFIG"]) if environ.get(ENV_PREFIX + "CONFIG") else None)
    from_file = _read_toml(config_file) if config_file is not None else {}
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
            shown = "(secret)" if option.secret else repr(raw)
            raise ConfigError(f"{option.name} from {source}: {shown}: {exc}") from None
        sources[option.name] = source
    if values["token"] is None and values["token_file"] is not None:
        values["token"] = _read_token(values["token_file"])
        sources["token"] = f"token_file, {sources['token_file']}"
    config = CollectorConfig(**values, config_file=config_file, sources=sources)
    check(config)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    unknown = sorted(set(data) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"config file {path}: unknown option(s) {', '.join(unknown)}; "
                          f"known: {', '.join(o.name for o in OPTIONS)}")
    return data


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc}") from None
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


def check(config: CollectorConfig) -> None:
    """Combinations that cannot work, refused before anything starts."""
    if not MIN_MAX_FRAME <= config.max_frame <= MAX_FRAME_LIMIT:
        raise ConfigError(f"max_frame must be between {MIN_MAX_FRAME} and {MAX_FRAME_LIMIT} "
                          f"bytes, got {config.max_frame}")
    for name in ("max_connections", "max_field_length"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    for name in ("handshake_timeout", "idle_timeout", "read_timeout", "max_segment_age",
                 "digest_interval"):
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
        if config.tls_cert is None and not _is_loopback(host):
            raise ConfigError(f"tcp = {config.tcp} is not a loopback address: set tls_cert and "
                              "tls_key so tokens and events are never sent in clear")
    elif config.tls_cert is not None:
        raise ConfigError("tls_cert/tls_key are set but tcp is not: TLS is only for TCP")
    if (config.api_tls_cert is None) != (config.api_tls_key is None):
        raise ConfigError("API TLS needs both api_tls_cert and api_tls_key")
    if config.api_listen:
        host, _ = split_host_port(config.api_listen)
        if config.api_tls_cert is None and not _is_loopback(host):
            raise ConfigError(f"api_listen = {config.api_listen} is not a loopback address: "
                              "set api_tls_cert and api_tls_key so reader tokens and audit "
                              "logs are never sent in clear")
    elif config.api_tls_cert is not None:
        raise ConfigError("api_tls_cert/api_tls_key are set but api_listen is empty")
    if config.forward_endpoint:
        from .forwarder import ForwardError, forward_settings

        try:
            forward_settings(config)
        except ForwardError as exc:
            raise ConfigError(str(exc)) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

