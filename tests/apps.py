"""Flask apps and views that several test modules build the same way."""

from __future__ import annotations

import typing as t

from flask import Flask
from flask import get_flashed_messages

from flask_towersess import SessionExt

if t.TYPE_CHECKING:
    from flask_towersess.stores.base import SessionStore


def session_app(store: SessionStore | None, **config: t.Any) -> Flask:
    """An app whose session is flask-towersess on ``store`` (``None``: the
    store ``config`` names), with ``config`` over a test secret key."""
    app = Flask(__name__)
    app.config.update({"SECRET_KEY": "test secret", **config})
    SessionExt(app, store=store)
    return app


def add_flask_login(app: Flask) -> t.Any:
    """Flask-Login on ``app``, and the views the log-in tests share; returns
    the ``LoginManager``.

    - ``POST /login/<name>``: logs in the user ``name``, with remember-me;
    - ``GET /me``: the user's id, or ``anonymous``;
    - ``GET /messages``: the flashed messages, as a list's ``repr``.
    """
    import flask_login

    class User(flask_login.UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    manager = flask_login.LoginManager(app)
    manager.user_loader(User)

    @app.post("/login/<name>")
    def login(name: str) -> str:
        flask_login.login_user(User(name), remember=True)
        return "ok"

    @app.get("/me")
    def me() -> str:
        user = flask_login.current_user
        return str(user.id) if user.is_authenticated else "anonymous"

    @app.get("/messages")
    def messages() -> str:
        return repr(get_flashed_messages())

    return manager
