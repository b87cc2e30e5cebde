"""The WSGI app that ``tests/test_servers.py`` runs under gunicorn and uWSGI.

Real servers fork: a store whose connections were opened before the fork
hands the same socket to every worker, and then one user's request can read
another user's session. This app lets the tests reproduce exactly that, so
it is configured from the environment (a server loads it by name, and
cannot be passed arguments):

- ``TOWERSESS_SERVER_STORE``: the ``SESSION_STORE`` URL, or ``default`` for
  the zero-configuration store (SQLite in the instance folder, migrated on
  first use).
- ``TOWERSESS_SERVER_TABLE``: the SQL table (SQL stores only).
- ``TOWERSESS_SERVER_KEY_PREFIX``: the Redis key prefix, of the store or of
  the cache.
- ``TOWERSESS_SERVER_CACHE``: optional ``SESSION_CACHE`` URL (a Redis cache
  in front of the store: a :class:`~flask_towersess.stores.caching.CachingStore`).
- ``TOWERSESS_SERVER_INSTANCE``: the app's instance folder (absolute path).
- ``TOWERSESS_SERVER_OPEN_IN_PARENT=1``: build the store when this module
  is imported and use it for real (migrate, load, create, delete), so that
  with ``gunicorn --preload`` or uWSGI's default pre-fork mode the store
  has pooled connections in the master before the workers are forked; the
  app then gets that store object rather than a URL.

Load it with ``tests.serverapp:create_app()`` (gunicorn) or
``tests.serverapp:application`` (uWSGI, which wants a callable by name: it
exists only under uWSGI, built when the master imports this module).

Views:

- ``/health?hold=SECONDS``: the worker's pid, after holding the request up
  to a second (so that concurrent ones spread over the workers); never
  touches the session, so it costs no store call and a server that answers
  it has not yet used the store.
- ``/rw?client=ID`` (GET or POST): answers ``{"owner", "n", "pid"}`` with
  the session's owner (``None`` for a new session) and request counter as
  they were before this request, then sets the owner on a new session and
  adds one to the counter, so every request writes.
"""

from __future__ import annotations

import os
import sys
import time
import typing as t
from datetime import timedelta

from flask import Flask
from flask import jsonify
from flask import request
from flask import session

import flask_towersess
from flask_towersess import SessionExt
from flask_towersess.stores import SessionStore
from flask_towersess.stores import store_for

if t.TYPE_CHECKING:
    from flask import Response

STORE_ENV = "TOWERSESS_SERVER_STORE"
TABLE_ENV = "TOWERSESS_SERVER_TABLE"
KEY_PREFIX_ENV = "TOWERSESS_SERVER_KEY_PREFIX"
CACHE_ENV = "TOWERSESS_SERVER_CACHE"
INSTANCE_ENV = "TOWERSESS_SERVER_INSTANCE"
OPEN_IN_PARENT_ENV = "TOWERSESS_SERVER_OPEN_IN_PARENT"

SECRET_KEY = "towersess server tests"
REDIS_SCHEMES = ("redis", "rediss", "unix")


def _log(message: str) -> None:
    # The tests read the server's stderr when they fail; this line says
    # which process did what, and which flask_towersess it imported.
    print(f"serverapp[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def _options(url: str) -> dict[str, t.Any]:
    """The isolation option the store at ``url`` takes: a table or a prefix."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in REDIS_SCHEMES:
        prefix = os.environ.get(KEY_PREFIX_ENV)
        return {"key_prefix": prefix} if prefix else {}
    table = os.environ.get(TABLE_ENV)
    return {"table": table} if table else {}


def _cache_options() -> dict[str, t.Any]:
    prefix = os.environ.get(KEY_PREFIX_ENV)
    return {"key_prefix": prefix} if prefix else {}


def _use_store(store: SessionStore) -> None:
    """Do what an app does at start-up (and what leaves connections pooled):
    migrate, read, write, delete."""
    from flask_towersess.session import new_session_key
    from flask_towersess.stores.base import Record
    from flask_towersess.stores.base import utcnow

    migrating = store.as_migrating()  # Redis and memory have nothing to create
    if migrating is not None:
        migrating.migrate()
    store.load(new_session_key())
    key = new_session_key()
    store.create(Record(key, b"opened in the parent", utcnow() + timedelta(hours=1)))
    assert store.load(key) is not None
    store.delete(key)


def _store_opened_here() -> SessionStore | None:
    """With ``OPEN_IN_PARENT``, the store built and used at import."""
    if os.environ.get(OPEN_IN_PARENT_ENV) != "1":
        return None
    url = os.environ[STORE_ENV]
    store = store_for(url, **_options(url))
    cache_url = os.environ.get(CACHE_ENV)
    if cache_url:
        from flask_towersess.stores.caching import CachingStore

        store = CachingStore(store_for(cache_url, **_cache_options()), store)
    _use_store(store)
    _log(f"opened and used {type(store).__name__} before any fork")
    return store


_log(f"flask_towersess from {flask_towersess.__file__}")
_PARENT_STORE = _store_opened_here()


def create_app() -> Flask:
    url = os.environ.get(STORE_ENV, "default")
    instance = os.environ.get(INSTANCE_ENV)
    app = Flask(__name__, instance_path=instance)
    app.config["SECRET_KEY"] = SECRET_KEY
    if _PARENT_STORE is not None:
        app.config["SESSION_STORE"] = _PARENT_STORE
    elif url != "default":
        app.config["SESSION_STORE"] = url
        app.config["SESSION_STORE_OPTIONS"] = _options(url)
        cache_url = os.environ.get(CACHE_ENV)
        if cache_url:
            app.config["SESSION_CACHE"] = cache_url
            app.config["SESSION_CACHE_OPTIONS"] = _cache_options()
    SessionExt(app)

    @app.get("/health")
    def health() -> str:
        # Held a moment on request, so that several at once spread over the
        # workers: the tests wait until every worker has answered.
        time.sleep(min(float(request.args.get("hold", 0)), 1.0))
        return str(os.getpid())

    @app.route("/rw", methods=["GET", "POST"])
    def read_write() -> Response:
        owner = session.get("owner")
        count = session.get("n", 0)
        if owner is None:
            session["owner"] = request.args["client"]
        session["n"] = count + 1
        return jsonify(owner=owner, n=count, pid=os.getpid())

    _log(f"app created (store {url})")
    return app


try:
    # Importable only inside uWSGI, which takes a WSGI callable by name
    # (an attribute of this module), not a factory call like gunicorn's.
    import uwsgi  # type: ignore[import-not-found]  # noqa: F401
except ImportError:
    pass
else:
    application = create_app()
