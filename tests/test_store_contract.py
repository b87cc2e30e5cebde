"""The contract every store meets, run on each of them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from flask_towersess.errors import CreateError
from flask_towersess.errors import UpdateError
from flask_towersess.errors import VersionConflict
from flask_towersess.session import new_session_key
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.base import utcnow


def make_record(
    payload: bytes = b"data", *, seconds: float = 600, version: int = 1
) -> Record:
    return Record(
        new_session_key(), payload, utcnow() + timedelta(seconds=seconds), version
    )


def test_create_then_load(store: SessionStore) -> None:
    record = make_record(b"\x00\xffbinary")
    store.create(record)
    loaded = store.load(record.key)
    assert loaded is not None
    assert loaded.payload == record.payload
    assert loaded.version == 1
    assert abs(loaded.expires_at - record.expires_at) < timedelta(seconds=1)
    assert loaded.expires_at.tzinfo is not None


def test_load_missing(store: SessionStore) -> None:
    assert store.load(new_session_key()) is None


def test_create_existing_key_fails(store: SessionStore) -> None:
    record = make_record(b"first")
    store.create(record)
    with pytest.raises(CreateError):
        store.create(Record(record.key, b"second", record.expires_at))
    loaded = store.load(record.key)
    assert loaded is not None and loaded.payload == b"first"


def test_create_replaces_an_expired_record(store: SessionStore) -> None:
    old = make_record(b"old", seconds=-10)
    store.create(old)
    store.create(Record(old.key, b"new", utcnow() + timedelta(minutes=5)))
    loaded = store.load(old.key)
    assert loaded is not None and loaded.payload == b"new"


def test_save_with_expected_version(store: SessionStore) -> None:
    record = make_record(b"v1")
    store.create(record)
    store.save(Record(record.key, b"v2", record.expires_at, 2), expected_version=1)
    loaded = store.load(record.key)
    assert loaded is not None
    assert (loaded.payload, loaded.version) == (b"v2", 2)


def test_save_with_stale_version_conflicts(store: SessionStore) -> None:
    record = make_record(b"v1")
    store.create(record)
    store.save(Record(record.key, b"v2", record.expires_at, 2), expected_version=1)
    with pytest.raises(VersionConflict):
        store.save(
            Record(record.key, b"stale", record.expires_at, 2), expected_version=1
        )
    loaded = store.load(record.key)
    assert loaded is not None and loaded.payload == b"v2"


def test_save_of_deleted_record_is_not_recreated(store: SessionStore) -> None:
    record = make_record()
    store.create(record)
    store.delete(record.key)
    with pytest.raises(UpdateError):
        store.save(
            Record(record.key, b"again", record.expires_at, 2), expected_version=1
        )
    assert store.load(record.key) is None
    assert not store.exists(record.key)


def test_save_of_expired_record_is_not_recreated(store: SessionStore) -> None:
    record = make_record(seconds=-5)
    store.create(record)
    later = utcnow() + timedelta(minutes=5)
    with pytest.raises(UpdateError):
        store.save(Record(record.key, b"again", later, 2), expected_version=1)
    assert store.load(record.key) is None


def test_save_with_a_past_expiry_ends_the_record(store: SessionStore) -> None:
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


def test_expired_record_is_never_returned(store: SessionStore) -> None:
    record = make_record(seconds=-1)
    store.create(record)
    assert store.load(record.key) is None
    assert not store.exists(record.key)


def test_touch_moves_expiry_only(store: SessionStore) -> None:
    record = make_record(b"keep", seconds=60)
    store.create(record)
    later = utcnow() + timedelta(hours=2)
    store.touch(record.key, later)
    loaded = store.load(record.key)
    assert loaded is not None
    assert (loaded.payload, loaded.version) == (b"keep", 1)
    assert abs(loaded.expires_at - later) < timedelta(seconds=1)


def test_touch_into_the_past_expires(store: SessionStore) -> None:
    record = make_record()
    store.create(record)
    store.touch(record.key, utcnow() - timedelta(seconds=1))
    assert store.load(record.key) is None


def test_touch_does_not_create(store: SessionStore) -> None:
    key = new_session_key()
    store.touch(key, utcnow() + timedelta(hours=1))
    assert store.load(key) is None


def test_touch_does_not_revive_expired(store: SessionStore) -> None:
    record = make_record(seconds=-1)
    store.create(record)
    store.touch(record.key, utcnow() + timedelta(hours=1))
    assert store.load(record.key) is None


def test_delete(store: SessionStore) -> None:
    record = make_record()
    store.create(record)
    assert store.exists(record.key)
    store.delete(record.key)
    assert not store.exists(record.key)
    store.delete(record.key)  # deleting twice is fine


def test_purge_expired_in_batches(store: SessionStore) -> None:
    expired = [make_record(seconds=-60) for _ in range(5)]
    live = [make_record(seconds=600) for _ in range(3)]
    for record in expired + live:
        store.create(record)
    purging = store.as_purging()
    if purging is None:
        # No capability to purge: only a backend that drops them by itself.
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
        assert store.count_expired() == 0
    for record in live:
        assert store.exists(record.key)
    assert store.purge_expired(2) == 0


def test_migrate_is_idempotent(store: SessionStore) -> None:
    migrating = store.as_migrating()
    if migrating is not None:  # Redis and memory have nothing to create
        first = migrating.migrate()
        second = migrating.migrate()
        assert first and second
        assert all(isinstance(line, str) for line in first + second)
    record = make_record()
    store.create(record)
    assert store.exists(record.key)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("a" * 8, id="8-chars"),
        pytest.param("A-z_0-9-_", id="alphabet"),
        pytest.param("k" * 64, id="64-chars"),
    ],
)
def test_any_key_of_the_session_key_form_round_trips(
    store: SessionStore, key: str
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


def test_the_longest_key_is_read_without_error(store: SessionStore) -> None:
    # A cookie may carry a 128-character key; no store ever creates one (the
    # session layer makes 43-character keys), but every read must take it.
    key = "k" * 128
    assert store.load(key) is None
    assert not store.exists(key)
    store.touch(key, utcnow() + timedelta(minutes=5))
    store.delete(key)
    assert store.load(key) is None
