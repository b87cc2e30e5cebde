"""The store contract suite: :class:`StoreContract`, exposed as
:class:`flask_towersess.testing.StoreContract`.

A module of its own because it imports pytest, which an app's tests that
only use :func:`~flask_towersess.testing.session_data` may not have.

.. versionadded:: 0.2
"""

from __future__ import annotations

import threading
import typing as t
from datetime import datetime
from datetime import timedelta

import pytest

from .errors import CreateError
from .errors import UpdateError
from .errors import VersionConflict
from .session import new_session_key
from .stores.base import Record
from .stores.base import SessionStore
from .stores.base import utcnow

__all__ = ["StoreContract", "make_record"]


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
        # A cookie may carry a 128-character key; no store ever creates one
        # (the session layer makes 43-character keys), but every read must
        # take it.
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
