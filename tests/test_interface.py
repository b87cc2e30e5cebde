"""The interface behaves like Flask's cookie session, with data in the store."""

from __future__ import annotations

import typing as t
from datetime import timedelta

import pytest
from flask import Flask
from flask import abort
from flask import flash
from flask import get_flashed_messages
from flask import session
from markupsafe import Markup
from werkzeug.http import parse_date

from flask_towersess import ServerSessionInterface
from flask_towersess import SessionExt
from flask_towersess.errors import SessionInterrupted
from flask_towersess.errors import StoreUnavailable
from flask_towersess.session import stored_key
from flask_towersess.stores.memory import MemoryStore

from .helpers import CountingStore
from .helpers import FailingStore


def add_views(app: Flask) -> None:
    @app.get("/idle")
    def idle() -> str:
        return "idle"

    @app.get("/get/<key>")
    def get(key: str) -> str:
        return repr(session.get(key))

    @app.get("/set/<key>/<value>")
    def set_(key: str, value: str) -> str:
        session[key] = value
        return "ok"

    @app.get("/pop/<key>")
    def pop(key: str) -> str:
        session.pop(key, None)
        return "ok"

    @app.get("/clear")
    def clear() -> str:
        session.clear()
        return "ok"

    @app.get("/flush")
    def flush() -> str:
        session.flush()  # type: ignore[attr-defined]
        return "ok"

    @app.get("/permanent")
    def permanent() -> str:
        session.permanent = True
        session["p"] = 1
        return "ok"

    @app.get("/fail")
    def fail() -> str:
        session["fail"] = 1
        abort(500)

    @app.get("/notfound")
    def notfound() -> str:
        session["nf"] = 1
        abort(404)


@pytest.fixture(autouse=True)
def _views(app: Flask) -> None:
    add_views(app)


def cookie_of(client: t.Any, app: Flask) -> t.Any:
    return client.get_cookie(app.config["SESSION_COOKIE_NAME"])


def test_round_trip(client: t.Any) -> None:
    assert client.get("/set/a/1").data == b"ok"
    assert client.get("/get/a").data == b"'1'"


def test_cookie_carries_only_signed_key(client: t.Any, app: Flask) -> None:
    client.get("/set/secret/sensitive-value")
    value = cookie_of(client, app).value
    assert "sensitive" not in value
    key, _, signature = value.partition(".")
    assert len(key) == 43 and signature
    assert app.session_interface.store.load(stored_key(key)) is not None  # type: ignore[attr-defined]


def test_idle_request_costs_no_store_call(
    client: t.Any, counting_store: CountingStore
) -> None:
    client.get("/set/a/1")
    counting_store.reset()
    response = client.get("/idle")
    assert counting_store.total == 0
    assert "Set-Cookie" not in response.headers
    assert "Cookie" not in response.headers.get("Vary", "")


def test_read_costs_one_load(client: t.Any, counting_store: CountingStore) -> None:
    client.get("/set/a/1")
    counting_store.reset()
    response = client.get("/get/a")
    assert counting_store.calls == {"load": 1}
    assert "Cookie" in response.headers["Vary"]
    assert "Set-Cookie" not in response.headers  # not permanent: nothing to refresh


def test_write_costs_one_read_and_one_write(
    client: t.Any, counting_store: CountingStore
) -> None:
    client.get("/set/a/1")
    assert counting_store.calls == {"create": 1}
    counting_store.reset()
    client.get("/set/b/2")
    assert counting_store.calls == {"load": 1, "save": 1}


def test_new_session_read_costs_nothing(
    client: t.Any, counting_store: CountingStore
) -> None:
    response = client.get("/get/a")
    assert counting_store.total == 0
    assert "Set-Cookie" not in response.headers


@pytest.mark.parametrize(
    ("legacy_keys", "loads"),
    [
        # Only under its hash.
        (False, 1),
        # A key of the length 0.1 made is looked up under its hash, unhashed
        # (a record 0.1 stored), and under its hash again (another request
        # may have moved it in between).
        (True, 3),
        # SESSION_LEGACY_KEYS left unset: the default looks up 0.1's keys.
        (None, 3),
    ],
    ids=["no legacy keys", "legacy keys", "default"],
)
def test_unknown_id_never_becomes_a_session(
    client: t.Any,
    app: Flask,
    counting_store: CountingStore,
    legacy_keys: bool | None,
    loads: int,
) -> None:
    if legacy_keys is not None:
        app.config["SESSION_LEGACY_KEYS"] = legacy_keys
    client.get("/set/a/1")
    key = cookie_of(client, app).value.partition(".")[0]
    counting_store.inner.delete(stored_key(key))
    counting_store.reset()
    response = client.get("/get/a")
    assert response.data == b"None"
    assert counting_store.calls == {"load": loads}  # no record created on load
    assert cookie_of(client, app) is None  # the dangling cookie is removed
    client.get("/set/b/2")
    assert cookie_of(client, app).value.partition(".")[0] != key


def test_session_ending_empty_deletes_cookie_and_record(
    client: t.Any, app: Flask
) -> None:
    client.get("/set/a/1")
    key = cookie_of(client, app).value.partition(".")[0]
    response = client.get("/pop/a")
    assert "Cookie" in response.headers["Vary"]
    assert cookie_of(client, app) is None
    assert app.session_interface.store.load(stored_key(key)) is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["/clear", "/flush"])
def test_clear_and_flush_log_out(client: t.Any, app: Flask, path: str) -> None:
    client.get("/set/a/1")
    key = cookie_of(client, app).value.partition(".")[0]
    client.get(path)
    assert cookie_of(client, app) is None
    assert app.session_interface.store.load(stored_key(key)) is None  # type: ignore[attr-defined]
    assert client.get("/get/a").data == b"None"


def test_copied_cookie_is_dead_after_logout(client: t.Any, app: Flask) -> None:
    client.get("/set/a/1")
    stolen = cookie_of(client, app).value
    client.get("/clear")
    other = app.test_client()
    other.set_cookie(app.config["SESSION_COOKIE_NAME"], stolen)
    assert other.get("/get/a").data == b"None"


def test_nothing_saved_on_5xx(
    client: t.Any, app: Flask, counting_store: CountingStore
) -> None:
    response = client.get("/fail")
    assert response.status_code == 500
    assert "Set-Cookie" not in response.headers
    assert counting_store.calls["create"] == 0
    client.get("/set/a/1")
    counting_store.reset()
    client.get("/fail")
    assert counting_store.calls["save"] == 0


def test_4xx_still_saves(client: t.Any) -> None:
    assert client.get("/notfound").status_code == 404
    assert client.get("/get/nf").data == b"1"


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"SESSION_COOKIE_NAME": "sid"}, "sid="),
        ({"SESSION_COOKIE_DOMAIN": "example.test"}, "Domain=example.test"),
        ({"SESSION_COOKIE_PATH": "/app"}, "Path=/app"),
        ({"SESSION_COOKIE_SECURE": True}, "Secure"),
        ({"SESSION_COOKIE_SAMESITE": "Lax"}, "SameSite=Lax"),
        ({"SESSION_COOKIE_SAMESITE": "Strict"}, "SameSite=Strict"),
        (
            {"SESSION_COOKIE_PARTITIONED": True, "SESSION_COOKIE_SECURE": True},
            "Partitioned",
        ),
        ({}, "HttpOnly"),
    ],
)
def test_cookie_settings(app: Flask, config: dict[str, t.Any], expected: str) -> None:
    app.config.update(config)
    response = app.test_client().get("/set/a/1", base_url="https://example.test")
    header = response.headers["Set-Cookie"]
    assert expected in header
    # the same attributes when the cookie is deleted
    client = app.test_client()
    client.get("/set/a/1", base_url="https://example.test")
    deleted = client.get(
        "/clear",
        base_url="https://example.test" + config.get("SESSION_COOKIE_PATH", ""),
    )
    if config.get("SESSION_COOKIE_PATH"):
        return  # the view is outside the cookie path: no cookie was sent
    assert expected in deleted.headers["Set-Cookie"]
    assert "Expires=Thu, 01 Jan 1970" in deleted.headers["Set-Cookie"]


def test_httponly_off(app: Flask) -> None:
    app.config["SESSION_COOKIE_HTTPONLY"] = False
    assert "HttpOnly" not in app.test_client().get("/set/a/1").headers["Set-Cookie"]


def test_non_permanent_cookie_has_no_expiry(client: t.Any) -> None:
    header = client.get("/set/a/1").headers["Set-Cookie"]
    assert "Expires" not in header


def test_permanent_cookie_expires_with_lifetime(app: Flask) -> None:
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(hours=3)
    client = app.test_client()
    response = client.get("/permanent")
    expires = parse_date(
        response.headers["Set-Cookie"].split("Expires=")[1].split(";")[0]
    )
    from flask_towersess.stores.base import utcnow

    assert abs(expires - (utcnow() + timedelta(hours=3))) < timedelta(minutes=1)  # type: ignore[operator]


def test_session_permanent_config(app: Flask) -> None:
    app.config["SESSION_PERMANENT"] = True
    assert "Expires" in app.test_client().get("/set/a/1").headers["Set-Cookie"]


def test_refresh_each_request(app: Flask, counting_store: CountingStore) -> None:
    client = app.test_client()
    client.get("/permanent")
    # permanent + refresh: an accessed request re-sends the cookie
    assert "Set-Cookie" in client.get("/get/a").headers
    app.config["SESSION_REFRESH_EACH_REQUEST"] = False
    assert "Set-Cookie" not in client.get("/get/a").headers


def test_touch_is_throttled_and_needs_no_extra_read(
    app: Flask, counting_store: CountingStore
) -> None:
    client = app.test_client()
    client.get("/set/a/1")
    counting_store.reset()
    client.get("/get/a")
    assert counting_store.calls == {"load": 1}  # within the interval: no touch
    app.config["SESSION_TOUCH_INTERVAL"] = 0
    counting_store.reset()
    client.get("/get/a")
    assert counting_store.calls == {"load": 1, "touch": 1}
    counting_store.reset()
    client.get("/idle")
    assert counting_store.total == 0
    app.config["SESSION_REFRESH_EACH_REQUEST"] = False
    counting_store.reset()
    client.get("/get/a")
    assert counting_store.calls == {"load": 1}


def test_touch_extends_stored_expiry(app: Flask, counting_store: CountingStore) -> None:
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(seconds=30)
    app.config["SESSION_TOUCH_INTERVAL"] = timedelta(0)
    client = app.test_client()
    client.get("/set/a/1")
    key = cookie_of(client, app).value.partition(".")[0]
    before = counting_store.inner.load(stored_key(key)).expires_at  # type: ignore[union-attr]
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(hours=1)
    client.get("/get/a")
    after = counting_store.inner.load(stored_key(key)).expires_at  # type: ignore[union-attr]
    assert after - before > timedelta(minutes=50)


def test_missing_secret_key_gives_flasks_error(counting_store: CountingStore) -> None:
    app = Flask(__name__)
    SessionExt(app, store=counting_store)
    add_views(app)
    app.testing = True
    with pytest.raises(RuntimeError, match="secret key"):
        app.test_client().get("/set/a/1")
    assert counting_store.total == 0


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("cycle_key", ()),
        ("flush", ()),
        ("set_expiry", (60,)),
        ("save", ()),
        ("create", ()),
        ("load", ()),
        ("delete", ()),
        ("exists", ("k" * 43,)),
        ("end_identity", ()),
        ("get_expiry_age", ()),
        ("get_expiry_date", ()),
        ("get_expire_at_browser_close", ()),
        ("is_empty", ()),
    ],
)
def test_missing_secret_key_gives_flasks_error_for_every_session_method(
    counting_store: CountingStore, name: str, args: tuple[t.Any, ...]
) -> None:
    """The quickstart's own log-in view calls ``session.cycle_key()``: with no
    SECRET_KEY that must be Flask's error, not an AttributeError."""
    app = Flask(__name__)
    SessionExt(app, store=counting_store)
    with app.test_request_context():
        with pytest.raises(RuntimeError, match="no secret key was set"):
            getattr(session, name)(*args)
        for attribute in ("session_key", "user_id"):
            with pytest.raises(RuntimeError, match="no secret key was set"):
                getattr(session, attribute)
        with pytest.raises(RuntimeError, match="no secret key was set"):
            session.user_id = "ann"  # type: ignore[attr-defined]
        assert session.get("a") is None  # reading is allowed, as in Flask
    assert counting_store.total == 0


def test_unsigned_cookies(app: Flask) -> None:
    app.config["SESSION_USE_SIGNER"] = False
    app.secret_key = None
    client = app.test_client()
    client.get("/set/a/1")
    value = cookie_of(client, app).value
    assert "." not in value and len(value) == 43
    assert client.get("/get/a").data == b"'1'"


def test_secret_key_fallbacks(app: Flask) -> None:
    client = app.test_client()
    client.get("/set/a/1")
    old_cookie = cookie_of(client, app).value
    app.config["SECRET_KEY_FALLBACKS"] = [app.secret_key]
    app.secret_key = "rotated secret"
    response = client.get("/get/a")
    assert response.data == b"'1'"
    new_cookie = cookie_of(client, app).value
    assert new_cookie != old_cookie  # re-signed with the current key
    assert new_cookie.partition(".")[0] == old_cookie.partition(".")[0]
    app.config["SECRET_KEY_FALLBACKS"] = []
    assert client.get("/get/a").data == b"'1'"
    other = app.test_client()
    other.set_cookie(app.config["SESSION_COOKIE_NAME"], old_cookie)
    assert other.get("/get/a").data == b"None"


def test_verified_cookies_are_remembered_bounded_and_never_forged(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask_towersess import interface

    monkeypatch.setattr(interface, "VERIFIED_COOKIES_CACHED", 3)
    session_interface = t.cast(ServerSessionInterface, app.session_interface)
    clients = [app.test_client() for _ in range(5)]
    for number, client in enumerate(clients):
        client.get(f"/set/a/{number}")
    for number, client in enumerate(clients):
        assert client.get("/get/a").data == repr(str(number)).encode()
    (verified,) = session_interface._verified.values()
    assert 0 < len(verified) <= 3
    cookie = cookie_of(clients[-1], app).value
    assert cookie in verified  # the last one checked is remembered
    key, _, signature = cookie.partition(".")
    forged_cookie = f"{key}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"
    forged = app.test_client()
    forged.set_cookie(app.config["SESSION_COOKIE_NAME"], forged_cookie)
    assert forged.get("/get/a").data == b"None"
    assert forged_cookie not in verified
    assert all(key == c.partition(".")[0] for c, (key, _) in verified.items())


@pytest.mark.parametrize(
    "cookie_header",
    [
        "session=garbage",
        "session=" + "x" * 5000,
        "session=abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG.forged-signature",
        "session=\u00e9\u00e8" * 10,
        "session=\xff\xfe\x80",  # bytes that are not UTF-8
        "session=a.b.c.d",
        "session=.",
        "session=",
        'session="abc def"',
        "session=aaaaaaaaaaaa; session=bbbbbbbbbbbbbbbbbb.cc",  # many of the same name
    ],
)
def test_bad_cookies_are_ignored_without_store_call(
    app: Flask, counting_store: CountingStore, cookie_header: str
) -> None:
    # use_cookies=False: with a cookie jar, the test client replaces the
    # Cookie header given here by the jar's (empty) one.
    client = app.test_client(use_cookies=False)

    @app.get("/raw-cookie")
    def raw_cookie() -> str:
        from flask import request

        return request.headers.get("Cookie", "")

    echoed = client.get("/raw-cookie", environ_overrides={"HTTP_COOKIE": cookie_header})
    assert echoed.get_data(as_text=True) == cookie_header  # it did reach the app
    response = client.get("/get/a", environ_overrides={"HTTP_COOKIE": cookie_header})
    assert response.status_code == 200
    assert response.data == b"None"
    assert counting_store.total == 0


def test_forged_cookie_for_real_key_is_ignored(
    app: Flask, counting_store: CountingStore
) -> None:
    client = app.test_client()
    client.get("/set/a/1")
    key = cookie_of(client, app).value.partition(".")[0]
    counting_store.reset()
    attacker = app.test_client()
    attacker.set_cookie(
        app.config["SESSION_COOKIE_NAME"],
        key + ".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    assert attacker.get("/get/a").data == b"None"
    attacker.set_cookie(app.config["SESSION_COOKIE_NAME"], key)
    assert attacker.get("/get/a").data == b"None"
    assert counting_store.total == 0


@pytest.mark.parametrize(
    "template",
    [
        "{cookie}",
        "theme=dark; {cookie}; lang=en",
        "  {cookie}  ;x=1",
        'quoted="a;b"; {cookie}',  # through werkzeug's own parser
        "{name}=; {cookie}",  # werkzeug takes the first: an empty value
    ],
)
def test_session_cookie_found_among_others(
    app: Flask, client: t.Any, template: str
) -> None:
    client.get("/set/a/1")
    cookie = cookie_of(client, app)
    name = app.config["SESSION_COOKIE_NAME"]
    header = template.format(cookie=f"{name}={cookie.value}", name=name)
    bare = app.test_client(use_cookies=False)
    response = bare.get("/get/a", environ_overrides={"HTTP_COOKIE": header})
    expected = b"None" if header.startswith(f"{name}=;") else b"'1'"
    assert response.data == expected


def test_session_cookie_read_after_the_view_parsed_cookies(
    app: Flask, client: t.Any
) -> None:
    @app.get("/cookies-first")
    def cookies_first() -> str:
        from flask import request

        assert app.config["SESSION_COOKIE_NAME"] in request.cookies
        return repr(session.get("a"))

    client.get("/set/a/1")
    assert client.get("/cookies-first").data == b"'1'"


def test_request_class_with_its_own_cookies_is_asked(app: Flask) -> None:
    # A request class may decide what the cookies are (decrypting them,
    # say): the session cookie is then taken from it, not from the header.
    from flask import Request
    from werkzeug.datastructures import ImmutableMultiDict

    client = app.test_client()
    client.get("/set/a/1")
    real = cookie_of(client, app)
    name = app.config["SESSION_COOKIE_NAME"]

    class RenamingRequest(Request):
        @property
        def cookies(self) -> ImmutableMultiDict[str, str]:  # type: ignore[override]
            renamed = self.environ.get("HTTP_COOKIE", "").replace("alias=", "")
            return ImmutableMultiDict([(name, renamed)])

    app.request_class = RenamingRequest
    bare = app.test_client(use_cookies=False)
    response = bare.get(
        "/get/a", environ_overrides={"HTTP_COOKIE": f"alias={real.value}"}
    )
    assert response.data == b"'1'"


def test_session_transaction(client: t.Any) -> None:
    with client.session_transaction() as sess:
        sess["a"] = "from test"
    assert client.get("/get/a").data == b"'from test'"
    with client.session_transaction() as sess:
        assert sess["a"] == "from test"
        sess["b"] = 2
    assert client.get("/get/b").data == b"2"


def test_flash_with_markup(app: Flask) -> None:
    @app.get("/flash")
    def do_flash() -> str:
        flash(Markup("<b>saved</b>"), "info")
        return "ok"

    @app.get("/show")
    def show() -> str:
        messages = get_flashed_messages(with_categories=True)
        assert all(isinstance(m, Markup) for _, m in messages)
        return repr(messages)

    client = app.test_client()
    client.get("/flash")
    assert client.get("/show").data == b"[('info', Markup('<b>saved</b>'))]"
    assert client.get("/show").data == b"[]"


def test_interface_on_its_own() -> None:
    app = Flask(__name__)
    app.secret_key = "s"
    app.session_interface = ServerSessionInterface(MemoryStore())
    add_views(app)
    client = app.test_client()
    client.get("/set/a/1")
    assert client.get("/get/a").data == b"'1'"
    assert isinstance(app.session_interface.store, MemoryStore)


def test_interface_accepts_url() -> None:
    interface = ServerSessionInterface("memory://")
    assert isinstance(interface.store, MemoryStore)


def test_record_deleted_during_request_gives_400(
    app: Flask, counting_store: CountingStore
) -> None:
    handled: list[Exception] = []

    @app.errorhandler(SessionInterrupted)
    def interrupted(error: SessionInterrupted) -> tuple[str, int]:
        handled.append(error)
        return "session ended elsewhere", 400

    @app.get("/logout-elsewhere")
    def logout_elsewhere() -> str:
        session["x"] = 1
        counting_store.inner.delete(session.stored_key)  # type: ignore[attr-defined]
        return "ok"

    client = app.test_client()
    client.get("/set/a/1")
    key = cookie_of(client, app).value.partition(".")[0]
    response = client.get("/logout-elsewhere")
    assert response.status_code == 400
    assert response.data == b"session ended elsewhere"
    assert handled
    assert counting_store.inner.load(stored_key(key)) is None  # not resurrected
    assert "Set-Cookie" not in response.headers


def test_store_down_gives_503_and_data_untouched() -> None:
    app = Flask(__name__)
    app.secret_key = "s"
    inner = MemoryStore()
    healthy = ServerSessionInterface(inner)
    app.session_interface = healthy
    add_views(app)
    client = app.test_client()
    client.get("/set/a/1")
    down = ServerSessionInterface(FailingStore(StoreUnavailable("down")))
    app.session_interface = down
    assert client.get("/get/a").status_code == 503
    assert client.get("/set/a/2").status_code == 503
    assert client.get("/idle").status_code == 200  # no session use, no failure
    app.session_interface = healthy
    assert client.get("/get/a").data == b"'1'"  # nobody was logged out


def test_store_down_at_save_gives_503(app: Flask) -> None:
    class DownAtSave(MemoryStore):
        def save(self, record: t.Any, expected_version: int) -> None:
            raise StoreUnavailable("down")

    seen: list[int] = []

    @app.errorhandler(StoreUnavailable)
    def unavailable(error: StoreUnavailable) -> tuple[str, int]:
        seen.append(503)
        return "try later", 503

    store = DownAtSave()
    app.session_interface = ServerSessionInterface(store)
    client = app.test_client()
    client.get("/set/a/1")
    response = client.get("/set/a/2")
    assert response.status_code == 503
    assert response.data == b"try later"
    assert seen == [503]
    assert client.get("/get/a").data == b"'1'"


def test_short_lifetime_is_kept_alive_by_use(
    app: Flask, counting_store: CountingStore
) -> None:
    """A lifetime below SESSION_TOUCH_INTERVAL still refreshes: the touch is
    due after at most half the session's age."""
    from flask_towersess.stores.base import utcnow

    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(seconds=10)
    client = app.test_client()
    client.get("/set/a/1")
    key = cookie_of(client, app).value.partition(".")[0]
    # Six of the ten seconds have passed since the last write.
    counting_store.inner.touch(stored_key(key), utcnow() + timedelta(seconds=4))
    counting_store.reset()
    assert client.get("/get/a").data == b"'1'"
    assert counting_store.calls == {"load": 1, "touch": 1}
    expires_at = counting_store.inner.load(stored_key(key)).expires_at  # type: ignore[union-attr]
    assert expires_at > utcnow() + timedelta(seconds=9)
    # Just after: not due again.
    counting_store.reset()
    client.get("/get/a")
    assert counting_store.calls == {"load": 1}


def test_session_cookie_over_https_without_secure_is_warned_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="s", SESSION_STORE="memory://")
    SessionExt(app)

    @app.post("/set/<value>")
    def set_(value: str) -> str:
        session["v"] = value
        return "ok"

    plain = app.test_client()
    plain.post("/set/a")
    assert "SESSION_COOKIE_SECURE" not in caplog.text
    secure = app.test_client()
    secure.post("/set/a", base_url="https://localhost/")
    secure.post("/set/b", base_url="https://localhost/")
    app.test_client().post("/set/c", base_url="https://localhost/")
    warnings = [r for r in caplog.records if "SESSION_COOKIE_SECURE" in r.message]
    assert len(warnings) == 1
    # With the setting on, nothing to warn about.
    caplog.clear()
    other = Flask(__name__)
    other.config.update(
        SECRET_KEY="s", SESSION_STORE="memory://", SESSION_COOKIE_SECURE=True
    )
    SessionExt(other)
    other.add_url_rule("/set/<value>", view_func=set_, methods=["POST"])
    other.test_client().post("/set/a", base_url="https://localhost/")
    assert "SESSION_COOKIE_SECURE" not in caplog.text
