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
from .session import current_server_session
from .stores import store_for
from .stores.base import SessionStore

if t.TYPE_CHECKING:
    import sqlalchemy as sa
    from flask import Flask

    from .per_user import SessionInfo

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
        store = self._make_store(app)
        if (
            config.read(app.config, "SESSION_MAX_PER_USER") is not None
            and store.as_per_user() is None
        ):
            raise ConfigurationError(
                f"SESSION_MAX_PER_USER needs a store with a per-user index;"
                f" {store.describe()} keeps none."
            )
        interface = ServerSessionInterface(store, serializer=serializer, cipher=cipher)
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
            from flask_login import user_accessed
            from flask_login import user_logged_out
        except ImportError:
            return
        # A bound method, held weakly by blinker; the extension lives as long
        # as the app, in app.extensions. Log-ins need no signal: every way
        # Flask-Login logs a user in writes the user id into the session,
        # and a changed user id moves the session to a fresh key at save
        # (ServerSession.user_id).
        user_logged_out.connect(self._on_logout, app)
        # Sent first thing whenever Flask-Login loads the user: before it
        # would trust a remember-me cookie.
        user_accessed.connect(self._on_user_accessed, app)

    def _on_user_accessed(self, app: Flask, **kwargs: t.Any) -> None:
        from ._remember import refuse_revoked_cookie

        refuse_revoked_cookie(app, self.get_store(app))

    def _on_logout(self, app: Flask, **kwargs: t.Any) -> None:
        session = current_server_session()
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

    # -- per-user sessions -------------------------------------------------------

    def sessions_for(
        self, user_id: str | int, *, app: Flask | None = None
    ) -> list[SessionInfo]:
        """The live sessions of ``user_id``, most recently active first: a
        device list.

        Never an expired, revoked or anonymous session, whether or not
        ``purge-expired`` ever ran. Inside a request, the request's own
        session has ``current`` set. Works outside a request too (a script,
        a CLI command) with ``app=``.

        .. code-block:: python

            @app.get("/account/sessions")
            @login_required
            def my_sessions():
                ext = current_app.extensions["towersess"]
                return render_template(
                    "sessions.html", sessions=ext.sessions_for(current_user.id)
                )

        :raises ConfigurationError: the store keeps no per-user index
            (:class:`~flask_towersess.stores.PerUserIndex`).
        :raises ValueError: ``user_id`` is not a user id.

        .. versionadded:: 0.2
        """
        from .per_user import list_sessions

        store = self.get_store(app)
        session = current_server_session() if self._is_current(app) else None
        current = session.stored_key if session is not None else None
        return list_sessions(store, user_id, current=current)

    def revoke(
        self,
        user_id: str | int,
        session_id: str | None = None,
        *,
        keep_current: bool = False,
        app: Flask | None = None,
    ) -> int:
        """End one session of ``user_id`` (``session_id``: a
        :attr:`SessionInfo.id <flask_towersess.per_user.SessionInfo.id>`)
        or all of them; return how many ended.

        Effective on the next request in every process sharing the store,
        caches included; a request that read a revoked session before and
        saves after cannot bring it back (it ends with
        :class:`~flask_towersess.SessionInterrupted`). All of a user's
        sessions end in a fixed number of store round trips however many
        there are. A handle only ends a session of the user it is given
        with.

        :param keep_current: keep the session of the request asking ("sign
            out everywhere else"); its remember-me cookie, if it has one,
            stays valid.
        :param app: the app whose store to use, outside a request.

        Revoking all of a user's sessions also stops Flask-Login's
        remember-me cookies issued before it (see :doc:`/per-user`).

        .. versionadded:: 0.2
        """
        from ._remember import remember_duration
        from .per_user import revoke_sessions
        from .per_user import signal_revoked
        from .session import _signal_sender

        target: t.Any = current_app if app is None else app
        store = self.get_store(app)
        session = current_server_session() if self._is_current(app) else None
        current = session.stored_key if session is not None else None
        ended = revoke_sessions(
            store,
            user_id,
            session_id,
            keep=current if keep_current else None,
            remember_for=remember_duration(target),
        )
        signal_revoked(_signal_sender(), (key for key in ended if key != current))
        if session is not None:
            if current is not None and current in ended:
                # This request's own session ended: it must not be saved
                # back (nor fail to be); the cookie goes at the end.
                session.end_revoked()
            elif keep_current and session_id is None:
                session.restamp_remember = True
        return len(ended)

    def _is_current(self, app: Flask | None) -> bool:
        """Whether ``app`` is the app of the request being served."""
        from flask import has_request_context

        if not has_request_context():
            return False
        return app is None or app is current_app._get_current_object()  # type: ignore[attr-defined]


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
