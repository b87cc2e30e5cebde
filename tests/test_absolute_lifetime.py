"""``SESSION_ABSOLUTE_LIFETIME`` through the app: a session ends at that
age however active it is, counted from its creation or its last log-in,
and no cookie, touch or expiry setting outlives it. Real short durations
(a few seconds, whole-second clocks) with bounded waits.

.. versionadded:: 0.2
"""

from __future__ import annotations

import time
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from email.utils import parsedate_to_datetime

import pytest
from flask import Flask

from flask_towersess import SessionExt
from flask_towersess.errors import ConfigurationError
from flask_towersess.stores.memory import MemoryStore

from .per_user_app import client_of
from .per_user_app import ext_of
from .per_user_app import make_app
from .per_user_app import set_cookie
from .per_user_app import stored_of

#: The age limit is the session layer's (it caps the expiry every store is
#: given, and every store's contract suite shows it honours an expiry), and
#: these tests wait in real time: they run on one store of each kind of
#: expiry (in process, an SQL column, a Redis TTL) instead of on all of them.
AGE_LIMIT_STORES = ["memory", "sqlite", "redis"]

#: The tests of what a cache could get wrong (a cached copy, its expiry and
#: the touch that drops it) also run through Redis in front of PostgreSQL;
#: the others would only wait again for what the durable store decides.
through_the_cache = pytest.mark.parametrize(
    "per_user_store",
    [*AGE_LIMIT_STORES, "caching_redis_postgresql"],
    indirect=True,
)


@pytest.fixture(params=AGE_LIMIT_STORES)
def per_user_store(request: pytest.FixtureRequest) -> SessionStore:
    store = t.cast("SessionStore", request.getfixturevalue(f"{request.param}_store"))
    assert store.as_per_user() is not None
    return store


if t.TYPE_CHECKING:
    from flask.testing import FlaskClient

    from flask_towersess.stores.base import SessionStore


def whoami(client: FlaskClient) -> str:
    return client.get("/me").get_data(as_text=True)


def wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def whole_second() -> float:
    """Sleep to just after a whole second, so the session's whole-second
    clock and ours agree, and return the time."""
    now = time.time()
    wait_until(int(now) + 1.02)
    return time.time()


@pytest.mark.parametrize(
    "value",
    [
        0,
        -5,
        "10",
        True,
        timedelta(0),
        timedelta(seconds=-1),
        float("nan"),
        float("inf"),
        10**30,
    ],
)
def test_bad_values_are_refused_at_init_app(value: object) -> None:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="x", SESSION_ABSOLUTE_LIFETIME=value)
    with pytest.raises(ConfigurationError, match="SESSION_ABSOLUTE_LIFETIME"):
        SessionExt(app, store=MemoryStore())


@pytest.mark.parametrize("value", [3600, timedelta(hours=1)])
def test_seconds_and_timedelta_are_taken(value: object) -> None:
    app = make_app(MemoryStore(), SESSION_ABSOLUTE_LIFETIME=value)
    client = client_of(app)
    client.post("/login/ann")
    [info] = ext_of(app).sessions_for("ann", app=app)
    limit = datetime.now(timezone.utc) + timedelta(hours=1)
    assert info.expires_at <= limit
    assert info.expires_at >= limit - timedelta(seconds=3)


@pytest.mark.parametrize("limit", [2, timedelta(seconds=2)], ids=["int", "timedelta"])
def test_a_session_ends_at_its_age_however_active(
    per_user_store: SessionStore, limit: object
) -> None:
    app = make_app(
        per_user_store,
        SESSION_ABSOLUTE_LIFETIME=limit,
        SESSION_TOUCH_INTERVAL=timedelta(seconds=0),
    )
    client = client_of(app)
    start = whole_second()
    client.post("/login/ann")
    stored = stored_of(app, client)
    # Active all along: writes and reads every 0.25 s.
    while time.time() < start + 1.7:
        assert client.post("/write").status_code == 200
        assert whoami(client) == "ann"
        time.sleep(0.25)
    wait_until(start + 2.1)
    assert whoami(client) == "anonymous"
    assert per_user_store.load(stored) is None
    assert ext_of(app).sessions_for("ann", app=app) == []


def test_counted_from_the_last_login(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store, SESSION_ABSOLUTE_LIFETIME=2)
    client = client_of(app)
    start = whole_second()
    client.post("/write")  # an anonymous session begins
    wait_until(start + 1.0)
    client.post("/login/ann")  # the limit starts again here
    wait_until(start + 2.5)
    assert whoami(client) == "ann"
    client.post("/login/bob")  # and again, at another user
    wait_until(start + 4.3)
    assert whoami(client) == "bob"
    wait_until(start + 5.1)
    assert whoami(client) == "anonymous"


def test_counted_from_creation_for_an_anonymous_session(
    per_user_store: SessionStore,
) -> None:
    app = make_app(per_user_store, SESSION_ABSOLUTE_LIFETIME=2)
    client = client_of(app)
    start = whole_second()
    assert client.post("/write").data == b"1"
    wait_until(start + 1.2)
    assert client.post("/write").data == b"2"
    wait_until(start + 2.1)
    assert client.post("/write").data == b"1"  # a new session


def test_cycle_key_does_not_restart_it(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store, SESSION_ABSOLUTE_LIFETIME=2)
    client = client_of(app)
    start = whole_second()
    client.post("/login/ann")
    wait_until(start + 1.2)
    first = stored_of(app, client)
    assert client.post("/cycle").status_code == 200
    assert stored_of(app, client) != first
    assert whoami(client) == "ann"
    wait_until(start + 2.1)
    assert whoami(client) == "anonymous"


@through_the_cache
def test_touch_never_extends_past_it(per_user_store: SessionStore) -> None:
    app = make_app(
        per_user_store,
        SESSION_ABSOLUTE_LIFETIME=3,
        SESSION_TOUCH_INTERVAL=timedelta(seconds=0),
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=2),
    )
    client = client_of(app)
    start = whole_second()
    client.post("/login/ann", query_string={"permanent": "1"})
    # The login began no later than now: its age limit ends by now + 3 s.
    deadline = datetime.fromtimestamp(time.time() + 3, timezone.utc)
    wait_until(start + 1.5)
    response = client.get("/me")  # due: touched
    assert response.data == b"ann"
    record = per_user_store.load(stored_of(app, client))
    assert record is not None
    assert record.expires_at <= deadline
    cookie = set_cookie(app, response, "session")
    if cookie is not None:  # refreshed with the touch
        assert parsedate_to_datetime(cookie["session"]["expires"]) <= deadline
    [info] = ext_of(app).sessions_for("ann", app=app)
    assert info.expires_at <= deadline
    wait_until(start + 2.6)
    assert whoami(client) == "ann"  # kept alive by use...
    wait_until(start + 3.1)
    assert whoami(client) == "anonymous"  # ...but not past the limit


@pytest.mark.parametrize(
    "query",
    [
        {"expiry": "3600"},
        {"expiry": "FAR"},
        {"expiry": "0"},
        {"permanent": "1"},
    ],
    ids=["int", "datetime", "browser-close", "permanent"],
)
@through_the_cache
def test_no_cookie_or_record_outlives_it(
    per_user_store: SessionStore, query: dict[str, str]
) -> None:
    app = make_app(
        per_user_store,
        SESSION_ABSOLUTE_LIFETIME=timedelta(minutes=5),
        PERMANENT_SESSION_LIFETIME=timedelta(days=30),
    )
    if query.get("expiry") == "FAR":
        query = {"expiry": f"at:{int(time.time()) + 86400 * 400}"}
    client = client_of(app)
    now = datetime.now(timezone.utc)
    limit = now + timedelta(minutes=5, seconds=1)
    for response in (
        client.post("/login/ann", query_string=query),
        client.post("/write"),
    ):
        cookie = set_cookie(app, response, "session")
        assert cookie is not None
        morsel = cookie["session"]
        if query.get("expiry") == "0":
            assert not morsel["expires"] and not morsel["max-age"]
        else:
            assert parsedate_to_datetime(morsel["expires"]) <= limit
            if morsel["max-age"]:
                assert int(morsel["max-age"]) <= 301
    record = per_user_store.load(stored_of(app, client))
    assert record is not None and record.expires_at <= limit
    [info] = ext_of(app).sessions_for("ann", app=app)
    assert info.expires_at <= limit


def test_set_expiry_shorter_than_the_limit_wins(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store, SESSION_ABSOLUTE_LIFETIME=3600)
    client = client_of(app)
    client.post("/login/ann", query_string={"expiry": "1"})
    assert whoami(client) == "ann"
    time.sleep(1.3)
    assert whoami(client) == "anonymous"
