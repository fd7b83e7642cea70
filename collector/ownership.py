"""Commands that write files the running collector must read (``users add``, ``keys
rotate``) run as the collector's user. Run as anyone else (root, typically), the file they
make is theirs alone (mode 0600), and the collector cannot read it."""

from __future__ import annotations

import os
import pwd
import shlex
from pathlib import Path


def foreign_owner(data_dir: Path, *, command: str, writes: str, then: str) -> str | None:
    """Why this process may not run ``command`` on ``data_dir`` (None: it may), saying
    what it ``writes`` and what the collector does ``then``."""
    found = collector_user(data_dir)
    if found is None:  # no data directory yet (users add before the first serve): ours
        return None
    made, owner = found
    if owner == os.geteuid():
        return None
    name = user_name(owner)
    # Quoted: '#1000' unquoted starts a shell comment, and the command pasted ran
    # a bare `sudo -u`.
    return (f"{made} belongs to {name}, the collector's user: {writes} written by this "
            f"user would be this user's alone (mode 0600), and the collector could not "
            f"read it ({then}). Run it as {name}: sudo -u {shlex.quote(name)} "
            f"audit-collector {command} ... --data-dir {shlex.quote(str(data_dir))}")


def collector_user(data_dir: Path) -> tuple[Path, int] | None:
    """What tells the collector's user, and its uid: ``segments/``, which the collector
    makes at its first start, else the data directory (None: neither exists). The data
    directory alone is not enough: root may make it for the collector's group (root:audit
    0770), and container platforms mount volumes root's (Kubernetes' fsGroup); its owner
    was then taken for the collector's user, root's edit allowed (the file root's alone)
    and the collector's own refused."""
    for made in (data_dir / "segments", data_dir):
        try:
            return made, made.stat().st_uid
        except OSError:
            continue
    return None


def user_name(uid: int) -> str:
    """``uid``'s name, else ``#UID`` (a container's uid with no passwd entry: ``sudo -u``
    takes it, shell-quoted)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"#{uid}"
