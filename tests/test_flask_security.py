"""Flask-Security-Too on flask-towersess: a real app, end to end.

Each test runs a user's story against a real Flask-Security-Too app (its
Flask-SQLAlchemy datastore on an in-memory SQLite user database, JSON and
form views, CSRF protection with its ``XSRF-Token`` cookie) whose sessions
live in a flask-towersess store, SQLite and Redis in turn. Each test checks
two things:

- what is ours: the session moves to a fresh key at every log-in and its
  old record is gone from the store; state Flask-Security keeps between
  requests (two-factor, the CSRF cookie flag ``fs_cc``, flashed messages)
  is in the store and survives;
- that Flask-Security does not notice the difference: the same story on
  Flask's own cookie session (no ``SessionExt``) gives the same responses,
  cookies and messages, step by step (``Story.seen``).
"""

from __future__ import annotations

import os
import typing as t

import pytest
from flask import Flask
from flask import flash
from flask import get_flashed_messages

from flask_towersess import SessionExt
from flask_towersess.session import stored_key
from flask_towersess.testing import session_data
from flask_towersess.testing import session_key

from .fixtures_redis import REQUIRE_SERVICES_ENV

if t.TYPE_CHECKING:
    from flask.testing import FlaskClient
    from werkzeug.test import TestResponse

    from flask_towersess.stores.base import SessionStore

try:
    import flask_security
    from flask_security.models import fsqla_v3 as fsqla
    from flask_sqlalchemy import SQLAlchemy
    from flask_wtf import CSRFProtect
except ImportError:  # pragma: no cover - the test extra installs them
    if os.environ.get(REQUIRE_SERVICES_ENV):
        raise
    pytest.skip(
        "Flask-Security-Too is not installed (pip install 'flask-towersess[test]')",
        allow_module_level=True,
    )

pytestmark = pytest.mark.filterwarnings(
    # Flask-Security 5.9's two-factor forms with WTForms 3.3: not ours.
    "ignore:Passing SelectField choices as tuples:DeprecationWarning"
)

# The user database: Flask-Security's own complete models (fsqla v3) on
# Flask-SQLAlchemy. One db object serves every app; each app has its own
# in-memory SQLite database.
db = SQLAlchemy()
fsqla.FsModels.set_db_info(db)


class Role(db.Model, fsqla.FsRoleMixin):  # type: ignore[name-defined]
    pass


class User(db.Model, fsqla.FsUserMixin):  # type: ignore[name-defined]
    pass


EMAIL = "ann@example.com"
PASSWORD = "correct horse battery"
NEW_PASSWORD = "staple battery horse"
#: Asks Flask-Security for JSON (its SPA mode) instead of redirects.
JSON = {"Accept": "application/json"}
#: Cookies a user could see, other than the session cookie itself (whose
#: presence differs by design: the cookie session keeps Flask-Login's
#: leftovers after a log-out, a server-side session is ended).
WATCHED_COOKIES = ("XSRF-Token", "remember_token", "tf_validity")
#: Fields of Flask-Security's JSON answers that are the same on every run.
STABLE_FIELDS = ("tf_required", "tf_state", "tf_method", "errors", "field_errors")

TWO_FACTOR = {
    "SECURITY_TWO_FACTOR": True,
    "SECURITY_TWO_FACTOR_REQUIRED": True,
    "SECURITY_TWO_FACTOR_ENABLED_METHODS": ["authenticator"],
    "SECURITY_TOTP_SECRETS": {"1": "totp secret of the tests"},
    "SECURITY_TOTP_ISSUER": "flask-towersess tests",
}


def security_app(
    store: SessionStore | None, *, session_first: bool = True, **config: t.Any
) -> Flask:
    """A Flask-Security-Too app; its sessions in ``store``, or in Flask's
    own cookie session for ``None``. ``SessionExt`` is set up before
    Flask-Security, or after it with ``session_first=False``."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="flask-security tests",
        TESTING=True,
        SQLALCHEMY_DATABASE_URI="sqlite://",
        # Fast: no hashing work in tests.
        SECURITY_PASSWORD_HASH="plaintext",
        # No mail server: no confirmation mail, no notices, and email
        # addresses are checked without a DNS look-up.
        SECURITY_REGISTERABLE=True,
        SECURITY_SEND_REGISTER_EMAIL=False,
        SECURITY_CHANGEABLE=True,
        SECURITY_SEND_PASSWORD_CHANGE_EMAIL=False,
        SECURITY_EMAIL_VALIDATOR_ARGS={"check_deliverability": False},
        # Flask-Security's CSRF set-up for JavaScript clients: Flask-WTF's
        # token in the session, and in an XSRF-Token cookie that the client
        # sends back in the X-XSRF-Token header; log-in and register are
        # exempt, views that need a log-in are checked.
        WTF_CSRF_CHECK_DEFAULT=False,
        SECURITY_CSRF_IGNORE_UNAUTH_ENDPOINTS=True,
        SECURITY_CSRF_COOKIE_NAME="XSRF-Token",
        SECURITY_FLASH_MESSAGES=True,
    )
    app.config.update(config)
    if store is not None and session_first:
        SessionExt(app, store=store)
    db.init_app(app)
    CSRFProtect(app)  # before Flask-Security, as its docs say
    flask_security.Security(app, flask_security.SQLAlchemyUserDatastore(db, User, Role))
    if store is not None and not session_first:
        SessionExt(app, store=store)
    with app.app_context():
        db.create_all()

    @app.get("/private")
    @flask_security.auth_required()
    def private() -> str:
        return str(flask_security.current_user.email)

    @app.post("/signout")
    def signout() -> str:
        # A view of the app's own: a message, then Flask-Security's logout.
        flash("Signed out")
        flask_security.logout_user()
        return "signed out"

    @app.get("/messages")
    def messages() -> str:
        return repr(get_flashed_messages())

    return app


@pytest.fixture
def make_app() -> t.Iterator[t.Callable[..., Flask]]:
    """``security_app``, closing each app's user database afterwards."""
    apps: list[Flask] = []

    def make(store: SessionStore | None, **config: t.Any) -> Flask:
        app = security_app(store, **config)
        apps.append(app)
        return app

    yield make
    for app in apps:
        with app.app_context():
            db.engine.dispose()


@pytest.fixture(params=["sqlite", "redis"])
def session_store(request: pytest.FixtureRequest) -> SessionStore:
    """The session stores Flask-Security-Too is tested on."""
    return t.cast("SessionStore", request.getfixturevalue(f"{request.param}_store"))


def add_user(app: Flask, password: str = PASSWORD) -> None:
    with app.app_context():
        security = app.extensions["security"]
        security.datastore.create_user(
            email=EMAIL, password=flask_security.hash_password(password)
        )
        db.session.commit()


def user_field(app: Flask, name: str) -> t.Any:
    with app.app_context():
        user = app.extensions["security"].datastore.find_user(email=EMAIL)
        return getattr(user, name)


def totp_code(app: Flask, secret: str) -> str:
    """The authenticator app's current code for ``secret``."""
    with app.app_context():
        return str(
            app.extensions["security"].totp_factory.generate_totp_password(secret)
        )


class Story:
    """What a user sees along a story, step by step, and (on our store) the
    session keys along the way.

    Each step is named: ``story["log in"]`` is what that step saw: the
    status, the redirect target and the stable part of the answer, or the
    cookies the browser holds, or a value read from the session. The same
    story told on Flask's cookie session must see the same (``seen``).
    """

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.on_store = "towersess" in app.extensions
        self.seen: list[tuple[str, t.Any]] = []
        self.keys: dict[str, str | None] = {}
        self.clients: dict[str, FlaskClient] = {}
        self.facts: dict[str, t.Any] = {}

    def __getitem__(self, step: str) -> t.Any:
        return dict(self.seen)[step]

    def note(self, step: str, value: t.Any) -> t.Any:
        assert step not in dict(self.seen), f"step {step!r} told twice"
        self.seen.append((step, value))
        return value

    def see(self, step: str, response: TestResponse) -> TestResponse:
        body: t.Any = response.text
        if response.is_json:
            answer = (response.json or {}).get("response", {})
            body = {k: answer[k] for k in STABLE_FIELDS if k in answer}
        self.note(step, (response.status_code, response.location, body))
        return response

    def see_cookies(self, step: str, client: FlaskClient) -> list[str]:
        """Note which of the watched cookies the browser holds."""
        return t.cast(
            "list[str]",
            self.note(step, [n for n in WATCHED_COOKIES if client.get_cookie(n)]),
        )

    def key(self, name: str, client: FlaskClient) -> str | None:
        """Note the session key ``client`` holds (``None`` off our store)."""
        key = self.keys[name] = session_key(client) if self.on_store else None
        return key


def compare_with_cookie_session(
    tell: t.Callable[[Flask], Story],
    story: Story,
    make_app: t.Callable[..., Flask],
    **config: t.Any,
) -> None:
    """Flask-Security must not notice the difference: the story told on
    Flask's cookie session sees, at every step, what it saw on our store."""
    assert tell(make_app(None, **config)).seen == story.seen


# -- register, then log in ----------------------------------------------------


def register_and_log_in(app: Flask) -> Story:
    story = Story(app)
    newcomer = app.test_client()
    form = {"email": EMAIL, "password": PASSWORD, "password_confirm": PASSWORD}
    story.see("register", newcomer.post("/register", json=form))
    story.see("registered", newcomer.get("/private", headers=JSON))
    story.see("newcomer logs out", newcomer.post("/logout", json={}))

    browser = app.test_client()
    # The log-in form: an anonymous session (Flask-WTF's token, fs_cc).
    story.see("log-in form", browser.get("/login", headers=JSON))
    story.key("anonymous", browser)
    story.see("before log-in", browser.get("/private", headers=JSON))
    login = {"email": EMAIL, "password": PASSWORD}
    story.see("log in", browser.post("/login", json=login))
    story.key("logged in", browser)
    story.see("after log-in", browser.get("/private", headers=JSON))
    story.see_cookies("cookies", browser)
    return story


def test_register_and_log_in_moves_the_session_to_a_fresh_key(
    session_store: SessionStore, make_app: t.Callable[..., Flask]
) -> None:
    app = make_app(session_store)
    story = register_and_log_in(app)
    anonymous, logged_in = story.keys["anonymous"], story.keys["logged in"]
    assert anonymous is not None
    assert logged_in is not None
    assert logged_in != anonymous
    # The pre-login record is gone.
    assert session_store.load(stored_key(anonymous)) is None
    assert session_store.load(stored_key(logged_in)) is not None
    assert story["register"][0] == 200
    assert story["registered"] == (200, None, EMAIL)  # registering logs in
    assert story["before log-in"][0] == 401
    assert story["log in"] == (200, None, {"tf_required": False})
    assert story["after log-in"] == (200, None, EMAIL)
    assert story["cookies"] == ["XSRF-Token"]
    compare_with_cookie_session(register_and_log_in, story, make_app)


# -- two-factor ------------------------------------------------------------------


def log_in_with_two_factor(app: Flask) -> Story:
    """Set up an authenticator while logging in (two-factor is required),
    then log in again with it, from another browser."""
    add_user(app)
    story = Story(app)
    browser = app.test_client()
    login = {"email": EMAIL, "password": PASSWORD, "remember": True}
    story.see("password", browser.post("/login", json=login))
    story.key("password", browser)
    story.note("state after password", session_data(browser).get("tf_state"))
    story.see("between the steps", browser.get("/private", headers=JSON))
    setup = {"setup": "authenticator"}
    story.see("set up", browser.post("/tf-setup", json=setup))
    story.key("set up", browser)
    # Flask-Security keeps the new secret in the session until a code
    # made from it checks out.
    code = totp_code(app, session_data(browser)["tf_totp_secret"])
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    story.see("wrong code", browser.post("/tf-validate", json={"code": wrong}))
    story.key("wrong code", browser)
    story.see("code", browser.post("/tf-validate", json={"code": code}))
    story.key("logged in", browser)
    story.see("after log-in", browser.get("/private", headers=JSON))
    tf_left = sorted(k for k in session_data(browser) if k.startswith("tf_"))
    story.note("two-factor state left", tf_left)
    # remember-me was asked for at the password step, two requests before.
    story.see_cookies("cookies", browser)

    other = app.test_client()
    login = {"email": EMAIL, "password": PASSWORD}
    story.see("second password", other.post("/login", json=login))
    story.key("second password", other)
    code = totp_code(app, user_field(app, "tf_totp_secret"))
    story.see("second code", other.post("/tf-validate", json={"code": code}))
    story.key("second logged in", other)
    story.see("after second log-in", other.get("/private", headers=JSON))
    return story


def test_two_factor_state_survives_between_steps_and_login_moves_the_key(
    session_store: SessionStore, make_app: t.Callable[..., Flask]
) -> None:
    app = make_app(session_store, **TWO_FACTOR)
    story = log_in_with_two_factor(app)
    keys = story.keys
    # Between the password step and the code step the session is anonymous:
    # one record carries the two-factor state, through a wrong code too.
    pending = keys["password"]
    assert pending is not None
    assert keys["set up"] == keys["wrong code"] == pending
    # The code step logs in: a fresh key, and the pending record is gone.
    assert keys["logged in"] not in (None, pending)
    assert session_store.load(stored_key(pending)) is None
    second = keys["second password"]
    assert second is not None
    assert keys["second logged in"] not in (None, second)
    assert session_store.load(stored_key(second)) is None

    assert story["password"] == (
        200,
        None,
        {"tf_required": True, "tf_state": "setup_from_login"},
    )
    assert story["state after password"] == "setup_from_login"
    assert story["between the steps"][0] == 401
    assert story["set up"][2]["tf_state"] == "validating_profile"
    assert story["wrong code"][0] == 400
    assert story["code"][0] == 200
    assert story["after log-in"] == (200, None, EMAIL)
    assert story["two-factor state left"] == []
    assert "remember_token" in story["cookies"]
    assert story["second password"][2]["tf_state"] == "ready"
    assert story["second code"][0] == 200
    assert story["after second log-in"] == (200, None, EMAIL)
    compare_with_cookie_session(log_in_with_two_factor, story, make_app, **TWO_FACTOR)


# -- remember-me -----------------------------------------------------------------


def log_in_again_by_remember_cookie(app: Flask) -> Story:
    """The browser session ends, the remember-me cookie stays; an attacker
    has planted a session cookie of their own in the browser meanwhile."""
    add_user(app)
    story = Story(app)
    attacker = app.test_client()
    story.see("attacker", attacker.get("/login", headers=JSON))  # anonymous
    story.key("planted", attacker)
    planted = attacker.get_cookie("session")
    assert planted is not None

    victim = app.test_client()
    form = {"email": EMAIL, "password": PASSWORD, "remember": "y"}
    story.see("log in", victim.post("/login", data=form))  # the HTML form
    story.see_cookies("cookies", victim)
    victim.delete_cookie("session")  # the browser session ends
    victim.set_cookie("session", planted.value)
    story.see("remembered", victim.get("/private", headers=JSON))
    story.key("remembered", victim)
    story.see("next request", victim.get("/private", headers=JSON))
    story.see("attacker after", attacker.get("/private", headers=JSON))
    return story


def test_remember_cookie_logs_in_again_under_a_fresh_key(
    session_store: SessionStore, make_app: t.Callable[..., Flask]
) -> None:
    app = make_app(session_store)
    story = log_in_again_by_remember_cookie(app)
    planted, remembered = story.keys["planted"], story.keys["remembered"]
    assert planted is not None
    assert remembered not in (None, planted)
    assert session_store.load(stored_key(planted)) is None
    assert story["log in"][:2] == (302, "/")
    assert story["cookies"] == ["XSRF-Token", "remember_token"]
    assert story["remembered"] == (200, None, EMAIL)  # by the remember cookie
    assert story["next request"] == (200, None, EMAIL)
    assert story["attacker after"][0] == 401  # the planted key got nothing
    compare_with_cookie_session(log_in_again_by_remember_cookie, story, make_app)


# -- logout ------------------------------------------------------------------------


def deleted_cookies(response: TestResponse) -> list[str]:
    """The cookies ``response`` deletes, but the session cookie."""
    return sorted(
        header.partition("=")[0]
        for header in response.headers.getlist("Set-Cookie")
        if "Max-Age=0" in header and not header.startswith("session=")
    )


def log_out(app: Flask) -> Story:
    """Log out by the app's own view (a message, then Flask-Security's
    ``logout_user()``), then by Flask-Security's logout view."""
    add_user(app)
    story = Story(app)
    browser = app.test_client()
    login = {"email": EMAIL, "password": PASSWORD, "remember": True}
    story.see("log in", browser.post("/login", json=login))
    story.see_cookies("logged in", browser)
    story.key("logged in", browser)
    response = story.see("sign out", browser.post("/signout"))
    story.note("deleted at sign-out", deleted_cookies(response))
    story.see_cookies("signed out", browser)
    story.key("signed out", browser)
    story.see("after sign-out", browser.get("/private", headers=JSON))
    story.see("messages", browser.get("/messages"))
    story.see("messages again", browser.get("/messages"))

    login = {"email": EMAIL, "password": PASSWORD}
    story.see("log in again", browser.post("/login", json=login))
    story.see_cookies("logged in again", browser)
    story.key("logged in again", browser)
    response = story.see("log out", browser.post("/logout", json={}))
    story.note("deleted at log-out", deleted_cookies(response))
    story.see_cookies("logged out", browser)
    story.key("logged out", browser)
    story.see("after log-out", browser.get("/private", headers=JSON))
    return story


@pytest.mark.parametrize(
    "session_first", [True, False], ids=["SessionExt first", "Security first"]
)
def test_logout_deletes_the_csrf_cookie_and_keeps_the_flash(
    session_store: SessionStore,
    make_app: t.Callable[..., Flask],
    session_first: bool,
) -> None:
    app = make_app(session_store, session_first=session_first)
    story = log_out(app)
    assert story["logged in"] == ["XSRF-Token", "remember_token"]
    # logout_user() set fs_cc = "clear"; the flag outlived the session it
    # was written in, so Flask-Security's after-request handler deleted its
    # CSRF cookie (and Flask-Login the remember cookie).
    assert story["sign out"] == (200, None, "signed out")
    assert story["deleted at sign-out"] == ["XSRF-Token", "remember_token"]
    assert story["signed out"] == []
    assert story["after sign-out"][0] == 401
    # The message flashed before the log-out is shown, once.
    assert story["messages"] == (200, None, "['Signed out']")
    assert story["messages again"] == (200, None, "[]")
    # The same through Flask-Security's own logout view.
    assert story["logged in again"] == ["XSRF-Token"]
    assert story["log out"][0] == 200
    assert story["deleted at log-out"] == ["XSRF-Token"]
    assert story["logged out"] == []
    assert story["after log-out"][0] == 401
    # The signed-in sessions are gone from the store.
    for name in ("logged in", "logged in again"):
        key = story.keys[name]
        assert key is not None
        assert session_store.load(stored_key(key)) is None
    # The sign-out left a new session, holding the message; Flask-Security's
    # logout wrote only fs_cc, which its handler consumed: no session left.
    assert story.keys["signed out"] not in (None, story.keys["logged in"])
    assert story.keys["logged out"] is None
    compare_with_cookie_session(log_out, story, make_app)


# -- change password -----------------------------------------------------------------


def change_password(app: Flask) -> Story:
    """Change the password in one browser, while logged in in another."""
    add_user(app)
    story = Story(app)
    story.facts["uniquifier"] = user_field(app, "fs_uniquifier")
    browser = story.clients["browser"] = app.test_client()
    elsewhere = app.test_client()
    login = {"email": EMAIL, "password": PASSWORD}
    story.see("log in", browser.post("/login", json=login))
    story.see("log in elsewhere", elsewhere.post("/login", json=login))
    story.key("before", browser)
    change = {
        "password": PASSWORD,
        "new_password": NEW_PASSWORD,
        "new_password_confirm": NEW_PASSWORD,
    }
    story.see("without CSRF token", browser.post("/change", json=change))
    token = browser.get_cookie("XSRF-Token")
    assert token is not None
    csrf = {"X-XSRF-Token": token.value}  # as a JavaScript client sends it
    story.facts["csrf before"] = session_data(browser)["csrf_token"]
    story.see("change", browser.post("/change", json=change, headers=csrf))
    story.key("after", browser)
    story.facts["csrf after"] = session_data(browser)["csrf_token"]
    story.see("after change", browser.get("/private", headers=JSON))
    story.see("elsewhere", elsewhere.get("/private", headers=JSON))
    for password in (PASSWORD, NEW_PASSWORD):
        login = {"email": EMAIL, "password": password}
        story.see(password, app.test_client().post("/login", json=login))
    return story


def test_change_password_keeps_the_user_logged_in_under_a_fresh_key(
    session_store: SessionStore, make_app: t.Callable[..., Flask]
) -> None:
    app = make_app(session_store)
    story = change_password(app)
    before, after = story.keys["before"], story.keys["after"]
    # Flask-Security changes the user's fs_uniquifier (Flask-Login's user
    # id, which ends every other session of the user) and logs the user in
    # again: a new identity in this session, so a fresh key.
    uniquifier = user_field(app, "fs_uniquifier")
    assert uniquifier != story.facts["uniquifier"]
    assert before is not None
    assert after is not None
    assert after != before
    assert session_store.load(stored_key(before)) is None
    assert session_store.load(stored_key(after)) is not None
    assert session_data(story.clients["browser"])["_user_id"] == uniquifier
    # Flask-WTF's token moved along with the rest of the session.
    assert story.facts["csrf after"] == story.facts["csrf before"]
    assert story["without CSRF token"][0] == 400  # the token is checked ...
    assert story["change"][0] == 200  # ... and the XSRF-Token cookie's passes
    assert story["after change"] == (200, None, EMAIL)  # still logged in
    assert story["elsewhere"][0] == 401  # other sessions end
    assert story[PASSWORD][0] == 400
    assert story[NEW_PASSWORD][0] == 200
    compare_with_cookie_session(change_password, story, make_app)
