"""Directories made with the mode asked for, their missing parents included."""

from __future__ import annotations

from pathlib import Path


def make_dirs(path: Path, mode: int) -> None:
    """``path.mkdir(mode=mode, parents=True, exist_ok=True)``, with every missing parent
    made with ``mode`` too (less the umask, as ``mkdir`` does). ``Path.mkdir`` and
    ``mkdir -p`` make the parents 0777 less the umask: world-writable under ``umask 0``,
    where any local user could move the directory aside and put one of their own in
    its place (a spool or data directory they then read or fill)."""
    missing = []
    parent = path.parent
    while parent != parent.parent and not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:  # made meanwhile (another process): as it was made
            pass
    path.mkdir(mode=mode, exist_ok=True)
