"""A small demo of flask-towersess: log in, count, log out.

Run it with ``make demo`` or ``flask --app examples/app.py run``. With no
configuration the sessions live in SQLite in the instance folder; set
``SESSION_STORE`` (for example ``redis://localhost:6379/0``) to try another
store. The cookie only ever holds a signed session ID: look at it in the
browser's developer tools while you use the page.
"""

from __future__ import annotations

import os
import typing as t

from flask import Flask
from flask import flash
from flask import redirect
from flask import render_template_string
from flask import request
from flask import session
from flask import url_for
from werkzeug.wrappers import Response

from flask_towersess import SessionExt

PAGE = """<!doctype html>
<title>flask-towersess demo</title>
<h1>flask-towersess demo</h1>
{% for message in get_flashed_messages() %}
  <p class="flash">{{ message }}</p>
{% endfor %}
{% if session.get("username") %}
  <p>Logged in as <strong>{{ session["username"] }}</strong>.</p>
  <form method="post" action="{{ url_for('logout') }}">
    <button>Log out</button>
  </form>
{% else %}
  <p>Not logged in.</p>
  <form method="post" action="{{ url_for('login') }}">
    <input name="username" placeholder="your name" autofocus>
    <button>Log in</button>
  </form>
{% endif %}
<p>Counter: <strong id="count">{{ session.get("count", 0) }}</strong></p>
<form method="post" action="{{ url_for('count') }}">
  <button>Count</button>
</form>
"""


def create_app(
    config: dict[str, t.Any] | None = None, *, instance_path: str | None = None
) -> Flask:
    """Build the demo app.

    :param config: config values that override the defaults and the
        environment (tests pass ``SESSION_STORE`` or ``TESTING`` here).
    :param instance_path: where the default SQLite store keeps its file;
        the ``TOWERSESS_INSTANCE_PATH`` environment variable, or Flask's
        ``instance/`` folder next to this file.
    """
    instance_path = instance_path or os.environ.get("TOWERSESS_INSTANCE_PATH")
    app = Flask(
        __name__,
        instance_path=os.path.abspath(instance_path) if instance_path else None,
    )
    # A fixed development key, so sessions survive a restart of the demo.
    # Anyone who knows it can forge session cookies: set SECRET_KEY in the
    # environment for anything that is not a local demo.
    app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "dev, not for production")
    if os.environ.get("SESSION_STORE"):
        app.config["SESSION_STORE"] = os.environ["SESSION_STORE"]
    app.config.update(config or {})
    SessionExt(app)

    @app.get("/")
    def index() -> str:
        return render_template_string(PAGE)

    @app.post("/login")
    def login() -> Response:
        username = request.form.get("username", "").strip()
        if not username:
            flash("Please enter a name to log in.")
            return redirect(url_for("index"))
        # A new session ID at login, so an ID planted before it (session
        # fixation) is worthless afterwards; the counter moves along.
        session.cycle_key()
        session["username"] = username
        flash(f"Logged in as {username}.")
        return redirect(url_for("index"))

    @app.post("/count")
    def count() -> Response:
        session["count"] = session.get("count", 0) + 1
        return redirect(url_for("index"))

    @app.post("/logout")
    def logout() -> Response:
        # flush() deletes the stored record and forgets the ID. The flash
        # below then lives in a fresh session, which ends (record and
        # cookie gone) once the message has been shown.
        session.flush()
        flash("logged out")
        return redirect(url_for("index"))

    return app


app = create_app()
