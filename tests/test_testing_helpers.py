"""``flask_towersess.testing``: reading a test client's session from the store."""

from __future__ import annotations

import doctest
import typing as t
from datetime import datetime
from datetime import timezone

import pytest
from flask import Flask
from flask import flash
from flask import session
from markupsafe import Markup

import flask_towersess.testing
from flask_towersess import SessionExt
from flask_towersess.crypto import generate_key
from flask_towersess.session import stored_key
from flask_towersess.testing import session_data
from flask_towersess.testing import session_key

from .helpers import CountingStore

if t.TYPE_CHECKING:
    from flask_towersess.stores.base import SessionStore


def make_app(store: SessionStore | None, **config: t.Any) -> Flask:
    """An app on ``store`` (Flask's cookie session for ``None``)."""
    app = Flask(__name__)
    app.config.update({"SECRET_KEY": "helpers", "TESTING": True, **config})
    if store is not None:
        SessionExt(app, store=store)

    @app.post("/fill")
    def fill() -> str:
        session["cart"] = ["apple", "pear"]
        session["tags"] = {"fresh"}
        session["at"] = datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
        flash(Markup("<b>added</b>"))
        return "ok"

    @app.post("/simple")
    def simple() -> str:  # what Flask's cookie session can hold too
        session["cart"] = ["apple"]
        flash(Markup("<b>added</b>"))
        return "ok"

    @app.post("/logout")
    def logout() -> str:
        session.flush()  # type: ignore[attr-defined]
        return "ok"

    return app


FILLED = {
    "cart": ["apple", "pear"],
    "tags": {"fresh"},
    "at": datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc),
    "_flashes": [("message", Markup("<b>added</b>"))],
}


def key_in_cookie(client: t.Any, name: str = "session", path: str = "/") -> str:
    cookie = client.get_cookie(name, path=path)
    assert cookie is not None
    return t.cast(str, cookie.value.partition(".")[0])


@pytest.fixture(params=["memory", "sqlite", "redis"])
def some_store(request: pytest.FixtureRequest) -> SessionStore:
    return t.cast("SessionStore", request.getfixturevalue(f"{request.param}_store"))


def test_reads_the_session_from_the_store(some_store: SessionStore) -> None:
    app = make_app(some_store)
    client = app.test_client()
    assert session_data(client) == {}
    assert session_key(client) is None
    client.post("/fill")
    key = session_key(client)
    assert key == key_in_cookie(client)
    assert some_store.exists(stored_key(key))
    data = session_data(client)
    assert data == FILLED
    assert type(data["_flashes"][0][1]) is Markup  # decoded as the app does
    data["cart"].append("plum")  # a copy: the session is not changed
    assert session_data(client) == FILLED


def test_reads_only(memory_store: SessionStore) -> None:
    """No write, no expiry refresh, no cookie change, whatever is due."""
    store = CountingStore(memory_store)
    app = make_app(
        store,
        SESSION_PERMANENT=True,
        SESSION_TOUCH_INTERVAL=0,
        SESSION_REFRESH_EACH_REQUEST=True,
    )
    client = app.test_client()
    client.post("/fill")
    cookie = client.get_cookie("session")
    assert cookie is not None
    key = key_in_cookie(client)
    record = memory_store.load(stored_key(key))
    assert record is not None
    store.reset()
    assert session_data(client) == FILLED
    assert session_key(client) == key
    assert set(store.calls) == {"load"}
    assert memory_store.load(stored_key(key)) == record  # same expiry, same version
    after = client.get_cookie("session")
    assert after is not None
    assert (after.value, after.expires) == (cookie.value, cookie.expires)


def test_session_key_makes_no_store_call(memory_store: SessionStore) -> None:
    store = CountingStore(memory_store)
    app = make_app(store)
    client = app.test_client()
    client.post("/fill")
    store.reset()
    assert session_key(client) == key_in_cookie(client)
    assert store.total == 0


def test_decrypts_as_the_app_does(memory_store: SessionStore) -> None:
    app = make_app(memory_store, SESSION_ENCRYPTION_KEY=generate_key())
    client = app.test_client()
    client.post("/fill")
    record = memory_store.load(stored_key(key_in_cookie(client)))
    assert record is not None
    assert b"apple" not in record.payload  # encrypted at rest
    assert session_data(client) == FILLED


def test_decodes_with_the_apps_serializer(memory_store: SessionStore) -> None:
    app = make_app(memory_store, SESSION_SERIALIZER="json")
    client = app.test_client()
    client.post("/simple")
    record = memory_store.load(stored_key(key_in_cookie(client)))
    assert record is not None
    assert b'"apple"' in record.payload  # JSON, not MessagePack
    data = session_data(client)
    assert data == {
        "cart": ["apple"],
        "_flashes": [("message", Markup("<b>added</b>"))],
    }
    assert type(data["_flashes"][0][1]) is Markup


def test_no_live_session_reads_as_empty(memory_store: SessionStore) -> None:
    app = make_app(memory_store)
    client = app.test_client()
    client.post("/fill")
    key = key_in_cookie(client)
    # A forged signature: no key, no data.
    forged = app.test_client()
    forged.set_cookie("session", f"{key}.forged")
    assert session_key(forged) is None
    assert session_data(forged) == {}
    # A record gone from the store (expired, revoked): the cookie still
    # names the key, but there is no data.
    copied = app.test_client()
    copied.set_cookie("session", t.cast(t.Any, client.get_cookie("session")).value)
    memory_store.delete(stored_key(key))
    assert session_key(copied) == key
    assert session_data(copied) == {}
    # Logged out: the cookie is deleted, nothing is left.
    client.post("/fill")
    client.post("/logout")
    assert client.get_cookie("session") is None
    assert session_key(client) is None
    assert session_data(client) == {}


def test_cookie_settings_and_fallback_keys(memory_store: SessionStore) -> None:
    app = make_app(
        memory_store,
        SESSION_COOKIE_NAME="sid",
        SESSION_COOKIE_PATH="/shop",
        SERVER_NAME="shop.example",
    )
    client = app.test_client()
    client.post("/fill")
    cookie = client.get_cookie("sid", domain="shop.example", path="/shop")
    assert cookie is not None
    assert session_key(client) == cookie.value.partition(".")[0]
    assert session_data(client) == FILLED
    # A cookie signed with a secret key that is now a fallback still reads.
    app.config["SECRET_KEY_FALLBACKS"] = [app.secret_key]
    app.secret_key = "rotated"
    assert session_data(client) == FILLED
    app.config["SECRET_KEY_FALLBACKS"] = []
    assert session_data(client) == {}


def test_the_cookie_found_is_the_one_the_client_would_send(
    memory_store: SessionStore,
) -> None:
    """A cookie set for a parent path or a parent domain is sent, one that
    belongs to another host is not, and the most specific one comes first."""
    app = make_app(memory_store, SESSION_COOKIE_PATH="/shop", SERVER_NAME="a.example")
    client = app.test_client()
    client.post("/fill")
    real = client.get_cookie("session", domain="a.example", path="/shop")
    assert real is not None
    key = real.value.partition(".")[0]
    client.delete_cookie("session", domain="a.example", path="/shop")
    # Set at "/" for the whole domain (Domain=example): sent to /shop too.
    client.set_cookie("session", real.value, domain="example", origin_only=False)
    assert session_key(client) == key
    # Host-only, for another host of the domain: never sent here.
    other = app.test_client()
    other.set_cookie("session", real.value, domain="example")
    assert session_key(other) is None
    # A more specific cookie wins over the domain-wide one.
    client.set_cookie("session", "forged", domain="a.example", path="/shop")
    assert session_key(client) is None


def test_app_given_explicitly(memory_store: SessionStore) -> None:
    app = make_app(memory_store)
    client = app.test_client()
    client.post("/fill")
    other = make_app(memory_store, SECRET_KEY="another secret")
    assert session_data(client, app) == FILLED
    assert session_data(client, other) == {}  # its signature does not check


def test_flask_cookie_session() -> None:
    """``session_data`` reads Flask's own session too, so a test can run on
    both; ``session_key`` has no key to give."""
    app = make_app(None)
    client = app.test_client()
    assert session_data(client) == {}
    client.post("/simple")
    assert session_data(client) == {
        "cart": ["apple"],
        "_flashes": [("message", Markup("<b>added</b>"))],
    }
    with pytest.raises(TypeError, match="not a flask-towersess ServerSession"):
        session_key(client)


def test_client_without_cookies(memory_store: SessionStore) -> None:
    client = make_app(memory_store).test_client(use_cookies=False)
    with pytest.raises(TypeError, match="use_cookies"):
        session_data(client)


def test_no_secret_key(memory_store: SessionStore) -> None:
    app = make_app(memory_store)
    app.secret_key = None
    client = app.test_client()
    assert session_data(client) == {}
    assert session_key(client) is None


def test_docstring_examples_run() -> None:
    result = doctest.testmod(flask_towersess.testing, raise_on_error=False)
    assert result.attempted > 0
    assert result.failed == 0
