"""A Flask-Login app on a per-user store, shared by the per-user tests.

.. versionadded:: 0.2
"""

from __future__ import annotations

import json
import threading
import typing as t
from datetime import datetime
from datetime import timezone
from http.cookies import SimpleCookie

from flask import Flask
from flask import request
from flask import session
from flask_login import LoginManager
from flask_login import UserMixin
from flask_login import current_user
from flask_login import login_user
from flask_login import logout_user

from flask_towersess import SessionExt
from flask_towersess.session import stored_key

if t.TYPE_CHECKING:
    from flask.testing import FlaskClient
    from werkzeug.test import TestResponse

    from flask_towersess.stores.base import SessionStore

SECRET_KEY = "per-user test secret"
USER_AGENT = "Mozilla/5.0 (per-user tests)"


class User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


class Gate:
    """Holds a view between loading the session and returning, so a test
    can act (revoke) in between."""

    def __init__(self) -> None:
        self.loaded = threading.Event()
        self.go = threading.Event()


def make_app(store: SessionStore, **settings: t.Any) -> Flask:
    """An app on ``store`` with Flask-Login (every user id exists) and
    views that log in and out, read, write and revoke."""
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET_KEY, TESTING=True)
    app.config.update(settings)
    ext = SessionExt(app, store=store)
    manager = LoginManager(app)
    gate = Gate()
    app.extensions["test_gate"] = gate

    @manager.user_loader
    def load_user(user_id: str) -> User:
        return User(user_id)

    @app.post("/login/<user_id>")
    def login(user_id: str) -> str:
        login_user(User(user_id), remember=request.args.get("remember") == "1")
        expiry = request.args.get("expiry")
        if expiry is not None:
            session.set_expiry(_expiry(expiry))  # type: ignore[attr-defined]
        if request.args.get("permanent"):
            session.permanent = True
        return "ok"

    @app.post("/logout")
    def logout() -> str:
        logout_user()
        return "bye"

    @app.get("/me")
    def me() -> str:
        return str(current_user.get_id() or "anonymous")

    @app.post("/write")
    def write() -> str:
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    @app.get("/read")
    def read() -> str:
        return json.dumps(dict(session))

    @app.post("/expiry/<value>")
    def expiry(value: str) -> str:
        session.set_expiry(_expiry(value))  # type: ignore[attr-defined]
        return "ok"

    @app.post("/cycle")
    def cycle() -> str:
        session.cycle_key()  # type: ignore[attr-defined]
        return "ok"

    @app.get("/sessions/<user_id>")
    def sessions(user_id: str) -> str:
        return json.dumps(
            [[info.id, info.current] for info in ext.sessions_for(user_id)]
        )

    @app.post("/revoke/<user_id>")
    def revoke(user_id: str) -> str:
        ended = ext.revoke(
            user_id,
            request.args.get("handle"),
            keep_current=request.args.get("keep") == "1",
        )
        return str(ended)

    @app.post("/slow")
    def slow() -> str:
        # Loads the session, lets the test revoke it, then writes.
        session["before"] = session.get("n")
        gate.loaded.set()
        assert gate.go.wait(10)
        session["after"] = 1
        return "wrote"

    return app


def _expiry(value: str) -> t.Any:
    if value.startswith("at:"):
        return datetime.fromtimestamp(int(value[3:]), timezone.utc)
    return int(value)


def ext_of(app: Flask) -> SessionExt:
    return t.cast(SessionExt, app.extensions["towersess"])


def client_of(app: Flask, user_agent: str = USER_AGENT) -> FlaskClient:
    client = app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = user_agent
    return client


def cookie_key(app: Flask, client: FlaskClient) -> str | None:
    """The session key ``client``'s cookie carries (signed or not)."""
    cookie = client.get_cookie(app.config.get("SESSION_COOKIE_NAME", "session"))
    if cookie is None:
        return None
    if app.config.get("SESSION_USE_SIGNER", True):
        return t.cast(str, cookie.value.rpartition(".")[0])
    return t.cast(str, cookie.value)


def stored_of(app: Flask, client: FlaskClient) -> str:
    key = cookie_key(app, client)
    assert key is not None, "no session cookie"
    return stored_key(key)


def set_cookie(
    app: Flask, response: TestResponse, name: str
) -> SimpleCookie[str] | None:
    """The ``Set-Cookie`` of ``name`` in ``response``, parsed."""
    for header in response.headers.getlist("Set-Cookie"):
        if header.startswith(f"{name}="):
            cookie: SimpleCookie[str] = SimpleCookie()
            cookie.load(header)
            return cookie
    return None


def cookie_value(app: Flask, key: str) -> str:
    """The cookie value the app would give for session key ``key``."""
    interface = app.session_interface
    return t.cast(str, interface._cookie_value(app, key))  # type: ignore[attr-defined]
