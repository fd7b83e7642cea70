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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import orjson

from collector.endpoint_url import shown_endpoint, without_credentials
from collector.forward_refused import KEPT, SkippedRecord
from collector.storage.regular_files import read_regular, replace_file
from collector.storage.segments import FILE_MODE
from collector.validation import is_event_id

CHECKPOINT_FILE: Final = "forward-checkpoint.json"
#: Far more than a save ever writes (a few KiB: ``KEPT`` records, reasons cut to 200
#: characters): a larger file was edited or replaced, and read whole it could fill memory.
MAX_CHECKPOINT_BYTES: Final = 1 << 20


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
            # A regular file only: a FIFO in its place held serve's start for good (its
            # open waits for a writer, and a stop's SIGTERM with it).
            data = read_regular(self.path, MAX_CHECKPOINT_BYTES)
        except FileNotFoundError:
            self._kept = ()
            return None
        except OSError as exc:
            raise CheckpointError(f"cannot read the forward checkpoint {self.path}: {exc}: "
                                  f"make it the file the collector wrote, or move it away "
                                  f"to forward again from forward_from") from None
        try:
            value = orjson.loads(data)
            checkpoint = Checkpoint(value["endpoint"], value["seq"], value["updated"],
                                    value.get("event_id"), value.get("endpoint_digest"))
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
        # Once the position is known sound: the list's own damage has its own remedy.
        checkpoint = replace(checkpoint, skipped_refused=self._skipped_records(
            value.get("skipped_refused", [])))
        self._kept = checkpoint.skipped_refused
        return checkpoint

    def _skipped_records(self, value: object) -> tuple[SkippedRecord, ...]:
        """``_skipped_records``, its damage said as its own: the position is sound, and
        moving the whole file away (the remedy of a damaged one) sent every record again
        when only this list, a hand-edited record of what was skipped, was wrong."""
        try:
            return _skipped_records(value)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"the forward checkpoint {self.path} has a damaged skipped_refused ({exc}): "
                f"each entry is {{\"seq\": N (1 or more), \"event_id\": ..., \"reason\": "
                f"\"...\", \"skipped\": \"...\"}} as the collector writes it; correct it, or "
                f"delete skipped_refused from the file (the position is kept; only the list "
                f"of records skipped as refused is lost)") from None

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


_SKIPPED_KEYS: Final = ("seq", "event_id", "reason", "skipped")


def _skipped_records(value: object) -> tuple[SkippedRecord, ...]:
    """The file's ``skipped_refused`` (its last ``KEPT``); TypeError, saying what is
    wrong, when it is not what ``save`` writes."""
    if not isinstance(value, list):
        raise TypeError(f"a {type(value).__name__}, not a list")
    records = []
    for place, item in enumerate(value, start=1):
        if not isinstance(item, dict) or set(item) != set(_SKIPPED_KEYS):
            raise TypeError(f"entry {place} is not an object of {', '.join(_SKIPPED_KEYS)}")
        record = SkippedRecord(**item)
        if type(record.seq) is not int or record.seq < 1:
            raise TypeError(f"entry {place}: seq {str(record.seq)[:20]} is not a whole "
                            f"number of 1 or more")
        if (not is_event_id(record.event_id) or not isinstance(record.reason, str)
                or not isinstance(record.skipped, str)):
            raise TypeError(f"entry {place}: its event_id is not an event id, or its "
                            f"reason or skipped not text")
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
