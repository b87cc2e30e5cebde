"""The WSGI app that ``benchmarks/load.py`` serves with gunicorn.

``create_app()`` reads its store from the environment:

- ``TOWERSESS_LOAD_STORE``: a store URL (``sqlite:///...``,
  ``postgresql://...``, ``redis://...``) or ``bare`` (the default): the same
  views with no session machinery at all, the baseline.
- ``TOWERSESS_LOAD_TABLE``: the SQL table name (SQL stores only).

Run it by hand with::

    TOWERSESS_LOAD_STORE=bare gunicorn -w 2 'benchmarks.loadapp:create_app()'

Views (``i`` is the benchmark's session index; every response echoes it in
``X-Idx``, and the kind of request in ``X-Op``, so that the load script can
tell which session a response belongs to):

- ``/ping``: readiness check, no session.
- ``/init?i=N``: create session ``N`` with a counter at 0.
- ``/read?i=N``: read the counter.
- ``/write?i=N``: add one to the counter.
- ``/clear?i=N``: empty the session (its record is deleted).

``/read`` and ``/write`` answer 409 when the session does not hold index
``N``: a cookie that lost its session must count as an error, not create a
fresh one.
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
        SessionExt(app)

    def index() -> int:
        return int(request.args.get("i", "-1"))

    @app.after_request
    def echo(response: Response) -> Response:
        response.headers["X-Idx"] = request.args.get("i", "")
        response.headers["X-Op"] = request.path.strip("/")
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

    @app.get("/clear")
    def clear() -> str:
        if not bare:
            session.clear()
        return "ok"

    return app
