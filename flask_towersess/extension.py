"""The Flask extension: ``SessionExt(app)`` or ``SessionExt().init_app(app)``.

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextlib
import copy
import os
import typing as t
import weakref

from flask import current_app

from . import config
from .config import CONFIG_DEFAULTS
from .errors import ConfigurationError
from .errors import SerializationError
from .interface import ServerSessionInterface
from .serializers import Serializer
from .serializers import serializer_for
from .session import ServerSession
from .stores import store_for
from .stores.base import SessionStore

if t.TYPE_CHECKING:
    import sqlalchemy as sa
    from flask import Flask

#: The file of the zero-configuration SQLite store, in the instance folder.
DEFAULT_SQLITE_FILENAME = "flask_towersess.sqlite3"


class SessionExt:
    """Server-side sessions for a Flask app.

    :param app: the app to set up now; or call :meth:`init_app` later.
    :param store: the store to use, overriding ``SESSION_STORE``.
    :param serializer: the serializer, overriding ``SESSION_SERIALIZER``.

    .. code-block:: python

        app = Flask(__name__)
        app.config["SECRET_KEY"] = "change me"
        SessionExt(app)  # sessions in SQLite in the instance folder

    The extension keeps no reference to an app: one instance can serve
    several apps, each with its own store.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        store: SessionStore | t.Any | None = None,
        serializer: Serializer | None = None,
    ) -> None:
        self._store = store
        self._serializer = serializer
        self._interfaces: weakref.WeakKeyDictionary[Flask, ServerSessionInterface] = (
            weakref.WeakKeyDictionary()
        )
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Install the session interface and the ``flask sessions`` commands.

        Nothing is connected or created here: the store opens connections on
        first use, and only the SQLite default creates its table by itself.

        :raises ConfigurationError: the app is already set up, or the
            configuration names no usable store or serializer.
        """
        if "towersess" in app.extensions:
            raise ConfigurationError(
                "flask-towersess is already set up on this app: call"
                " SessionExt(app) or init_app(app) once per app."
            )
        for key, value in CONFIG_DEFAULTS.items():
            # A copy, so an app that edits its SESSION_STORE_OPTIONS in place
            # does not change the defaults of every other app.
            app.config.setdefault(key, copy.copy(value))
        for key in CONFIG_DEFAULTS:
            # A value of the wrong type fails here, at start-up, naming the
            # setting, rather than in every request that reads it.
            config.read(app.config, key)
        serializer = self._serializer or self._make_serializer(app)
        _check_cookie_prefix(app)
        keys = config.read(app.config, "SESSION_ENCRYPTION_KEY")
        cipher = None
        if keys:
            from .crypto import PayloadCipher

            cipher = PayloadCipher(keys)
        interface = ServerSessionInterface(
            self._make_store(app), serializer=serializer, cipher=cipher
        )
        app.session_interface = interface
        app.extensions["towersess"] = self
        self._interfaces[app] = interface
        self._connect_flask_login(app)

        from .cli import sessions_command

        app.cli.add_command(sessions_command)

    def _connect_flask_login(self, app: Flask) -> None:
        """End the session at Flask-Login's logout, when Flask-Login is
        installed (its signals are sent with the app as sender)."""
        try:
            from flask_login import user_logged_out
        except ImportError:
            return
        # A bound method, held weakly by blinker; the extension lives as long
        # as the app, in app.extensions. Log-ins need no signal: every way
        # Flask-Login logs a user in writes the user id into the session,
        # and a changed user id moves the session to a fresh key at save
        # (ServerSession.user_id).
        user_logged_out.connect(self._on_logout, app)

    def _on_logout(self, app: Flask, **kwargs: t.Any) -> None:
        session = _current_server_session()
        if session is None or not config.read(app.config, "SESSION_FLUSH_ON_LOGOUT"):
            return
        # What logout_user() and the view wrote before it (the request to
        # clear the remember-me cookie, a flash, Flask-Security's "fs_cc")
        # is kept; the signed-in state is not.
        session.end_identity()

    def _make_serializer(self, app: Flask) -> Serializer:
        try:
            return serializer_for(
                config.read(app.config, "SESSION_SERIALIZER"),
                max_size=config.read(app.config, "SESSION_MAX_PAYLOAD_SIZE"),
            )
        except SerializationError as exc:
            # A bad setting is a configuration mistake, found at start-up;
            # SerializationError is for data that cannot be stored.
            raise ConfigurationError(str(exc)) from exc

    def _make_store(self, app: Flask) -> SessionStore:
        value = self._store
        if value is None:
            value = config.read(app.config, "SESSION_STORE")
        options = dict(config.read(app.config, "SESSION_STORE_OPTIONS"))
        store: SessionStore
        if value is None:
            from .stores.sqlalchemy import SQLAlchemyStore

            path = os.path.join(app.instance_path, DEFAULT_SQLITE_FILENAME)
            # The one store that creates its table by itself, on first use:
            # zero configuration must mean zero set-up steps too.
            options.setdefault("auto_migrate", True)
            store = SQLAlchemyStore.from_url(f"sqlite:///{path}", **options)
            _create_folder_on_connect(store.engine, app.instance_path)
        else:
            with _naming_setting("SESSION_STORE"):
                store = store_for(value, **options)
        cache = config.read(app.config, "SESSION_CACHE")
        if cache is not None:
            from .stores.caching import CachingStore

            with _naming_setting("SESSION_CACHE"):
                cache_store = store_for(
                    cache,
                    as_cache=True,
                    **config.read(app.config, "SESSION_CACHE_OPTIONS"),
                )
            # So that its errors name the setting to fix.
            cache_store._setting = "SESSION_CACHE"
            store = CachingStore(
                cache_store,
                store,
                max_age=config.read(app.config, "SESSION_CACHE_MAX_AGE"),
                retry_after=config.read(app.config, "SESSION_CACHE_RETRY_AFTER"),
            )
        return store

    def get_interface(self, app: Flask | None = None) -> ServerSessionInterface:
        """The session interface installed on ``app`` (default: the current app)."""
        # The interfaces are keyed by the app object itself, so unwrap the
        # current_app proxy (given or defaulted): it cannot be weakly referenced.
        target: t.Any = current_app if app is None else app
        if hasattr(target, "_get_current_object"):
            target = target._get_current_object()
        try:
            return self._interfaces[target]
        except KeyError:
            raise ConfigurationError(
                "this SessionExt is not set up on the app: call init_app(app)"
            ) from None

    def get_store(self, app: Flask | None = None) -> SessionStore:
        """The store of ``app`` (default: the current app)."""
        return self.get_interface(app).store


@contextlib.contextmanager
def _naming_setting(setting: str) -> t.Iterator[None]:
    """Prefix a store's refusal of its URL or options with the setting that
    holds them, unless it names it already."""
    try:
        yield
    except ConfigurationError as exc:
        if setting in str(exc):
            raise
        raise ConfigurationError(f"{setting}: {exc}") from exc


def _create_folder_on_connect(engine: sa.engine.Engine, folder: str) -> None:
    """Create ``folder`` right before SQLite opens its file there.

    Flask does not create the instance folder, and SQLite will not create a
    missing directory. Doing it on connect, not at start-up, keeps
    ``init_app`` free of side effects and covers every first use: a request,
    ``flask sessions migrate`` or ``purge-expired`` on a fresh checkout.
    """
    # Imported here, like the SQL store itself: an app on Redis or MongoDB
    # does not need to load SQLAlchemy.
    from sqlalchemy import event

    @event.listens_for(engine, "do_connect")
    def _make_folder(*args: t.Any) -> None:
        os.makedirs(folder, exist_ok=True)


def _current_server_session() -> ServerSession | None:
    from flask import session

    obj = session._get_current_object()  # type: ignore[attr-defined]
    return obj if isinstance(obj, ServerSession) else None


def _check_cookie_prefix(app: Flask) -> None:
    """Browsers drop ``__Host-`` and ``__Secure-`` cookies that break the
    prefix's rules; say so at start-up instead of logging nobody in."""
    name = app.config.get("SESSION_COOKIE_NAME") or ""
    secure = app.config.get("SESSION_COOKIE_SECURE")
    # Browsers match the prefixes case-insensitively (RFC 6265bis).
    prefix = name[:9].lower()
    if prefix.startswith("__host-") and (
        not secure
        or app.config.get("SESSION_COOKIE_DOMAIN")
        or (app.config.get("SESSION_COOKIE_PATH") or "/") != "/"
    ):
        raise ConfigurationError(
            f"SESSION_COOKIE_NAME {name!r} has the __Host- prefix: browsers only"
            " accept it with SESSION_COOKIE_SECURE = True, no"
            " SESSION_COOKIE_DOMAIN and SESSION_COOKIE_PATH = '/'."
        )
    if prefix.startswith("__secure-") and not secure:
        raise ConfigurationError(
            f"SESSION_COOKIE_NAME {name!r} has the __Secure- prefix: browsers only"
            " accept it with SESSION_COOKIE_SECURE = True."
        )
