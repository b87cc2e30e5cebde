"""Versioned records, compare-and-set saves and the merge of own changes."""

from __future__ import annotations

import threading
import time
import types
import typing as t
from datetime import timedelta

import pytest
from flask import Flask
from flask import session

import flask_towersess.session as session_module
from flask_towersess import ServerSession
from flask_towersess import SessionExt
from flask_towersess.errors import CreateError
from flask_towersess.errors import SessionInterrupted
from flask_towersess.errors import UpdateError
from flask_towersess.errors import VersionConflict
from flask_towersess.session import stored_key
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import SessionStore


def two_views(
    store: SessionStore, **data: t.Any
) -> tuple[ServerSession, ServerSession]:
    original = ServerSession(store)
    original.update(data)
    original.save()
    first = ServerSession(store, original.session_key)
    second = ServerSession(store, original.session_key)
    first.load()
    second.load()
    return first, second


class SavingThrough(SessionStore):
    """``store``, with every save made by ``save`` instead."""

    def __init__(
        self, store: SessionStore, save: t.Callable[[Record, int], None]
    ) -> None:
        self.inner = store
        self.save_with = save

    def load(self, key: str) -> Record | None:
        return self.inner.load(key)

    def create(self, record: Record) -> None:
        self.inner.create(record)

    def save(self, record: Record, expected_version: int) -> None:
        self.save_with(record, expected_version)

    def touch(self, key: str, expires_at: t.Any) -> None:
        self.inner.touch(key, expires_at)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


def stored(store: SessionStore, session: ServerSession) -> dict[str, t.Any]:
    return dict(ServerSession(store, session.session_key))


def test_different_keys_both_kept(store: SessionStore) -> None:
    first, second = two_views(store, shared=0)
    first["a"] = 1
    second["b"] = 2
    first.save()
    second.save()
    assert stored(store, first) == {"shared": 0, "a": 1, "b": 2}


def test_deletes_and_sets_merge(store: SessionStore) -> None:
    first, second = two_views(store, x=1, y=2, z=3)
    del first["x"]
    second["y"] = 20
    second.pop("z")
    first.save()
    second.save()
    assert stored(store, first) == {"y": 20}


def test_same_key_last_writer_wins_whole(store: SessionStore) -> None:
    first, second = two_views(store, cart={"items": [1]})
    first["cart"] = {"items": [1, 2], "by": "first"}
    second["cart"] = {"items": [1, 3], "by": "second"}
    first.save()
    second.save()
    assert stored(store, first) == {"cart": {"items": [1, 3], "by": "second"}}


def test_in_place_change_is_merged(store: SessionStore) -> None:
    first, second = two_views(store, cart=[1], other=0)
    first["cart"].append(2)
    first.modified = True  # Flask's idiom after an in-place change
    second["other"] = 1
    second.save()
    first.save()
    assert stored(store, first) == {"cart": [1, 2], "other": 1}


def test_clear_wins_over_concurrent_additions(store: SessionStore) -> None:
    first, second = two_views(store, a=1)
    second["added"] = 2
    second.save()
    first.clear()
    first["after_clear"] = 3
    first.save()
    assert stored(store, first) == {"after_clear": 3}


def test_expiry_change_is_kept_with_their_data(store: SessionStore) -> None:
    first, second = two_views(store, a=1)
    first.set_expiry(123)
    second["b"] = 2
    second.save()
    first.save()
    again = ServerSession(store, first.session_key)
    assert dict(again) == {"a": 1, "b": 2}
    assert again.get_expiry_age() == 123


def test_their_expiry_kept_when_we_did_not_change_it(store: SessionStore) -> None:
    first, second = two_views(store, a=1)
    second.set_expiry(456)
    second.save()
    first["b"] = 2
    first.save()
    assert ServerSession(store, first.session_key).get_expiry_age() == 456


def test_deleted_meanwhile_is_not_resurrected(store: SessionStore) -> None:
    first, second = two_views(store, a=1)
    second.flush()  # logout in another tab
    first["b"] = 2
    with pytest.raises(UpdateError):
        first.save()
    assert not store.exists(stored_key(first.session_key))  # type: ignore[arg-type]


def test_deleted_after_conflict_is_not_resurrected(store: SessionStore) -> None:
    """The record moves on, then disappears, while we retry."""
    first, second = two_views(store, a=1)
    second["b"] = 2
    second.save()

    class DeleteOnConflict(SessionStore):
        def __getattr__(self, name: str) -> t.Any:
            return getattr(store, name)

        def load(self, key: str) -> Record | None:
            return store.load(key)

        def create(self, record: Record) -> None:
            store.create(record)

        def save(self, record: Record, expected_version: int) -> None:
            try:
                store.save(record, expected_version)
            except VersionConflict:
                store.delete(record.key)
                raise

        def touch(self, key: str, expires_at: t.Any) -> None:
            store.touch(key, expires_at)

        def delete(self, key: str) -> None:
            store.delete(key)

    first.store = DeleteOnConflict()
    first["c"] = 3
    with pytest.raises(UpdateError):
        first.save()
    assert not store.exists(stored_key(first.session_key))  # type: ignore[arg-type]


def test_retries_run_out_with_a_clear_error(store: SessionStore) -> None:
    first, _ = two_views(store, a=1)

    def always_moving(record: Record, expected_version: int) -> None:
        raise VersionConflict("someone else saved")

    first.store = SavingThrough(store, always_moving)
    first.save_retries = 3
    first["b"] = 2
    with pytest.raises(SessionInterrupted, match="each of the 4 times"):
        first.save()
    assert stored(store, first) == {"a": 1}  # nothing half-written


def test_retries_pause_for_growing_random_times_bounded_by_the_timeout(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers that collided must spread out: retrying at once livelocked
    eight writers of one session. Pauses are random, their bound doubles,
    and the whole is bounded by the save timeout, not by a count."""
    first, _ = two_views(store, a=1)
    conflicts = []

    def always_moving(record: Record, expected_version: int) -> None:
        conflicts.append(time.monotonic())
        raise VersionConflict("someone else saved")

    pauses: list[float] = []
    real_sleep = time.sleep

    def recording_sleep(seconds: float) -> None:
        pauses.append(seconds)
        real_sleep(seconds)

    # Only the session's own pauses: the stores may sleep too.
    monkeypatch.setattr(
        session_module,
        "time",
        types.SimpleNamespace(monotonic=time.monotonic, sleep=recording_sleep),
    )
    first.store = SavingThrough(store, always_moving)
    first.save_timeout = timedelta(seconds=0.3)
    assert first.save_retries is None  # no count limit by default
    first["b"] = 2
    with pytest.raises(SessionInterrupted, match=r"for 0\.3 s"):
        first.save()
    assert stored(store, first) == {"a": 1}  # nothing half-written
    assert len(conflicts) == len(pauses) + 1 > 5
    assert len(set(pauses)) == len(pauses)  # random, not a fixed schedule
    assert all(0 <= p <= 0.002 * 2**i for i, p in enumerate(pauses))
    assert max(pauses) <= 0.05
    assert sum(pauses) < 0.3
    # Retries stop at the deadline, counted from the first conflict.
    assert conflicts[-1] - conflicts[0] < 0.3 + 0.1


def test_threads_changing_their_own_keys_all_survive(store: SessionStore) -> None:
    threads_writing_own_keys(store, threads=6, writes=8)


@pytest.mark.parametrize(
    "name", ["sqlite", "postgresql", "mariadb", "redis", "caching_redis_postgresql"]
)
def test_sixteen_threads_contending_all_succeed(
    name: str, request: pytest.FixtureRequest
) -> None:
    """The contention target in one process: 16 threads x 25 writes of
    their own keys of one session, default retry settings, every one 200."""
    store = t.cast(SessionStore, request.getfixturevalue(f"{name}_store"))
    threads_writing_own_keys(store, threads=16, writes=25)


def threads_writing_own_keys(store: SessionStore, threads: int, writes: int) -> None:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="s")
    SessionExt(app, store=store)

    @app.post("/bump/<name>")
    def bump(name: str) -> str:
        session[name] = session.get(name, 0) + 1
        return "ok"

    client = app.test_client()
    client.post("/bump/start")
    cookie = client.get_cookie("session").value
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        own = app.test_client()
        own.set_cookie("session", cookie)
        try:
            for _ in range(writes):
                assert own.post(f"/bump/t{index}").status_code == 200
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)
    assert not errors
    key = cookie.partition(".")[0]
    data = dict(ServerSession(store, key))
    assert data == {"start": 1, **{f"t{i}": writes for i in range(threads)}}


def test_logout_landing_during_cycle_key_is_not_undone(store: SessionStore) -> None:
    """The other tab's logout lands between any check and the write of the
    new record: the moved data must not survive under the new key."""
    original = ServerSession(store)
    original["user"] = "ann"
    original.save()
    old_key = original.session_key
    assert old_key is not None

    class LogoutDuringCreate(SessionStore):
        def load(self, key: str) -> Record | None:
            return store.load(key)

        def create(self, record: Record) -> None:
            store.delete(stored_key(old_key))  # the logout, just before the new record
            store.create(record)

        def save(self, record: Record, expected_version: int) -> None:
            store.save(record, expected_version)

        def touch(self, key: str, expires_at: t.Any) -> None:
            store.touch(key, expires_at)

        def delete(self, key: str) -> None:
            store.delete(key)

        def exists(self, key: str) -> bool:
            return store.exists(key)

    session = ServerSession(LogoutDuringCreate(), old_key)
    session.cycle_key()
    new_key = session.session_key
    with pytest.raises(UpdateError):
        session.save()
    assert new_key is not None
    assert not store.exists(stored_key(new_key))
    assert not store.exists(stored_key(old_key))


# -- cycle_key() against a concurrent change -----------------------------------


def test_cycle_key_does_not_undo_a_concurrent_change(store: SessionStore) -> None:
    """Request A reads the session and moves it to a new key; request B,
    answered meanwhile, drops ``sudo`` from the old record. The move is a
    compare-and-set on what A read: B's change is merged in, not copied
    over, and A's own change is kept too."""
    first, second = two_views(store, sudo=True, cart=["book"])
    old_key = first.session_key
    first.cycle_key()
    first["theme"] = "dark"
    del second["sudo"]
    second.save()  # B is answered 200
    first.save()
    assert first.session_key != old_key
    assert stored(store, first) == {"cart": ["book"], "theme": "dark"}
    assert store.load(stored_key(old_key)) is None  # type: ignore[arg-type]


def test_cycle_key_is_stopped_by_a_concurrent_logout(store: SessionStore) -> None:
    first, second = two_views(store, user="ann")
    first.cycle_key()
    new_key = first.session_key
    second.flush()  # the other tab logs out
    with pytest.raises(UpdateError):
        first.save()
    # Neither key holds the session: the move did not keep it alive ...
    assert store.load(stored_key(new_key)) is None  # type: ignore[arg-type]
    # ... and saving again does not create it afresh.
    with pytest.raises(UpdateError):
        first.save()
    assert store.load(stored_key(new_key)) is None  # type: ignore[arg-type]


def test_a_move_that_failed_on_a_store_error_retires_on_the_next_save(
    store: SessionStore,
) -> None:
    """The store fails while the old record is being retired: the next save
    must retire it, not leave the pre-log-in session alive beside the new."""
    original = ServerSession(store)
    original["cart"] = ["book"]
    original.save()
    old_key = original.session_key

    failing = [False]

    def failing_once(record: Record, expected_version: int) -> None:
        if failing[0]:
            failing[0] = False
            raise ConnectionError("store went away")
        store.save(record, expected_version)

    flaky = SavingThrough(store, failing_once)
    session = ServerSession(flaky, old_key)
    session.user_id = "alice"  # a log-in: the save moves the session
    failing[0] = True
    with pytest.raises(ConnectionError):
        session.save()
    assert store.load(stored_key(old_key)) is not None  # nothing moved yet
    session.save()
    assert store.load(stored_key(old_key)) is None  # type: ignore[arg-type]
    assert stored(store, session) == {"cart": ["book"], "_user_id": "alice"}


def test_cycle_key_after_clear_retires_the_old_record(store: SessionStore) -> None:
    """clear() before anything was read, then cycle_key(): the old record is
    still retired, by the version read at that moment."""
    original = ServerSession(store)
    original["secret"] = 1
    original.save()
    session = ServerSession(store, original.session_key)
    session.clear()
    session.cycle_key()
    session["fresh"] = True
    session.save()
    assert store.load(stored_key(original.session_key)) is None  # type: ignore[arg-type]
    assert stored(store, session) == {"fresh": True}


def test_save_must_create_never_revives_a_key_the_client_sent(
    store: SessionStore,
) -> None:
    """A copied cookie of a session that ended must not work again, even
    when a view asks for the session to be created (Django's
    ``save(must_create=True)``) before it reads anything."""
    app = Flask(__name__)
    app.config.update(SECRET_KEY="s", TESTING=True)
    SessionExt(app, store=store)

    @app.post("/start")
    def start() -> str:
        session["a"] = 1
        return "ok"

    @app.post("/create")
    def create() -> str:
        t.cast(ServerSession, session).save(must_create=True)
        session["b"] = 2
        return "ok"

    client = app.test_client()
    client.post("/start")
    ended = client.get_cookie("session").value.partition(".")[0]
    store.delete(stored_key(ended))  # logged out elsewhere
    client.post("/create")
    assert store.load(stored_key(ended)) is None
    issued = client.get_cookie("session").value.partition(".")[0]
    assert issued != ended
    assert store.load(stored_key(issued)) is not None

    # A key whose record is alive is not created twice.
    live = ServerSession(store)
    live["x"] = 1
    live.save()
    session_from_cookie = ServerSession(
        store, key_from_cookie=lambda: (live.session_key, False)
    )
    with pytest.raises(CreateError):
        session_from_cookie.save(must_create=True)
