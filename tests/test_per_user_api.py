"""The per-user API through a real Flask-Login app: the device list
(``SessionExt.sessions_for``), ``SessionExt.revoke`` and
``SESSION_MAX_PER_USER``, on every store with a per-user index.

.. versionadded:: 0.2
"""

from __future__ import annotations

import json
import threading
import time
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from email.utils import parsedate_to_datetime

import pytest

from flask_towersess import SessionExt
from flask_towersess.errors import ConfigurationError
from flask_towersess.per_user import session_handle
from flask_towersess.signals import session_ended
from flask_towersess.stores.memory import MemoryStore

from .per_user_app import USER_AGENT
from .per_user_app import client_of
from .per_user_app import cookie_key
from .per_user_app import cookie_value
from .per_user_app import ext_of
from .per_user_app import make_app
from .per_user_app import set_cookie
from .per_user_app import stored_of

if t.TYPE_CHECKING:
    from flask import Flask
    from flask.testing import FlaskClient

    from flask_towersess.stores.base import SessionStore


def login(client: FlaskClient, user: str, **query: str) -> t.Any:
    response = client.post(f"/login/{user}", query_string=query)
    assert response.status_code == 200, response.data
    return response


def whoami(client: FlaskClient) -> str:
    return client.get("/me").get_data(as_text=True)


def handles(app: Flask, user: str) -> list[str]:
    return [info.id for info in ext_of(app).sessions_for(user, app=app)]


# -- identity and the index -----------------------------------------------------


def test_login_lists_the_session(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store)
    client = client_of(app)
    before = datetime.now(timezone.utc).replace(microsecond=0)
    response = login(client, "ann", permanent="1")
    after = datetime.now(timezone.utc)
    [info] = ext_of(app).sessions_for("ann", app=app)
    assert info.id == session_handle(stored_of(app, client))
    assert info.user_id == "ann"
    assert info.created_at is not None and before <= info.created_at <= after
    assert info.last_active_at is not None
    assert before <= info.last_active_at <= after
    assert info.user_agent == USER_AGENT
    assert info.ip is None  # SESSION_RECORD_IP is off by default
    assert info.current is False  # asked outside any request
    cookie = set_cookie(app, response, "session")
    assert cookie is not None
    expires = parsedate_to_datetime(cookie["session"]["expires"])
    assert abs((info.expires_at - expires).total_seconds()) <= 1
    # Inside a request of that session, it is the current one.
    listed = json.loads(client.get("/sessions/ann").data)
    assert listed == [[info.id, True]]
    assert json.loads(client_of(app).get("/sessions/ann").data) == [[info.id, False]]


def test_user_agent_is_bounded_and_printable(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store)
    client = client_of(app, "Mozilla\x7f/5.0\t(X)" + "y" * 400)
    login(client, "ann")
    [info] = ext_of(app).sessions_for("ann", app=app)
    assert info.user_agent is not None
    assert info.user_agent.startswith("Mozilla/5.0(X)y")
    assert len(info.user_agent) <= 256
    assert info.user_agent.isprintable()


def test_ip_only_with_record_ip(per_user_store: SessionStore) -> None:
    for record_ip, expected in ((False, None), (True, "203.0.113.7")):
        app = make_app(per_user_store, SESSION_RECORD_IP=record_ip)
        client = client_of(app)
        client.environ_base["REMOTE_ADDR"] = "203.0.113.7"
        login(client, f"ip-{record_ip}")
        [info] = ext_of(app).sessions_for(f"ip-{record_ip}", app=app)
        assert info.ip == expected


def test_no_user_agent_without_the_setting(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store, SESSION_RECORD_USER_AGENT=False)
    login(client_of(app), "ann")
    [info] = ext_of(app).sessions_for("ann", app=app)
    assert info.user_agent is None


def test_anonymous_sessions_are_never_listed(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store)
    client = client_of(app)
    assert client.post("/write").status_code == 200
    record = per_user_store.load(stored_of(app, client))
    assert record is not None and record.user_id is None
    login(client, "ann")
    client.post("/logout")
    client.post("/write")
    assert handles(app, "ann") == []
    record = per_user_store.load(stored_of(app, client))
    assert record is not None and record.user_id is None


def test_login_as_another_user_moves_it(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store)
    client = client_of(app)
    login(client, "ann")
    assert len(handles(app, "ann")) == 1
    login(client, "bob")
    assert handles(app, "ann") == []
    assert handles(app, "bob") == [session_handle(stored_of(app, client))]


def test_logout_removes_it(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store)
    client = client_of(app)
    login(client, "ann")
    assert client.post("/logout").status_code == 200
    assert handles(app, "ann") == []


def test_login_logout_cycles_leave_no_index_entry() -> None:
    store = MemoryStore()
    app = make_app(store)
    client = client_of(app)
    for number in range(1000):
        login(client, f"user{number % 7}")
        client.post("/logout")
    assert store._by_user == {}
    # What is left: at most the anonymous session the logout kept.
    assert all(record.user_id is None for record in store._records.values())


def test_created_at_survives_cycle_key(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store)
    client = client_of(app)
    login(client, "ann")
    [first] = ext_of(app).sessions_for("ann", app=app)
    time.sleep(1.1)  # created_at is kept in whole seconds
    assert client.post("/cycle").status_code == 200
    [after] = ext_of(app).sessions_for("ann", app=app)
    assert after.id != first.id  # a new key, so a new handle
    assert after.created_at == first.created_at
    assert after.last_active_at is not None and first.last_active_at is not None
    assert after.last_active_at > first.last_active_at


def test_last_active_moves_on_writes_and_touches(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store, SESSION_TOUCH_INTERVAL=timedelta(seconds=1))
    client = client_of(app)
    login(client, "ann")
    [first] = ext_of(app).sessions_for("ann", app=app)
    assert whoami(client) == "ann"
    [read] = ext_of(app).sessions_for("ann", app=app)
    assert read.last_active_at == first.last_active_at  # a read: no write
    time.sleep(0.05)
    client.post("/write")
    [written] = ext_of(app).sessions_for("ann", app=app)
    assert written.last_active_at is not None and first.last_active_at is not None
    assert written.last_active_at > first.last_active_at
    time.sleep(1.1)  # the touch interval passes
    assert whoami(client) == "ann"
    [touched] = ext_of(app).sessions_for("ann", app=app)
    assert touched.last_active_at is not None
    assert touched.last_active_at > written.last_active_at
    assert touched.expires_at > written.expires_at


def _cookie_deadline(app: Flask, response: t.Any) -> datetime | None:
    cookie = set_cookie(app, response, "session")
    assert cookie is not None, response.headers
    expires = cookie["session"]["expires"]
    return parsedate_to_datetime(expires) if expires else None


@pytest.mark.parametrize(
    "query",
    [
        {"expiry": "600"},
        {"expiry": "at:IN_AN_HOUR"},
        {"expiry": "0"},
        {"permanent": "1"},
        {},
    ],
    ids=["int", "datetime", "browser-close", "permanent", "default"],
)
@pytest.mark.parametrize("absolute", [None, 300], ids=["plain", "absolute"])
def test_expires_at_is_the_cookie_deadline(
    per_user_store: SessionStore, query: dict[str, str], absolute: int | None
) -> None:
    app = make_app(
        per_user_store,
        SESSION_ABSOLUTE_LIFETIME=absolute,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=2),
    )
    if query.get("expiry") == "at:IN_AN_HOUR":
        query = {"expiry": f"at:{int(time.time()) + 3600}"}
    client = client_of(app)
    now = datetime.now(timezone.utc)
    response = login(client, "ann", **query)
    [info] = ext_of(app).sessions_for("ann", app=app)
    deadline = _cookie_deadline(app, response)
    if query.get("expiry") == "0" or not query:
        # A browser-session cookie: the record lives for the lifetime
        # without use (or the absolute limit).
        assert deadline is None
        expected = now + timedelta(seconds=absolute or 7200)
        assert abs((info.expires_at - expected).total_seconds()) <= 2
    else:
        assert deadline is not None
        assert abs((info.expires_at - deadline).total_seconds()) <= 1
    if absolute is not None:
        assert info.expires_at <= now + timedelta(seconds=absolute + 1)


# -- revoke -----------------------------------------------------------------------


def test_revoke_one_by_handle(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store)
    one, two = client_of(app), client_of(app)
    login(one, "ann")
    login(two, "ann")
    assert len(handles(app, "ann")) == 2
    handle = session_handle(stored_of(app, one))
    assert ext_of(app).revoke("ann", handle, app=app) == 1
    assert whoami(one) == "anonymous"
    assert whoami(two) == "ann"
    assert handles(app, "ann") == [session_handle(stored_of(app, two))]
    assert ext_of(app).revoke("ann", handle, app=app) == 0  # gone already


def test_revoke_all(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store)
    clients = [client_of(app) for _ in range(3)]
    for client in clients:
        login(client, "ann")
    other = client_of(app)
    login(other, "bob")
    assert ext_of(app).revoke("ann", app=app) == 3
    assert [whoami(client) for client in clients] == ["anonymous"] * 3
    assert handles(app, "ann") == []
    assert whoami(other) == "bob"


def test_revoke_keep_current(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store)
    mine, theirs = client_of(app), client_of(app)
    login(mine, "ann")
    login(theirs, "ann")
    response = mine.post("/revoke/ann", query_string={"keep": "1"})
    assert response.data == b"1"
    assert whoami(mine) == "ann"
    assert whoami(theirs) == "anonymous"
    assert handles(app, "ann") == [session_handle(stored_of(app, mine))]


def test_handle_given_with_another_user_ends_nothing(
    per_user_store: SessionStore,
) -> None:
    app = make_app(per_user_store)
    ann, bob = client_of(app), client_of(app)
    login(ann, "ann")
    login(bob, "bob")
    handle = session_handle(stored_of(app, ann))
    assert ext_of(app).revoke("bob", handle, app=app) == 0
    assert bob.post("/revoke/bob", query_string={"handle": handle}).data == b"0"
    assert whoami(ann) == "ann"
    assert whoami(bob) == "bob"


@pytest.mark.parametrize("signer", [True, False])
def test_a_handle_is_not_a_key(per_user_store: SessionStore, signer: bool) -> None:
    app = make_app(per_user_store, SESSION_USE_SIGNER=signer)
    client = client_of(app)
    login(client, "ann")
    client.post("/write")
    [info] = ext_of(app).sessions_for("ann", app=app)
    thief = client_of(app)
    thief.set_cookie("session", cookie_value(app, info.id))
    assert thief.get("/read").data == b"{}"
    assert whoami(thief) == "anonymous"
    assert whoami(client) == "ann"


def test_revoke_inside_the_request_of_the_revoked_session(
    per_user_store: SessionStore,
) -> None:
    app = make_app(per_user_store)
    client, other = client_of(app), client_of(app)
    login(client, "ann")
    login(other, "ann")
    response = client.post("/revoke/ann")
    assert response.status_code == 200
    assert response.data == b"2"
    cookie = set_cookie(app, response, "session")
    assert cookie is not None and cookie["session"].value == ""  # deleted
    assert client.get_cookie("session") is None
    assert whoami(client) == "anonymous"
    assert whoami(other) == "anonymous"
    assert handles(app, "ann") == []
    # One handle, the request's own.
    login(client, "ann")
    login(other, "ann")
    own = session_handle(stored_of(app, client))
    response = client.post("/revoke/ann", query_string={"handle": own})
    assert (response.status_code, response.data) == (200, b"1")
    assert whoami(client) == "anonymous"
    assert whoami(other) == "ann"


def test_revoke_outside_a_request_needs_the_app(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store)
    client = client_of(app)
    login(client, "ann")
    with pytest.raises(RuntimeError):
        ext_of(app).revoke("ann")  # no app given, none current
    assert whoami(client) == "ann"
    assert ext_of(app).revoke(t.cast(str, "ann"), app=app) == 1
    assert whoami(client) == "anonymous"


def test_integer_user_ids(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store)
    client = client_of(app)
    login(client, "42")
    assert len(ext_of(app).sessions_for(42, app=app)) == 1
    assert ext_of(app).revoke(42, app=app) == 1
    assert whoami(client) == "anonymous"


def test_a_request_that_loaded_before_the_revoke_does_not_resurrect(
    per_user_store: SessionStore,
) -> None:
    app = make_app(per_user_store)
    gate = app.extensions["test_gate"]
    client = client_of(app)
    login(client, "ann")
    client.post("/write")
    stored = stored_of(app, client)
    responses: list[t.Any] = []
    worker = threading.Thread(target=lambda: responses.append(client.post("/slow")))
    worker.start()
    try:
        assert gate.loaded.wait(10)
        assert ext_of(app).revoke("ann", app=app) == 1
    finally:
        gate.go.set()
        worker.join(20)
    [response] = responses
    assert response.status_code == 400  # SessionInterrupted
    assert per_user_store.load(stored) is None
    assert handles(app, "ann") == []
    assert whoami(client) == "anonymous"
    assert client.get("/read").data == b"{}"


def test_twenty_parallel_logins_are_all_listed(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store)
    clients = [client_of(app) for _ in range(20)]
    barrier = threading.Barrier(20)
    errors: list[BaseException] = []

    def run(client: FlaskClient) -> None:
        try:
            barrier.wait(10)
            login(client, "ann")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    listed = set(handles(app, "ann"))
    assert listed == {session_handle(stored_of(app, client)) for client in clients}
    assert len(listed) == 20


def test_a_revoke_racing_logins_leaves_nothing_unlisted(
    per_user_store: SessionStore,
) -> None:
    app = make_app(per_user_store)
    clients = [client_of(app) for _ in range(8)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def log_in_and_out(client: FlaskClient) -> None:
        try:
            while not stop.is_set():
                # A revoke between a request's read and its save ends it
                # with a 400: expected here, as long as nothing survives.
                for path in ("/login/ann", "/write"):
                    assert client.post(path).status_code in (200, 400)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=log_in_and_out, args=(client,)) for client in clients
    ]
    for thread in threads:
        thread.start()
    try:
        for _ in range(30):
            ext_of(app).revoke("ann", app=app)
            time.sleep(0.005)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert errors == []
    listed = set(handles(app, "ann"))
    for client in clients:
        key = cookie_key(app, client)
        if key is None:
            continue
        stored = stored_of(app, client)
        record = per_user_store.load(stored)
        # A log-in a revoke cut short leaves the client anonymous (its
        # later write starts an anonymous session): only ann's count.
        # (Checked through the listing: a store's load() need not return
        # the per-user fields.)
        if record is not None and whoami(client) == "ann":
            assert session_handle(stored) in listed
        elif record is not None:
            assert session_handle(stored) not in listed
    ext_of(app).revoke("ann", app=app)
    assert [whoami(client) for client in clients] == ["anonymous"] * len(clients)


def test_session_ended_signals(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store, SESSION_MAX_PER_USER=1)
    seen: list[tuple[str, str]] = []

    def receiver(sender: t.Any, **kwargs: t.Any) -> None:
        seen.append((kwargs["key"], kwargs["reason"]))

    one, two = client_of(app), client_of(app)
    with session_ended.connected_to(receiver):
        login(one, "ann")
        first = stored_of(app, one)
        login(two, "ann")
        assert (first, "limit") in seen
        second = stored_of(app, two)
        seen.clear()
        assert ext_of(app).revoke("ann", app=app) == 1
    assert seen == [(second, "revoke")]


# -- SESSION_MAX_PER_USER -------------------------------------------------------


def test_max_per_user_ends_the_least_recently_active(
    per_user_store: SessionStore,
) -> None:
    app = make_app(per_user_store, SESSION_MAX_PER_USER=2)
    one, two, three = client_of(app), client_of(app), client_of(app)
    login(one, "ann")
    time.sleep(0.01)
    login(two, "ann")
    time.sleep(0.01)
    one.post("/write")  # one is now more recently active than two
    time.sleep(0.01)
    login(three, "ann")
    assert whoami(one) == "ann"
    assert whoami(two) == "anonymous"
    assert whoami(three) == "ann"
    assert set(handles(app, "ann")) == {
        session_handle(stored_of(app, one)),
        session_handle(stored_of(app, three)),
    }


def test_two_logins_racing_with_limit_one(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store, SESSION_MAX_PER_USER=1)
    for round_ in range(10):
        user = f"racer{round_}"
        clients = [client_of(app), client_of(app)]
        barrier = threading.Barrier(2)

        def run(
            client: FlaskClient, user: str = user, barrier: t.Any = barrier
        ) -> None:
            barrier.wait(10)
            login(client, user)

        threads = [threading.Thread(target=run, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(handles(app, user)) == 1
        assert sorted(whoami(client) for client in clients) == ["anonymous", user]


def test_max_per_user_refused_on_a_store_without_index(
    memcached_store: SessionStore,
) -> None:
    from flask import Flask

    class NoIndex(MemoryStore):
        def as_per_user(self) -> None:  # type: ignore[override]
            return None

    for store in (memcached_store, NoIndex()):
        app = Flask(__name__)
        app.config.update(SECRET_KEY="x", SESSION_MAX_PER_USER=3)
        with pytest.raises(ConfigurationError, match="SESSION_MAX_PER_USER"):
            SessionExt(app, store=store)
        # Without the setting the same store is fine.
        SessionExt(Flask(__name__), store=store)


def test_sessions_for_refused_on_a_store_without_index(
    memcached_store: SessionStore,
) -> None:
    from flask import Flask

    app = Flask(__name__)
    app.config.update(SECRET_KEY="x")
    ext = SessionExt(app, store=memcached_store)
    with pytest.raises(ConfigurationError, match="per-user index"):
        ext.sessions_for("ann", app=app)
    with pytest.raises(ConfigurationError, match="per-user index"):
        ext.revoke("ann", app=app)
