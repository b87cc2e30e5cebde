"""Session hygiene: encryption at rest, Flask-Login hooks, cookie prefixes."""

from __future__ import annotations

import base64
import logging
import typing as t

import pytest
from flask import Flask
from flask import flash
from flask import session

from flask_towersess import ServerSession
from flask_towersess.crypto import PayloadCipher
from flask_towersess.crypto import generate_key
from flask_towersess.errors import ConfigurationError
from flask_towersess.session import stored_key
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.memory import MemoryStore

from .apps import add_flask_login
from .apps import session_app
from .helpers import session_key


def make_app(store: SessionStore, **config: t.Any) -> Flask:
    app = session_app(store, SECRET_KEY="s", **config)

    @app.get("/set/<value>")
    def set_(value: str) -> str:
        session["secret"] = value
        return "ok"

    @app.get("/get")
    def get() -> str:
        return repr(session.get("secret"))

    return app


# -- encryption at rest ----------------------------------------------------------


def test_store_holds_no_plaintext(store: SessionStore) -> None:
    app = make_app(store, SESSION_ENCRYPTION_KEY=generate_key())
    client = app.test_client()
    client.get("/set/the-plaintext-marker")
    record = store.load(stored_key(session_key(client)))
    assert record is not None
    assert b"the-plaintext-marker" not in record.payload
    assert record.payload[:1] == b"\xe1"
    assert client.get("/get").data == b"'the-plaintext-marker'"


def test_payload_moved_to_another_key_does_not_open(
    store: SessionStore, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(store, SESSION_ENCRYPTION_KEY=generate_key())
    victim, attacker = app.test_client(), app.test_client()
    victim.get("/set/victim-data")
    attacker.get("/set/attacker-data")
    stolen = store.load(stored_key(session_key(victim)))
    target = store.load(stored_key(session_key(attacker)))
    assert stolen is not None and target is not None
    store.save(
        Record(target.key, stolen.payload, target.expires_at, target.version + 1),
        target.version,
    )
    with caplog.at_level(logging.WARNING, logger="flask_towersess.security"):
        assert attacker.get("/get").data == b"None"
    assert caplog.records


def test_key_rotation() -> None:
    store = MemoryStore()
    old_key, new_key = generate_key(), generate_key()
    client = make_app(store, SESSION_ENCRYPTION_KEY=old_key).test_client()
    client.get("/set/kept")
    cookie = client.get_cookie("session").value
    rotated = make_app(store, SESSION_ENCRYPTION_KEY=[new_key, old_key]).test_client()
    rotated.set_cookie("session", cookie)
    assert rotated.get("/get").data == b"'kept'"
    rotated.get("/set/resealed")  # saved again: sealed with the new key
    only_new = make_app(store, SESSION_ENCRYPTION_KEY=[new_key]).test_client()
    only_new.set_cookie("session", cookie)
    assert only_new.get("/get").data == b"'resealed'"


def test_session_outside_request_with_cipher() -> None:
    cipher = PayloadCipher(generate_key())
    store = MemoryStore()
    session = ServerSession(store, cipher=cipher)
    session["a"] = 1
    session.save()
    assert dict(ServerSession(store, session.session_key, cipher=cipher)) == {"a": 1}
    assert dict(ServerSession(store, session.session_key)) == {}  # no key: unreadable


_GOOD_KEY = bytes(range(1, 33))


@pytest.mark.parametrize(
    "bad",
    [
        "not base64!!",
        "c2hvcnQ=",
        b"short",
        [],
        # 32 characters of text decode to 24 bytes: an AES-192 key in 0.1.
        "a" * 32,
        # Characters outside the alphabet were silently dropped in 0.1.
        base64.urlsafe_b64encode(_GOOD_KEY).decode()[:20]
        + " !"
        + base64.urlsafe_b64encode(_GOOD_KEY).decode()[20:],
        base64.b64encode(_GOOD_KEY).decode() + "\n",
        # One alphabet per key, not a mix of the two.
        "-+" + base64.b64encode(_GOOD_KEY).decode()[2:],
        # 16 and 24 bytes: AES-128 and AES-192 are refused; 33 bytes too.
        base64.b64encode(_GOOD_KEY[:16]).decode(),
        base64.b64encode(_GOOD_KEY[:24]).decode(),
        _GOOD_KEY[:24],
        base64.b64encode(_GOOD_KEY + b"!").decode(),
        # A placeholder is not a secret.
        b"\x00" * 32,
        base64.b64encode(b"k" * 32).decode(),
        42,
    ],
)
def test_bad_encryption_keys(bad: t.Any) -> None:
    with pytest.raises(ConfigurationError, match="SESSION_ENCRYPTION_KEY") as info:
        PayloadCipher(bad)
    if bad != []:
        assert "generate_key()" in str(info.value)  # says how to make one


@pytest.mark.parametrize(
    "good",
    [
        base64.b64encode(_GOOD_KEY).decode(),  # standard alphabet, padded
        base64.urlsafe_b64encode(_GOOD_KEY).decode(),  # URL-safe
        base64.urlsafe_b64encode(_GOOD_KEY).decode().rstrip("="),  # unpadded
        _GOOD_KEY,  # raw bytes
    ],
)
def test_good_encryption_keys_are_one_and_the_same(good: t.Any) -> None:
    sealed = PayloadCipher(_GOOD_KEY).seal(b"payload", "k" * 43)
    assert PayloadCipher(good).open(sealed, "k" * 43) == b"payload"
    assert PayloadCipher(generate_key()).seal(b"x", "k" * 43)


# -- Flask-Login --------------------------------------------------------------


@pytest.fixture
def login_app() -> t.Any:
    flask_login = pytest.importorskip("flask_login")

    def build(**config: t.Any) -> tuple[Flask, MemoryStore]:
        store = MemoryStore()
        app = make_app(store, **config)
        add_flask_login(app).session_protection = "strong"

        @app.post("/logout")
        def logout() -> str:
            flask_login.logout_user()
            flash("bye")
            return "ok"

        return app, store

    return build


def test_login_cycles_the_key(login_app: t.Any) -> None:
    app, store = login_app()
    client = app.test_client()
    client.get("/set/before-login")
    before = session_key(client)
    client.post("/login/ann")
    after = session_key(client)
    assert after != before
    assert store.load(stored_key(before)) is None  # the pre-login ID is dead
    assert client.get("/me").data == b"ann"
    assert client.get("/get").data == b"'before-login'"  # data carried over


def test_logout_flushes_and_clears_remember_cookie(login_app: t.Any) -> None:
    app, store = login_app()
    client = app.test_client()
    client.get("/set/private")
    client.post("/login/ann")
    logged_in = session_key(client)
    assert client.get_cookie("remember_token") is not None
    client.post("/logout")
    assert store.load(stored_key(logged_in)) is None
    assert client.get("/get").data == b"None"  # all data gone, not just Flask-Login's
    assert client.get_cookie("remember_token") is None  # not logged back in
    assert client.get("/me").data == b"anonymous"


def test_flash_after_logout_survives(login_app: t.Any) -> None:
    app, _ = login_app()
    client = app.test_client()
    client.post("/login/ann")
    client.post("/logout")
    assert client.get("/messages").data == b"['bye']"


def test_hooks_can_be_switched_off(login_app: t.Any) -> None:
    app, store = login_app(SESSION_CYCLE_ON_LOGIN=False, SESSION_FLUSH_ON_LOGOUT=False)
    client = app.test_client()
    client.get("/set/kept")
    before = session_key(client)
    client.post("/login/ann")
    assert session_key(client) == before
    client.post("/logout")
    assert client.get("/get").data == b"'kept'"


def test_strong_session_protection_still_works(login_app: t.Any) -> None:
    app, _ = login_app()
    client = app.test_client()
    client.post("/login/ann", headers={"User-Agent": "browser-a"})
    assert client.get("/me", headers={"User-Agent": "browser-a"}).data == b"ann"
    # A stolen cookie used from another client identity is logged out.
    client.delete_cookie("remember_token")
    assert client.get("/me", headers={"User-Agent": "browser-b"}).data == b"anonymous"


# -- cookie prefixes and Secure ---------------------------------------------------


def test_host_prefix_accepted_when_valid() -> None:
    app = make_app(
        MemoryStore(), SESSION_COOKIE_NAME="__Host-session", SESSION_COOKIE_SECURE=True
    )
    response = app.test_client().get("/set/x", base_url="https://localhost")
    header = response.headers["Set-Cookie"]
    assert header.startswith("__Host-session=")
    assert "Secure" in header and "Path=/" in header and "Domain" not in header


@pytest.mark.parametrize(
    "config",
    [
        {"SESSION_COOKIE_NAME": "__Host-s"},
        {
            "SESSION_COOKIE_NAME": "__Host-s",
            "SESSION_COOKIE_SECURE": True,
            "SESSION_COOKIE_DOMAIN": "example.com",
        },
        {
            "SESSION_COOKIE_NAME": "__Host-s",
            "SESSION_COOKIE_SECURE": True,
            "SESSION_COOKIE_PATH": "/app",
        },
        {"SESSION_COOKIE_NAME": "__Secure-s"},
        # Browsers match the prefixes case-insensitively (RFC 6265bis).
        {"SESSION_COOKIE_NAME": "__host-s"},
        {
            "SESSION_COOKIE_NAME": "__HOST-s",
            "SESSION_COOKIE_SECURE": True,
            "SESSION_COOKIE_DOMAIN": "example.com",
        },
        {"SESSION_COOKIE_NAME": "__secure-s"},
        {"SESSION_COOKIE_NAME": "__SeCuRe-s"},
    ],
)
def test_prefix_rules_enforced_at_start_up(config: dict[str, t.Any]) -> None:
    with pytest.raises(ConfigurationError, match="prefix"):
        make_app(MemoryStore(), **config)


def test_warns_when_https_without_secure_cookie(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(MemoryStore())
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="flask_towersess"):
        client.get("/set/x", base_url="https://localhost")
        client.get("/set/y", base_url="https://localhost")
    warnings = [r for r in caplog.records if "SESSION_COOKIE_SECURE" in r.getMessage()]
    assert len(warnings) == 1  # once, not on every request
    caplog.clear()
    secure = make_app(MemoryStore(), SESSION_COOKIE_SECURE=True)
    with caplog.at_level(logging.WARNING, logger="flask_towersess"):
        secure.test_client().get("/set/x", base_url="https://localhost")
    assert not caplog.records
