"""The demo app in examples/app.py, driven through the test client."""

from __future__ import annotations

import importlib.util
import os
import types
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_towersess.extension import DEFAULT_SQLITE_FILENAME
from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.memory import MemoryStore
from flask_towersess.stores.sqlalchemy import SQLAlchemyStore

EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "app.py"
)


@pytest.fixture(scope="module")
def example() -> t.Iterator[types.ModuleType]:
    # examples/ is not a package: load the file the way `flask --app` does.
    spec = importlib.util.spec_from_file_location("towersess_example_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    store_of(module.app).close()


def store_of(app: Flask) -> SessionStore:
    return app.extensions["towersess"].get_store(app)  # type: ignore[no-any-return]


def record_count(store: SessionStore) -> int:
    if isinstance(store, MemoryStore):
        return len(store)
    assert isinstance(store, SQLAlchemyStore)
    if not sa.inspect(store.engine).has_table(store.table.name):
        return 0
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(store.table)
            ).scalar_one()
        )


@pytest.fixture(params=["default", "memory"])
def app(
    request: pytest.FixtureRequest, example: types.ModuleType, tmp_path: t.Any
) -> t.Iterator[Flask]:
    """The example on its zero-config SQLite store (in a temporary instance
    folder), and on a memory store."""
    config: dict[str, t.Any] = {"TESTING": True}
    if request.param == "memory":
        config["SESSION_STORE"] = "memory://"
    app = example.create_app(config, instance_path=str(tmp_path / "instance"))
    yield app
    store_of(app).close()


def cookie_key(client: t.Any) -> str | None:
    """The session key the client's cookie carries (the part before the
    signature), or None without a cookie."""
    cookie = client.get_cookie("session")
    return None if cookie is None else cookie.value.rsplit(".", 1)[0]


def login(client: t.Any, name: str = "ann") -> None:
    response = client.post("/login", data={"username": name})
    assert response.status_code == 302
    assert response.headers["Location"] == "/"


def test_module_level_app(example: types.ModuleType) -> None:
    assert isinstance(example.app, Flask)
    assert "towersess" in example.app.extensions
    assert "sessions" in example.app.cli.commands


def test_anonymous_page_stores_nothing(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 200
    assert "Not logged in." in page.text
    assert '<strong id="count">0</strong>' in page.text
    assert client.get_cookie("session") is None
    if not app.config.get("SESSION_STORE"):
        # The default store has not even created its file yet.
        path = os.path.join(app.instance_path, DEFAULT_SQLITE_FILENAME)
        assert not os.path.exists(path)
    assert record_count(store_of(app)) == 0


def test_login_shows_the_user_and_flashes_once(app: Flask) -> None:
    client = app.test_client()
    login(client)
    page = client.get("/")
    assert "Logged in as <strong>ann</strong>." in page.text
    assert '<p class="flash">Logged in as ann.</p>' in page.text
    again = client.get("/")
    assert "Logged in as <strong>ann</strong>." in again.text
    assert 'class="flash"' not in again.text


def test_username_is_escaped(app: Flask) -> None:
    client = app.test_client()
    login(client, "<b>x</b>")
    page = client.get("/")
    assert "<b>x</b>" not in page.text
    assert "&lt;b&gt;x&lt;/b&gt;" in page.text


def test_counter_counts_across_requests(app: Flask) -> None:
    client = app.test_client()
    for _ in range(3):
        assert client.post("/count").status_code == 302
    assert '<strong id="count">3</strong>' in client.get("/").text
    # Each client is its own session.
    assert '<strong id="count">0</strong>' in app.test_client().get("/").text


def test_login_cycles_the_key_and_keeps_the_counter(app: Flask) -> None:
    client = app.test_client()
    client.post("/count")
    before = cookie_key(client)
    assert before is not None
    login(client)
    after = cookie_key(client)
    assert after is not None and after != before
    store = store_of(app)
    assert store.load(before) is None  # the pre-login ID is worthless now
    assert store.load(after) is not None
    assert '<strong id="count">1</strong>' in client.get("/").text


def test_cookie_carries_only_the_signed_id(app: Flask) -> None:
    client = app.test_client()
    login(client, "ann-the-user")
    cookie = client.get_cookie("session")
    assert cookie is not None
    assert "ann" not in cookie.value
    key, signature = cookie.value.rsplit(".", 1)
    assert key and signature
    # The data is in the store, under that key.
    record = store_of(app).load(key)
    assert record is not None
    assert b"ann-the-user" in record.payload
    # A cookie with a tampered signature is no session at all.
    forged = app.test_client()
    forged.set_cookie("session", f"{key}.{'A' * len(signature)}")
    assert "Not logged in." in forged.get("/").text


def test_logout_deletes_the_record_and_the_cookie(app: Flask) -> None:
    client = app.test_client()
    login(client)
    client.post("/count")
    client.get("/")  # show the login flash, so only the user is left
    store = store_of(app)
    old_key = cookie_key(client)
    assert old_key is not None
    assert record_count(store) == 1

    response = client.post("/logout")
    assert response.status_code == 302
    assert store.load(old_key) is None
    # The "logged out" message waits in a fresh session of its own.
    assert cookie_key(client) != old_key

    page = client.get("/")
    assert '<p class="flash">logged out</p>' in page.text
    assert "Not logged in." in page.text
    assert '<strong id="count">0</strong>' in page.text
    # With the message shown the session is empty: cookie and record gone.
    assert client.get_cookie("session") is None
    assert record_count(store) == 0

    assert "logged out" not in client.get("/").text


def test_old_cookie_is_useless_after_logout(app: Flask) -> None:
    client = app.test_client()
    login(client)
    cookie = client.get_cookie("session")
    assert cookie is not None
    client.post("/logout")
    copy = app.test_client()
    copy.set_cookie("session", cookie.value)
    assert "Not logged in." in copy.get("/").text


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_username_is_rejected(app: Flask, name: str) -> None:
    client = app.test_client()
    login(client, name)
    page = client.get("/")
    assert '<p class="flash">Please enter a name to log in.</p>' in page.text
    assert "Not logged in." in page.text
    assert "Please enter a name" not in client.get("/").text
    assert record_count(store_of(app)) == 0


def test_store_and_secret_key_from_the_environment(
    example: types.ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: t.Any
) -> None:
    monkeypatch.setenv("SESSION_STORE", "memory://")
    monkeypatch.setenv("SECRET_KEY", "from the environment")
    app = example.create_app(instance_path=str(tmp_path))
    assert isinstance(store_of(app), MemoryStore)
    assert app.secret_key == "from the environment"


def test_instance_path_from_the_environment(
    example: types.ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: t.Any
) -> None:
    monkeypatch.delenv("SESSION_STORE", raising=False)
    monkeypatch.setenv("TOWERSESS_INSTANCE_PATH", str(tmp_path / "elsewhere"))
    app = example.create_app({"TESTING": True})
    try:
        assert app.instance_path == str(tmp_path / "elsewhere")
        login(app.test_client())
        assert os.path.exists(tmp_path / "elsewhere" / DEFAULT_SQLITE_FILENAME)
    finally:
        store_of(app).close()
