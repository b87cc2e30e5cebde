"""CachingStore: read path, write order, failing caches, and staleness.

Both layers are MemoryStores wrapped in :class:`Spy`, which logs every call
(to check what reached which layer, in which order), can be made to fail
like an unreachable server, and can run a hook in the middle of a durable
read (to put a concurrent write between a cache miss and the cache fill).
"""

from __future__ import annotations

import logging
import secrets
import time
import typing as t
from datetime import datetime
from datetime import timedelta

import pytest

from flask_towersess.errors import ConfigurationError
from flask_towersess.errors import CreateError
from flask_towersess.errors import StoreUnavailable
from flask_towersess.errors import UpdateError
from flask_towersess.errors import VersionConflict
from flask_towersess.stores.base import BatchCallback
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.base import utcnow
from flask_towersess.stores.caching import MAX_OWED_DELETES
from flask_towersess.stores.caching import CachingStore
from flask_towersess.stores.memory import MemoryStore
from flask_towersess.stores.sqlalchemy import SQLAlchemyStore

LOGGER = "flask_towersess.stores.caching"

Call = tuple[str, str]


class Spy(SessionStore):
    """A MemoryStore that logs its calls as ``(name, method)``."""

    def __init__(self, name: str, log: list[Call], *, natively: bool = False) -> None:
        self.name = name
        self.log = log
        self.inner = MemoryStore()
        #: Methods that raise StoreUnavailable, as an unreachable server.
        self.failing: set[str] = set()
        #: Called with the record a load found, before it is returned.
        self.after_load: t.Callable[[Record | None], None] | None = None
        self.closed = False
        self._natively = natively

    @property
    def expires_natively(self) -> bool:  # type: ignore[override]
        return self._natively

    def fail(self, *methods: str) -> None:
        self.failing.update(methods or ALL_METHODS)

    def _enter(self, method: str) -> None:
        self.log.append((self.name, method))
        if method in self.failing:
            raise StoreUnavailable() from ConnectionError(f"{self.name} is down")

    def load(self, key: str) -> Record | None:
        self._enter("load")
        record = self.inner.load(key)
        if self.after_load is not None:
            hook, self.after_load = self.after_load, None
            hook(record)
        return record

    def create(self, record: Record) -> None:
        self._enter("create")
        self.inner.create(record)

    def save(self, record: Record, expected_version: int) -> None:
        self._enter("save")
        self.inner.save(record, expected_version)

    def touch(self, key: str, expires_at: datetime) -> None:
        self._enter("touch")
        self.inner.touch(key, expires_at)

    def delete(self, key: str) -> None:
        self._enter("delete")
        self.inner.delete(key)

    def exists(self, key: str) -> bool:
        self._enter("exists")
        return self.inner.exists(key)

    def count_expired(self) -> int:
        self._enter("count_expired")
        return self.inner.count_expired()

    def purge_expired(
        self, batch_size: int = 1000, *, on_batch: BatchCallback | None = None
    ) -> int:
        self._enter("purge_expired")
        return self.inner.purge_expired(batch_size, on_batch=on_batch)

    def migrate(self) -> list[str]:
        self._enter("migrate")
        return [f"{self.name} migrated"]

    def migration_sql(self) -> str | None:
        return None

    def pending_migrations(self) -> list[str]:
        return []

    def close(self) -> None:
        self._enter("close")
        self.closed = True

    def describe(self) -> str:
        return f"Spy({self.name})"


ALL_METHODS = (
    "load",
    "create",
    "save",
    "touch",
    "delete",
    "exists",
    "count_expired",
    "purge_expired",
    "migrate",
    "close",
)


def stored(record: Record | None) -> Record | None:
    """``record`` without its per-user fields (``load`` need not return
    them; a touch sets ``last_active_at``)."""
    if record is None:
        return None
    return Record(record.key, record.payload, record.expires_at, record.version)


class Layers(t.NamedTuple):
    store: CachingStore
    cache: Spy
    durable: Spy
    log: list[Call]


def make_layers(durable: Spy | None = None, **options: t.Any) -> Layers:
    log: list[Call] = [] if durable is None else durable.log
    cache = Spy("cache", log)
    if durable is None:
        durable = Spy("durable", log)
    return Layers(CachingStore(cache, durable, **options), cache, durable, log)


@pytest.fixture
def layers() -> Layers:
    return make_layers()


def make_record(
    payload: bytes = b"data", *, seconds: float = 600, version: int = 1
) -> Record:
    return Record(
        secrets.token_urlsafe(24),
        payload,
        utcnow() + timedelta(seconds=seconds),
        version,
    )


def cached_entry(layers: Layers, key: str) -> Record | None:
    """What the cache holds for ``key``, read behind the CachingStore's back."""
    return layers.cache.inner.load(key)


# -- the read path ---------------------------------------------------------------


def test_hit_makes_no_durable_call(layers: Layers) -> None:
    record = make_record()
    layers.store.create(record)
    layers.log.clear()
    assert layers.store.load(record.key) == record
    assert layers.store.exists(record.key)
    assert layers.log == [("cache", "load"), ("cache", "load")]


def test_miss_reads_durable_and_fills_the_cache(layers: Layers) -> None:
    record = make_record(b"\x00payload")
    layers.durable.inner.create(record)  # written by another process
    assert layers.store.load(record.key) == record
    assert layers.log == [
        ("cache", "load"),
        ("cache", "create"),  # the fill lease
        ("durable", "load"),
        ("cache", "save"),  # the lease replaced by the record
    ]
    layers.log.clear()
    assert layers.store.load(record.key) == record
    assert layers.log == [("cache", "load")]


def test_miss_of_an_unknown_key_leaves_nothing_cached(layers: Layers) -> None:
    key = secrets.token_urlsafe(24)
    assert layers.store.load(key) is None
    assert len(layers.cache.inner) == 0  # the lease was given back
    assert not layers.store.exists(key)


def test_read_during_another_readers_fill_does_not_fill(layers: Layers) -> None:
    record = make_record()
    layers.durable.inner.create(record)
    lease = Record(record.key, b"", utcnow() + timedelta(seconds=10), -12345)
    layers.cache.inner.create(lease)
    assert layers.store.load(record.key) == record
    assert layers.store.exists(record.key)
    assert cached_entry(layers, record.key) == lease
    assert ("cache", "save") not in layers.log


def test_cached_record_keeps_its_true_expiry(layers: Layers) -> None:
    # The entry expires within max_age, but the record a load returns has
    # the durable expiry: the session layer decides when to touch from it.
    record = make_record(seconds=86400)
    layers.store.create(record)
    entry = cached_entry(layers, record.key)
    assert entry is not None
    assert entry.expires_at <= utcnow() + timedelta(minutes=5)
    assert layers.store.load(record.key) == record


def test_entries_are_reread_after_max_age() -> None:
    layers = make_layers(max_age=timedelta(milliseconds=50))
    record = make_record()
    layers.store.create(record)
    time.sleep(0.06)
    layers.log.clear()
    assert layers.store.load(record.key) == record
    assert ("durable", "load") in layers.log


def test_unreadable_entry_is_dropped(
    layers: Layers, caplog: pytest.LogCaptureFixture
) -> None:
    record = make_record()
    layers.durable.inner.create(record)
    layers.cache.inner.create(Record(record.key, b"junk", record.expires_at, 1))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert layers.store.load(record.key) == record
    assert "unreadable entry" in caplog.text
    assert cached_entry(layers, record.key) is None
    assert layers.store.load(record.key) == record  # refilled
    assert cached_entry(layers, record.key) is not None


# -- the write path ----------------------------------------------------------------


def test_create_leases_the_slot_then_writes_durable_then_cache(
    layers: Layers,
) -> None:
    record = make_record()
    layers.store.create(record)
    assert layers.log == [
        ("cache", "create"),  # the lease
        ("durable", "create"),
        ("cache", "save"),  # the lease replaced by the record
    ]
    assert layers.durable.inner.load(record.key) == record


def test_create_of_a_taken_key_fails_in_durable(layers: Layers) -> None:
    record = make_record(b"first")
    layers.durable.inner.create(record)
    with pytest.raises(CreateError):
        layers.store.create(Record(record.key, b"second", record.expires_at))
    # The lease is given back.
    assert layers.log == [
        ("cache", "create"),
        ("durable", "create"),
        ("cache", "delete"),
    ]
    assert layers.store.load(record.key) == record


def test_save_writes_durable_then_cache(layers: Layers) -> None:
    record = make_record(b"v1")
    layers.store.create(record)
    layers.log.clear()
    v2 = Record(record.key, b"v2", record.expires_at, 2)
    layers.store.save(v2, 1)
    assert layers.log == [("durable", "save"), ("cache", "save")]
    layers.log.clear()
    assert layers.store.load(record.key) == v2
    assert layers.log == [("cache", "load")]


def test_save_of_an_uncached_record_leaves_the_slot_empty(layers: Layers) -> None:
    # Whether this copy is the newest is not known to the cache: the next
    # read fills the slot from the durable store.
    record = make_record(b"v1")
    layers.durable.inner.create(record)
    layers.store.save(Record(record.key, b"v2", record.expires_at, 2), 1)
    assert cached_entry(layers, record.key) is None


def test_touch_writes_durable_then_drops_the_entry(layers: Layers) -> None:
    record = make_record(b"keep", seconds=60)
    layers.store.create(record)
    layers.log.clear()
    later = utcnow() + timedelta(hours=2)
    layers.store.touch(record.key, later)
    assert layers.log == [("durable", "touch"), ("cache", "delete")]
    assert stored(layers.store.load(record.key)) == Record(
        record.key, b"keep", later, 1
    )


def test_delete_writes_durable_then_cache(layers: Layers) -> None:
    record = make_record()
    layers.store.create(record)
    layers.log.clear()
    layers.store.delete(record.key)
    assert layers.log == [("durable", "delete"), ("cache", "delete")]
    assert layers.store.load(record.key) is None
    assert not layers.store.exists(record.key)


# -- a failing cache costs no data and no error -------------------------------------


def test_a_dead_cache_costs_no_data_and_no_error(
    layers: Layers, caplog: pytest.LogCaptureFixture
) -> None:
    layers.cache.fail()
    store = layers.store
    record = make_record(b"v1")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        store.create(record)
        assert store.load(record.key) == record
        assert store.exists(record.key)
        v2 = Record(record.key, b"v2", record.expires_at, 2)
        store.save(v2, 1)
        assert store.load(record.key) == v2
        later = utcnow() + timedelta(hours=1)
        store.touch(record.key, later)
        assert stored(store.load(record.key)) == Record(record.key, b"v2", later, 2)
        expired = make_record(seconds=-5)
        layers.durable.inner.create(expired)
        assert store.purge_expired() == 1
        store.delete(record.key)
        assert store.load(record.key) is None
    assert layers.durable.inner.load(record.key) is None
    assert len(layers.durable.inner) == 0
    messages = [r for r in caplog.records if r.name == LOGGER]
    assert messages and all(r.levelno >= logging.WARNING for r in messages)
    assert any("StoreUnavailable" in r.getMessage() for r in messages)
    assert all(record.key not in r.getMessage() for r in messages)  # secrets


def test_the_durable_store_failing_is_the_callers_error(layers: Layers) -> None:
    record = make_record()
    layers.store.create(record)
    layers.durable.fail()
    with pytest.raises(StoreUnavailable):
        layers.store.save(Record(record.key, b"v2", record.expires_at, 2), 1)
    # The save may or may not have reached the durable store: the cached copy
    # is dropped, so the next read asks the durable store, which is down.
    assert cached_entry(layers, record.key) is None
    with pytest.raises(StoreUnavailable):
        layers.store.load(record.key)
    with pytest.raises(StoreUnavailable):
        layers.store.delete(record.key)
    with pytest.raises(StoreUnavailable):
        layers.store.touch(record.key, record.expires_at)


def test_cache_write_failure_falls_back_to_invalidation(layers: Layers) -> None:
    record = make_record(b"v1")
    layers.store.create(record)
    layers.cache.fail("save")  # writes fail, deletes still work
    v2 = Record(record.key, b"v2", record.expires_at, 2)
    layers.store.save(v2, 1)
    assert cached_entry(layers, record.key) is None
    layers.cache.failing.clear()
    assert layers.store.load(record.key) == v2


def test_missed_invalidation_cannot_overwrite_newer_data(
    layers: Layers, caplog: pytest.LogCaptureFixture
) -> None:
    # The cache keeps its data but misses every write for a while (a network
    # partition): this process owes it a delete and reads past it; another
    # process that reads the old copy meanwhile cannot save over the newer
    # data, because its compare-and-set fails in the durable store.
    record = make_record(b"v1")
    layers.store.create(record)
    other = CachingStore(layers.cache, layers.durable)  # another process
    layers.cache.fail("save", "delete", "create")
    v2 = Record(record.key, b"v2", record.expires_at, 2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        layers.store.save(v2, 1)
    assert "serving sessions from the durable store alone" in caplog.text
    layers.cache.failing.clear()
    assert layers.store.load(record.key) == v2  # read past the cache
    stale = other.load(record.key)
    assert stale == record  # bounded by max_age; see docs/caching.rst
    entry = cached_entry(layers, record.key)
    assert entry is not None
    assert entry.expires_at <= utcnow() + layers.store.max_age  # type: ignore[operator]
    with pytest.raises(VersionConflict):
        other.save(Record(record.key, b"from stale", record.expires_at, 2), 1)
    assert layers.durable.inner.load(record.key) == v2
    assert other.load(record.key) == v2


# -- the circuit breaker --------------------------------------------------------------


class Clock:
    """Stands in for ``time`` in the caching module: monotonic() is set by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("flask_towersess.stores.caching.time", clock)
    return clock


def cache_calls(layers: Layers) -> list[str]:
    return [method for name, method in layers.log if name == "cache"]


def test_failing_cache_is_skipped_until_retry_after(
    layers: Layers, clock: Clock
) -> None:
    record = make_record(b"v1")
    layers.store.create(record)
    layers.cache.fail()
    layers.log.clear()
    assert layers.store.load(record.key) == record
    assert cache_calls(layers) == ["load"]  # failed once
    layers.log.clear()
    for version in range(2, 12):
        update = Record(record.key, b"v%d" % version, record.expires_at, version)
        layers.store.save(update, version - 1)
        assert layers.store.load(record.key) == update
        assert layers.store.exists(record.key)
    layers.store.touch(record.key, record.expires_at)
    assert cache_calls(layers) == []  # never waited on again
    clock.now += layers.store.retry_after.total_seconds() - 0.01
    layers.store.load(record.key)
    assert cache_calls(layers) == []
    clock.now += 0.02
    layers.store.load(record.key)
    assert cache_calls(layers) == ["delete"]  # tried again: still down
    layers.log.clear()
    layers.store.load(record.key)
    assert cache_calls(layers) == []


def test_cache_back_pays_its_owed_deletes_before_serving(
    layers: Layers, clock: Clock
) -> None:
    # A logout and a change made while the cache was away are not undone by
    # the copies it still holds once it is back.
    kept, ended = make_record(b"v1"), make_record(b"v1")
    for record in (kept, ended):
        layers.store.create(record)
        assert cached_entry(layers, record.key) is not None
    layers.cache.fail()
    changed = Record(kept.key, b"v2", kept.expires_at, 2)
    layers.store.save(changed, 1)
    layers.store.delete(ended.key)
    layers.cache.failing.clear()  # back (a frozen cache thawed)
    assert layers.store.load(kept.key) == changed  # still skipping it
    assert layers.store.load(ended.key) is None
    assert cached_entry(layers, ended.key) is not None  # the stale copies
    clock.now += layers.store.retry_after.total_seconds()
    layers.log.clear()
    assert layers.store.load(ended.key) is None
    assert sorted(cache_calls(layers)[:2]) == ["delete", "delete"]
    assert cached_entry(layers, ended.key) is None
    assert layers.store.load(kept.key) == changed
    layers.log.clear()
    assert layers.store.load(kept.key) == changed
    assert layers.log == [("cache", "load")]  # in use again


def test_owed_deletes_survive_a_failed_retry(layers: Layers, clock: Clock) -> None:
    record = make_record(b"v1")
    layers.store.create(record)
    layers.cache.fail()
    layers.store.delete(record.key)
    clock.now += layers.store.retry_after.total_seconds()
    assert layers.store.load(record.key) is None  # the retry fails
    layers.cache.failing.clear()
    assert cached_entry(layers, record.key) is not None
    clock.now += layers.store.retry_after.total_seconds()
    assert layers.store.load(record.key) is None
    assert cached_entry(layers, record.key) is None


def test_too_many_owed_deletes_read_past_the_cache_for_max_age(
    layers: Layers, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    records = [make_record(b"v1") for _ in range(MAX_OWED_DELETES + 5)]
    for record in records:
        layers.store.create(record)
    layers.cache.fail()
    for record in records:
        layers.store.delete(record.key)
    layers.cache.failing.clear()
    clock.now += layers.store.retry_after.total_seconds()
    layers.log.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert all(layers.store.load(r.key) is None for r in records)
    assert "reading past the cache" in caplog.text
    assert "load" not in cache_calls(layers)
    assert layers.store.max_age is not None
    # Every entry from before has expired in the cache by then (this clock
    # does not move the cache's): the cache is read again.
    clock.now += layers.store.max_age.total_seconds()
    fresh = make_record()
    layers.store.create(fresh)
    layers.log.clear()
    assert layers.store.load(fresh.key) == fresh
    assert layers.log == [("cache", "load")]


def test_a_new_session_written_while_skipping_owes_nothing(
    layers: Layers, clock: Clock
) -> None:
    layers.cache.fail()
    layers.store.load(make_record().key)  # opens the breaker
    record = make_record()
    layers.store.create(record)
    layers.cache.failing.clear()
    clock.now += layers.store.retry_after.total_seconds()
    layers.log.clear()
    assert layers.store.load(record.key) == record
    assert cache_calls(layers) == ["load", "create", "save"]  # a plain fill


def test_retry_after_is_per_process(layers: Layers, clock: Clock) -> None:
    layers.cache.fail()
    layers.store.load(make_record().key)
    health = layers.store._health
    assert health.skip_until
    layers.store._reset_after_fork()
    assert not layers.store._health.skip_until


# -- several processes --------------------------------------------------------------


def test_stale_cache_cannot_overwrite_newer_durable_data() -> None:
    # Two CachingStores share the durable store but not the cache (two
    # processes with a per-process cache, the worst case).
    a = make_layers()
    b = make_layers(durable=a.durable)
    record = make_record(b"v1")
    a.store.create(record)
    assert b.store.load(record.key) == record  # b's cache now holds v1
    v2 = Record(record.key, b"v2 from a", record.expires_at, 2)
    a.store.save(v2, 1)
    with pytest.raises(VersionConflict):
        b.store.save(Record(record.key, b"v2 from b", record.expires_at, 2), 1)
    assert a.durable.inner.load(record.key) == v2
    # b dropped its stale copy: the reload for its retry sees a's save.
    assert b.store.load(record.key) == v2
    b.store.save(Record(record.key, b"v3 from b", record.expires_at, 3), 2)
    assert a.durable.inner.load(record.key) == Record(
        record.key, b"v3 from b", record.expires_at, 3
    )


def test_load_current_reads_the_durable_store_only(layers: Layers) -> None:
    record = make_record(b"v1")
    layers.store.create(record)  # cached
    v2 = Record(record.key, b"v2", record.expires_at, 2)
    layers.durable.inner.save(v2, 1)  # won; its cache update not landed yet
    layers.log.clear()
    assert layers.store.load(record.key) == record  # an ordinary read: the copy
    assert layers.store.load_current(record.key) == v2
    assert layers.log == [("cache", "load"), ("durable", "load")]
    # Neither filled nor dropped: the cache is the writers' to update.
    entry = cached_entry(layers, record.key)
    assert entry is not None and entry.version == 1


def test_a_retried_save_merges_into_the_version_that_won() -> None:
    # A save that lost its compare-and-set merges into the current record.
    # Here, by the time it reloads, a third writer has saved in the durable
    # store and not yet updated the (shared) cache, which holds the version
    # before: merging into that copy would lose the next compare-and-set
    # too, and under many writers run the save out of retries
    # (SessionInterrupted after SESSION_SAVE_TIMEOUT).
    from flask_towersess import ServerSession
    from flask_towersess.session import stored_key
    from flask_towersess.signals import session_save_conflict

    cache, durable = MemoryStore(), MemoryStore()
    store = CachingStore(cache, durable)
    first = ServerSession(store)
    first["start"] = True
    first.save()
    key = first.session_key
    assert key is not None

    mine = ServerSession(store, key)
    mine["mine"] = 1  # loaded at version 1, through the cache
    other = ServerSession(store, key)
    other["other"] = 1
    other.save()  # version 2, durable and cache: mine's save will conflict

    conflicts: list[int] = []

    def third_writer_wins(sender: object, **extra: t.Any) -> None:
        conflicts.append(extra["retries"])
        if len(conflicts) > 1:
            return
        # A reader fills the cache with version 2 (the conflict emptied it)...
        stored_as = stored_key(key)
        assert store.load(stored_as) is not None
        assert cache.load(stored_as) is not None
        # ...and a writer of another process saves version 3, its cache
        # update still to come.
        third = ServerSession(durable, key)
        third["third"] = 1
        third.save()

    with session_save_conflict.connected_to(third_writer_wins):
        mine.save()

    assert conflicts == [1]  # one merge, into version 3: no second conflict
    stored = ServerSession(durable, key)
    assert dict(stored) == {"start": True, "mine": 1, "other": 1, "third": 1}
    record = durable.load(stored_key(key))
    assert record is not None and record.version == 4


def test_saving_a_session_deleted_elsewhere_does_not_recreate_it() -> None:
    a = make_layers()
    b = make_layers(durable=a.durable)
    record = make_record()
    a.store.create(record)
    assert b.store.load(record.key) == record
    a.store.delete(record.key)  # a logout handled by the other process
    with pytest.raises(UpdateError):
        b.store.save(Record(record.key, b"again", record.expires_at, 2), 1)
    assert a.durable.inner.load(record.key) is None
    assert b.store.load(record.key) is None


def test_deleted_session_does_not_come_back_from_a_shared_cache() -> None:
    a = make_layers()
    b = CachingStore(a.cache, a.durable)  # another process, same cache
    record = make_record()
    a.store.create(record)
    assert b.load(record.key) == record
    a.store.delete(record.key)
    assert b.load(record.key) is None
    assert not b.exists(record.key)


def test_fill_racing_a_delete_does_not_resurrect(layers: Layers) -> None:
    record = make_record()
    layers.durable.inner.create(record)

    # The reader has read the record from the durable store; before it fills
    # the cache, another request deletes the session.
    def logout(found: Record | None) -> None:
        assert found == record
        layers.store.delete(record.key)

    layers.durable.after_load = logout
    layers.store.load(record.key)  # the reader itself saw it: unavoidable
    assert cached_entry(layers, record.key) is None
    assert layers.store.load(record.key) is None
    assert not layers.store.exists(record.key)


def test_fill_racing_a_save_does_not_cache_the_old_version(layers: Layers) -> None:
    record = make_record(b"v1")
    layers.durable.inner.create(record)
    v2 = Record(record.key, b"v2", record.expires_at, 2)

    def concurrent_save(found: Record | None) -> None:
        layers.store.save(v2, 1)

    layers.durable.after_load = concurrent_save
    assert layers.store.load(record.key) == record
    assert layers.store.load(record.key) == v2


def test_fill_racing_a_touch_does_not_cache_the_old_expiry(layers: Layers) -> None:
    record = make_record(seconds=60)
    layers.durable.inner.create(record)
    later = utcnow() + timedelta(hours=3)

    def concurrent_touch(found: Record | None) -> None:
        layers.store.touch(record.key, later)

    layers.durable.after_load = concurrent_touch
    layers.store.load(record.key)
    loaded = layers.store.load(record.key)
    assert loaded is not None and loaded.expires_at == later


def test_create_over_a_readers_lease_empties_the_slot(layers: Layers) -> None:
    record = make_record()
    lease = Record(record.key, b"", utcnow() + timedelta(seconds=10), -99)
    layers.cache.inner.create(lease)
    layers.store.create(record)
    assert cached_entry(layers, record.key) is None
    assert layers.store.load(record.key) == record


# -- maintenance and the rest of the API ------------------------------------------


def test_purge_acts_on_the_durable_store(layers: Layers) -> None:
    live = make_record()
    layers.store.create(live)
    for _ in range(5):
        layers.durable.inner.create(make_record(seconds=-60))
    assert layers.store.count_expired() == 5
    batches: list[int] = []
    assert layers.store.purge_expired(2, on_batch=batches.append) == 5
    assert batches == [2, 2, 1]
    assert ("cache", "purge_expired") in layers.log
    assert layers.store.count_expired() == 0
    assert layers.store.load(live.key) == live


def test_migrate_covers_both_layers(layers: Layers) -> None:
    assert layers.store.migrate() == [
        "durable store: durable migrated",
        "cache: cache migrated",
    ]


def test_migration_sql_of_memory_stores_is_none() -> None:
    assert CachingStore(MemoryStore(), MemoryStore()).migration_sql() is None


def test_close_closes_both_even_if_the_cache_fails(layers: Layers) -> None:
    layers.cache.fail("close")
    with pytest.raises(StoreUnavailable):
        layers.store.close()
    assert layers.durable.closed


def test_describe_names_both(layers: Layers) -> None:
    assert (
        layers.store.describe() == "CachingStore(cache=Spy(cache), store=Spy(durable))"
    )


def test_expires_natively_is_the_durable_stores() -> None:
    log: list[Call] = []
    assert CachingStore(Spy("c", log), Spy("d", log, natively=True)).expires_natively
    assert not CachingStore(
        Spy("c", log, natively=True), Spy("d", log)
    ).expires_natively


def test_no_url() -> None:
    with pytest.raises(ConfigurationError, match="SESSION_CACHE"):
        CachingStore.from_url("redis://127.0.0.1/0")
    assert CachingStore.url_schemes == ()
    assert not CachingStore.accepts(MemoryStore())


@pytest.mark.parametrize(
    "options",
    [
        {"max_age": timedelta(0)},
        {"lease": timedelta(seconds=-1)},
        {"retry_after": timedelta(0)},
    ],
)
def test_bad_options(options: dict[str, t.Any]) -> None:
    with pytest.raises(ConfigurationError):
        CachingStore(MemoryStore(), MemoryStore(), **options)


def test_max_age_none_caches_for_the_whole_lifetime() -> None:
    layers = make_layers(max_age=None)
    record = make_record(seconds=86400)
    layers.store.create(record)
    entry = cached_entry(layers, record.key)
    assert entry is not None and entry.expires_at == record.expires_at


def test_caching_store_fixture(caching_store: CachingStore) -> None:
    assert isinstance(caching_store.cache, MemoryStore)
    assert isinstance(caching_store.store, SQLAlchemyStore)
    record = make_record()
    caching_store.create(record)
    assert caching_store.load(record.key) == record
