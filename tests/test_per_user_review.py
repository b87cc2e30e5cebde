"""Per-user sessions under the attacks a review found: a 0.1 session of a
revoked user, a 0.1 key moved (and ended) while another mover still held
it, and the session that follows a log-out.

.. versionadded:: 0.2
"""

from __future__ import annotations

import time
import typing as t

from flask_towersess.session import ServerSession
from flask_towersess.session import new_session_key
from flask_towersess.session import stored_key

from .per_user_app import client_of
from .per_user_app import ext_of
from .per_user_app import make_app
from .test_hashed_keys import legacy_client
from .test_hashed_keys import legacy_record

if t.TYPE_CHECKING:
    from flask_towersess.stores.base import SessionStore


def whoami(client: t.Any) -> str:
    return t.cast(str, client.get("/me").get_data(as_text=True))


def test_a_0_1_session_of_a_revoked_user_is_ended_not_moved(
    per_user_store: SessionStore,
) -> None:
    """Not yet in the index, a 0.1 session escapes revoke(); the first use
    after it (or the migration) ends it instead of moving it."""
    app = make_app(per_user_store)
    key = new_session_key()
    per_user_store.create(legacy_record(key, {"_user_id": "ann", "_fresh": True}))
    assert ext_of(app).revoke("ann", app=app) == 0  # not listed yet
    client = legacy_client(app, key)
    assert whoami(client) == "anonymous"
    assert per_user_store.load(key) is None
    assert per_user_store.load(stored_key(key)) is None
    assert ext_of(app).sessions_for("ann", app=app) == []


def test_a_0_1_key_moved_and_ended_meanwhile_is_not_brought_back(
    per_user_store: SessionStore,
) -> None:
    """A mover that read the unhashed record before another moved it, and
    before the session was revoked, must not recreate it."""
    app = make_app(per_user_store)
    key = new_session_key()
    per_user_store.create(legacy_record(key, {"_user_id": "ann"}))
    late = per_user_store.load(key)  # the slow mover's read
    assert late is not None
    assert whoami(legacy_client(app, key)) == "ann"  # a request moved it
    assert ext_of(app).revoke("ann", app=app) == 1
    with app.app_context():
        moved = ServerSession(per_user_store)._rehash(key, late)
    assert moved is None
    assert per_user_store.load(stored_key(key)) is None
    assert whoami(legacy_client(app, key)) == "anonymous"


def test_the_session_after_a_log_out_starts_afresh(
    per_user_store: SessionStore,
) -> None:
    app = make_app(per_user_store)
    client = client_of(app)
    client.post("/login/ann")
    [first] = ext_of(app).sessions_for("ann", app=app)
    client.post("/logout")
    # A session's start is kept in milliseconds: the new one must begin in
    # a later one to be told apart (the memory store is that fast).
    time.sleep(0.002)
    client.post("/write")  # a new anonymous session
    client.post("/login/ann")
    [second] = ext_of(app).sessions_for("ann", app=app)
    assert first.created_at is not None and second.created_at is not None
    assert second.created_at > first.created_at
