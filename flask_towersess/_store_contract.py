"""The store contract suite: :class:`StoreContract`, exposed as
:class:`flask_towersess.testing.StoreContract`.

A module of its own because it imports pytest, which an app's tests that
only use :func:`~flask_towersess.testing.session_data` may not have.

.. versionadded:: 0.2
"""

from __future__ import annotations

import dataclasses
import threading
import time
import typing as t
import uuid
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest

from .errors import CreateError
from .errors import UpdateError
from .errors import VersionConflict
from .session import new_session_key
from .session import stored_key
from .stores.base import USER_ID_LENGTH
from .stores.base import LegacyKeys
from .stores.base import PerUserIndex
from .stores.base import Record
from .stores.base import SessionStore
from .stores.base import utcnow

__all__ = ["StoreContract", "make_record", "user_record"]


def make_record(
    payload: bytes = b"data", *, seconds: float = 600, version: int = 1
) -> Record:
    """A record under a fresh key, expiring ``seconds`` from now (in the past
    for a negative number).

    .. versionadded:: 0.2
    """
    return Record(
        new_session_key(), payload, utcnow() + timedelta(seconds=seconds), version
    )


def user_record(
    user_id: str | None,
    *,
    seconds: float = 600,
    user_agent: str | None = "Test/1.0",
    ip: str | None = None,
    last_active_at: datetime | None = None,
) -> Record:
    """A record of ``user_id`` under a fresh hashed key (as the session
    layer stores them), with the per-user fields set.

    .. versionadded:: 0.2
    """
    now = utcnow()
    return Record(
        stored_key(new_session_key()),
        b"data",
        now + timedelta(seconds=seconds),
        1,
        user_id,
        now,
        last_active_at or now,
        user_agent,
        ip,
    )


def _user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


_MS = timedelta(milliseconds=2)
_LONG_AGO = datetime(2000, 1, 1, tzinfo=timezone.utc)
#: Stands for "the store has no per-user index" in the per-user tests.
_NO_INDEX = object()


def _whole_milliseconds(moment: datetime) -> datetime:
    # The finest precision every backend keeps (BSON dates are milliseconds);
    # a store must keep at least this much.
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class StoreContract:
    """The behaviour every session store must have, as a pytest test class.

    Subclass it in a test module, under a name pytest collects (``Test...``),
    and give it a ``store`` fixture that returns a fresh, empty store::

        import pytest
        from flask_towersess.testing import StoreContract

        class TestShelfStore(StoreContract):
            @pytest.fixture
            def store(self, tmp_path):
                store = ShelfStore(tmp_path / "sessions.db")
                yield store
                store.close()

    Every test of the class then runs on that store. The project's own
    stores run this same class (``tests/test_store_contract.py``). The
    fixture may be parametrized to run the suite on several configurations.
    Tests are added to the class in later versions; a store that meets the
    documented contract passes them.

    .. versionadded:: 0.2
    """

    @pytest.fixture
    def store(self) -> SessionStore:
        """The store under test: a subclass must define this fixture."""
        pytest.fail(
            f"{type(self).__name__} must define a `store` fixture returning a"
            " fresh, empty store (see flask_towersess.testing.StoreContract)"
        )

    # -- create and load -------------------------------------------------------

    def test_create_then_load(self, store: SessionStore) -> None:
        record = make_record(b"\x00\xffbinary")
        store.create(record)
        loaded = store.load(record.key)
        assert loaded is not None
        assert loaded.key == record.key
        assert loaded.payload == record.payload
        assert isinstance(loaded.payload, bytes)
        assert loaded.version == 1
        assert abs(loaded.expires_at - record.expires_at) < timedelta(seconds=1)
        assert loaded.expires_at.tzinfo is not None

    def test_load_missing(self, store: SessionStore) -> None:
        assert store.load(new_session_key()) is None

    def test_create_existing_key_fails(self, store: SessionStore) -> None:
        record = make_record(b"first")
        store.create(record)
        with pytest.raises(CreateError):
            store.create(Record(record.key, b"second", record.expires_at))
        loaded = store.load(record.key)
        assert loaded is not None and loaded.payload == b"first"

    def test_create_replaces_an_expired_record(self, store: SessionStore) -> None:
        old = make_record(b"old", seconds=-10)
        store.create(old)
        store.create(Record(old.key, b"new", utcnow() + timedelta(minutes=5)))
        loaded = store.load(old.key)
        assert loaded is not None and loaded.payload == b"new"

    def test_a_lifetime_beyond_30_days(self, store: SessionStore) -> None:
        """A "remember me" session lives for weeks. Some backends read a
        relative lifetime over 30 days as an absolute timestamp (memcached),
        so such a record would expire at once or at the wrong moment."""
        expires_at = _whole_milliseconds(utcnow() + timedelta(days=40))
        record = Record(new_session_key(), b"remember me", expires_at)
        store.create(record)
        loaded = store.load(record.key)
        assert loaded is not None, "a record 40 days from expiry was not kept"
        assert loaded.payload == b"remember me"
        assert loaded.expires_at == expires_at
        later = _whole_milliseconds(utcnow() + timedelta(days=45))
        store.save(Record(record.key, b"still here", later, 2), expected_version=1)
        loaded = store.load(record.key)
        assert loaded is not None and loaded.expires_at == later
        touched = _whole_milliseconds(utcnow() + timedelta(days=60))
        store.touch(record.key, touched)
        loaded = store.load(record.key)
        assert loaded is not None and loaded.expires_at == touched

    # -- save: a compare-and-set -----------------------------------------------

    def test_save_with_expected_version(self, store: SessionStore) -> None:
        record = make_record(b"v1")
        store.create(record)
        store.save(Record(record.key, b"v2", record.expires_at, 2), expected_version=1)
        loaded = store.load(record.key)
        assert loaded is not None
        assert (loaded.payload, loaded.version) == (b"v2", 2)

    def test_save_with_stale_version_conflicts(self, store: SessionStore) -> None:
        record = make_record(b"v1")
        store.create(record)
        store.save(Record(record.key, b"v2", record.expires_at, 2), expected_version=1)
        with pytest.raises(VersionConflict):
            store.save(
                Record(record.key, b"stale", record.expires_at, 2), expected_version=1
            )
        loaded = store.load(record.key)
        assert loaded is not None and loaded.payload == b"v2"

    def test_save_of_deleted_record_is_not_recreated(self, store: SessionStore) -> None:
        record = make_record()
        store.create(record)
        store.delete(record.key)
        with pytest.raises(UpdateError):
            store.save(
                Record(record.key, b"again", record.expires_at, 2), expected_version=1
            )
        assert store.load(record.key) is None
        assert not store.exists(record.key)

    def test_save_of_expired_record_is_not_recreated(self, store: SessionStore) -> None:
        record = make_record(seconds=-5)
        store.create(record)
        later = utcnow() + timedelta(minutes=5)
        with pytest.raises(UpdateError):
            store.save(Record(record.key, b"again", later, 2), expected_version=1)
        assert store.load(record.key) is None

    def test_save_with_a_past_expiry_ends_the_record(self, store: SessionStore) -> None:
        """How a session that moved to a new key retires its old record: a
        compare-and-set whose record has expired already. From then on the
        record is gone for every call, and stays gone."""
        record = make_record()
        store.create(record)
        ended = Record(record.key, b"", utcnow() - timedelta(days=1), 2)
        store.save(ended, expected_version=1)
        assert store.load(record.key) is None
        assert not store.exists(record.key)
        with pytest.raises(UpdateError):
            store.save(Record(record.key, b"again", record.expires_at, 3), 2)
        store.touch(record.key, utcnow() + timedelta(hours=1))
        assert store.load(record.key) is None

    # -- expiry ----------------------------------------------------------------

    def test_expired_record_is_never_returned(self, store: SessionStore) -> None:
        record = make_record(seconds=-1)
        store.create(record)
        assert store.load(record.key) is None
        assert not store.exists(record.key)

    def test_touch_moves_expiry_only(self, store: SessionStore) -> None:
        record = make_record(b"keep", seconds=60)
        store.create(record)
        later = utcnow() + timedelta(hours=2)
        store.touch(record.key, later)
        loaded = store.load(record.key)
        assert loaded is not None
        assert (loaded.payload, loaded.version) == (b"keep", 1)
        assert abs(loaded.expires_at - later) < timedelta(seconds=1)

    def test_touch_into_the_past_expires(self, store: SessionStore) -> None:
        record = make_record()
        store.create(record)
        store.touch(record.key, utcnow() - timedelta(seconds=1))
        assert store.load(record.key) is None

    def test_touch_does_not_create(self, store: SessionStore) -> None:
        key = new_session_key()
        store.touch(key, utcnow() + timedelta(hours=1))
        assert store.load(key) is None

    def test_touch_does_not_revive_expired(self, store: SessionStore) -> None:
        record = make_record(seconds=-1)
        store.create(record)
        store.touch(record.key, utcnow() + timedelta(hours=1))
        assert store.load(record.key) is None

    def test_delete(self, store: SessionStore) -> None:
        record = make_record()
        store.create(record)
        assert store.exists(record.key)
        store.delete(record.key)
        assert not store.exists(record.key)
        store.delete(record.key)  # deleting twice is fine

    def test_purge_expired_in_batches(self, store: SessionStore) -> None:
        expired = [make_record(seconds=-60) for _ in range(5)]
        live = [make_record(seconds=600) for _ in range(3)]
        for record in expired + live:
            store.create(record)
        purging = store.as_purging()
        if purging is None:
            # No capability to purge: only a backend that drops expired
            # records by itself may lack it.
            assert store.expires_natively
            assert not any(store.exists(record.key) for record in expired)
            return
        counted = purging.count_expired()
        batches: list[int] = []
        purged = purging.purge_expired(2, on_batch=batches.append)
        if store.expires_natively and purged == 0:
            assert counted == 0  # the backend drops them by itself
        else:
            assert counted == 5
            assert purged == 5
            assert sum(batches) == 5 and max(batches) <= 2
            assert purging.count_expired() == 0
        for record in live:
            assert store.exists(record.key)
        assert purging.purge_expired(2) == 0

    def test_count_live(self, store: SessionStore) -> None:
        counting = store.as_counting()
        if counting is None:  # ``flask sessions stats`` then says it cannot
            return
        assert counting.count_live() == 0
        live = [make_record(seconds=600) for _ in range(3)]
        for record in [*live, make_record(seconds=-60)]:
            store.create(record)
        assert counting.count_live() == 3
        store.delete(live[0].key)
        assert counting.count_live() == 2

    def test_migrate_is_idempotent(self, store: SessionStore) -> None:
        migrating = store.as_migrating()
        if migrating is not None:  # a store with nothing to create has none
            first = migrating.migrate()
            second = migrating.migrate()
            assert first and second
            assert all(isinstance(line, str) for line in first + second)
        record = make_record()
        store.create(record)
        assert store.exists(record.key)

    # -- keys ------------------------------------------------------------------

    @pytest.mark.parametrize(
        "key",
        [
            pytest.param("a" * 8, id="8-chars"),
            pytest.param("A-z_0-9-_", id="alphabet"),
            pytest.param("k" * 64, id="64-chars"),
        ],
    )
    def test_any_key_of_the_session_key_form_round_trips(
        self, store: SessionStore, key: str
    ) -> None:
        record = Record(key, b"v1", utcnow() + timedelta(minutes=5))
        store.create(record)
        assert store.exists(key)
        store.save(Record(key, b"v2", record.expires_at, 2), expected_version=1)
        store.touch(key, utcnow() + timedelta(minutes=10))
        loaded = store.load(key)
        assert loaded is not None and (loaded.payload, loaded.version) == (b"v2", 2)
        store.delete(key)
        assert store.load(key) is None

    def test_the_longest_key_is_read_without_error(self, store: SessionStore) -> None:
        # No store ever creates a 128-character key: the session layer
        # stores a session under the 64-character hex SHA-256 of its
        # cookie's key (and reads 0.1's sessions under their unhashed
        # 43-character keys). But every read must take a key of the session
        # key form up to that length: a store is also called directly.
        key = "k" * 128
        assert store.load(key) is None
        assert not store.exists(key)
        store.touch(key, utcnow() + timedelta(minutes=5))
        store.delete(key)
        assert store.load(key) is None

    # -- one store, many threads -----------------------------------------------

    #: How many threads share the store in the concurrency tests: a threaded
    #: server's worker.
    threads = 16

    def test_shared_by_many_threads(self, store: SessionStore) -> None:
        """One store object serves every thread of a worker: calls made at
        once on distinct keys must not see each other's records (a shared
        connection or buffer would mix their replies up)."""
        rounds = 5
        barrier = threading.Barrier(self.threads, timeout=60)

        def work(number: int) -> None:
            tag = f"thread {number} ".encode()
            for step in range(rounds):
                barrier.wait()
                record = make_record(tag + b"created %d" % step)
                store.create(record)
                loaded = store.load(record.key)
                assert loaded is not None and loaded.payload == record.payload
                payload = tag + b"saved %d" % step
                saved = Record(record.key, payload, record.expires_at, 2)
                store.save(saved, expected_version=1)
                loaded = store.load(record.key)
                assert loaded is not None
                assert (loaded.payload, loaded.version) == (saved.payload, 2)
                assert store.exists(record.key)
                store.delete(record.key)
                assert store.load(record.key) is None

        _run_threads(self.threads, work, barrier)

    def test_compare_and_set_from_many_threads(self, store: SessionStore) -> None:
        """Every thread saves over the same version of one record at once:
        exactly one of them wins each round, the others get
        :exc:`VersionConflict`, and the record holds the winner's payload."""
        rounds = 5
        record = make_record(b"start")
        store.create(record)
        barrier = threading.Barrier(self.threads, timeout=60)
        winners: list[list[int]] = [[] for _ in range(rounds)]
        lock = threading.Lock()

        def work(number: int) -> None:
            for step in range(rounds):
                barrier.wait()
                version = step + 1
                payload = b"%d/%d" % (number, step)
                attempt = Record(record.key, payload, record.expires_at, version + 1)
                try:
                    store.save(attempt, expected_version=version)
                except VersionConflict:
                    pass
                else:
                    with lock:
                        winners[step].append(number)
                # Nobody starts the next round before every save of this one
                # has returned.
                barrier.wait()

        _run_threads(self.threads, work, barrier)
        assert [len(round_winners) for round_winners in winners] == [1] * rounds
        loaded = store.load(record.key)
        assert loaded is not None
        assert loaded.version == rounds + 1
        assert loaded.payload == b"%d/%d" % (winners[-1][0], rounds - 1)

    # -- the per-user index (a store that is a PerUserIndex) ---------------------

    @pytest.fixture
    def per_user(self, store: SessionStore) -> PerUserIndex:
        """The store under test as a per-user index; a store without one
        passes these tests by not having it."""
        index = store.as_per_user()
        if index is None:
            if isinstance(store, PerUserIndex):
                pytest.fail("as_per_user() says no, isinstance says yes")
            return t.cast(PerUserIndex, _NO_INDEX)
        return index

    def test_per_user_listing_holds_the_fields(
        self, store: SessionStore, per_user: PerUserIndex
    ) -> None:
        if per_user is _NO_INDEX:
            return
        user = _user()
        record = user_record(user, user_agent="Browser/1.0", ip="203.0.113.9")
        store.create(record)
        store.create(user_record(None))  # anonymous: never listed
        (listed,) = per_user.sessions_of(user)
        assert listed.key == record.key
        assert listed.user_id == user
        assert listed.user_agent == "Browser/1.0"
        assert listed.ip == "203.0.113.9"
        assert listed.created_at is not None and listed.last_active_at is not None
        assert abs(listed.created_at - t.cast(datetime, record.created_at)) < _MS
        assert abs(listed.expires_at - record.expires_at) < timedelta(seconds=1)
        assert per_user.sessions_of(_user()) == []

    def test_per_user_listing_never_holds_an_expired_record(
        self, store: SessionStore, per_user: PerUserIndex
    ) -> None:
        if per_user is _NO_INDEX:
            return
        user = _user()
        live = user_record(user)
        store.create(live)
        store.create(user_record(user, seconds=0.3))
        time.sleep(0.5)  # expired by now; nothing was purged
        assert [r.key for r in per_user.sessions_of(user)] == [live.key]
        assert per_user.delete_sessions_of(user, keep=live.key) == []

    def test_a_retired_or_moved_record_leaves_the_listing(
        self, store: SessionStore, per_user: PerUserIndex
    ) -> None:
        if per_user is _NO_INDEX:
            return
        user, other = _user(), _user()
        old, new = user_record(user), user_record(user)
        store.create(old)
        store.create(new)
        # cycle_key(): the old record is saved expired, with no user.
        store.save(Record(old.key, b"", _LONG_AGO, 2), expected_version=1)
        assert [r.key for r in per_user.sessions_of(user)] == [new.key]
        # A log-in as another user on the same record moves its entry.
        moved = dataclasses.replace(new, version=2, user_id=other)
        store.save(moved, expected_version=1)
        assert per_user.sessions_of(user) == []
        assert [r.key for r in per_user.sessions_of(other)] == [new.key]
        anonymous = dataclasses.replace(moved, version=3, user_id=None)
        store.save(anonymous, expected_version=2)
        assert per_user.sessions_of(other) == []
        assert store.load(new.key) is not None

    def test_delete_and_delete_many_leave_the_listing(
        self, store: SessionStore, per_user: PerUserIndex
    ) -> None:
        if per_user is _NO_INDEX:
            return
        user = _user()
        records = [user_record(user) for _ in range(4)]
        for record in records:
            store.create(record)
        store.delete(records[0].key)
        store.delete_many([records[1].key, records[2].key, new_session_key()])
        assert [r.key for r in per_user.sessions_of(user)] == [records[3].key]
        assert store.load(records[1].key) is None

    def test_touch_keeps_the_entry_and_marks_activity(
        self, store: SessionStore, per_user: PerUserIndex
    ) -> None:
        if per_user is _NO_INDEX:
            return
        user = _user()
        before = utcnow() - timedelta(hours=1)
        record = user_record(user, seconds=0.5, last_active_at=before)
        store.create(record)
        later = utcnow() + timedelta(minutes=10)
        store.touch(record.key, later)
        time.sleep(0.7)  # past the first expiry: the entry must follow the touch
        (listed,) = per_user.sessions_of(user)
        assert abs(listed.expires_at - later) < timedelta(seconds=1)
        assert listed.last_active_at is not None and listed.last_active_at > before

    def test_delete_sessions_of_one_user_only(
        self, store: SessionStore, per_user: PerUserIndex
    ) -> None:
        if per_user is _NO_INDEX:
            return
        user, other = _user(), _user()
        mine = [user_record(user) for _ in range(3)]
        theirs = user_record(other)
        for record in (*mine, theirs):
            store.create(record)
        # Keys of another user's record are left alone.
        assert per_user.delete_sessions_of(user, [theirs.key, mine[0].key]) == [
            mine[0].key
        ]
        ended = per_user.delete_sessions_of(user, keep=mine[1].key)
        assert ended == [mine[2].key]
        assert [r.key for r in per_user.sessions_of(user)] == [mine[1].key]
        assert sorted(per_user.delete_sessions_of(user)) == [mine[1].key]
        assert per_user.sessions_of(user) == []
        assert store.load(theirs.key) is not None
        assert [r.key for r in per_user.sessions_of(other)] == [theirs.key]

    def test_trim_keeps_the_most_recent(
        self, store: SessionStore, per_user: PerUserIndex
    ) -> None:
        if per_user is _NO_INDEX:
            return
        user = _user()
        now = utcnow()
        records = [
            user_record(user, last_active_at=now - timedelta(minutes=minutes))
            for minutes in (50, 40, 30, 20, 10)
        ]
        for record in records:
            store.create(record)
        # keep: the least recent, which survives anyway.
        ended = per_user.trim_sessions_of(user, 2, keep=records[0].key)
        assert sorted(ended) == sorted(r.key for r in records[1:3])
        left = {r.key for r in per_user.sessions_of(user)}
        assert left == {records[0].key, records[3].key, records[4].key}
        assert per_user.trim_sessions_of(user, 5, keep=records[4].key) == []

    def test_twenty_sessions_of_one_user_at_once_are_all_listed(
        self, store: SessionStore, per_user: PerUserIndex
    ) -> None:
        if per_user is _NO_INDEX:
            return
        user = _user()
        records = [user_record(user) for _ in range(20)]
        barrier = threading.Barrier(20)

        def create(number: int) -> None:
            barrier.wait(timeout=30)
            store.create(records[number])

        _run_threads(20, create, barrier)
        assert {r.key for r in per_user.sessions_of(user)} == {r.key for r in records}

    def test_a_thousand_logins_and_logouts_leave_nothing_listed(
        self, store: SessionStore, per_user: PerUserIndex
    ) -> None:
        if per_user is _NO_INDEX:
            return
        user = _user()
        for _ in range(1000):
            record = user_record(user)
            store.create(record)
            store.delete(record.key)
        assert per_user.sessions_of(user) == []
        counting = store.as_counting_per_user()
        if counting is not None:
            assert user not in dict(counting.per_user_counts(1000))

    def test_bad_user_ids_are_refused(
        self, store: SessionStore, per_user: PerUserIndex
    ) -> None:
        if per_user is _NO_INDEX:
            return
        for bad in ("", "x" * (USER_ID_LENGTH + 1), "a\nb"):
            with pytest.raises(ValueError):
                per_user.sessions_of(bad)
        with pytest.raises(TypeError):
            per_user.sessions_of(t.cast(str, 42))

    def test_unhashed_keys_are_listed_for_the_upgrade(
        self, store: SessionStore
    ) -> None:
        if not isinstance(store, LegacyKeys):
            return
        # Unhashed 43-character keys, as 0.1 stored them.
        legacy = [make_record(b"0.1") for _ in range(5)]
        for record in legacy:
            store.create(record)
        store.create(user_record(None))  # hashed: not listed
        found: list[str] = []
        cursor = None
        for _ in range(100):
            keys, cursor = store.unhashed_keys(cursor, 2)
            found.extend(keys)
            if cursor is None:
                break
        assert sorted(set(found)) == sorted(r.key for r in legacy)
        assert store.count_unhashed() == 5


def _run_threads(
    count: int, work: t.Callable[[int], None], barrier: threading.Barrier
) -> None:
    """Run ``work(0)`` to ``work(count - 1)`` in threads, which meet at
    ``barrier``; re-raise the first failure in the caller, where pytest
    reports it."""
    errors: list[BaseException] = []

    def target(number: int) -> None:
        try:
            work(number)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            errors.append(exc)
            # Release the others from the barrier instead of leaving them to
            # wait for a thread that will not come.
            barrier.abort()

    threads = [
        threading.Thread(target=target, args=(number,), daemon=True)
        for number in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
