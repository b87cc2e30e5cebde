"""The WSGI app that ``benchmarks/load.py`` and ``benchmarks/http.py`` serve
with gunicorn.

``create_app()`` reads its store from the environment:

- ``TOWERSESS_LOAD_STORE``: a store URL (``sqlite:///...``,
  ``postgresql://...``, ``redis://...``) or ``bare`` (the default): the same
  views with no session machinery at all, the baseline.
- ``TOWERSESS_LOAD_TABLE``: the SQL table name (SQL stores only).
- ``TOWERSESS_LOAD_CACHE``: a store URL to put in front of the store as
  ``SESSION_CACHE`` (a :class:`~flask_towersess.stores.CachingStore`), under
  a key prefix of its own; unset, no cache.

Run it by hand with::

    TOWERSESS_LOAD_STORE=bare gunicorn -w 2 'benchmarks.loadapp:create_app()'

Views (``i`` is the benchmark's session index; every response echoes it in
``X-Idx``, so that the load script can tell which session a response
belongs to):

- ``/ping``: readiness check, no session.
- ``/init?i=N``: create session ``N`` with a counter at 0.
- ``/idle?i=N``: never touches the session (the cookie is sent all the same).
- ``/read?i=N``: read the counter.
- ``/write?i=N``: add one to the counter.
- ``/read-shared?i=N``, ``/write-shared?i=N``: read, or add one to, the
  counter ``nN`` of a session shared by every ``N``; each ``N`` has a key of
  its own, so that concurrent writes to the session change different keys
  (which the session merges: none may be lost or refused).
- ``/clear?i=N``: empty the session (its record is deleted).

The views but ``/init`` and ``/idle`` answer 409 when the session is not the
one expected (not session ``N``; for the shared views, no session made by
``/init``): a cookie that lost its session must count as an error, not
create a fresh one.
"""

from __future__ import annotations

import os

from flask import Flask
from flask import Response
from flask import request
from flask import session

from flask_towersess import SessionExt

from .requests import NoSessionInterface

STORE_ENV = "TOWERSESS_LOAD_STORE"
TABLE_ENV = "TOWERSESS_LOAD_TABLE"
CACHE_ENV = "TOWERSESS_LOAD_CACHE"
#: The cache's entries use a private format: keep them apart from any store's.
CACHE_KEY_PREFIX = "towersess-load-cache:"
SQL_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb")


def create_app() -> Flask:
    store = os.environ.get(STORE_ENV, "bare")
    bare = store == "bare"
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "towersess-load-benchmark"
    if bare:
        app.session_interface = NoSessionInterface()
    else:
        app.config["SESSION_STORE"] = store
        table = os.environ.get(TABLE_ENV)
        if table and store.split(":", 1)[0].split("+", 1)[0] in SQL_SCHEMES:
            app.config["SESSION_STORE_OPTIONS"] = {"table": table}
        cache = os.environ.get(CACHE_ENV)
        if cache:
            app.config["SESSION_CACHE"] = cache
            app.config["SESSION_CACHE_OPTIONS"] = {"key_prefix": CACHE_KEY_PREFIX}
        SessionExt(app)

    def index() -> int:
        return int(request.args.get("i", "-1"))

    @app.after_request
    def echo(response: Response) -> Response:
        response.headers["X-Idx"] = request.args.get("i", "")
        return response

    @app.get("/ping")
    def ping() -> str:
        return "ok"

    @app.get("/init")
    def init() -> str:
        if not bare:
            session["idx"] = index()
            session["counter"] = 0
        return "0"

    @app.get("/idle")
    def idle() -> str:
        return "0"

    @app.get("/read")
    def read() -> tuple[str, int]:
        if bare:
            return "0", 200
        if session.get("idx") != index():
            return "wrong session", 409
        return str(session.get("counter", 0)), 200

    @app.get("/write")
    def write() -> tuple[str, int]:
        if bare:
            return "0", 200
        if session.get("idx") != index():
            return "wrong session", 409
        counter = session.get("counter", 0) + 1
        session["counter"] = counter
        return str(counter), 200

    def shared_counter(add: int) -> tuple[str, int]:
        """Add ``add`` to slot ``i``'s key of the shared session (0: only
        read it, so that the session is not written)."""
        if bare:
            return "0", 200
        if "idx" not in session:
            return "no shared session", 409
        key = f"n{index()}"
        counter = session.get(key, 0) + add
        if add:
            session[key] = counter
        return str(counter), 200

    @app.get("/read-shared")
    def read_shared() -> tuple[str, int]:
        return shared_counter(0)

    @app.get("/write-shared")
    def write_shared() -> tuple[str, int]:
        return shared_counter(1)

    @app.get("/clear")
    def clear() -> str:
        if not bare:
            session.clear()
        return "ok"

    return app
