"""The demo app in examples/app.py, driven through the test client."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import sqlite3
import types
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from werkzeug.security import check_password_hash

from flask_towersess.extension import DEFAULT_SQLITE_FILENAME
from flask_towersess.session import stored_key
from flask_towersess.stores.base import PerUserIndex
from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.memory import MemoryStore
from flask_towersess.stores.sqlalchemy import SQLAlchemyStore

EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "app.py"
)
PASSWORD = "correct horse"


def load_example() -> types.ModuleType:
    """Load examples/app.py (not a package) the way `flask --app` does."""
    spec = importlib.util.spec_from_file_location("towersess_example_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example() -> t.Iterator[types.ModuleType]:
    module = load_example()
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


def signup(client: t.Any, name: str = "ann", password: str = PASSWORD) -> t.Any:
    return client.post("/signup", data={"username": name, "password": password})


def login(client: t.Any, name: str = "ann", password: str = PASSWORD) -> t.Any:
    return client.post("/login", data={"username": name, "password": password})


def new_user(app: Flask, name: str = "ann") -> t.Any:
    """A client logged in as a new user, with the welcome message shown."""
    client = app.test_client()
    response = signup(client, name)
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    client.get("/")
    return client


def flashes(page: str) -> list[str]:
    return [line.strip() for line in page.splitlines() if 'class="flash' in line]


def users(app: Flask) -> list[tuple[str, str]]:
    path = app.config["USERS_DATABASE"]
    if not os.path.exists(path):
        return []
    with sqlite3.connect(path) as db:
        return db.execute("SELECT username, password_hash FROM users").fetchall()


def test_module_level_app(example: types.ModuleType) -> None:
    assert isinstance(example.app, Flask)
    assert "towersess" in example.app.extensions
    assert "sessions" in example.app.cli.commands
    assert "login_manager" in dir(example.app)


def test_anonymous_page_stores_nothing(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 200
    assert "Not logged in." in page.text
    assert client.get_cookie("session") is None
    if not app.config.get("SESSION_STORE"):
        # The default store has not even created its file yet.
        path = os.path.join(app.instance_path, DEFAULT_SQLITE_FILENAME)
        assert not os.path.exists(path)
    assert not os.path.exists(app.config["USERS_DATABASE"])
    assert record_count(store_of(app)) == 0


def test_pages_are_not_cached(app: Flask) -> None:
    client = new_user(app)
    for path in ["/", "/counter", "/login", "/signup"]:
        response = client.get(path)
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "no-store"
    assert app.test_client().get("/").headers["Cache-Control"] == "no-store"


def test_signup_logs_in_and_flashes_once(app: Flask) -> None:
    client = app.test_client()
    assert signup(client).status_code == 302
    page = client.get("/")
    assert 'Logged in as <strong id="user">ann</strong>.' in page.text
    assert flashes(page.text) == [
        '<p class="flash message">Welcome, ann! Your account is ready.</p>'
    ]
    again = client.get("/")
    assert 'Logged in as <strong id="user">ann</strong>.' in again.text
    assert flashes(again.text) == []


def test_password_is_hashed(app: Flask) -> None:
    new_user(app)
    [(name, password_hash)] = users(app)
    assert name == "ann"
    assert PASSWORD not in password_hash
    assert check_password_hash(password_hash, PASSWORD)


def test_login_shows_the_user_and_flashes_once(app: Flask) -> None:
    new_user(app)
    client = app.test_client()
    response = login(client, "ANN")  # usernames are case-insensitive
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    page = client.get("/")
    assert 'Logged in as <strong id="user">ann</strong>.' in page.text
    assert flashes(page.text) == ['<p class="flash message">Logged in as ann.</p>']
    assert flashes(client.get("/").text) == []


def test_username_is_escaped(app: Flask) -> None:
    client = new_user(app, "<b>x</b>")
    page = client.get("/")
    assert "<b>x</b>" not in page.text
    assert "&lt;b&gt;x&lt;/b&gt;" in page.text


def test_counter_counts_across_requests(app: Flask) -> None:
    client = new_user(app)
    for expected in (1, 2, 3):
        page = client.get("/counter")
        assert f'<strong id="count">{expected}</strong>' in page.text
    assert '<strong id="count">3</strong>' in client.get("/").text


def test_counter_is_per_user(app: Flask) -> None:
    ann, bob = new_user(app, "ann"), new_user(app, "bob")
    ann.get("/counter")
    ann.get("/counter")
    assert '<strong id="count">1</strong>' in bob.get("/counter").text
    assert '<strong id="count">3</strong>' in ann.get("/counter").text


def test_counter_needs_login(app: Flask) -> None:
    new_user(app)
    client = app.test_client()
    response = client.get("/counter")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=%2Fcounter"
    page = client.get(response.headers["Location"])
    assert flashes(page.text) == [
        '<p class="flash message">Please log in to see that page.</p>'
    ]
    response = client.post(
        "/login?next=%2Fcounter", data={"username": "ann", "password": PASSWORD}
    )
    assert response.headers["Location"] == "/counter"
    assert '<strong id="count">1</strong>' in client.get("/counter").text


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:x"],
)
def test_next_never_leaves_the_site(app: Flask, target: str) -> None:
    new_user(app)
    response = app.test_client().post(
        "/login",
        query_string={"next": target},
        data={"username": "ann", "password": PASSWORD},
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/"


def test_login_cycles_the_key(app: Flask) -> None:
    new_user(app)
    client = app.test_client()
    client.get("/counter")  # anonymous: a session holding "please log in"
    before = cookie_key(client)
    assert before is not None
    login(client)
    after = cookie_key(client)
    assert after is not None and after != before
    store = store_of(app)
    assert store.load(stored_key(before)) is None  # the pre-login ID is worthless now
    assert store.load(stored_key(after)) is not None
    # The data came along: the message flashed before the log-in is there.
    assert "Please log in to see that page." in client.get("/").text


def test_cookie_carries_only_the_signed_id(app: Flask) -> None:
    client = new_user(app, "ann-the-user")
    client.get("/counter")
    cookie = client.get_cookie("session")
    assert cookie is not None
    assert cookie.http_only
    assert cookie.same_site == "Lax"
    assert "ann" not in cookie.value
    key, signature = cookie.value.rsplit(".", 1)
    assert len(key) == 43 and signature
    # The data is in the store, under that key's hash; never the password.
    record = store_of(app).load(stored_key(key))
    assert record is not None
    assert b"counter" in record.payload and b"_user_id" in record.payload
    assert PASSWORD.encode() not in record.payload
    # A cookie with a tampered signature is no session at all.
    forged = app.test_client()
    forged.set_cookie("session", f"{key}.{'A' * len(signature)}")
    assert "Not logged in." in forged.get("/").text


def test_logout_deletes_the_record_and_the_cookie(app: Flask) -> None:
    client = new_user(app)
    client.get("/counter")
    store = store_of(app)
    old_key = cookie_key(client)
    assert old_key is not None
    assert record_count(store) == 1

    response = client.post("/logout")
    assert response.status_code == 302
    assert store.load(stored_key(old_key)) is None
    # The "logged out" message waits in a fresh session of its own.
    assert cookie_key(client) != old_key

    page = client.get("/")
    assert flashes(page.text) == [
        '<p class="flash message">You have been logged out.</p>'
    ]
    assert "Not logged in." in page.text
    # With the message shown the session is empty: cookie and record gone.
    assert client.get_cookie("session") is None
    assert record_count(store) == 0

    assert "logged out" not in client.get("/").text
    assert client.get("/counter").status_code == 302


def test_old_cookie_is_useless_after_logout(app: Flask) -> None:
    client = new_user(app)
    cookie = client.get_cookie("session")
    assert cookie is not None
    client.post("/logout")
    copy = app.test_client()
    copy.set_cookie("session", cookie.value)
    assert "Not logged in." in copy.get("/").text
    assert copy.get("/counter").status_code == 302


@pytest.mark.parametrize(
    ("name", "password", "errors"),
    [
        ("", PASSWORD, ["Please choose a username."]),
        ("   ", PASSWORD, ["Please choose a username."]),
        ("x" * 41, PASSWORD, ["Usernames have at most 40 characters."]),
        ("ann", "short", ["Passwords need at least 8 characters."]),
        (
            "",
            "",
            ["Please choose a username.", "Passwords need at least 8 characters."],
        ),
    ],
)
def test_signup_validation_errors(
    app: Flask, name: str, password: str, errors: list[str]
) -> None:
    client = app.test_client()
    response = signup(client, name, password)
    assert response.status_code == 400
    assert flashes(response.text) == [
        f'<p class="flash error">{error}</p>' for error in errors
    ]
    assert "Not logged in." in client.get("/").text
    assert flashes(client.get("/").text) == []  # shown once
    assert users(app) == []
    assert client.get_cookie("session") is None
    assert record_count(store_of(app)) == 0


def test_signup_with_a_taken_name(app: Flask) -> None:
    new_user(app, "ann")
    client = app.test_client()
    response = signup(client, "ANN")
    assert response.status_code == 400
    assert flashes(response.text) == [
        '<p class="flash error">That username is taken.</p>'
    ]
    assert len(users(app)) == 1
    assert client.get_cookie("session") is None


@pytest.mark.parametrize(
    ("name", "password"), [("ann", "wrong password"), ("nobody", PASSWORD)]
)
def test_wrong_credentials(app: Flask, name: str, password: str) -> None:
    new_user(app)
    client = app.test_client()
    response = login(client, name, password)
    assert response.status_code == 401
    assert flashes(response.text) == [
        '<p class="flash error">Unknown username or wrong password.</p>'
    ]
    assert "Not logged in." in client.get("/").text
    assert client.get_cookie("session") is None


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
        new_user(app)
        assert os.path.exists(tmp_path / "elsewhere" / DEFAULT_SQLITE_FILENAME)
        assert os.path.exists(tmp_path / "elsewhere" / "demo_users.sqlite3")
    finally:
        store_of(app).close()


def test_the_store_holds_no_session_key(app: Flask) -> None:
    """The store knows the session by the SHA-256 of the cookie's key only:
    a copy of the store holds nothing that works as a cookie."""
    client = new_user(app)
    client.get("/counter")
    key = cookie_key(client)
    assert key is not None
    store = store_of(app)
    assert store.load(key) is None
    record = store.load(stored_key(key))
    assert record is not None
    assert record.key == stored_key(key) != key
    assert key.encode() not in record.payload
    # The hash sent back as a cookie names no session.
    thief = app.test_client()
    thief.set_cookie("session", record.key)
    assert "Not logged in." in thief.get("/").text


# -- "Your sessions" -------------------------------------------------------------

#: The stores the sessions page is tested on: the zero-configuration SQLite
#: default (``None``), as `make demo` runs it, and memory.
PER_USER_STORES = [None, "memory://"]
SESSION_ROW = re.compile(
    r'<tr class="session( current)?" data-id="([\w-]+)">\s*'
    r'<td class="device">([^<]*?)\s*(?:<strong|</td>)'
)


@pytest.fixture(params=PER_USER_STORES)
def per_user_app(
    request: pytest.FixtureRequest, example: types.ModuleType, tmp_path: t.Any
) -> t.Iterator[Flask]:
    app = example.create_app(
        {"TESTING": True, "SESSION_STORE": request.param},
        instance_path=str(tmp_path / "instance"),
    )
    assert isinstance(store_of(app).as_per_user(), PerUserIndex)
    yield app
    store_of(app).close()


def device(app: Flask, user_agent: str) -> t.Any:
    """A test client that says it is ``user_agent``."""
    client = app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = user_agent
    return client


def enter(client: t.Any, name: str = "ann", *, new: bool = False) -> None:
    """Sign ``client`` up (``new``) or log it in, and show the message."""
    response = signup(client, name) if new else login(client, name)
    assert response.status_code == 302
    client.get("/")


def session_rows(client: t.Any) -> list[tuple[str, str, bool]]:
    """The sessions page as ``(handle, device, this device)`` rows."""
    page = client.get("/sessions")
    assert page.status_code == 200
    return [
        (handle, html.unescape(device.strip()), bool(current))
        for current, handle, device in SESSION_ROW.findall(page.text)
    ]


def logged_in(client: t.Any) -> bool:
    response = client.get("/counter")
    if response.status_code == 302:
        assert response.headers["Location"] == "/login?next=%2Fcounter"
        return False
    assert response.status_code == 200
    return True


def test_sessions_page_needs_login(per_user_app: Flask) -> None:
    response = per_user_app.test_client().get("/sessions")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=%2Fsessions"
    for path in ["/sessions/revoke", "/sessions/revoke-others"]:
        response = per_user_app.test_client().post(path, data={"id": "x"})
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/login?next=")


def test_sessions_page_lists_every_device(per_user_app: Flask) -> None:
    laptop, phone = device(per_user_app, "Laptop"), device(per_user_app, "Phone")
    enter(laptop, new=True)
    enter(phone)
    bob = device(per_user_app, "Bob's")
    enter(bob, "bob", new=True)

    laptop_rows, phone_rows = session_rows(laptop), session_rows(phone)
    # Each page marks its own device.
    assert sorted((d, current) for _, d, current in laptop_rows) == [
        ("Laptop", True),
        ("Phone", False),
    ]
    assert sorted((d, current) for _, d, current in phone_rows) == [
        ("Laptop", False),
        ("Phone", True),
    ]
    assert {h for h, _, _ in laptop_rows} == {h for h, _, _ in phone_rows}
    assert [d for _, d, _ in session_rows(bob)] == ["Bob's"]
    page = laptop.get("/sessions").text
    assert "You are logged in on 2 devices." in page
    assert 'id="sign-out-others"' in page
    # The page shows handles, never a session key or its stored form.
    for client in (laptop, phone, bob):
        key = cookie_key(client)
        assert key is not None
        assert key not in page and stored_key(key) not in page


def test_sign_out_another_device(per_user_app: Flask) -> None:
    laptop, phone = device(per_user_app, "Laptop"), device(per_user_app, "Phone")
    enter(laptop, new=True)
    enter(phone)
    [(phone_handle, phone_device, _)] = [r for r in session_rows(laptop) if not r[2]]
    assert phone_device == "Phone"

    response = laptop.post("/sessions/revoke", data={"id": phone_handle})
    assert response.status_code == 302
    assert response.headers["Location"] == "/sessions"
    page = laptop.get("/sessions").text
    assert flashes(page) == [
        '<p class="flash message">That device has been signed out.</p>'
    ]
    assert [(d, c) for _, d, c in session_rows(laptop)] == [("Laptop", True)]
    assert "You are logged in on 1 device." in laptop.get("/sessions").text
    assert 'id="sign-out-others"' not in laptop.get("/sessions").text

    # The phone's very next request is logged out; the laptop stays in.
    assert not logged_in(phone)
    assert "Not logged in." in phone.get("/").text
    assert logged_in(laptop)

    # The same handle again ends nothing.
    laptop.post("/sessions/revoke", data={"id": phone_handle})
    assert flashes(laptop.get("/sessions").text) == [
        '<p class="flash error">That session had already ended.</p>'
    ]
    assert logged_in(laptop)


def test_sign_out_everywhere_else(per_user_app: Flask) -> None:
    laptop = device(per_user_app, "Laptop")
    others = [device(per_user_app, name) for name in ("Phone", "Tablet")]
    enter(laptop, new=True)
    for other in others:
        enter(other)
    bob = device(per_user_app, "Bob's")
    enter(bob, "bob", new=True)
    assert len(session_rows(laptop)) == 3
    for other in others:
        assert len(session_rows(other)) == 3

    response = laptop.post("/sessions/revoke-others")
    assert response.status_code == 302
    assert response.headers["Location"] == "/sessions"
    page = laptop.get("/sessions").text
    assert flashes(page) == [
        '<p class="flash message">Signed out 2 other sessions.</p>'
    ]
    assert [(d, c) for _, d, c in session_rows(laptop)] == [("Laptop", True)]
    for other in others:
        assert not logged_in(other)
    assert logged_in(laptop)
    # Another user's sessions are not touched.
    assert logged_in(bob)
    assert [d for _, d, _ in session_rows(bob)] == ["Bob's"]

    # With nothing else left, it ends nothing.
    laptop.post("/sessions/revoke-others")
    assert flashes(laptop.get("/sessions").text) == [
        '<p class="flash message">Signed out 0 other sessions.</p>'
    ]
    assert logged_in(laptop)


def test_another_users_handle_ends_nothing(per_user_app: Flask) -> None:
    ann = device(per_user_app, "Ann's")
    enter(ann, new=True)
    bob = device(per_user_app, "Bob's")
    enter(bob, "bob", new=True)
    [(ann_handle, _, _)] = session_rows(ann)

    for handle in (ann_handle, "", "not-a-handle"):
        bob.post("/sessions/revoke", data={"id": handle})
        assert flashes(bob.get("/sessions").text) == [
            '<p class="flash error">That session had already ended.</p>'
        ]
    bob.post("/sessions/revoke")  # no handle at all: never "all of them"
    assert logged_in(ann) and logged_in(bob)
    assert len(session_rows(ann)) == 1 and len(session_rows(bob)) == 1


def test_sign_out_this_device_from_its_own_row(per_user_app: Flask) -> None:
    laptop, phone = device(per_user_app, "Laptop"), device(per_user_app, "Phone")
    enter(laptop, new=True)
    enter(phone)
    page = laptop.get("/sessions").text
    current_row = page[page.index('class="session current"') :]
    current_row = current_row[: current_row.index("</tr>")]
    # Its own row logs this device out, as the "Log out" button does.
    assert 'action="/logout"' in current_row
    laptop.post("/logout")
    assert not logged_in(laptop)
    assert [(d, c) for _, d, c in session_rows(phone)] == [("Phone", True)]


def test_sessions_page_on_a_store_without_a_per_user_index(
    example: types.ModuleType, tmp_path: t.Any
) -> None:
    class NoIndexStore(MemoryStore):
        def as_per_user(self) -> PerUserIndex | None:
            return None

    app = example.create_app(
        {"TESTING": True, "SESSION_STORE": NoIndexStore()},
        instance_path=str(tmp_path / "instance"),
    )
    client = new_user(app)
    page = client.get("/sessions")
    assert page.status_code == 200
    assert 'id="no-index"' in page.text
    assert 'id="sessions"' not in page.text
