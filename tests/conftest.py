"""Shared by every test area. ``examples`` is not an installed package, and the
importlib import mode does not put the repository root on ``sys.path``: put it there,
so ``import examples`` works under ``make test`` and ``.venv/bin/pytest`` alike."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
