"""Stores anyone can add: URL schemes from the ``flask_towersess.stores``
entry-point group, store classes by path, and a third-party store package
built, installed and used end to end."""

from __future__ import annotations

import configparser
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import flask_towersess.stores as stores
from flask_towersess.errors import ConfigurationError
from flask_towersess.stores import MemoryStore
from flask_towersess.stores import store_class_for_scheme
from flask_towersess.stores import store_for
from flask_towersess.stores import store_from_url

from .services import service_unavailable

ROOT = Path(__file__).resolve().parent.parent
GROUP = stores.ENTRY_POINT_GROUP


def fake_entry_points(
    monkeypatch: pytest.MonkeyPatch, *declared: tuple[str, str, str]
) -> None:
    """Make the installed entry points of the group ``declared``: (scheme,
    ``module:Class``, distribution), on top of our own."""
    own = [
        (importlib.metadata.EntryPoint(name, value, GROUP), "flask-towersess")
        for name, value in stores.BUILTIN_STORES.items()
    ]
    extra = [
        (importlib.metadata.EntryPoint(name, value, GROUP), dist)
        for name, value, dist in declared
    ]
    monkeypatch.setattr(stores, "_entry_points", lambda: own + extra)


class PathStore(MemoryStore):
    """A store class named by its path in the tests below."""

    def __init__(self, *, label: str = "") -> None:
        super().__init__()
        self.label = label


# -- the declarations ------------------------------------------------------------


def test_setup_cfg_declares_every_builtin_scheme() -> None:
    """setup.cfg's entry points and the table used without metadata are the
    same, and cover every scheme a built-in store class lists."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    declared = {}
    for line in parser["options.entry_points"][GROUP].strip().splitlines():
        name, _, value = line.partition("=")
        declared[name.strip()] = value.strip()
    assert declared == stores.BUILTIN_STORES
    for scheme, target in declared.items():
        cls = stores._import_target(target)
        assert scheme in cls.url_schemes  # type: ignore[attr-defined]
    for cls in stores._store_classes():
        for scheme in cls.url_schemes:
            assert scheme in declared, f"{cls.__name__} scheme {scheme} undeclared"


def test_installed_metadata_declares_the_builtin_schemes() -> None:
    """The package as installed here (pip install -e .) uses the group."""
    try:
        importlib.metadata.distribution("flask-towersess")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("flask-towersess is not installed (a bare checkout)")
    found = {
        name: value
        for (ep, dist) in stores._entry_points()
        if dist == "flask-towersess"
        for name, value in [(ep.name, ep.value)]
    }
    if not found:
        pytest.fail(
            "the installed flask-towersess has no flask_towersess.stores entry"
            " points: its metadata is older than setup.cfg (pip install -e .)"
        )
    assert found == stores.BUILTIN_STORES


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [
        ("memory", "MemoryStore"),
        ("sqlite", "SQLAlchemyStore"),
        ("postgresql+psycopg2", "SQLAlchemyStore"),
        ("mysql+pymysql", "SQLAlchemyStore"),
        ("mariadb+pymysql", "SQLAlchemyStore"),
        ("REDIS", "RedisStore"),
        ("redis+sentinel", "RedisStore"),
        ("redis+cluster", "RedisStore"),
        ("unix", "RedisStore"),
        ("mongodb+srv", "MongoDBStore"),
        ("memcached", "MemcachedStore"),
    ],
)
def test_builtin_schemes(scheme: str, expected: str) -> None:
    assert store_class_for_scheme(scheme).__name__ == expected


def test_a_checkout_without_metadata_still_has_the_builtin_stores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Imported from a source checkout that was never pip-installed: no
    entry points of ours, yet memory:// works; third-party ones still count."""
    third = (
        importlib.metadata.EntryPoint("tsbar", f"{__name__}:PathStore", GROUP),
        "flask-towersess-tsbar",
    )
    monkeypatch.setattr(stores, "_entry_points", lambda: [third])
    assert isinstance(store_from_url("memory://"), MemoryStore)
    assert isinstance(store_from_url("tsbar://"), PathStore)


# -- errors ------------------------------------------------------------------


def test_unknown_scheme_lists_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, ("tsbar", f"{__name__}:PathStore", "tsbar-dist"))
    with pytest.raises(ConfigurationError) as info:
        store_from_url("nosuch://host")
    message = str(info.value)
    assert "'nosuch'" in message
    for scheme in ("memory://", "redis+sentinel://", "tsbar://"):
        assert scheme in message


def test_an_entry_point_that_fails_to_import(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(
        monkeypatch, ("tsbroken", "tsbroken_missing_module:Store", "tsbroken-dist")
    )
    with pytest.raises(ConfigurationError) as info:
        store_from_url("tsbroken://x")
    message = str(info.value)
    assert "tsbroken-dist" in message
    assert "ModuleNotFoundError" in message
    assert "pip install --upgrade tsbroken-dist" in message
    # Only the scheme in use is loaded: the broken one hurts nobody else.
    assert isinstance(store_from_url("memory://"), MemoryStore)


def test_an_entry_point_that_is_not_a_store(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, ("tsodd", "os.path:join", "tsodd-dist"))
    with pytest.raises(ConfigurationError, match="not a subclass of"):
        store_from_url("tsodd://x")


def test_a_scheme_declared_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, ("memory", f"{__name__}:PathStore", "rogue-dist"))
    with pytest.raises(ConfigurationError, match="flask-towersess, rogue-dist"):
        store_from_url("memory://")


# -- store classes by path ------------------------------------------------------


def test_a_class_path_with_options() -> None:
    store = store_for(f"{__name__}:PathStore", label="mine")
    assert isinstance(store, PathStore) and store.label == "mine"


def test_a_class_object_with_options() -> None:
    store = store_for(PathStore, label="obj")
    assert isinstance(store, PathStore) and store.label == "obj"


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("os.path:join", "not a subclass of"),
        (f"{__name__}:ROOT", "not a subclass of"),
        ("tests_no_such_module:Store", "Cannot import"),
        (f"{__name__}:NoSuchStore", "Cannot import"),
    ],
)
def test_a_class_path_that_is_no_store(path: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        store_for(path)


def test_options_the_class_does_not_take() -> None:
    with pytest.raises(ConfigurationError, match="SESSION_STORE_OPTIONS"):
        store_for(f"{__name__}:PathStore", colour="red")


def test_a_class_path_in_the_app_config() -> None:
    from flask import Flask

    from flask_towersess import SessionExt

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="x",
        SESSION_STORE=f"{__name__}:PathStore",
        SESSION_STORE_OPTIONS={"label": "from config"},
    )
    store = SessionExt(app).get_store(app)
    assert isinstance(store, PathStore) and store.label == "from config"
    app = Flask(__name__)
    app.config.update(SECRET_KEY="x", SESSION_STORE="os.path:join")
    with pytest.raises(ConfigurationError, match="SESSION_STORE"):
        SessionExt(app)


def test_native_clients_are_still_accepted() -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    store = store_for(sqlalchemy.create_engine("sqlite://"), table="t")
    assert type(store).__name__ == "SQLAlchemyStore"


def test_a_third_party_class_accepts_its_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_entry_points(monkeypatch, ("tsclient", f"{__name__}:ClientStore", "d"))
    client = FakeClient()
    store = store_for(client)
    assert isinstance(store, ClientStore) and store.client is client


class FakeClient:
    pass


class ClientStore(MemoryStore):
    def __init__(self, client: FakeClient) -> None:
        super().__init__()
        self.client = client

    @classmethod
    def accepts(cls, obj: object) -> bool:
        return isinstance(obj, FakeClient)


def test_loading_a_scheme_imports_only_its_store() -> None:
    """Drivers stay lazily imported: memory:// loads no other store module
    and no driver."""
    code = textwrap.dedent(
        """
        import sys
        from flask_towersess.stores import store_from_url
        store_from_url("memory://")
        loaded = sorted(
            name for name in sys.modules
            if name.startswith(("flask_towersess.stores.", "redis", "pymongo",
                                "sqlalchemy", "psycopg2", "pymysql"))
        )
        print(" ".join(loaded))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    loaded = set(result.stdout.split())
    assert loaded <= {
        "flask_towersess.stores.base",
        "flask_towersess.stores.memory",
        "flask_towersess.stores._fork",
    }, loaded


# -- a third-party store package, built and installed ------------------------

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "flask-towersess-tsfoo"
version = "1.0"
dependencies = ["flask-towersess"]

[project.entry-points."flask_towersess.stores"]
tsfoo = "tsfoo_store:TsFooStore"

[tool.setuptools]
packages = ["tsfoo_store"]
"""

PACKAGE_INIT = '''\
"""A third-party session store, written against the public API only."""

from ._shelf import ShelfStore


class TsFooStore(ShelfStore):
    url_schemes = ("tsfoo",)
'''

PACKAGE_TEST = """\
import pytest

from flask_towersess.stores import store_from_url
from flask_towersess.testing import StoreContract
from tsfoo_store import TsFooStore


class TestTsFooStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        # By URL, through the installed entry point.
        store = store_from_url(f"tsfoo:///{tmp_path}/contract.db")
        assert isinstance(store, TsFooStore)
        store.migrate()
        return store
"""

APP = """\
import os

from flask import Flask, session

from flask_towersess import SessionExt

app = Flask(__name__)
app.config["SECRET_KEY"] = "third party"
app.config["SESSION_STORE"] = os.environ["TSFOO_URL"]
sessions = SessionExt(app)


@app.post("/visit")
def visit():
    session["visits"] = session.get("visits", 0) + 1
    return str(session["visits"])
"""

REQUESTS = """\
from datetime import timedelta

from flask_towersess.stores import Record
from flask_towersess.stores.base import utcnow
from flask_towersess.session import new_session_key
from flask_towersess.testing import session_data

from app import app, sessions

store = sessions.get_store(app)
print("store", type(store).__module__, type(store).__name__)
client = app.test_client()
print("visits", client.post("/visit").text, client.post("/visit").text)
print("data", session_data(client))
for _ in range(3):
    store.create(Record(new_session_key(), b"old", utcnow() - timedelta(minutes=1)))
"""


def _can_build_offline() -> bool:
    """Whether setuptools here builds a wheel with no download
    (``--no-build-isolation``): 70.1 has bdist_wheel built in."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    return parts >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _run(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (
        f"{' '.join(args)} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def test_a_third_party_store_package(tmp_path: Path) -> None:
    """``pip install flask-towersess-tsfoo`` makes ``tsfoo://`` work: in
    SESSION_STORE for requests, for ``flask sessions migrate`` and
    ``purge-expired``, and the package's own contract suite passes."""
    if not _can_build_offline():
        service_unavailable(
            "setuptools>=70.1 (the test extra) is needed to build a package offline"
        )
    source = tmp_path / "flask-towersess-tsfoo"
    package = source / "tsfoo_store"
    package.mkdir(parents=True)
    (source / "tests").mkdir()
    (source / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
    (package / "__init__.py").write_text(PACKAGE_INIT, encoding="utf-8")
    # The store of docs/extending.rst, as a store author would copy it.
    shutil.copy(
        ROOT / "docs" / "examples" / "extending_store.py", package / "_shelf.py"
    )
    (source / "tests" / "test_tsfoo.py").write_text(PACKAGE_TEST, encoding="utf-8")

    # Installed with no index and no build environment: offline, as in CI.
    # --target, not a venv: a venv made from this one could not see its
    # packages; importlib.metadata reads the dist-info from any sys.path entry.
    target = tmp_path / "site"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "PIP_", "FLASK_"))
    }
    env.update(PYTHONDONTWRITEBYTECODE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-build-isolation",
            "--no-deps",
            "--target",
            str(target),
            str(source),
        ],
        cwd=tmp_path,
        env=env,
    )
    entry_points = next(target.glob("*.dist-info")) / "entry_points.txt"
    assert "tsfoo = tsfoo_store:TsFooStore" in entry_points.read_text()

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(APP, encoding="utf-8")
    (app_dir / "requests_script.py").write_text(REQUESTS, encoding="utf-8")
    env.update(
        PYTHONPATH=os.pathsep.join([str(target), str(app_dir)]),
        TSFOO_URL=f"tsfoo:///{app_dir}/sessions.db",
    )
    flask = [sys.executable, "-m", "flask", "--app", "app", "sessions"]

    migrated = _run([*flask, "migrate"], cwd=app_dir, env=env)
    assert "created table sessions" in migrated.stdout

    served = _run([sys.executable, "requests_script.py"], cwd=app_dir, env=env)
    assert "store tsfoo_store TsFooStore" in served.stdout
    assert "visits 1 2" in served.stdout
    assert "data {'visits': 2}" in served.stdout

    purged = _run([*flask, "purge-expired"], cwd=app_dir, env=env)
    assert "purged 3 expired sessions" in purged.stdout
    again = _run([*flask, "migrate"], cwd=app_dir, env=env)
    assert "up to date" in again.stdout

    contract = _run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(source),
            "tests",
        ],
        cwd=source,
        env=env,
    )
    assert " passed" in contract.stdout and "failed" not in contract.stdout
