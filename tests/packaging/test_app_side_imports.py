"""The app side is what every web app installs: it runs on its lean dependencies alone
(pyproject's ``dependencies``) and never reaches into the collector (DESIGN.md, "The two
halves"). Every other test imports both halves into one process, where an app-side
module importing ``collector`` or a collector extra would go unnoticed."""

from __future__ import annotations

import subprocess
import sys
from typing import Final

from collector.cli import EXTRA_MODULES

#: The collector and what only its install extra brings (pyproject.toml's ``collector``:
#: ``EXTRA_MODULES``, which tests/cli/test_bad_input.py holds to the extra; a list of
#: its own here missed opentelemetry-sdk once the extra named it), and the test extras
#: the examples use.
NOT_APP_SIDE: Final = ("collector", *EXTRA_MODULES, "httpx", "fastapi", "flask", "django")

PROBE: Final = """
import importlib, pkgutil, sys
import audit_middleware
for module in pkgutil.walk_packages(audit_middleware.__path__, "audit_middleware."):
    importlib.import_module(module.name)
print("\\n".join(sorted(sys.modules)))
"""


def test_every_app_side_module_imports_without_the_collector_or_its_extras() -> None:
    loaded = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            check=True, timeout=60).stdout.split()
    assert "audit_middleware.shipper.sink" in loaded  # the walk reached the subpackages
    reached = [name for name in loaded for banned in NOT_APP_SIDE
               if name == banned or name.startswith(banned + ".")]
    assert reached == []
