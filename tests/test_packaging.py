"""The distributions: ``python -m build`` makes an sdist and a wheel that
``twine check --strict`` accepts, with the license in their metadata; the
sdist carries the docs, tests and changelog; the wheel, installed into a
fresh virtualenv, serves an app and runs both ``flask sessions`` commands;
and the docs say how to install it without an index."""

from __future__ import annotations

import email.parser
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

import flask_towersess

from .services import service_unavailable

ROOT = Path(__file__).resolve().parents[1]
VERSION = flask_towersess.__version__
WHEEL_NAME = f"flask_towersess-{VERSION}-py3-none-any.whl"
SDIST_NAME = f"flask_towersess-{VERSION}.tar.gz"
DIST_INFO = f"flask_towersess-{VERSION}.dist-info"

#: Left out of the copy the distributions are built from: what .gitignore
#: ignores (an editable install's egg-info, caches, local databases, .venv).
#: Building from a copy keeps ``build/`` and egg-info out of the checkout.
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    "*.egg-info",
    "build",
    "dist",
    "_build",
    "instance",
    "__pycache__",
    "*.py[cod]",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".tox",
    ".hypothesis",
    "*.sqlite3",
    ".coverage",
    "htmlcov",
)

#: Tracked files the sdist leaves out on purpose: CI and git configuration.
NOT_IN_SDIST = {".ci/run", ".gitignore"}


@dataclass
class Dists:
    wheel: Path
    sdist: Path


def _clean_env() -> dict[str, str]:
    """The environment without anything that would put the checkout (or
    another install) on the path: no PYTHON*, FLASK_*, VIRTUAL_ENV."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "FLASK_", "VIRTUAL_ENV"))
    }
    env.update(PYTHONDONTWRITEBYTECODE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _run(
    args: list[str | Path], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def _require(*modules: str) -> None:
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        service_unavailable(
            f"{', '.join(missing)} (the test extra: pip install -e '.[test]')"
            " is needed to build and check the distributions"
        )


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """Both distributions, built once, as ``python -m build`` makes them:
    the sdist, then the wheel from the unpacked sdist, each in an isolated
    build environment (setuptools from pip's configured index, offline
    here), into a temporary folder."""
    _require("build")
    base = tmp_path_factory.mktemp("dists")
    source, out = base / "source", base / "dist"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    _run([sys.executable, "-m", "build", "--outdir", out, source], cwd=base)
    assert sorted(p.name for p in out.iterdir()) == sorted([SDIST_NAME, WHEEL_NAME])
    return Dists(wheel=out / WHEEL_NAME, sdist=out / SDIST_NAME)


def _metadata(text: str) -> Message:
    return email.parser.Parser().parsestr(text)


def _check_license_metadata(metadata: Message) -> None:
    assert metadata["Name"] == "flask-towersess"
    assert metadata["Version"] == VERSION
    # PEP 639: an SPDX expression, and the file that holds the text. With
    # an expression setuptools refuses "License ::" classifiers (they are
    # superseded), so there is none.
    major, minor = metadata["Metadata-Version"].split(".")[:2]
    assert (int(major), int(minor)) >= (2, 4)
    assert metadata["License-Expression"] == "BSD-3-Clause"
    assert metadata.get_all("License-File") == ["LICENSE"]
    classifiers = metadata.get_all("Classifier") or []
    assert not [c for c in classifiers if c.startswith("License ::")]


def test_twine_accepts_both(dists: Dists) -> None:
    _require("twine")
    result = _run(
        [sys.executable, "-m", "twine", "check", "--strict", dists.sdist, dists.wheel],
        cwd=dists.wheel.parent,
    )
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_wheel_contents_and_license(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as wheel:
        names = set(wheel.namelist())
        license_text = wheel.read(f"{DIST_INFO}/licenses/LICENSE").decode()
        metadata = _metadata(wheel.read(f"{DIST_INFO}/METADATA").decode())
        entry_points = wheel.read(f"{DIST_INFO}/entry_points.txt").decode()
    assert license_text == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Copyright 2026 The flask-towersess authors" in license_text
    _check_license_metadata(metadata)
    assert "sessions = flask_towersess.cli:sessions_command" in entry_points
    assert "sqlite = flask_towersess.stores.sqlalchemy:SQLAlchemyStore" in entry_points
    assert "flask_towersess/py.typed" in names
    # The package only: the tests, docs and examples are in the sdist.
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"flask_towersess", DIST_INFO}


def test_sdist_carries_docs_tests_and_changes(dists: Dists) -> None:
    prefix = f"flask_towersess-{VERSION}/"
    with tarfile.open(dists.sdist) as sdist:
        members = {m.name for m in sdist.getmembers() if m.isfile()}
        pkg_info = sdist.extractfile(prefix + "PKG-INFO")
        assert pkg_info is not None
        metadata = _metadata(pkg_info.read().decode())
    assert all(name.startswith(prefix) for name in members)
    files = {name[len(prefix) :] for name in members}
    _check_license_metadata(metadata)
    for name in (
        "LICENSE",
        "README.rst",
        "CHANGES.rst",
        "MANIFEST.in",
        "pyproject.toml",
        "setup.cfg",
        "setup.py",
        "tox.ini",
        "docs/conf.py",
        "docs/index.rst",
        "docs/quickstart.rst",
        "docs/examples/extending_store.py",
        "examples/app.py",
        "tests/__init__.py",
        "tests/conftest.py",
        "tests/test_packaging.py",
        "flask_towersess/py.typed",
    ):
        assert name in files, f"{name} is missing from the sdist"
    assert not [
        name
        for name in files
        if "__pycache__" in name or name.endswith(".pyc") or "/_build/" in name
    ]
    if (ROOT / ".git").exists():
        # Every tracked file, except CI's and git's own configuration.
        listed = subprocess.run(
            ["git", "ls-files"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        tracked = {name for name in listed if (ROOT / name).is_file()}
        assert tracked - NOT_IN_SDIST <= files, sorted(tracked - NOT_IN_SDIST - files)


SMOKE_APP = """\
from flask import Flask, session

from flask_towersess import SessionExt

app = Flask(__name__)
app.config["SECRET_KEY"] = "smoke test"
sessions = SessionExt(app)  # nothing else: SQLite in the instance folder


@app.post("/visit")
def visit():
    session["visits"] = session.get("visits", 0) + 1
    return str(session["visits"])
"""

SMOKE_REQUESTS = """\
import importlib.metadata
from datetime import timedelta

import flask_towersess
from flask_towersess.session import new_session_key
from flask_towersess.stores import Record
from flask_towersess.stores.base import utcnow

from smoke import app, sessions

print("module", flask_towersess.__file__)
print("version", flask_towersess.__version__)
print("license", importlib.metadata.metadata("flask-towersess")["License-Expression"])
store = sessions.get_store(app)
print("store", type(store).__name__, store.engine.url.database)
client = app.test_client()
print("visits", client.post("/visit").text, client.post("/visit").text)
for _ in range(2):
    store.create(Record(new_session_key(), b"old", utcnow() - timedelta(minutes=1)))
"""


def test_the_wheel_in_a_fresh_virtualenv(dists: Dists, tmp_path: Path) -> None:
    """Installed from the wheel alone, its dependencies from pip's index,
    and run from a folder that is not the checkout, with no PYTHONPATH."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    _run([bin_dir / "python", "-m", "pip", "install", "-q", dists.wheel], cwd=tmp_path)

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "smoke.py").write_text(SMOKE_APP, encoding="utf-8")
    (app_dir / "requests_script.py").write_text(SMOKE_REQUESTS, encoding="utf-8")
    flask = [bin_dir / "flask", "--app", "smoke", "sessions"]

    migrated = _run([*flask, "migrate"], cwd=app_dir).stdout
    assert "created table" in migrated, migrated

    served = _run([bin_dir / "python", "requests_script.py"], cwd=app_dir).stdout
    lines = dict(line.split(" ", 1) for line in served.splitlines())
    module = Path(lines["module"]).resolve()
    assert module.is_relative_to(venv.resolve()), module
    assert not module.is_relative_to(ROOT), module
    assert lines["version"] == VERSION
    assert lines["license"] == "BSD-3-Clause"
    database = app_dir / "instance" / "flask_towersess.sqlite3"
    assert lines["store"] == f"SQLAlchemyStore {database}"
    assert lines["visits"] == "1 2"

    purged = _run([*flask, "purge-expired"], cwd=app_dir).stdout
    assert "purged 2 expired sessions" in purged, purged
    again = _run([*flask, "migrate"], cwd=app_dir).stdout
    assert "up to date" in again, again


# -- how the docs say to install it -----------------------------------------------


INSTALL_DOCS = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]


@pytest.mark.parametrize("path", INSTALL_DOCS, ids=lambda p: p.name)
def test_no_install_from_an_index(path: Path) -> None:
    """flask-towersess is not on PyPI: no page tells people to install it
    from there (``pip install flask-towersess`` or one of its extras)."""
    text = path.read_text(encoding="utf-8")
    found = re.findall(r"pip install ['\"]?flask-towersess(?![-\w])\S*", text)
    assert not found, f"{path.name}: {found}"


@pytest.mark.parametrize(
    "path",
    [ROOT / "README.rst", ROOT / "docs" / "quickstart.rst"],
    ids=lambda p: p.name,
)
def test_install_instructions(path: Path) -> None:
    """From a checkout, editable or not, with an extra, or the built wheel
    of this version."""
    text = path.read_text(encoding="utf-8")
    assert "pip install -e ." in text
    assert "pip install ." in text
    assert "'.[redis]'" in text
    assert "python -m build" in text
    assert f"pip install dist/{WHEEL_NAME}" in text
    assert f"'dist/{WHEEL_NAME}[redis]'" in text
