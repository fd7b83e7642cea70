"""POSIX ACLs on test files, written as Linux stores them (the system.posix_acl_access
attribute), so that no setfacl is needed: how systemd hands over a credential, and
ACLs that let others read a token file."""

from __future__ import annotations

import os
import struct
from pathlib import Path

_UNDEFINED = 0xFFFFFFFF
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
READ = 4


def set_acl(path: Path, *, users: dict[int, int] | None = None, group_obj: int = 0,
            groups: dict[int, int] | None = None) -> None:
    """Give ``path`` an ACL: its owner reads, named ``users`` and ``groups`` (id:
    permissions) and its own group (``group_obj``) as given, others nothing. The
    kernel sets the mode's group bits to the mask (every permission named)."""
    users, groups = users or {}, groups or {}
    mask = group_obj
    for perm in (*users.values(), *groups.values()):
        mask |= perm
    entries = [(_USER_OBJ, READ, _UNDEFINED),
               *((_USER, perm, uid) for uid, perm in sorted(users.items())),
               (_GROUP_OBJ, group_obj, _UNDEFINED),
               *((_GROUP, perm, gid) for gid, perm in sorted(groups.items())),
               (_MASK, mask, _UNDEFINED), (_OTHER, 0, _UNDEFINED)]
    os.setxattr(path, "system.posix_acl_access", struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", *entry) for entry in entries))


def write_systemd_credential(path: Path, text: str) -> None:
    """``text`` in ``path`` as systemd's LoadCredential= hands it to a service running
    as another user (src/core/exec-credential.c, write_credential): mode 0400, and an
    ACL entry that lets the service's user (here: this process's) read it. `ls -l`
    shows 0440."""
    path.write_text(text)
    path.chmod(0o400)
    set_acl(path, users={os.geteuid(): READ})
