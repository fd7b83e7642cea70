"""pyproject.toml's lower bounds, installed and run: every dependency pinned to the
lowest version it declares (``name>=X`` installed as ``name==X``) in a virtualenv of its
own, the checkout on its path (not installed), and the public API driven once. Every
other test runs on the newest releases, where a bound that is false goes unnoticed: the
app side called the Logs API with keywords it has only from opentelemetry-api 1.38 on,
while 1.20 was declared (every log copy failed, counted), and the forwarder imported an
SDK class that 1.30 does not have.

Each virtualenv is made without pip and installed into by this interpreter's pip
(``pip --python``), from its cache where it has the wheels."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from packaging.markers import Marker

from tests.e2e.harness import CollectorProcess, short_tmp

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT: Final = Path(__file__).resolve().parents[2]
PROJECT: Final = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
#: What the scripts need besides the package's own dependencies: an HTTP client that
#: calls the app in process. (Not through Starlette's TestClient: the lowest Starlette's
#: passes ``app=`` to httpx, which httpx 0.28 no longer takes; an app never runs it.)
SCRIPT_NEEDS: Final = ("httpx",)
#: Core dependencies that a pinned package of the collector extra fixes exactly: the
#: SDK requires the API of its own version, so in the collector's virtualenv the API is
#: held to its lower bound only (the app side's virtualenv pins it).
FIXED_BY_THE_EXTRA: Final = {"opentelemetry-api": "opentelemetry-sdk"}
INSTALL_TIMEOUT: Final = 300
RUN_TIMEOUT: Final = 120
_LOWER_BOUND: Final = re.compile(
    r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([^\s,;]+)\s*(?:;\s*(?P<marker>.+))?")


def lowest(requirements: list[str], *, floating: tuple[str, ...] = ()) -> list[str]:
    """``name>=X`` as ``name==X`` (``floating``'s names kept as ``name>=X``); one with an
    environment marker (``; python_version >= '3.13'``) only where it holds: the
    virtualenvs run this test's Python."""
    pinned = []
    for requirement in requirements:
        match = _LOWER_BOUND.fullmatch(requirement.strip())
        if match is None:
            pytest.fail(f"pyproject.toml: {requirement!r} is not `name>=X`: give each "
                        "dependency a lower bound alone, which this test installs as "
                        "`name==X` (or teach lowest() the new form)")
        name, bound, marker = match.groups()
        if marker is not None and not Marker(marker).evaluate():
            continue
        pinned.append(f"{name}>={bound}" if name in floating else f"{name}=={bound}")
    return pinned


def make_venv(where: Path, requirements: list[str]) -> Path:
    """A virtualenv with ``requirements`` installed: its python."""
    done = subprocess.run([sys.executable, "-m", "venv", "--without-pip", where],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    python = where / "bin" / "python"
    done = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install",
                           "--quiet", *requirements, *SCRIPT_NEEDS], capture_output=True,
                          text=True, timeout=INSTALL_TIMEOUT, check=False)
    assert done.returncode == 0, f"pip install {requirements} failed:\n{done.stderr}"
    return python


def checkout_env() -> dict[str, str]:
    """The checkout on the path, nothing of this virtualenv's: the package as the pinned
    dependencies run it."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def run_script(python: Path, script: str, *args: str | Path, cwd: Path
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-c", script, *map(str, args)], cwd=cwd,
                          env=checkout_env(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, check=False)


def installed(python: Path) -> str:
    """The virtualenv's distributions, for a failure's message."""
    done = subprocess.run([sys.executable, "-m", "pip", "--python", python, "freeze"],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    return done.stdout


@pytest.fixture(scope="module")
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


@pytest.fixture(scope="module")
def app_side(tmp: Path) -> Path:
    return make_venv(tmp / "app-venv", lowest(PROJECT["dependencies"]))


@pytest.fixture(scope="module")
def collector_side(tmp: Path) -> Path:
    return make_venv(tmp / "collector-venv", [
        *lowest(PROJECT["dependencies"], floating=tuple(FIXED_BY_THE_EXTRA)),
        *lowest(PROJECT["optional-dependencies"]["collector"])])


def test_each_lower_bound_is_pinned() -> None:
    # How the virtualenvs are made from pyproject.toml.
    assert lowest(["starlette>=0.37", "orjson>=3.9.1"]) == ["starlette==0.37",
                                                            "orjson==3.9.1"]
    older, newer = ("orjson>=3.9; python_version < '3.11'",
                    "orjson>=3.10.7; python_version >= '3.11'")
    assert lowest([older, newer]) == ["orjson==3.10.7"]  # the one for this Python
    assert lowest(["opentelemetry-api>=1.38"], floating=("opentelemetry-api",)) == [
        "opentelemetry-api>=1.38"]
    for extra in FIXED_BY_THE_EXTRA.values():
        assert any(r.startswith(f"{extra}>=") for r in PROJECT["optional-dependencies"][
            "collector"]), f"{extra} is no longer in the collector extra"


APP_SCRIPT: Final = '''
import asyncio, json, sys
import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route
import audit_middleware as audit

# The log copies with opentelemetry-api alone: its no-op logger, whose emit must accept
# the call (with a signature it lacks, every copy fails, counted in otel_failed).
sink = audit.OTelLogSink(audit.JsonlFileSink(sys.argv[1]))
audit.configure(sink=sink)

@audit.audited("credentials_deleted", target="credentials_id")
async def delete_credentials(request):
    return JSONResponse({"id": request.path_params["credentials_id"]})

app = Starlette(routes=[Route("/credentials/{credentials_id}", delete_credentials)],
                middleware=[Middleware(audit.AuditMiddleware)])

async def request():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        return (await client.get("/credentials/i-1")).status_code

status = asyncio.run(request())
flushed = sink.flush(30)
print(json.dumps({"status": status, "flushed": flushed, "stats": sink.stats()}))
'''


def test_the_app_side_runs_on_its_lowest_dependencies(app_side: Path, tmp: Path) -> None:
    events = tmp / "app-events.jsonl"
    done = run_script(app_side, APP_SCRIPT, events, cwd=tmp)
    assert done.returncode == 0, f"{done.stderr}\n{installed(app_side)}"
    seen = json.loads(done.stdout)
    assert seen["status"] == 200 and seen["flushed"], done.stderr
    (record,) = [json.loads(line) for line in events.read_text().splitlines()]
    assert (record["type"], record["target"]) == ("credentials_deleted", "i-1")
    stats = seen["stats"]
    assert (stats["delivered"], stats["otel_emitted"], stats["otel_failed"]) == (1, 1, 0), (
        f"{stats}\n{done.stderr}\n{installed(app_side)}")


SHIP_SCRIPT: Final = '''
import sys
import audit_middleware as audit

sink = audit.CollectorSink(sys.argv[1])
audit.configure(sink=sink)
audit.emit("credentials_deleted", "i-2", principal="u-7")
assert sink.flush(30), sink.stats()
sink.close(30)
'''

FORWARD_SCRIPT: Final = '''
import json, sys
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from collector.otlp_records import to_log_records, within_budget

# The forwarder's records, built from the stored one, and encoded as its OTLP/HTTP
# exporter encodes them for a request.
record = json.loads(sys.argv[1])
records = to_log_records([record], Resource.create({}), InstrumentationScope("audit"))
assert within_budget(records) == 1
request = encode_logs(records)
(log,) = request.resource_logs[0].scope_logs[0].log_records
print(json.dumps({"body": log.body.string_value, "event_name": getattr(log, "event_name", "")}))
'''


def test_the_collector_runs_on_its_lowest_dependencies(collector_side: Path,
                                                       tmp: Path) -> None:
    data = tmp / "data"
    collector = CollectorProcess(data, env={"PYTHONPATH": str(ROOT)})
    collector.python = str(collector_side)
    with collector:
        done = run_script(collector_side, SHIP_SCRIPT, collector.url, cwd=tmp)
        assert done.returncode == 0, f"{done.stderr}\n{installed(collector_side)}"
        query = subprocess.run(
            [str(collector_side), "-m", "collector", "query", "--data-dir", str(data),
             "--all", "--format", "jsonl"], cwd=tmp, env=checkout_env(),
            capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    assert query.returncode == 0, f"{query.stderr}\n{installed(collector_side)}"
    (line,) = query.stdout.splitlines()
    record: dict[str, Any] = json.loads(line)
    assert (record["type"], record["target"], record["principal"]) == (
        "credentials_deleted", "i-2", "u-7")
    done = run_script(collector_side, FORWARD_SCRIPT, line, cwd=tmp)
    assert done.returncode == 0, f"{done.stderr}\n{installed(collector_side)}"
    assert json.loads(json.loads(done.stdout)["body"])["target"] == "i-2"
