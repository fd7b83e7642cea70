"""The collector's options, declared once: one table (:data:`OPTIONS`) gives each
option's name, parser, default and help. The flag (``--max-frame``), the environment
variable (``AUDIT_MAX_FRAME``) and the TOML key (``max_frame``) all derive from the
name, so the three sources can never disagree about what exists;
``collector.config`` resolves them (flags > environment > file > default) into a
``CollectorConfig``.

The ingest server's, the store's and the forwarder's options take their defaults from
``IngestSettings``, ``StorageSettings`` and ``ForwardSettings`` (their own defaults, for
whoever builds one without a configuration), so the two cannot drift. Left alone:
``retention_bytes`` (0 here means what ``None`` means there) and ``drain_timeout``.
``query_timeout`` is ``QUERY_TIMEOUT``, which ``ApiSettings`` takes too (the API's
module would import Starlette into every command).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from audit_middleware.shipper.endpoint import is_loopback

from .endpoint_url import shown_endpoint
from .forward_config import ON_REFUSED_CHOICES, ForwardSettings
from .forward_refused import ON_REFUSED
from .ingest import DRAIN_TIMEOUT, IngestSettings
from .storage.time_limit import QUERY_TIMEOUT
from .store import StorageSettings

ENV_PREFIX: Final = "AUDIT_"


# -- value parsers: text (flag, environment) or TOML value -> typed value --------------------
_SIZE = re.compile(r"(?ia)\s*([0-9]+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*")
_SIZE_UNITS = {None: 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2,
               "mb": 1000**2, "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3}
_DURATION = re.compile(r"(?ia)\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise ValueError("expected a size in bytes such as 4194304, 4MiB or 64MB")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _SIZE_UNITS[unit]


#: The longest duration an option takes (ten years): infinity and its like passed the
#: parser, then failed where used (a WELCOME frame, a timer, an int() at start-up).
MAX_DURATION: Final = 10 * 365 * 86_400.0


def parse_duration(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # An int too large for a float (10**400, from Python: TOML cannot hold one) is
        # out of range like any other, not an OverflowError.
        seconds = float(value) if not isinstance(value, int) or value <= MAX_DURATION \
            else math.inf
    else:
        match = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if not match:
            raise ValueError("expected a duration in seconds such as 30, 1.5, 500ms, 5m, "
                             "1h or 1d")
        unit = match.group(2).lower() if match.group(2) else None
        seconds = float(match.group(1)) * _DURATION_UNITS[unit]
    if not 0 <= seconds <= MAX_DURATION:  # also NaN
        shown = repr(value)
        raise ValueError(f"expected a duration from 0 to ten years ({MAX_DURATION:g} s), got "
                         f"{shown if len(shown) <= 40 else shown[:37] + '...'}")
    return seconds


def parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("expected a whole number")
    if isinstance(value, int):
        return value
    text = value.strip() if isinstance(value, str) else ""
    digits = text.removeprefix("-")  # one sign: '--5' is no number
    if digits.isascii() and digits.isdigit():  # not '²' or '٧'
        return int(text)
    raise ValueError("expected a whole number")


def parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("expected a number")
    number = None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and value.isascii() and "_" not in value:
        # ASCII only, as parse_int: float() reads '٣' as 3 and '1_0' as 10, a value
        # no one meant (retention_days = "٣" kept three days).
        with contextlib.suppress(ValueError):
            number = float(value)
    if number is None or not math.isfinite(number):  # NaN failed only at the store's open
        raise ValueError("expected a number such as 365 or 0.5")
    return number


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
    if not sep or not host or not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) < 65536:
        raise ValueError("expected host:port such as 127.0.0.1:7100 or [::1]:7100")
    return host, int(port_text)


def parse_forward_endpoint(value: Any) -> str:
    """The OTLP/HTTP logs URL of the forwarder; empty means no forwarding."""
    if not isinstance(value, str):
        raise TypeError("expected a URL such as http://otel-collector:4318/v1/logs")
    example = "such as http://otel-collector:4318/v1/logs"
    if value and (not value.startswith(("http://", "https://"))
                  or any(c.isspace() for c in value)):
        raise ValueError(f"expected an http(s) URL {example}")
    if value:
        # Accepted, a URL without a host or with a port past 65535 failed every export,
        # retried forever.
        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{shown_endpoint(value)!r} has a port that is not 1-65535: a "
                             f"URL {example}") from None
        if not parts.hostname or port == 0:
            raise ValueError(f"{shown_endpoint(value)!r} names no host (or port 0): a URL "
                             f"{example}")
        if "@" in parts.netloc:
            # Printed at start-up, in stats, logs and the checkpoint file: never there.
            raise ValueError("the URL holds credentials (user:password@): give them as a "
                             "header instead, forward_headers = \"Authorization=Basic ...\"")
    return value


def parse_forward_from(value: Any) -> str:
    if value not in ("beginning", "now"):
        raise ValueError("expected 'beginning' (every stored event) or 'now' (new ones)")
    return str(value)


def parse_forward_on_refused(value: Any) -> str:
    if value not in ON_REFUSED:
        raise ValueError(f"expected {ON_REFUSED_CHOICES}")
    return str(value)


def parse_metrics_auth(value: Any) -> str:
    if value not in ("none", "reader"):
        raise ValueError("expected 'none' (anyone who reaches the API port may scrape) or "
                         "'reader' (a reader's token: Authorization: Bearer <token>)")
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


def parse_public_url(value: Any) -> str:
    """The origin browsers reach the panel at, as they send it in ``Origin``:
    ``scheme://host[:port]``, lowercase, the host in IDNA (punycode), no default port. A
    trailing ``/`` is dropped; a path, query or credentials are refused, and so is plain
    http to anything but a loopback host (the panel's token and records would cross the
    network in clear, and browsers send no Fetch Metadata there)."""
    example = "such as https://audit.example.com"
    if not isinstance(value, str):
        raise TypeError(f"expected a URL {example}")
    parts = urlsplit(value.strip())
    if (parts.scheme not in ("https", "http") or not parts.hostname or parts.path not in
            ("", "/") or parts.query or parts.fragment or "@" in parts.netloc
            or parts.netloc.endswith(":")):
        raise ValueError(f"expected the panel's origin as browsers see it, scheme and host "
                         f"(and port) only, {example}")
    try:
        port = parts.port
        host = parts.hostname.encode("idna").decode("ascii")
    except (ValueError, UnicodeError) as exc:
        raise ValueError(f"{value!r} is not a usable origin ({exc}), {example}") from None
    if parts.scheme == "http" and not is_loopback(host):
        raise ValueError(f"{value!r} is plain http to a host that is not loopback: put the "
                         f"panel behind https, {example}")
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address, as in a URL
    default = {"https": 443, "http": 80}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


@dataclass(frozen=True)
class Option:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str | None = None
    secret: bool = False
    #: How a value given as text is shown (summary, refusals): a URL's query may hold a key.
    shown: Callable[[str], str] | None = None

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
    Option("max_frame", parse_size, IngestSettings.max_frame,
           "largest frame a client may send, e.g. 4MiB", "SIZE"),
    Option("max_inflight_bytes", parse_size, IngestSettings.max_inflight_bytes,
           "most bytes of batch frames and HTTP ingest bodies read or waiting to be "
           "stored at once, over all clients (a frame past it waits, unread); at least "
           "max_frame", "SIZE"),
    Option("max_connections", parse_int, IngestSettings.max_connections,
           "most clients connected at once (default: a quarter of the open-files limit, "
           "16 to 1024, as the query API's)", "N"),
    Option("handshake_timeout", parse_duration, IngestSettings.handshake_timeout,
           "a new connection must say hello within this (TLS included); on a TLS query "
           "API, finish its TLS handshake", "DURATION"),
    Option("idle_timeout", parse_duration, IngestSettings.idle_timeout,
           "close connections idle this long", "DURATION"),
    Option("read_timeout", parse_duration, IngestSettings.read_timeout,
           "a frame must arrive completely within this once it started", "DURATION"),
    Option("drain_timeout", parse_duration, DRAIN_TIMEOUT,
           "on shutdown, wait this long for batches in flight", "DURATION"),
    Option("max_field_length", parse_int, IngestSettings.max_field_length,
           "reject events with a text field longer than this (characters)", "N"),
    Option("max_segment_bytes", parse_size, StorageSettings.max_segment_bytes,
           "rotate the active segment at this size", "SIZE"),
    Option("max_segment_age", parse_duration, StorageSettings.max_segment_age,
           "rotate the active segment at this age", "DURATION"),
    Option("compress_sealed", parse_bool, StorageSettings.compress_sealed,
           "compress sealed segments", "BOOL"),
    Option("write_stall_timeout", parse_duration, StorageSettings.write_stall_timeout,
           "GET /healthz says write_stalled once a batch has waited this long to be "
           "written (a hung fsync)", "DURATION"),
    Option("retention_days", parse_float, StorageSettings.retention_days,
           "delete sealed segments older than this many days", "DAYS"),
    Option("retention_bytes", parse_size, 0,
           "delete the oldest sealed segments beyond this total (0: no limit)", "SIZE"),
    # Tamper evidence (collector/integrity, docs/integrity.md).
    Option("signing_key", parse_path, None,
           "Ed25519 key that signs digests (default <data_dir>/keys/signing-key.pem; "
           "made on first start)", "PATH"),
    Option("digest_interval", parse_duration, StorageSettings.digest_interval,
           "sign the active segment this often while events arrive", "DURATION"),
    Option("api_listen", parse_listen, "127.0.0.1:8080",
           "query API and admin panel on host:port (empty: none; TLS unless loopback)",
           "HOST:PORT"),
    Option("api_tls_cert", parse_path, None, "TLS certificate (PEM) for the query API", "PATH"),
    Option("api_tls_key", parse_path, None, "TLS private key (PEM) for the query API", "PATH"),
    Option("api_public_url", parse_public_url, None,
           "the panel's origin as browsers see it behind a reverse proxy, e.g. "
           "https://audit.example.com (sign-in accepts it; https makes the cookie Secure)",
           "URL"),
    Option("metrics_auth", parse_metrics_auth, "none",
           "who may read GET /metrics: none (no token) or reader (any reader's token, "
           "e.g. a non-root one made for the scraper)", "WHO"),
    Option("trace_url_template", parse_trace_url, None,
           "link trace ids in the panel, e.g. https://jaeger.example/trace/{trace_id}", "URL"),
    Option("query_timeout", parse_duration, QUERY_TIMEOUT,
           "stop a query of the query API or panel that runs longer than this (answered "
           "503 query_timeout) and free its query thread", "DURATION"),
    # The forwarder (collector/forward_config.py, docs/shipping.md).
    Option("forward_endpoint", parse_forward_endpoint, "",
           "export stored events to this OTLP/HTTP logs URL (empty: no forwarding)", "URL",
           shown=shown_endpoint),
    Option("forward_headers", parse_text, None,
           "HTTP headers for the OTLP endpoint: key=value,key2=value2 (percent-decoded, "
           "as OTEL_EXPORTER_OTLP_HEADERS)", "HEADERS",
           secret=True),
    Option("forward_batch", parse_int, ForwardSettings.batch_size,
           "most events per OTLP export request (fewer past 8 MiB or after a 413)", "N"),
    Option("forward_timeout", parse_duration, ForwardSettings.timeout,
           "one OTLP export request", "DURATION"),
    Option("forward_backoff_max", parse_duration, ForwardSettings.backoff_max,
           "longest backoff between retries while the OTLP endpoint fails (a Retry-After "
           "may ask longer, up to 10 minutes)", "DURATION"),
    Option("forward_from", parse_forward_from, "beginning",
           "where a new OTLP endpoint starts: beginning or now", "WHERE"),
    Option("forward_on_refused", parse_forward_on_refused, ForwardSettings.on_refused,
           "a record the OTLP endpoint refuses alone with HTTP 400: hold (retry until it "
           "takes it) or skip (after 3 refusals in a row; counted and logged)", "WHAT"),
)
BY_NAME: Final = {o.name: o for o in OPTIONS}
