"""Reading a secret token from a file: the collector's shared ingest token
(``token_file``) and a root reader's token for the CLI (``--reader-token-file``).

Both are credentials: the ingest token lets its holder write events into the audit log,
a root reader's token reads all of it. So the file must be a regular file (a FIFO
blocked its reader in ``open`` for as long as no one wrote to it; a device such as
/dev/zero was read without end) that only its owner can read or write, as ssh asks of a
private key. One that other users can reach is refused, not used, so that it is noticed
and its mode fixed (and, if others may have read it, the token replaced).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .storage.regular_files import NotRegularFileError, open_regular

#: More than any token: a file this long holds something else.
MAX_TOKEN_FILE: Final = 4096


class TokenFileError(Exception):
    """The token file cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class TokenFileKind:
    """How the messages name one kind of token file and its remedies."""

    #: e.g. "the reader token file"
    name: str
    #: what to do when others may have read it, e.g. "change the token"
    renew: str
    #: what to give instead of a file that is no regular file
    instead: str
    #: where a correct token comes from, e.g. "as `audit-collector users add` printed it"
    source: str


def read_token_file(path: Path, kind: TokenFileKind) -> str:
    """The token held by ``path``, stripped; ``TokenFileError`` when the file is no
    regular file, others can reach it, it is too long, not text, or empty."""
    try:
        with open_regular(path) as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            if mode & 0o077:
                raise TokenFileError(
                    f"{kind.name} {path} can be read or written by other users "
                    f"(mode {mode:o}): chmod 600 {path} (and if others may have read it, "
                    f"{kind.renew})")
            data = f.read(MAX_TOKEN_FILE + 1)
    except NotRegularFileError as exc:
        raise TokenFileError(f"{kind.name} {path} is {exc.strerror}: {kind.instead}") from None
    except OSError as exc:
        raise TokenFileError(f"cannot read {kind.name} {path}: {exc}") from None
    if len(data) > MAX_TOKEN_FILE:
        raise TokenFileError(f"{kind.name} {path} is over {MAX_TOKEN_FILE} bytes, more "
                             f"than a token: put only the token in it, {kind.source}")
    try:
        token = data.decode().strip()
    except UnicodeDecodeError:
        raise TokenFileError(f"{kind.name} {path} is not text: put only the token in it, "
                             f"{kind.source}") from None
    if not token:
        raise TokenFileError(f"{kind.name} {path} is empty: put the token in it, "
                             f"{kind.source}")
    return token
