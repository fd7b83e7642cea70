"""The package as users get it: the wheel and the sdist built from this checkout, and
the wheel installed (not editable) where the checkout is not on the path. Every other
test imports the editable install, which finds any file of the source tree whether
the distributions ship it or not."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Final

import pytest

from tests.e2e.harness import short_tmp

ROOT: Final = Path(__file__).resolve().parents[2]
PACKAGES: Final = ("audit_middleware", "collector")
#: What a checkout holds besides its source: none of it may change what a build contains.
NOT_SOURCE: Final = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info",
                                           "__pycache__", ".*_cache", "audit-data", "artifacts")
#: pyproject.toml's build-system requirement: PEP 639's `license = "Apache-2.0"` needs it.
SETUPTOOLS_NEEDED: Final = 77
BUILD_TIMEOUT: Final = 120


@dataclass(frozen=True)
class Built:
    source: Path  # a copy of the checkout without its build leftovers
    wheel: Path
    sdist: Path
    wheel_from_sdist: Path
    site: Path  # the wheel, installed with `pip install --target`


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=BUILD_TIMEOUT, check=False)


def checked(*args: str | Path, cwd: Path) -> str:
    done = run(*args, cwd=cwd)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def pip_wheel(source: Path, out: Path) -> Path:
    # No build isolation: it would fetch setuptools from an index (offline here, and slow).
    checked(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
            "--no-build-isolation", "-w", out, source, cwd=source)
    (wheel,) = out.glob("*.whl")
    return wheel


def build_sdist(source: Path, out: Path) -> Path:
    name = checked(sys.executable, "-c", "import sys; from setuptools import build_meta; "
                   "print(build_meta.build_sdist(sys.argv[1]))", out, cwd=source)
    return out / name.strip().splitlines()[-1]


def unpack_sdist(sdist: Path, into: Path) -> Path:
    with tarfile.open(sdist) as tar:
        tar.extractall(into, filter="data")
    (top,) = into.iterdir()
    return top


def require_setuptools() -> None:
    found = version("setuptools")
    if int(found.split(".")[0]) < SETUPTOOLS_NEEDED:
        pytest.fail(f"setuptools {found} cannot build this project (pyproject.toml's "
                    f"build-system needs >={SETUPTOOLS_NEEDED}): reinstall the test extra, "
                    "`pip install -e '.[collector,test]'`")


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    require_setuptools()
    with short_tmp() as tmp:
        source = tmp / "source"
        shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
        sdist = build_sdist(source, tmp / "sdist")
        wheel = pip_wheel(source, tmp / "wheel")
        from_sdist = pip_wheel(unpack_sdist(sdist, tmp / "unpacked"), tmp / "wheel-from-sdist")
        site = tmp / "site"
        checked(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                "--target", site, wheel, cwd=tmp)
        yield Built(source, wheel, sdist, from_sdist, site)


def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return {name for name in z.namelist() if not name.endswith("/")}


def dist_info(wheel: Path) -> str:
    name, release = wheel.name.split("-")[:2]
    return f"{name}-{release}.dist-info"


def product_files(wheel: Path) -> set[str]:
    """The wheel's files other than its metadata (``*.dist-info/``)."""
    return {name for name in wheel_files(wheel) if ".dist-info/" not in name}


def source_files(source: Path) -> set[str]:
    return {path.relative_to(source).as_posix()
            for package in PACKAGES for path in (source / package).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts}


def installed_env(site: Path) -> dict[str, str]:
    """The environment of a user's process: the install location first on the path (the
    checkout's editable install stays behind it in site-packages)."""
    return {**os.environ, "PYTHONPATH": str(site)}


# -- the wheel ---------------------------------------------------------------------------

def test_the_wheel_holds_every_file_of_both_packages_and_nothing_else(built: Built) -> None:
    # Modules, the panel's page, script and style (read through STATIC_DIR at run time),
    # the PEP 561 markers: a file of the source tree missing from the wheel is missing
    # from every user's install.
    assert product_files(built.wheel) == source_files(built.source)


def test_the_wheel_installs_only_the_two_packages_at_top_level(built: Built) -> None:
    top = {name.split("/")[0] for name in wheel_files(built.wheel)}
    assert top == {*PACKAGES, dist_info(built.wheel)}


def test_the_wheel_ships_the_panel_files_the_collector_serves(built: Built) -> None:
    files = product_files(built.wheel)
    for name in ("panel.html", "panel.js", "panel.css"):
        assert f"collector/api/static/{name}" in files


@pytest.mark.parametrize("package", PACKAGES)
def test_both_packages_are_marked_as_typed_for_users_type_checkers(built: Built,
                                                                    package: str) -> None:
    # PEP 561: without the marker, mypy ignores the package's hints ("missing library stubs
    # or py.typed marker") and every `audited`/`AuditMiddleware` call is unchecked.
    assert f"{package}/py.typed" in product_files(built.wheel)


def test_the_wheel_declares_the_audit_collector_console_script(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as z:
        text = z.read(f"{dist_info(built.wheel)}/entry_points.txt").decode()
    entry_points = configparser.ConfigParser()
    entry_points.read_string(text)
    assert dict(entry_points["console_scripts"]) == {"audit-collector": "collector.cli:main"}


# -- the wheel, installed ----------------------------------------------------------------

def test_the_installed_package_serves_the_admin_panel_from_its_install_location(
        built: Built, root: Path) -> None:
    done = run(sys.executable, Path(__file__).with_name("installed_panel.py"), root,
               cwd=root, env=installed_env(built.site))
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    for module in seen["modules"]:
        assert Path(module).is_relative_to(built.site), module  # not the checkout
    assert "audited" in seen["public_api"] and "AuditMiddleware" in seen["public_api"]
    static = ROOT / "collector" / "api" / "static"
    assert seen["page"] == [200, "text/html; charset=utf-8",
                            (static / "panel.html").read_text(encoding="utf-8")]
    status, script = seen["script"]  # (its content type is the platform mimetypes' guess)
    assert (status, script) == (200, (static / "panel.js").read_text(encoding="utf-8"))


def test_the_installed_console_script_runs(built: Built, root: Path) -> None:
    done = run(built.site / "bin" / "audit-collector", "--help", cwd=root,
               env=installed_env(built.site))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: audit-collector")
    assert "serve" in done.stdout


USER_CODE: Final = '''\
from starlette.applications import Starlette
from audit_middleware import AuditMiddleware, audited

@audited("invoice.read", target="invoice_id")
async def read_invoice(invoice_id: str) -> dict[str, str]:
    return {"id": invoice_id}

app = AuditMiddleware(Starlette(), trusted_proxies=["10.0.0.0/8"])
wrong: int = read_invoice
'''


def test_a_users_mypy_reads_the_installed_packages_type_hints(built: Built,
                                                              root: Path) -> None:
    (root / "app.py").write_text(USER_CODE, encoding="utf-8")
    done = run(sys.executable, "-m", "mypy", "--strict", "--cache-dir", os.devnull, "app.py",
               cwd=root, env=installed_env(built.site))
    assert "missing library stubs or py.typed marker" not in done.stdout, done.stdout
    # The one mistake, found because mypy knows what `@audited` returns (from a package
    # it cannot analyse, `read_invoice` would be `Any` and the assignment unchecked).
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, done.stdout
    assert errors[0].startswith("app.py:9: error: Incompatible types in assignment")
    assert 'expression has type "Callable[[str], Coroutine[Any, Any, dict[str, str]]]"' \
        in errors[0]


# -- the sdist ---------------------------------------------------------------------------

def test_the_sdist_holds_what_a_build_needs_and_no_tests(built: Built) -> None:
    with tarfile.open(built.sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    needed = {"PKG-INFO", "pyproject.toml", "README.md", "LICENSE", *PACKAGES}
    metadata = {"setup.cfg", "MANIFEST.in", "audit_middleware.egg-info"}
    top = {name.split("/")[0] for name in names}
    assert needed <= top and top - needed <= metadata, top - needed - metadata
    assert source_files(built.source) <= names


def test_the_licence_text_goes_out_with_the_wheel(built: Built) -> None:
    """pyproject says Apache-2.0, whose section 4 asks that a copy of the licence go
    with every copy of the work: the wheel carried no text of it."""
    licence = f"{dist_info(built.wheel)}/licenses/LICENSE"
    with zipfile.ZipFile(built.wheel) as z:
        text = z.read(licence).decode()
    assert text == (built.source / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_the_sdist_builds_a_wheel_of_the_same_files(built: Built) -> None:
    assert wheel_files(built.wheel_from_sdist) == wheel_files(built.wheel)
