"""The example store of docs/extending.rst passes the store contract suite,
and works in an app and with the ``flask sessions`` commands."""

from __future__ import annotations

import importlib.util
import sys
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from flask import session

from flask_towersess import SessionExt
from flask_towersess.errors import ConfigurationError
from flask_towersess.stores.base import SessionStore
from flask_towersess.testing import StoreContract
from flask_towersess.testing import make_record
from flask_towersess.testing import session_data

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples"


def _load_example() -> t.Any:
    spec = importlib.util.spec_from_file_location(
        "extending_store", EXAMPLE / "extending_store.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("extending_store", module)
    spec.loader.exec_module(module)
    return module


ShelfStore = _load_example().ShelfStore


class TestShelfStore(StoreContract):
    """Exactly what docs/extending.rst tells a store author to write."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> SessionStore:
        store = ShelfStore(str(tmp_path / "sessions.db"))
        store.migrate()
        return t.cast(SessionStore, store)


def test_in_an_app_by_class_path(tmp_path: Path) -> None:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="test",
        SESSION_STORE="extending_store:ShelfStore",
        SESSION_STORE_OPTIONS={"path": str(tmp_path / "app.db")},
    )
    sessions = SessionExt(app)
    store = sessions.get_store(app)
    assert isinstance(store, ShelfStore)
    store.migrate()

    @app.post("/visit")
    def visit() -> str:
        session["visits"] = session.get("visits", 0) + 1
        return "ok"

    client = app.test_client()
    client.post("/visit")
    client.post("/visit")
    assert session_data(client) == {"visits": 2}


def test_missing_table_says_to_migrate(tmp_path: Path) -> None:
    store = ShelfStore(str(tmp_path / "none.db"))
    with pytest.raises(ConfigurationError, match="flask sessions migrate"):
        store.load(make_record().key)


def test_cli_on_the_example(tmp_path: Path) -> None:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="test",
        SESSION_STORE=ShelfStore,
        SESSION_STORE_OPTIONS={"path": str(tmp_path / "cli.db")},
    )
    sessions = SessionExt(app)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["sessions", "migrate"])
    assert result.exit_code == 0, result.output
    assert "created table sessions" in result.output
    store = sessions.get_store(app)
    for seconds in (-60, -60, 600):
        store.create(make_record(seconds=seconds))
    result = runner.invoke(args=["sessions", "purge-expired"])
    assert result.exit_code == 0, result.output
    assert "purged 2 expired sessions" in result.output
    assert store.count_expired() == 0
