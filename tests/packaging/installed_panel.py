"""Run by ``test_distribution.py`` with PYTHONPATH set to a non-editable install: imports
the public API from there and asks the admin panel's ASGI app for its page and script.
Prints what it saw as JSON (a separate process, so the checkout is not on sys.path)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from starlette.testclient import TestClient

import audit_middleware
import collector
from collector.api.app import create_app
from collector.api.context import ApiSettings


def main(data_dir: Path) -> None:
    app = create_app(ApiSettings(data_dir=data_dir), store=None)  # type: ignore[arg-type]
    with TestClient(app) as client:
        page = client.get("/admin/audit-logs")
        script = client.get("/static/panel.js")
    print(json.dumps({
        "modules": [audit_middleware.__file__, collector.__file__],
        "public_api": sorted(audit_middleware.__all__),
        "page": [page.status_code, page.headers["content-type"], page.text],
        "script": [script.status_code, script.text],
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
