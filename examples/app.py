"""A small but real app on flask-towersess: sign up, log in, count, see
your sessions, log out.

Run it with ``make demo`` (or ``flask --app examples/app.py run``). With no
configuration the sessions live in SQLite in the instance folder; set
``SESSION_STORE`` (for example ``redis://localhost:6379/0``) to try another
store. Users are kept in a small SQLite table of their own, also in the
instance folder, with passwords hashed by ``werkzeug.security``.

What to look at:

- Log-in and log-out go through Flask-Login: ``login_user()`` and
  ``logout_user()``. The extension does the session work on its own: a fresh
  session key at log-in (against session fixation), and the whole session
  deleted at log-out, on the server and in the browser.
- The ``session`` cookie only ever holds a signed session key: look at it in
  the browser's developer tools while you use the page.
- "Your sessions" (``/sessions``) lists every device the user is logged in
  on (``SessionExt.sessions_for``), and signs out one of them or all the
  others (``SessionExt.revoke``): log in from two browsers to try it. It
  posts a session's public handle, never its key. It needs a store with a
  per-user index (every built-in store but memcached).
- Every page is sent with ``Cache-Control: no-store``, so that no cache keeps
  a user's page, and the back button after logging out does not show it.

A real app would also protect its forms against CSRF (Flask-WTF); the
``SameSite=Lax`` cookie set here already keeps other sites from posting them
with the user's session, the sign-out forms included.
"""

from __future__ import annotations

import os
import sqlite3
import typing as t
from urllib.parse import urlsplit

from flask import Flask
from flask import current_app
from flask import flash
from flask import g
from flask import get_flashed_messages
from flask import redirect
from flask import render_template
from flask import request
from flask import session
from flask import url_for
from flask_login import LoginManager
from flask_login import UserMixin
from flask_login import current_user
from flask_login import login_required
from flask_login import login_user
from flask_login import logout_user
from jinja2 import DictLoader
from werkzeug.security import check_password_hash
from werkzeug.security import generate_password_hash
from werkzeug.wrappers import Response

from flask_towersess import SessionExt

if t.TYPE_CHECKING:
    from datetime import datetime

#: The users' table, in ``USERS_DATABASE`` (created on first use).
SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL
)
"""
USERS_FILENAME = "demo_users.sqlite3"
MAX_USERNAME = 40
MIN_PASSWORD = 8

TEMPLATES = {
    "layout.html": """<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>{% block title %}{% endblock %} - flask-towersess demo</title>
<style>
  body { font-family: sans-serif; max-width: 40em; margin: 2em auto; }
  nav form { display: inline; }
  .flash { padding: .5em; background: #e8f0fe; }
  .flash.error { background: #fde8e8; }
  label { display: block; margin: .5em 0; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .3em .5em; border-bottom: 1px solid #ddd; }
  td form { display: inline; }
</style>
<nav>
  <a href="{{ url_for('index') }}">Home</a>
  {% if current_user.is_authenticated %}
    | <a href="{{ url_for('counter') }}">Counter</a>
    | <a href="{{ url_for('my_sessions') }}">Your sessions</a>
    | <form method="post" action="{{ url_for('logout') }}">
        <button id="logout">Log out</button>
      </form>
  {% else %}
    | <a href="{{ url_for('signup') }}">Sign up</a>
    | <a href="{{ url_for('login') }}">Log in</a>
  {% endif %}
</nav>
<h1>{{ self.title() }}</h1>
{% for category, message in messages %}
  <p class="flash {{ category }}">{{ message }}</p>
{% endfor %}
{% block content %}{% endblock %}
</html>
""",
    "index.html": """{% extends "layout.html" %}
{% block title %}flask-towersess demo{% endblock %}
{% block content %}
{% if current_user.is_authenticated %}
  <p>Logged in as <strong id="user">{{ current_user.username }}</strong>.</p>
  <p>Counter: <strong id="count">{{ session.get("counter", 0) }}</strong>
     (<a href="{{ url_for('counter') }}">count</a>)</p>
{% else %}
  <p>Not logged in.</p>
  <p><a href="{{ url_for('signup') }}">Sign up</a> or
     <a href="{{ url_for('login') }}">log in</a> to get a counter.</p>
{% endif %}
{% endblock %}
""",
    "counter.html": """{% extends "layout.html" %}
{% block title %}Counter{% endblock %}
{% block content %}
<p>{{ current_user.username }}, you have loaded this page
   <strong id="count">{{ count }}</strong> time{{ "" if count == 1 else "s" }}.</p>
<p><a href="{{ url_for('counter') }}">Once more</a></p>
{% endblock %}
""",
    "sessions.html": """{% extends "layout.html" %}
{% block title %}Your sessions{% endblock %}
{% block content %}
{% if sessions is none %}
  <p id="no-index">This session store keeps no per-user index, so your
     sessions cannot be listed here. Every built-in store but memcached
     keeps one.</p>
{% else %}
<p id="count-devices">You are logged in on {{ sessions|length }} device{{
   "" if sessions|length == 1 else "s" }}.</p>
<table id="sessions">
  <tr><th>Device</th><th>Signed in</th><th>Last active</th><th>Expires</th>
      <th></th></tr>
  {% for info in sessions %}
  <tr class="session{{ ' current' if info.current }}" data-id="{{ info.id }}">
    <td class="device">{{ info.user_agent or "Unknown device" }}
      {% if info.current %}
      <strong class="this-device">(this device)</strong>{% endif %}</td>
    <td>{{ info.created_at|when }}</td>
    <td>{{ info.last_active_at|when }}</td>
    <td>{{ info.expires_at|when }}</td>
    <td>
    {% if info.current %}
      <form method="post" action="{{ url_for('logout') }}">
        <button class="sign-out">Sign out this device</button>
      </form>
    {% else %}
      <form method="post" action="{{ url_for('revoke_session') }}">
        <input type="hidden" name="id" value="{{ info.id }}">
        <button class="sign-out">Sign out this device</button>
      </form>
    {% endif %}
    </td>
  </tr>
  {% endfor %}
</table>
{% if sessions|length > 1 %}
<form method="post" action="{{ url_for('revoke_other_sessions') }}">
  <p><button id="sign-out-others">Sign out everywhere else</button></p>
</form>
{% endif %}
{% endif %}
{% endblock %}
""",
    "form.html": """{% extends "layout.html" %}
{% block title %}{{ heading }}{% endblock %}
{% block content %}
<form method="post">
  <label>Username <input name="username" value="{{ username }}"
         autocomplete="username" required autofocus></label>
  <label>Password <input name="password" type="password" required
         autocomplete="{{ 'new-password' if new else 'current-password' }}"></label>
  <button id="submit">{{ heading }}</button>
</form>
{% endblock %}
""",
}


class User(UserMixin):
    """A row of the users' table, as Flask-Login wants it."""

    def __init__(self, user_id: int, username: str) -> None:
        self.id = user_id
        self.username = username


def get_db() -> sqlite3.Connection:
    """The users' database for this app context, created on first use."""
    if "users_db" not in g:
        path = current_app.config["USERS_DATABASE"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        db = sqlite3.connect(path)
        db.row_factory = sqlite3.Row
        db.execute(SCHEMA)
        g.users_db = db
    return t.cast(sqlite3.Connection, g.users_db)


def close_db(exc: BaseException | None = None) -> None:
    db = g.pop("users_db", None)
    if db is not None:
        db.close()


def find_user(username: str) -> sqlite3.Row | None:
    row = (
        get_db()
        .execute(
            "SELECT id, username, password_hash FROM users WHERE username = ?",
            (username,),
        )
        .fetchone()
    )
    return t.cast("sqlite3.Row | None", row)


def create_user(username: str, password: str) -> User | None:
    """Add a user; ``None`` if the name is taken."""
    db = get_db()
    try:
        with db:  # a transaction: commit, or roll back on error
            cursor = db.execute(
                "INSERT INTO users (username, password_hash) VALUES (?, ?)",
                (username, generate_password_hash(password)),
            )
    except sqlite3.IntegrityError:
        return None
    assert cursor.lastrowid is not None
    return User(cursor.lastrowid, username)


def load_user(user_id: str) -> User | None:
    """Flask-Login's user loader: the user whose id the session holds."""
    row = (
        get_db()
        .execute("SELECT id, username FROM users WHERE id = ?", (user_id,))
        .fetchone()
    )
    return None if row is None else User(row["id"], row["username"])


def when(moment: datetime | None) -> str:
    """A session's time, as the sessions page shows it."""
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site, never elsewhere."""
    if target:
        parts = urlsplit(target)
        if (
            target.startswith("/")
            and not parts.scheme
            and not parts.netloc
            and "\\" not in target
        ):
            return target
    return url_for("index")


def create_app(
    config: dict[str, t.Any] | None = None, *, instance_path: str | None = None
) -> Flask:
    """Build the demo app.

    :param config: config values that override the defaults and the
        environment (tests pass ``SESSION_STORE`` or ``TESTING`` here).
    :param instance_path: where the default SQLite stores keep their files
        (the sessions and the users); the ``TOWERSESS_INSTANCE_PATH``
        environment variable, or Flask's ``instance/`` folder next to this
        file.
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
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["USERS_DATABASE"] = os.path.join(app.instance_path, USERS_FILENAME)
    if os.environ.get("SESSION_STORE"):
        app.config["SESSION_STORE"] = os.environ["SESSION_STORE"]
    app.config.update(config or {})
    app.jinja_loader = DictLoader(TEMPLATES)
    app.jinja_env.filters["when"] = when

    sessions = SessionExt(app)

    @app.context_processor
    def flashed_messages() -> dict[str, t.Any]:
        # Taken before Flask-Login's own context processor (registered after
        # this one) loads the user: its session protection marks an
        # anonymous visitor's session "not fresh" if it holds anything, such
        # as the message after logging out, and that flag alone would keep
        # the session, and its cookie, alive once the message is shown.
        return {"messages": get_flashed_messages(with_categories=True)}

    login_manager = LoginManager(app)
    login_manager.login_view = "login"
    login_manager.login_message = "Please log in to see that page."
    login_manager.user_loader(load_user)
    app.teardown_appcontext(close_db)

    @app.after_request
    def do_not_cache(response: Response) -> Response:
        # Every page shows session data (the user, the counter, flashed
        # messages): no cache may keep it. This is also what makes the back
        # button, after logging out, ask the server again instead of showing
        # the private page from the browser's cache.
        response.cache_control.no_store = True
        return response

    @app.get("/")
    def index() -> str:
        return render_template("index.html")

    def user_form(heading: str, *, new: bool, status: int = 200) -> tuple[str, int]:
        page = render_template(
            "form.html",
            heading=heading,
            new=new,
            username=request.form.get("username", "").strip(),
        )
        return page, status

    @app.route("/signup", methods=["GET", "POST"])
    def signup() -> Response | tuple[str, int]:
        if request.method == "GET":
            return user_form("Sign up", new=True)
        username = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        errors = []
        if not username:
            errors.append("Please choose a username.")
        elif len(username) > MAX_USERNAME:
            errors.append(f"Usernames have at most {MAX_USERNAME} characters.")
        if len(password) < MIN_PASSWORD:
            errors.append(f"Passwords need at least {MIN_PASSWORD} characters.")
        user = None if errors else create_user(username, password)
        if user is None:
            if not errors:
                errors.append("That username is taken.")
            for error in errors:
                flash(error, "error")
            return user_form("Sign up", new=True, status=400)
        login_user(user)  # the extension gives the session a fresh key
        flash(f"Welcome, {username}! Your account is ready.")
        return redirect(url_for("index"))

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Response | tuple[str, int]:
        if request.method == "GET":
            return user_form("Log in", new=False)
        row = find_user(request.form.get("username", "").strip())
        password = request.form.get("password", "")
        if row is None or not check_password_hash(row["password_hash"], password):
            flash("Unknown username or wrong password.", "error")
            return user_form("Log in", new=False, status=401)
        login_user(User(row["id"], row["username"]))  # a fresh session key
        flash(f"Logged in as {row['username']}.")
        return redirect(safe_next(request.args.get("next")))

    @app.get("/counter")
    @login_required
    def counter() -> str:
        count = session["counter"] = session.get("counter", 0) + 1
        return render_template("counter.html", count=count)

    @app.get("/sessions")
    @login_required
    def my_sessions() -> str:
        # Every device the user is logged in on, most recently active first;
        # the request's own session has `current` set. A store without a
        # per-user index (memcached) cannot list them: say so.
        if sessions.get_store(app).as_per_user() is None:
            return render_template("sessions.html", sessions=None)
        return render_template(
            "sessions.html", sessions=sessions.sessions_for(current_user.id)
        )

    @app.post("/sessions/revoke")
    @login_required
    def revoke_session() -> Response:
        # The form posts the session's public handle: not its key, and it
        # ends nothing when given with another user's id, so the user id
        # comes from the login, never from the form.
        handle = request.form.get("id", "")
        # Never None: revoke(user_id, None) would end all of them.
        if handle and sessions.revoke(current_user.id, handle):
            flash("That device has been signed out.")
        else:
            flash("That session had already ended.", "error")
        return redirect(url_for("my_sessions"))

    @app.post("/sessions/revoke-others")
    @login_required
    def revoke_other_sessions() -> Response:
        ended = sessions.revoke(current_user.id, keep_current=True)
        flash(f"Signed out {ended} other session{'' if ended == 1 else 's'}.")
        return redirect(url_for("my_sessions"))

    @app.post("/logout")
    def logout() -> Response:
        # The extension flushes the session at logout_user(): record and
        # cookie are gone. The message below lives in a fresh session,
        # which ends (record and cookie again) once it has been shown.
        logout_user()
        flash("You have been logged out.")
        return redirect(url_for("index"))

    return app


app = create_app()
