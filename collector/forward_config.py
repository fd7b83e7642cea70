"""The forwarder's settings: ``forward_*`` options checked once, at start (a setting
that cannot work is refused with a message naming it), and the ``forward_headers``
text parsed without ever showing a secret it holds."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import unquote

from collector.endpoint_url import shown_endpoint
from collector.forward_refused import ON_REFUSED, OnRefused

__all__ = ["MAX_BATCH", "ON_REFUSED_CHOICES", "SERVICE_NAME", "ForwardError", "ForwardSettings", "forward_settings",
           "parse_headers"]

SERVICE_NAME: Final = "audit-collector"
MAX_BATCH: Final = 10_000
#: An HTTP field name (RFC 9110 token).
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


#: What forward_on_refused may be, as its refusal says it.
ON_REFUSED_CHOICES: Final = ("'hold' (retry a record the receiver refuses until it takes "
                             "it) or 'skip' (skip it, counted and logged, after a few "
                             "refusals in a row)")


class ForwardError(ValueError):
    """Forwarder settings that cannot work; the message names the setting."""


@dataclass(frozen=True)
class ForwardSettings:
    endpoint: str  # the full OTLP/HTTP logs URL, e.g. http://collector:4318/v1/logs
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. an Authorization
    batch_size: int = 512
    timeout: float = 10.0  # one export request, the exporter's own retries included
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    poll_interval: float = 0.5  # how often to look for new records when caught up
    start: Literal["beginning", "now"] = "beginning"  # where a new endpoint starts
    #: A record the receiver refuses on its own (400): retried ("hold") or, after a
    #: few refusals in a row, skipped, counted and logged ("skip"): forward_refused.
    on_refused: OnRefused = "hold"
    service_name: str = SERVICE_NAME

    def __post_init__(self) -> None:
        if not self.endpoint.startswith(("http://", "https://")):
            raise ForwardError(f"forward endpoint {self.shown_endpoint!r} must be an http(s) URL "
                               "such as http://otel-collector:4318/v1/logs")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ForwardError(f"forward batch size must be 1 to {MAX_BATCH}, "
                               f"got {self.batch_size}")
        if self.timeout <= 0 or self.backoff_initial <= 0 or self.poll_interval <= 0:
            raise ForwardError("forward timeout, backoff and poll interval must be > 0")
        if self.backoff_max < self.backoff_initial:
            raise ForwardError("forward backoff_max must be at least backoff_initial")
        if self.start not in ("beginning", "now"):
            raise ForwardError(f"forward_from must be 'beginning' or 'now', got {self.start!r}")
        if self.on_refused not in ON_REFUSED:
            raise ForwardError(f"forward_on_refused must be {ON_REFUSED_CHOICES}, "
                               f"got {self.on_refused!r}")

    @property
    def shown_endpoint(self) -> str:
        """``endpoint`` as logs, stats and messages show it (no query values: a key)."""
        return shown_endpoint(self.endpoint)


def parse_headers(text: str) -> dict[str, str]:
    """``key=value,key2=value2`` (the form of OTEL_EXPORTER_OTLP_HEADERS: percent-encoded,
    ``Basic%20...``, as OpenTelemetry SDKs decode it; a ``,`` in a value is ``%2C``).

    The text holds credentials (forward_headers is a secret option): an error names a
    pair by its place, and shows its name only when it is one, never the text given. A
    pair written ``Authorization: Bearer x`` (no ``=``), or one cut by a ``,`` in its
    value, was printed whole, secret included, at every refused start."""
    headers: dict[str, str] = {}
    pairs = [part.strip() for part in text.split(",")]
    for place, item in enumerate(filter(None, pairs), start=1):
        key, sep, value = item.partition("=")
        key, value = unquote(key).strip(), unquote(value).strip()
        # Without its '=', a "name" is a piece of a value cut off by a ','.
        named = f"{key!r}" if sep and _HEADER_NAME.fullmatch(key) else f"number {place}"
        if not sep or not key:
            raise ForwardError(f"forward header {named}: expected key=value pairs separated "
                               "by commas, e.g. Authorization=Bearer x (not 'Name: value'; "
                               "a ',' in a value is %2C)")
        if not (key + value).isascii() or any(ord(c) < 32 or ord(c) == 127
                                              for c in key + value):
            # HTTP header values are ASCII: one that is not failed every export. Checked
            # once decoded: a %0D%0A must not add a header line.
            raise ForwardError(f"forward header {named}: names and values must be "
                               "printable ASCII once percent-decoded")
        if not _HEADER_NAME.fullmatch(key):
            # Else accepted here and refused at every export (requests: a ':'; the
            # receiver: a space, a parenthesis), a failure without end.
            raise ForwardError(f"forward header {named}: its name is not a valid HTTP "
                               "header name (letters, digits and !#$%&'*+-.^_`|~ only)")
        headers[key] = value
    return headers


def forward_settings(config: Any) -> ForwardSettings:
    """The forwarder settings of a ``CollectorConfig`` (``forward_*`` options)."""
    return ForwardSettings(
        endpoint=config.forward_endpoint,
        headers=parse_headers(config.forward_headers or ""),
        batch_size=config.forward_batch,
        timeout=config.forward_timeout,
        backoff_max=max(config.forward_backoff_max, ForwardSettings.backoff_initial),
        start=config.forward_from,
        on_refused=config.forward_on_refused,
    )
