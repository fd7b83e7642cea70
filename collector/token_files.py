"""Reading a secret token from a file: the collector's shared ingest token
(``token_file``) and a root reader's token for the CLI (``--reader-token-file``).

Both are credentials: the ingest token lets its holder write events into the audit log,
a root reader's token reads all of it. So the file must be a regular file (a FIFO
blocked its reader in ``open`` for as long as no one wrote to it; a device such as
/dev/zero was read without end) that only its owner can read or write, as ssh asks of a
private key. One that other users can reach is refused, not used, so that it is noticed
and its mode fixed (and, if others may have read it, the token replaced).

"Other users" counts a POSIX ACL's entries, not the mode's group bits alone: with an ACL
those bits are its mask. A systemd credential (``LoadCredential``) is such a file:
mode 0400, owned by root, readable by the service's user through an ACL entry naming
it, which ``ls`` shows as 0440. It is taken; a file whose ACL lets anyone else in is
not, nor one that lets this user in by name but is owned by another user than root.
"""

from __future__ import annotations

import errno
import os
import shlex
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .storage.regular_files import NotRegularFileError, open_regular

#: More than any token: a file this long holds something else.
MAX_TOKEN_FILE: Final = 4096

#: A file's POSIX ACL as Linux stores it (linux/posix_acl_xattr.h): a version, then
#: (tag, permissions, id) entries. The tags that can give others access:
_ACL_XATTR: Final = "system.posix_acl_access"
_ACL_HEADER: Final = struct.Struct("<I")
_ACL_ENTRY: Final = struct.Struct("<HHI")
_ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK = 0x02, 0x04, 0x08, 0x10
#: Errors of a file without an ACL, or of a file system (or OS) that has none.
_NO_ACL: Final = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP})


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
    #: how to make the file when it does not exist; ``{path}`` is replaced by its path,
    #: quoted for a shell
    create: str


def read_token_file(path: Path, kind: TokenFileKind) -> str:
    """The token held by ``path``, stripped; ``TokenFileError`` when the file is no
    regular file, others can reach it, it is too long, not text, or empty."""
    try:
        with open_regular(path) as f:
            others = _others_with_access(f.fileno())
            if others is not None:
                raise TokenFileError(
                    f"{kind.name} {path} can be read or written by other users "
                    f"({others}): chmod 600 {path} (and if others may have read it, "
                    f"{kind.renew})")
            data = f.read(MAX_TOKEN_FILE + 1)
    except NotRegularFileError as exc:
        raise TokenFileError(f"{kind.name} {path} is {exc.strerror}: {kind.instead}") from None
    except FileNotFoundError:
        # A first use (a path copied from the docs): say where a token comes from, and
        # make the file its owner's alone from the start, not refused for its mode next.
        # Quoted: the command is pasted in a shell as it is.
        raise TokenFileError(f"{kind.name} {path} does not exist: "
                             f"{kind.create.format(path=shlex.quote(str(path)))}") from None
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


def others_with_access(path: Path) -> str | None:
    """Who, besides its owner and this process's user, can reach the file at ``path``
    (judged as a token file is), or None: no one. For a file holding a secret among
    other things (a configuration file with a ``token``)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO: no wait
    try:
        return _others_with_access(fd)
    finally:
        os.close(fd)


def _others_with_access(fd: int) -> str | None:
    """Who, besides the file's owner and this process's user, has some access to the
    file ``fd`` (as said in the refusal), or None: no one."""
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        return f"mode {mode:o}"
    acl = _acl(fd)
    if acl is None:  # the group bits are the group's
        return f"mode {mode:o}" if mode & 0o070 else None
    # The group bits are the ACL's mask: what its named users and groups get at most.
    mask = next((perm for tag, perm, _ in acl if tag == _ACL_MASK), 0o7)
    me = os.geteuid()
    others = [f"user {id_}" if tag == _ACL_USER else
              "its group" if tag == _ACL_GROUP_OBJ else f"group {id_}"
              for tag, perm, id_ in acl
              if perm & mask and (tag in (_ACL_GROUP_OBJ, _ACL_GROUP)
                                  or (tag == _ACL_USER and id_ != me))]
    if st.st_uid not in (0, me) and any(tag == _ACL_USER and id_ == me and perm & mask
                                        for tag, perm, id_ in acl):
        # Let in by name to a file another user owns: that owner reads and writes the
        # token too. systemd's credentials are root's; without the ACL, such a file was
        # never readable here but through the group or other bits, which are refused.
        others.insert(0, f"user {st.st_uid} (its owner)")
    if not others:
        return None  # at most this process's user by name: systemd's credentials
    return f"mode {mode:o}, its ACL lets in {', '.join(others)}"


def _acl(fd: int) -> list[tuple[int, int, int]] | None:
    """The (tag, permissions, id) entries of the POSIX ACL of ``fd``; None without one.
    An ACL that cannot be read as one raises ``OSError`` (refused, never taken as
    none)."""
    getxattr = getattr(os, "getxattr", None)
    if getxattr is None:
        return None  # not Linux: no ACL of this form
    try:
        data = getxattr(fd, _ACL_XATTR)
    except OSError as exc:
        if exc.errno in _NO_ACL:
            return None
        raise
    if len(data) < _ACL_HEADER.size or (len(data) - _ACL_HEADER.size) % _ACL_ENTRY.size:
        raise OSError(errno.EINVAL, f"its ACL is {len(data)} bytes, not a whole ACL")
    return list(_ACL_ENTRY.iter_unpack(data[_ACL_HEADER.size:]))
