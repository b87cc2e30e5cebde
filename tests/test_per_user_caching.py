"""CachingStore's per-user capabilities: exactly its durable store's.

Listings and counts come from the durable store; revoking and trimming
delete there, then the ended keys' cache entries in one cache call. A cache
that fails (or hangs, or is killed) owes those deletes, as it owes any
missed invalidation: a revoked session is never served from the cache
afterwards. The end-to-end tests put a real ``redis-server`` (frozen with
``SIGSTOP``, or killed) in front of a MongoDBStore.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import typing as t
from datetime import timedelta

import pytest

from flask_towersess.errors import StoreUnavailable
from flask_towersess.stores.base import CountingPerUser
from flask_towersess.stores.base import LegacyKeys
from flask_towersess.stores.base import PerUserIndex
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.base import utcnow
from flask_towersess.stores.caching import CachingStore
from flask_towersess.stores.memory import MemoryStore
from flask_towersess.stores.mongodb import MongoDBStore
from flask_towersess.stores.redis import RedisStore

from .fixtures_redis import unique_prefix

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from .fixtures_redis import RedisProcess


def hashed_key() -> str:
    return hashlib.sha256(secrets.token_urlsafe(32).encode()).hexdigest()


def user_record(user_id: str | None, *, seconds: float = 600) -> Record:
    now = utcnow()
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    return Record(
        hashed_key(),
        b"payload",
        now + timedelta(seconds=seconds),
        1,
        user_id=user_id,
        created_at=now,
        last_active_at=now,
        user_agent="UA",
        ip="192.0.2.1",
    )


class SickCache(MemoryStore):
    """A MemoryStore cache that counts ``delete_many`` calls and can fail."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.delete_many_calls: list[int] = []

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable() from ConnectionError("cache is down")

    def load(self, key: str) -> Record | None:
        self._check()
        return super().load(key)

    def create(self, record: Record) -> None:
        self._check()
        super().create(record)

    def save(self, record: Record, expected_version: int) -> None:
        self._check()
        super().save(record, expected_version)

    def delete(self, key: str) -> None:
        self._check()
        super().delete(key)

    def delete_many(self, keys: t.Collection[str]) -> None:
        self.delete_many_calls.append(len(keys))
        self._check()
        super().delete_many(keys)


class Plain(SessionStore):
    """A durable store without a per-user index."""

    def __init__(self) -> None:
        self.inner = MemoryStore()

    def load(self, key: str) -> Record | None:
        return self.inner.load(key)

    def create(self, record: Record) -> None:
        self.inner.create(record)

    def save(self, record: Record, expected_version: int) -> None:
        self.inner.save(record, expected_version)

    def touch(self, key: str, expires_at: t.Any) -> None:
        self.inner.touch(key, expires_at)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


@pytest.fixture
def cache() -> SickCache:
    return SickCache()


@pytest.fixture
def durable() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def store(cache: SickCache, durable: MemoryStore) -> CachingStore:
    return CachingStore(cache, durable, retry_after=timedelta(milliseconds=200))


def cached_in(cache: MemoryStore, key: str) -> bool:
    entry = cache.load(key)
    return entry is not None and entry.version >= 1


def test_capabilities_are_the_durable_stores() -> None:
    indexed = CachingStore(MemoryStore(), MemoryStore())
    assert isinstance(indexed, (PerUserIndex, CountingPerUser, LegacyKeys))
    assert isinstance(indexed, CachingStore)
    assert indexed.as_per_user() is indexed
    assert indexed.as_counting_per_user() is indexed
    plain = CachingStore(MemoryStore(), Plain())
    assert type(plain) is CachingStore
    assert not isinstance(plain, (PerUserIndex, CountingPerUser, LegacyKeys))
    assert plain.as_per_user() is None
    assert plain.as_counting_per_user() is None
    assert not hasattr(plain, "sessions_of")
    # A cache with an index gives the caching store none.
    assert CachingStore(MemoryStore(), Plain()).as_per_user() is None


def test_fields_reach_the_durable_store_not_the_cache(
    store: CachingStore, cache: SickCache, durable: MemoryStore
) -> None:
    record = user_record("ann")
    store.create(record)
    assert durable.load(record.key) == record
    entry = cache.load(record.key)
    assert entry is not None and entry.user_id is None and entry.ip is None
    assert [r.key for r in store.sessions_of("ann")] == [record.key]  # type: ignore[attr-defined]
    saved = Record(record.key, b"v2", record.expires_at, 2, user_id="bob")
    store.save(saved, 1)
    assert durable.sessions_of("ann") == [] and durable.load(record.key) == saved
    assert store.per_user_counts(5) == [("bob", 1)]  # type: ignore[attr-defined]


def test_revoke_invalidates_in_one_cache_call(
    store: CachingStore, cache: SickCache
) -> None:
    records = [user_record("carl") for _ in range(5)]
    other = user_record("dora")
    for record in [*records, other]:
        store.create(record)
        assert store.load(record.key) is not None
    assert all(cached_in(cache, r.key) for r in records)
    per_user = t.cast(PerUserIndex, store)
    ended = per_user.delete_sessions_of(
        "carl", [records[0].key, other.key], keep=records[1].key
    )
    assert ended == [records[0].key] and cache.delete_many_calls == [1]
    ended = per_user.delete_sessions_of("carl", keep=records[1].key)
    assert set(ended) == {r.key for r in records[2:]}
    assert cache.delete_many_calls == [1, 3]
    for record in [records[0], *records[2:]]:
        assert store.load(record.key) is None
        assert not cached_in(cache, record.key)
    assert store.load(other.key) is not None
    assert per_user.trim_sessions_of("carl", 0, keep=hashed_key()) == [records[1].key]
    assert store.load(records[1].key) is None
    store.delete_many([other.key])
    assert store.load(other.key) is None and cache.delete_many_calls[-1] == 1


@pytest.mark.parametrize("ending", ["revoke", "trim"])
def test_a_session_ended_while_it_is_created_is_not_cached(
    store: CachingStore,
    cache: SickCache,
    durable: MemoryStore,
    monkeypatch: pytest.MonkeyPatch,
    ending: str,
) -> None:
    """The index makes a new key known to other requests as soon as the
    durable store has it: a revoke (or another log-in's trim) can end it
    before its creator writes the cache, and that write must not bring it
    back (two logins racing with ``SESSION_MAX_PER_USER=1`` both stayed
    logged in through the cache)."""
    record = user_record("hank")
    keeper = user_record("hank")
    store.create(keeper)
    per_user = t.cast(PerUserIndex, store)
    real = durable.create

    def create_then_end(created: Record) -> None:
        real(created)
        if ending == "revoke":
            ended = per_user.delete_sessions_of("hank", keep=keeper.key)
        else:
            ended = per_user.trim_sessions_of("hank", 0, keep=keeper.key)
        assert ended == [created.key]

    monkeypatch.setattr(durable, "create", create_then_end)
    store.create(record)
    assert durable.load(record.key) is None
    assert not cached_in(cache, record.key)
    assert store.load(record.key) is None
    assert store.load(keeper.key) is not None


def test_a_failing_cache_owes_the_revoked_keys(
    store: CachingStore, cache: SickCache, durable: MemoryStore
) -> None:
    records = [user_record("erin") for _ in range(3)]
    for record in records:
        store.create(record)
        assert store.load(record.key) is not None
    cache.down = True
    ended = t.cast(PerUserIndex, store).delete_sessions_of("erin")
    assert len(ended) == 3
    assert all(store.load(r.key) is None for r in records)
    # The cache comes back still holding its copies: never served.
    cache.down = False
    assert all(cached_in(cache, r.key) for r in records)
    assert all(store.load(r.key) is None for r in records)
    time.sleep(0.25)
    assert all(store.load(r.key) is None for r in records)
    assert not any(cached_in(cache, r.key) for r in records)


def test_a_durable_failure_mid_revoke_reads_past_the_cache(
    cache: SickCache, durable: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CachingStore(
        cache,
        durable,
        retry_after=timedelta(milliseconds=100),
        max_age=timedelta(seconds=1),
    )
    record = user_record("fred")
    store.create(record)
    assert store.load(record.key) is not None
    real = durable.delete_sessions_of

    def deletes_then_fails(*args: t.Any, **kwargs: t.Any) -> list[str]:
        real(*args, **kwargs)
        raise StoreUnavailable() from ConnectionError("reply lost")

    monkeypatch.setattr(durable, "delete_sessions_of", deletes_then_fails)
    with pytest.raises(StoreUnavailable):
        t.cast(PerUserIndex, store).delete_sessions_of("fred")
    assert cached_in(cache, record.key)  # the stale copy is there ...
    assert store.load(record.key) is None  # ... and never served
    time.sleep(0.15)
    assert store.load(record.key) is None


# -- end to end: a real Redis cache in front of MongoDB, frozen or killed --------


@pytest.mark.parametrize("fault", ["freeze", "kill"])
def test_revoked_sessions_stay_revoked_through_a_cache_outage(
    redis_server_factory: Callable[..., RedisProcess],
    mongodb_store: MongoDBStore,
    fault: str,
) -> None:
    server = redis_server_factory()
    cache = RedisStore.cache_from_url(server.url, key_prefix=unique_prefix())
    store = CachingStore(cache, mongodb_store, retry_after=timedelta(seconds=1))
    try:
        assert store.as_per_user() is store
        records = [user_record("gina") for _ in range(4)]
        for record in records:
            store.create(record)
            assert store.load(record.key) is not None  # cached
        assert all(cache.load(r.key) is not None for r in records)
        server.pause() if fault == "freeze" else server.kill()
        try:
            started = time.monotonic()
            ended = t.cast(PerUserIndex, store).delete_sessions_of(
                "gina", keep=records[0].key
            )
            assert time.monotonic() - started < 2.0
            assert set(ended) == {r.key for r in records[1:]}
            assert all(store.load(r.key) is None for r in records[1:])
        finally:
            server.resume() if fault == "freeze" else server.start()
        # Back (a thawed cache still holds the copies): never served.
        assert all(store.load(r.key) is None for r in records[1:])
        time.sleep(store.retry_after.total_seconds() + 0.1)
        assert all(store.load(r.key) is None for r in records[1:])
        assert all(cache.load(r.key) is None for r in records[1:])
        assert store.load(records[0].key) is not None
        assert [r.key for r in store.sessions_of("gina")] == [records[0].key]  # type: ignore[attr-defined]
    finally:
        store.close()
