"""Commands that write files the running collector must read (``users add``, ``keys
rotate``) run as the data directory's owner: the collector's user. Run as anyone else
(root, typically), the file they make is theirs alone (mode 0600), and the collector
cannot read it."""

from __future__ import annotations

import os
import pwd
import shlex
from pathlib import Path


def foreign_owner(data_dir: Path, *, command: str, writes: str, then: str) -> str | None:
    """Why this process may not run ``command`` on ``data_dir`` (None: it may), saying
    what it ``writes`` and what the collector does ``then``."""
    try:
        owner = data_dir.stat().st_uid
    except OSError:  # none yet (users add before the first serve): ours to make
        return None
    if owner == os.geteuid():
        return None
    try:
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        name = f"#{owner}"
    return (f"{data_dir} belongs to {name}, the collector's user: {writes} written by this "
            f"user would be this user's alone (mode 0600), and the collector could not "
            f"read it ({then}). Run it as {name}: sudo -u {name} audit-collector {command} "
            f"... --data-dir {shlex.quote(str(data_dir))}")
