"""Log-in and log-out through Flask-Login, on every store.

Session fixation: an attacker who can plant a session cookie in a victim's
browser (an ordinary anonymous session of their own, say a cart) must not
end up logged in as the victim, by whatever path the victim's identity gets
into that session: ``login_user()``, Flask-Login's remember-me cookie,
``confirm_login()``, or an app writing the user id itself. The defence is
one mechanism: a session whose user id changes (or whose log-in becomes
fresh) moves to a fresh key when it is saved (``ServerSession.user_id``).

Log-out ends the stored session, but keeps what the request wrote before
it: a flashed "signed out" message, a flag that an after-request handler
reads (Flask-Security's ``fs_cc``, which tells it to delete its CSRF cookie).
"""

from __future__ import annotations

import typing as t

import pytest
from flask import Flask
from flask import after_this_request
from flask import flash
from flask import session

from flask_towersess import ServerSession
from flask_towersess.session import stored_key

from .apps import add_flask_login
from .apps import session_app

if t.TYPE_CHECKING:
    from flask_towersess.stores.base import SessionStore

flask_login = pytest.importorskip("flask_login")

REMEMBER = "remember_token"  # Flask-Login's default REMEMBER_COOKIE_NAME


def login_app(store: SessionStore, **config: t.Any) -> Flask:
    """An app as a Flask-Login user writes one: log in with remember-me, a
    page that needs a log-in, a cart anyone can fill, log out."""
    app = session_app(store, SECRET_KEY="auth tests", TESTING=True, **config)
    add_flask_login(app)

    @app.get("/private")
    @flask_login.login_required
    def private() -> str:
        return str(flask_login.current_user.id)

    @app.post("/confirm")
    @flask_login.login_required
    def confirm() -> str:
        flask_login.confirm_login()
        return "ok"

    @app.post("/cart/<item>")
    def add_to_cart(item: str) -> str:
        session.setdefault("cart", []).append(item)
        session.modified = True
        return "ok"

    @app.get("/cart")
    def cart() -> str:
        return repr(session.get("cart"))

    @app.post("/logout")
    def logout() -> str:
        # What Flask-Security's logout does before Flask-Login's: a flag its
        # after-request handler reads, to delete the CSRF cookie.
        flash("You have been signed out")
        session["fs_cc"] = "clear"

        @after_this_request
        def report(response: t.Any) -> t.Any:
            response.headers["X-Fs-Cc"] = str(session.get("fs_cc"))
            return response

        flask_login.logout_user()
        return "ok"

    return app


def key_of(client: t.Any) -> str | None:
    cookie = client.get_cookie("session")
    return None if cookie is None else cookie.value.partition(".")[0]


def cookie_of(client: t.Any) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return str(cookie.value)


# -- fixation -----------------------------------------------------------------------


def test_remember_cookie_login_into_a_planted_session_moves_it(
    store: SessionStore,
) -> None:
    app = login_app(store)
    attacker = app.test_client()
    attacker.post("/cart/book")  # an ordinary anonymous session of their own
    planted = cookie_of(attacker)
    planted_key = key_of(attacker)

    victim = app.test_client()
    victim.post("/login/ann")
    assert victim.get_cookie(REMEMBER) is not None
    # The victim's browser session ended (only the remember-me cookie is
    # left), and the attacker's session cookie is planted in it.
    victim.delete_cookie("session")
    victim.set_cookie("session", planted)
    # Flask-Login restores the user from the remember-me cookie into the
    # planted session.
    assert victim.get("/private").data == b"ann"
    assert key_of(victim) not in (None, planted_key)
    assert victim.get("/cart").data == b"['book']"  # the data moved along
    # The planted key is worth nothing: not logged in, and not even the cart.
    assert attacker.get("/me").data == b"anonymous"
    assert attacker.get("/cart").data == b"None"
    assert store.load(stored_key(planted_key)) is None  # type: ignore[arg-type]


def test_password_login_into_a_planted_session_moves_it(store: SessionStore) -> None:
    app = login_app(store)
    attacker = app.test_client()
    attacker.post("/cart/book")
    victim = app.test_client()
    victim.set_cookie("session", cookie_of(attacker))
    victim.post("/login/ann")
    assert key_of(victim) != key_of(attacker)
    assert victim.get("/private").data == b"ann"
    assert attacker.get("/me").data == b"anonymous"


def test_confirm_login_moves_the_session_again(store: SessionStore) -> None:
    """A session restored from the remember-me cookie is not fresh; when the
    user confirms with a password it becomes fresh, and moves again: whoever
    held its key before must not get the fresh log-in."""
    app = login_app(store)
    client = app.test_client()
    client.post("/login/ann")
    client.delete_cookie("session")
    assert client.get("/private").data == b"ann"  # restored, not fresh
    restored = key_of(client)
    client.post("/confirm")
    assert key_of(client) != restored
    assert store.load(stored_key(restored)) is None  # type: ignore[arg-type]
    assert client.get("/private").data == b"ann"


def test_another_user_logging_in_moves_the_session(store: SessionStore) -> None:
    app = login_app(store)
    client = app.test_client()
    client.post("/login/ann")
    ann = key_of(client)
    client.post("/login/bob")  # no log-out in between
    assert key_of(client) != ann
    assert client.get("/me").data == b"bob"


def test_an_unchanged_user_does_not_move_the_session(store: SessionStore) -> None:
    app = login_app(store)
    client = app.test_client()
    client.post("/login/ann")
    key = key_of(client)
    client.post("/cart/book")
    client.get("/private")
    assert key_of(client) == key


def test_app_setting_user_id_itself_moves_the_session(store: SessionStore) -> None:
    """Without Flask-Login: ``session.user_id`` is the one switch."""
    app = session_app(store, SECRET_KEY="s", TESTING=True)

    @app.post("/anon")
    def anon() -> str:
        session["cart"] = ["book"]
        return "ok"

    @app.post("/login/<name>")
    def login(name: str) -> str:
        t.cast(ServerSession, session).user_id = name
        return "ok"

    @app.get("/whoami")
    def whoami() -> str:
        return repr(t.cast(ServerSession, session).user_id)

    client = app.test_client()
    client.post("/anon")
    before = key_of(client)
    client.post("/login/7")
    assert key_of(client) != before
    assert store.load(stored_key(before)) is None  # type: ignore[arg-type]
    assert client.get("/whoami").data == b"'7'"


def test_moving_on_login_can_be_switched_off(store: SessionStore) -> None:
    app = login_app(store, SESSION_CYCLE_ON_LOGIN=False)
    client = app.test_client()
    client.post("/cart/book")
    before = key_of(client)
    client.post("/login/ann")
    assert key_of(client) == before


# -- log-out -----------------------------------------------------------------------


def test_logout_keeps_what_the_request_wrote_before_it(store: SessionStore) -> None:
    app = login_app(store)
    client = app.test_client()
    client.post("/cart/book")
    client.post("/login/ann")
    logged_in = key_of(client)
    response = client.post("/logout")
    # The after-request handler saw the flag set before logout_user().
    assert response.headers["X-Fs-Cc"] == "clear"
    # The signed-in session is gone, server side, with all it held ...
    assert store.load(stored_key(logged_in)) is None  # type: ignore[arg-type]
    assert key_of(client) not in (None, logged_in)
    assert client.get("/me").data == b"anonymous"
    assert client.get("/cart").data == b"None"
    assert client.get_cookie(REMEMBER) is None  # not logged straight back in
    # ... but the message flashed before the log-out is shown.
    assert client.get("/messages").data == b"['You have been signed out']"
    assert client.get("/messages").data == b"[]"


def test_logout_with_nothing_written_ends_with_no_session(store: SessionStore) -> None:
    app = login_app(store)

    @app.post("/plain-logout")
    def plain_logout() -> str:
        flask_login.logout_user()
        return "ok"

    client = app.test_client()
    client.post("/login/ann")
    client.delete_cookie(REMEMBER)  # nothing for logout_user() to clear
    logged_in = key_of(client)
    client.post("/plain-logout")
    assert client.get_cookie("session") is None  # deleted
    assert store.load(stored_key(logged_in)) is None  # type: ignore[arg-type]


def test_logout_by_clear_before_reading_moves_the_session(store: SessionStore) -> None:
    """A user to anonymous is a change too, even when the view cleared the
    session without reading it first."""
    signed_in = ServerSession(store)
    signed_in.user_id = "alice"
    signed_in.save()
    key = signed_in.session_key
    request = ServerSession(store, key)
    request.clear()
    request["note"] = "signed out"
    request.save()
    assert request.session_key != key
    assert store.load(stored_key(key)) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(("before", "after"), [(b"a", b"b"), (1.5, 2.5), (True, False)])
def test_a_change_between_user_ids_of_other_types_moves_the_session(
    store: SessionStore, before: object, after: object
) -> None:
    first = ServerSession(store)
    first["_user_id"] = before
    first.save()
    key = first.session_key
    second = ServerSession(store, key)
    second["_user_id"] = after
    second.save()
    assert second.session_key != key
