"""The store clock's anchor in the data directory: a restart in the same boot keeps
counting the time elapsed, rather than believing a wall clock stepped forward.

``clock-anchor.json`` holds the store's trusted time (``store_clock``: never the raw
wall clock), the elapsed-time clock (``CLOCK_BOOTTIME``) it was read with, and the
kernel's boot id. Within the boot it names, the trusted time at a start is that time
advanced by the elapsed clock since; an anchor of another boot says nothing (the
elapsed clock starts again at zero). A missing, unreadable or garbled anchor is never
fatal: the store then counts from the wall clock, as with no anchor at all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final, NamedTuple

import orjson

from .regular_files import read_regular, replace_file
from .segments import FILE_MODE

log = logging.getLogger("collector.store")

NAME: Final = "clock-anchor.json"
_FORMAT: Final = 1
_LIMIT: Final = 4096  # bytes; an anchor takes about 130
_BOOT_ID: Final = Path("/proc/sys/kernel/random/boot_id")


class Anchor(NamedTuple):
    wall_ns: int  # the store's trusted time when written
    elapsed_ns: int  # the elapsed-time clock then (``store_clock.elapsed_ns``)
    boot_id: str  # the boot that clock counts from


def boot_id() -> str | None:
    """This boot's id; None where it cannot be read (said in the log: no anchor is kept
    then, and the protection it gives is off)."""
    try:
        found = _BOOT_ID.read_text(encoding="ascii").strip()
        if not found:
            raise ValueError("it is empty")
    except (OSError, ValueError) as exc:
        # Said, not silent: a unit hardened with ProcSubset=pid (systemd-analyze security
        # suggests it) hides /proc/sys, and the next restart on a clock stepped forward
        # deleted the whole history, with nothing in the log to say why.
        log.warning("audit store: cannot read this boot's id from %s (%s): no clock "
                    "anchor is kept, so a restart believes a wall clock stepped forward "
                    "and retention by age may then delete early; let the collector read "
                    "that file (systemd: no ProcSubset=pid)", _BOOT_ID, exc)
        return None
    return found


def load(path: Path) -> Anchor | None:
    """The anchor at ``path``; None if there is none, or none that can be used (said in
    the log: the store then counts from the wall clock)."""
    try:
        return _decode(read_regular(path, _LIMIT))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
        unusable(path, str(exc))
        return None


def unusable(path: Path, why: str) -> None:
    log.warning("audit store: the clock anchor %s cannot be used (%s): ages count from "
                "the wall clock at this start, and the anchor is written afresh", path, why)


def save(path: Path, anchor: Anchor) -> None:
    """Replace the anchor atomically and durably; raises ``OSError``."""
    replace_file(path, orjson.dumps({"format": _FORMAT, **anchor._asdict()}), FILE_MODE)


def _decode(data: bytes) -> Anchor:
    body = orjson.loads(data)
    if not isinstance(body, dict) or body.get("format") != _FORMAT:
        raise ValueError(f"not a format {_FORMAT} clock anchor")
    wall, elapsed, boot = body.get("wall_ns"), body.get("elapsed_ns"), body.get("boot_id")
    # type() is: a bool is an int to isinstance
    if type(wall) is not int or type(elapsed) is not int or wall < 0 or elapsed < 0:
        raise ValueError("wall_ns and elapsed_ns must be whole numbers of nanoseconds")
    if not isinstance(boot, str) or not boot:
        raise ValueError("boot_id must be a non-empty string")
    return Anchor(wall, elapsed, boot)
