"""Flask-Login's remember-me cookie held to revocations, through a real
LoginManager app: a cookie issued before a revoke-all logs nobody in
(and Flask-Login clears it), a later one does, one without its companion
(as 0.1.0 issued them) works until the first revoke-all, keep_current keeps
the asking device's, and a forged or borrowed companion does not help.

.. versionadded:: 0.2
"""

from __future__ import annotations

import time
import typing as t

from flask_towersess._remember import _signer

from .per_user_app import client_of
from .per_user_app import ext_of
from .per_user_app import make_app

if t.TYPE_CHECKING:
    from flask.testing import FlaskClient

    from flask_towersess.stores.base import SessionStore

REMEMBER = "remember_token"
ISSUED = "remember_token_issued"


def login(client: FlaskClient, user: str) -> None:
    response = client.post(f"/login/{user}", query_string={"remember": "1"})
    assert response.status_code == 200
    assert client.get_cookie(REMEMBER) is not None
    assert client.get_cookie(ISSUED) is not None


def reopen(client: FlaskClient) -> str:
    """What the browser sees after a restart: the session cookie gone,
    the remember cookie kept."""
    client.delete_cookie("session")
    return client.get("/me").get_data(as_text=True)


def test_a_cookie_issued_before_a_revoke_is_refused_and_cleared(
    per_user_store: SessionStore,
) -> None:
    app = make_app(per_user_store)
    client = client_of(app)
    login(client, "ann")
    assert reopen(client) == "ann"  # the remember cookie works
    # Two: the first session, and the one the remember cookie began.
    assert ext_of(app).revoke("ann", app=app) == 2
    client.delete_cookie("session")
    response = client.get("/me")
    assert response.data == b"anonymous"
    cleared = [
        header
        for header in response.headers.getlist("Set-Cookie")
        if header.startswith(f"{REMEMBER}=;")
    ]
    assert cleared, response.headers  # Flask-Login clears it
    assert client.get_cookie(REMEMBER) is None
    assert ext_of(app).sessions_for("ann", app=app) == []


def test_a_later_login_gives_a_working_cookie(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store)
    old, new = client_of(app), client_of(app)
    login(old, "ann")
    stolen = old.get_cookie(REMEMBER)
    assert stolen is not None
    ext_of(app).revoke("ann", app=app)
    login(new, "ann")
    assert reopen(new) == "ann"
    assert reopen(new) == "ann"
    # The old cookie (the same value Flask-Login issues every time) with
    # its old companion stays refused.
    assert reopen(old) == "anonymous"


def test_a_cookie_without_companion_works_until_the_first_revoke(
    per_user_store: SessionStore,
) -> None:
    """A remember cookie without its companion (as 0.1.0 issued them, or a
    thief's copy left without it) works until the user's first revocation
    of any kind: signing out one device must not leave the same cookie
    value working on it (it is the same on every device)."""
    app = make_app(per_user_store)
    client, other = client_of(app), client_of(app)
    login(client, "ann")
    login(other, "ann")
    client.delete_cookie(ISSUED)  # as 0.1.0 issued it
    assert reopen(client) == "ann"
    client.delete_cookie(ISSUED)
    handle = _handle_of(app, other)
    assert ext_of(app).revoke("ann", handle, app=app) == 1
    client.delete_cookie(ISSUED)
    assert reopen(client) == "anonymous"
    # A login after it issues a cookie with its companion, which works.
    login(client, "ann")
    assert reopen(client) == "ann"


def test_a_cookie_without_companion_is_refused_after_a_revoke_all(
    per_user_store: SessionStore,
) -> None:
    app = make_app(per_user_store)
    client = client_of(app)
    login(client, "ann")
    client.delete_cookie(ISSUED)
    assert reopen(client) == "ann"
    ext_of(app).revoke("ann", app=app)
    client.delete_cookie(ISSUED)
    assert reopen(client) == "anonymous"


def test_keep_current_keeps_this_devices_remember_cookie(
    per_user_store: SessionStore,
) -> None:
    app = make_app(per_user_store)
    mine, theirs = client_of(app), client_of(app)
    login(mine, "ann")
    login(theirs, "ann")
    response = mine.post("/revoke/ann", query_string={"keep": "1"})
    assert response.data == b"1"
    assert whoami_kept(mine) == "ann"
    assert reopen(mine) == "ann"  # its remember cookie still works
    assert reopen(theirs) == "anonymous"


def whoami_kept(client: FlaskClient) -> str:
    return client.get("/me").get_data(as_text=True)


def test_a_forged_companion_is_ignored(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store)
    client = client_of(app)
    login(client, "ann")
    ext_of(app).revoke("ann", app=app)
    far_future = "99999999999999999"
    forgeries = [
        far_future,  # unsigned
        _signer(app).sign("not a number").decode(),
        f"{far_future}.{'A' * 43}",  # a made-up signature
    ]
    with app.app_context():
        other_secret = app.secret_key
        app.secret_key = "another secret"
        forgeries.append(_signer(app).sign(far_future).decode())
        app.secret_key = other_secret
    for forged in forgeries:
        client.set_cookie(ISSUED, forged)
        assert reopen(client) == "anonymous", forged
        remember = client.get_cookie(REMEMBER)
        if remember is None:
            login(client, "ann")
            ext_of(app).revoke("ann", app=app)


def test_a_companion_from_another_users_login_does_not_help(
    per_user_store: SessionStore,
) -> None:
    app = make_app(per_user_store)
    victim, attacker = client_of(app), client_of(app)
    login(victim, "ann")
    stolen = victim.get_cookie(REMEMBER)
    assert stolen is not None
    ext_of(app).revoke("ann", app=app)  # ann signs out everywhere
    # The attacker logs in as themself, after the revoke, and pairs their
    # fresh companion with ann's stolen remember cookie.
    login(attacker, "mallory")
    attacker.set_cookie(REMEMBER, stolen.value)
    assert reopen(attacker) == "anonymous"


def test_signing_out_one_device_stops_its_remember_cookie(
    per_user_store: SessionStore,
) -> None:
    """Revoking one session by its handle also turns away the remember-me
    cookie of that device (Laravel's issue 24857), even after the cookie
    began a new session there; the other device's cookie keeps working."""
    app = make_app(per_user_store)
    phone, laptop = client_of(app), client_of(app)
    login(phone, "ann")
    login(laptop, "ann")
    # A device is named by its session's start, in milliseconds
    # (per_user.device_of): a session begun in the laptop's millisecond would
    # share its name, and revoking it would turn the laptop away too.
    time.sleep(0.002)
    assert reopen(phone) == "ann"  # the phone's cookie began a new session
    phone_session = [
        info
        for info in ext_of(app).sessions_for("ann", app=app)
        if info.id == _handle_of(app, phone)
    ]
    assert len(phone_session) == 1
    assert ext_of(app).revoke("ann", phone_session[0].id, app=app) == 1
    assert reopen(phone) == "anonymous"
    assert phone.get_cookie(REMEMBER) is None  # cleared
    assert reopen(laptop) == "ann"
    assert reopen(laptop) == "ann"


def test_revoke_all_users_stops_cookies_of_users_without_sessions(
    per_user_store: SessionStore,
) -> None:
    """`flask sessions revoke --all` also refuses remember-me cookies of
    users who had no live session at the time; a login after it works."""
    app = make_app(per_user_store)
    ann, bob = client_of(app), client_of(app)
    login(ann, "ann")
    login(bob, "bob")
    bob.delete_cookie("session")
    ext_of(app).revoke("bob", app=app)  # bob: no live session left
    login(bob, "bob")
    bob.post("/logout")  # bob logs out; his new remember cookie stays...
    login(bob, "bob")
    ext_of(app).revoke("bob", keep_current=False, app=app)
    login(bob, "bob")
    bob_cookie_session = bob.get_cookie("session")
    assert bob_cookie_session is not None
    ext_of(app).revoke("bob", app=app)  # no session of bob is live now
    login(bob, "bob")
    assert ext_of(app).revoke("bob", app=app) == 1
    # bob holds a remember cookie issued after his last revoke, and no
    # session: only the everyone-mark can stop it.
    result = app.test_cli_runner().invoke(args=["sessions", "revoke", "--all", "--yes"])
    assert result.exit_code == 0, result.output
    assert reopen(ann) == "anonymous"
    assert reopen(bob) == "anonymous"
    login(bob, "bob")
    assert reopen(bob) == "bob"


def _handle_of(app: t.Any, client: FlaskClient) -> str:
    from flask_towersess.per_user import session_handle
    from flask_towersess.session import stored_key

    from .per_user_app import cookie_key

    key = cookie_key(app, client)
    assert key is not None
    return session_handle(stored_key(key))
