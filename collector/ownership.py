"""Commands that write files the running collector must read (``users add``, ``keys
rotate``) run as the collector's user (``keys rotate``: the signing key's owner). Run as
anyone else (root, typically), the file they make is theirs alone (mode 0600), and the
collector cannot read it. A user who may not read the data directory's files is told
whose they are (``access_hint``)."""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import stat
from pathlib import Path


def foreign_owner(data_dir: Path, *, command: str, writes: str, then: str,
                  replaces: Path | None = None, config_file: Path | None = None
                  ) -> str | None:
    """Why this process may not run ``command`` on ``data_dir`` (None: it may), saying
    what it ``writes`` and what the collector does ``then``. ``replaces``: the file it
    writes anew, whose owner is then the one to run it (a signing key kept outside the
    data directory is root's when systemd hands it over as a credential: root rotates
    it, and the collector's user could not even read it); without one, or none there
    yet, the collector's user. ``config_file`` (AUDIT_CONFIG, say) goes into the command
    suggested: sudo drops the environment, and with it the signing key's path."""
    found = _owner(replaces) if replaces is not None else None
    found = found or collector_user(data_dir)
    if found is None:  # no data directory yet (users add before the first serve): ours
        return None
    made, owner = found
    if owner == os.geteuid():
        return None
    name = user_name(owner)
    # Quoted: '#1000' unquoted starts a shell comment, and the command pasted ran
    # a bare `sudo -u`.
    config = f"--config {shlex.quote(str(config_file))} " if config_file else ""
    return (f"{made} belongs to {name}: {writes} written by this user would be this "
            f"user's alone (mode 0600), and the collector could not read it ({then}). "
            f"Run it as {name}: sudo -u {shlex.quote(name)} audit-collector {command} ... "
            f"{config}--data-dir {shlex.quote(str(data_dir))}")


def collector_user(data_dir: Path) -> tuple[Path, int] | None:
    """What tells the collector's user, and its uid: ``segments/``, which the collector
    makes at its first start, else the data directory (None: neither exists). The data
    directory alone is not enough: root may make it for the collector's group (root:audit
    0770), and container platforms mount volumes root's (Kubernetes' fsGroup); its owner
    was then taken for the collector's user, root's edit allowed (the file root's alone)
    and the collector's own refused."""
    return _owner(data_dir / "segments") or _owner(data_dir)


def _owner(path: Path) -> tuple[Path, int] | None:
    try:
        return path, path.stat().st_uid
    except OSError:
        return None


def user_name(uid: int) -> str:
    """``uid``'s name, else ``#UID`` (a container's uid with no passwd entry: ``sudo -u``
    takes it, shell-quoted)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"#{uid}"


def access_hint(filename: str | os.PathLike[str]) -> str:
    """What to do about a file this process may not read: run as the owner of it, or of
    the nearest directory above it that can be looked at (the data directory, 0750, hides
    its files from others), or as a member of its group. Empty when none can be looked
    at. A reader who ran `query` as themselves got "Permission denied" alone, with no word
    of whose files these are (docs/api.md: the collector's user and group). Refused to
    its owner, it is the mode (or an attribute) that denies it, said so."""
    path = Path(filename)
    # Through a symbolic link (segments/ on a disk of its own, docs/api.md), the refusal
    # is above where it leads: the data directory named instead is open to the reader
    # told to join its group, who is in it.
    real = os.path.realpath(path)
    if real != os.path.abspath(path):
        path = Path(real)
    for candidate in (path, *path.parents):
        try:
            st = candidate.stat()
        except OSError:
            continue
        name = user_name(st.st_uid)
        if st.st_uid == os.geteuid():
            # Refused to its owner: running it as that user is what was just done.
            return (f": {candidate} is this user's own ({name}), mode "
                    f"{stat.S_IMODE(st.st_mode):04o}: its mode or a file attribute denies "
                    f"this to its owner too: mend it (chmod u+rwX)")
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = f"#{st.st_gid}"
        return (f": {candidate} is {name}'s (group {group}); run this as {name} "
                f"(sudo -u {shlex.quote(name)} audit-collector ...), or as a member of the "
                f"group {group} if its files are readable to it (docs/api.md)")
    return ""


def denied_words(exc: PermissionError) -> str:
    """``exc`` said as the commands say a refusal: what was refused, where, and as whom
    to run it (``access_hint``). `verify` said only "[Errno 13] Permission denied" of a
    data directory it may not look into."""
    reason = exc.strerror or "Permission denied"
    if not exc.filename:
        return reason
    return f"{reason} ({exc.filename}){access_hint(exc.filename)}"
