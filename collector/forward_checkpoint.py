"""The forwarder's checkpoint: the ``seq`` of the last record the endpoint acknowledged.

One small JSON file in the data directory, replaced atomically (write a temporary file,
fsync, rename, fsync the directory), so after a crash it holds either the previous or
the new position, never a torn one. The position only moves after the endpoint accepted
a batch: a crash between the two resends that batch (at least once, never a gap).

The file names the endpoint it belongs to: pointing the forwarder at another endpoint
starts that endpoint from its own beginning (``forward_from``), not from where the
previous one stopped. Endpoints are compared without credentials (``user:password@``),
which older versions allowed in the URL: moving them to a header keeps the position.
A query string may hold a receiver's key (``?api_key=...``): the file shows its names
only (``shown_endpoint``) and tells endpoints apart by a salted SHA-256 of the whole
URL (``endpoint_digest``), so a changed query value is another endpoint, as before. A
file without one (an older version's, the URL in clear) is compared by its URL and
rewritten at start.

It also names the event at its seq (``event_id``): a seq alone cannot tell the store it
was counted in from another one (a data directory replaced or restored from an older
backup while this file stayed), whose records under that seq and below it the endpoint
never received. The forwarder compares it with the record it finds at that seq. Files
written by older versions have no ``event_id`` (nothing to compare: used as before) and
get one at the next save.

It keeps the last records skipped as refused (``skipped_refused``: seq, event id, the
receiver's reason, when; ``forward_on_refused = "skip"``), so that they can be found
again after the log has rotated; every save carries them over.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import orjson

from collector.endpoint_url import shown_endpoint, without_credentials
from collector.forward_refused import KEPT, SkippedRecord
from collector.storage.regular_files import replace_file
from collector.storage.segments import FILE_MODE
from collector.validation import is_event_id

CHECKPOINT_FILE: Final = "forward-checkpoint.json"


class CheckpointError(ValueError):
    """The checkpoint file cannot be used; the message says how to recover."""


@dataclass(frozen=True)
class Checkpoint:
    endpoint: str
    seq: int  # the last record acknowledged by the endpoint (0: none yet)
    updated: str  # RFC 3339, when it was written
    #: The id of the event stored at ``seq`` (None: seq 0, or a file an older version wrote).
    event_id: str | None = None
    #: ``sha256:SALT:HEX`` of the endpoint's key (None: a file an older version wrote).
    endpoint_digest: str | None = None
    #: The last records skipped as refused, oldest first (at most ``KEPT``).
    skipped_refused: tuple[SkippedRecord, ...] = ()

    def names(self, endpoint: str) -> bool:
        """Whether this checkpoint is ``endpoint``'s."""
        if self.endpoint_digest is None:  # an older version's file: the URL in clear
            return endpoint_key(self.endpoint) == endpoint_key(endpoint)
        salt = self.endpoint_digest.split(":")[1]
        return hmac.compare_digest(self.endpoint_digest, endpoint_digest(endpoint, salt))


class CheckpointFile:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        #: The file's ``skipped_refused``, carried over by every save (None: not read).
        self._kept: tuple[SkippedRecord, ...] | None = None

    def load(self) -> Checkpoint | None:
        """The stored checkpoint, or None when there is none yet."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self._kept = ()
            return None
        except OSError as exc:
            raise CheckpointError(f"cannot read the forward checkpoint {self.path}: {exc}"
                                  ) from None
        try:
            value = orjson.loads(data)
            checkpoint = Checkpoint(value["endpoint"], value["seq"], value["updated"],
                                    value.get("event_id"), value.get("endpoint_digest"),
                                    _skipped_records(value.get("skipped_refused", [])))
            if (type(checkpoint.seq) is not int or checkpoint.seq < 0
                    or not isinstance(checkpoint.endpoint, str)
                    # What no save writes, compared with the record at ``seq``, was
                    # taken for another store's event and the whole store sent again.
                    or not (checkpoint.event_id is None or is_event_id(checkpoint.event_id))
                    or not (checkpoint.endpoint_digest is None
                            or _DIGEST.fullmatch(str(checkpoint.endpoint_digest)))):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise CheckpointError(
                f"the forward checkpoint {self.path} is damaged ({data[:80]!r}): move it "
                f"away to forward again from forward_from (records already sent are sent "
                f"again, which OTLP receivers may deduplicate by log.record.uid)") from None
        self._kept = checkpoint.skipped_refused
        return checkpoint

    def of(self, endpoint: str) -> Checkpoint | None:
        """The checkpoint of ``endpoint``, or None when it has none here."""
        checkpoint = self.load()
        if checkpoint is None or not checkpoint.names(endpoint):
            self._kept = ()  # (another endpoint's records skipped are not carried over)
            return None
        return checkpoint

    def position(self, endpoint: str) -> int | None:
        """The last acknowledged seq for ``endpoint``, or None when it has none here."""
        checkpoint = self.of(endpoint)
        return None if checkpoint is None else checkpoint.seq

    def holds_credentials(self) -> bool:
        """Whether the file names its endpoint with ``user:password@`` or with query
        values (written by an older version; ``save`` never does)."""
        checkpoint = self.load()
        return checkpoint is not None and \
            shown_endpoint(checkpoint.endpoint) != checkpoint.endpoint

    def save(self, endpoint: str, seq: int, event_id: str | None,
             skipped: SkippedRecord | None = None) -> None:
        """``event_id``: the id of the event stored at ``seq`` (None only for seq 0).
        ``skipped``: a record skipped as refused, added to those the file keeps."""
        if self._kept is None:
            self.of(endpoint)
        kept = self._kept or ()
        if skipped is not None:
            kept = (*kept, skipped)[-KEPT:]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        value: dict[str, object] = {
            "endpoint": shown_endpoint(endpoint),
            "endpoint_digest": endpoint_digest(endpoint, os.urandom(8).hex()),
            "seq": seq, "event_id": event_id, "updated": stamp}
        if kept:
            value["skipped_refused"] = [record.as_json() for record in kept]
        replace_file(self.path, orjson.dumps(value, option=orjson.OPT_APPEND_NEWLINE),
                     FILE_MODE)
        self._kept = kept  # (only once written: a save that failed added nothing)


def _skipped_records(value: object) -> tuple[SkippedRecord, ...]:
    """The file's ``skipped_refused`` (its last ``KEPT``); TypeError when it is not what
    ``save`` writes."""
    if not isinstance(value, list):
        raise TypeError
    records = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"seq", "event_id", "reason", "skipped"}:
            raise TypeError
        record = SkippedRecord(**item)
        if (type(record.seq) is not int or record.seq < 1 or not is_event_id(record.event_id)
                or not isinstance(record.reason, str) or not isinstance(record.skipped, str)):
            raise TypeError
        records.append(record)
    return tuple(records[-KEPT:])  # as save keeps them: more were carried over for good


#: ``sha256:SALT:HEX``: SALT 16 hex digits, HEX a SHA-256.
_DIGEST: Final = re.compile(r"sha256:[0-9a-f]{16}:[0-9a-f]{64}")


def endpoint_digest(url: str, salt: str) -> str:
    """A salted SHA-256 of ``endpoint_key(url)``: what the checkpoint tells its endpoint
    by, the query's values included, without holding them in clear (the salt: a value
    cannot be looked up in a table of digests made beforehand)."""
    digest = hashlib.sha256(f"{salt}:{endpoint_key(url)}".encode()).hexdigest()
    return f"sha256:{salt}:{digest}"


_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def endpoint_key(url: str) -> str:
    """The key one endpoint is told from another by (equal keys: the same endpoint):
    ``url`` without credentials, its scheme and host in lower case (both
    case-insensitive, RFC 3986 6.2.2.1) and without the scheme's default port. Compared as written, ``HTTPS://Collector:443/v1/logs`` for
    ``https://collector/v1/logs`` was another endpoint: forwarding started over from
    ``forward_from`` (from ``now``, the records in between never sent)."""
    parts = urlsplit(without_credentials(url))
    try:
        port = parts.port
    except ValueError:  # not a port: the settings refuse such a URL; compared as written
        return url
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc += f":{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, parts.fragment))
