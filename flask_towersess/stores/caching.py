"""A fast store in front of a durable one.

:class:`CachingStore` reads from a cache store (Redis, memory) and falls back
to a durable store (SQL, MongoDB), which stays the source of truth: every
write goes to the durable store first, and every compare-and-set is decided
there. This is Django's ``cached_db`` session engine and tower-sessions'
``CachingSessionStore``, with stricter rules against serving stale data.

The consistency rules (see ``docs/caching.rst`` for the reasoning):

1. The durable store decides. ``create``, ``save``, ``touch`` and ``delete``
   go to it first; its errors are the caller's errors. A save based on a
   stale cached copy fails its compare-and-set there (``VersionConflict``),
   so it can never overwrite newer durable data.
2. The cache is only ever written with a record the durable store has just
   accepted or returned, and only by a conditional write that fails if the
   cache holds something else than expected:

   - ``save`` replaces the cached copy by compare-and-set from the version
     the durable store replaced; if the cache holds anything else, the entry
     is deleted instead.
   - ``create`` takes a *fill lease* (below) on the empty slot before the
     durable create, then replaces it by compare-and-set; if the slot is
     taken, the entry is deleted instead. A revoke or a trim that ends the
     new session in between (the per-user index lists it as soon as the
     durable store has it) removes the lease, so it is never cached.
   - a read that misses first takes a *fill lease* (a placeholder entry with
     a random negative version), then reads the durable store, then replaces
     its own lease by compare-and-set. Any write or delete in between removes
     the lease, so the fill fails and a record read before a concurrent
     delete or save can never land in the cache.

3. ``touch``, ``delete`` and any failed durable write delete the cache entry
   after the durable write, whatever its outcome.
4. Every cache entry lives at most ``max_age``: the bound on how long a stale
   copy can be served when an invalidation did not reach the cache (the
   cache was unreachable, or lost writes in a fail-over).
5. A cache failure never fails the request: it is logged on the
   ``flask_towersess.stores.caching`` logger, reads fall through to the
   durable store, and writes fall back to deleting the entry.
6. A failing cache is left alone for a while (a circuit breaker): after a
   cache call fails, this process serves every request from the durable
   store for ``retry_after``, without waiting on the cache. The keys it wrote
   meanwhile are remembered; before it reads from the cache again, it
   deletes their entries there, so a logout or a change made while the
   cache was away is not undone by a copy from before. More keys than it
   can remember (:data:`MAX_OWED_DELETES`): it reads past the cache for
   ``max_age``, the longest any entry from before can live.

Cache entries use a small private format (the true expiry and the payload),
so the cache store must be used by this :class:`CachingStore` only.

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import struct
import threading
import time
import typing as t
from datetime import datetime
from datetime import timedelta

from ..config import DEFAULT_CACHE_MAX_AGE
from ..config import DEFAULT_CACHE_RETRY_AFTER
from ..errors import ConfigurationError
from ..errors import CreateError
from ..errors import TowerSessError
from ..errors import UpdateError
from ..errors import VersionConflict
from ._epoch import from_epoch_micros
from ._epoch import to_epoch_micros
from ._fork import ProcessGuard
from .base import BatchCallback
from .base import Counting
from .base import CountingPerUser
from .base import LegacyKeys
from .base import Migrating
from .base import PerUserIndex
from .base import Purging
from .base import Record
from .base import SessionStore
from .base import check_key
from .base import check_user_id
from .base import refuse_record
from .base import short_key
from .base import utcnow

logger = logging.getLogger("flask_towersess.stores.caching")

# A cache entry's payload: a format tag, the record's true expiry (in
# microseconds since the epoch), then the session payload. The entry's own
# expiry can be earlier (``max_age``), and the session layer needs the true
# one (it decides when to touch from it).
_HEADER = struct.Struct(">cq")
_FORMAT_TAG = b"\x01"


#: How many keys a process remembers to delete from a cache it could not
#: reach. Each costs one delete when the cache is back, on the request that
#: finds it back; beyond this, reading past the cache for ``max_age`` is
#: cheaper.
MAX_OWED_DELETES = 200


class _CacheHealth:
    """What this process knows about its cache: whether to call it, and which
    of its entries may be stale."""

    __slots__ = ("skip_until", "owed", "read_past_until", "probing", "mutex")

    def __init__(self) -> None:
        #: ``time.monotonic()`` until which the cache is not called; 0 when
        #: it is healthy (the hot path checks only this).
        self.skip_until = 0.0
        #: Keys written to the durable store while their cache entry could
        #: not be deleted; ``None`` after more than MAX_OWED_DELETES.
        self.owed: set[str] | None = set()
        #: Reads skip the cache until then (lost track of owed deletes).
        self.read_past_until = 0.0
        #: One thread at a time tries a cache that is due to be tried again.
        self.probing = threading.Lock()
        #: Guards ``skip_until`` and ``owed`` against a key being owed just
        #: as the cache is declared back (its delete would be lost).
        self.mutex = threading.Lock()


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__
    if cause is not None:
        return f"{type(exc).__name__} ({type(cause).__name__}: {cause})"
    return f"{type(exc).__name__}: {exc}"


class CachingStore(SessionStore, Purging, Migrating, Counting):
    """Serve reads from ``cache``, keep the truth in ``store``.

    :param cache: a fast store (typically a
        :class:`~flask_towersess.stores.RedisStore`), used by this object
        only.
    :param store: the durable store, the source of truth.
    :param max_age: the longest a record stays cached without being
        rewritten; bounds how long a copy the cache failed to invalidate can
        be served. ``None`` keeps entries as long as the sessions live.
    :param lease: how long a reader may take between a cache miss and filling
        the cache; a reader slower than this does not fill it.
    :param retry_after: after a cache call fails, how long this process
        serves requests from the durable store alone before it tries the
        cache again.

    In an app, set ``SESSION_STORE`` to the durable store and
    ``SESSION_CACHE`` to the cache; there is no URL for a caching store.
    A cache given as a URL gets short timeouts
    (:meth:`~flask_towersess.stores.SessionStore.cache_from_url`); a cache
    given as a client or a store keeps its own, which should be short too.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        Added ``retry_after``: a failing cache is skipped instead of being
        waited on by every request. It is :class:`~.base.Purging` when its
        durable store is, and :class:`~.base.Migrating` when either store
        is (see :meth:`~.base.SessionStore.as_purging`).
    .. versionchanged:: 0.2
        It is a :class:`~.base.PerUserIndex` (and
        :class:`~.base.CountingPerUser`, :class:`~.base.LegacyKeys`) exactly
        when its durable store is one: ``CachingStore(cache, store)`` is
        then an instance of a subclass with those methods, so ``isinstance``
        and :meth:`~.base.SessionStore.as_per_user` tell the truth.
    """

    def __new__(cls, cache: SessionStore, store: SessionStore, **_: t.Any) -> t.Any:
        # The capabilities are the durable store's: a runtime-checkable
        # protocol sees methods, so they live on a subclass chosen here, not
        # on this class (which would then always "be" a PerUserIndex).
        return super().__new__(_with_capabilities(cls, *_capabilities(store)))

    def __init__(
        self,
        cache: SessionStore,
        store: SessionStore,
        *,
        max_age: timedelta | None = DEFAULT_CACHE_MAX_AGE,
        lease: timedelta = timedelta(seconds=10),
        retry_after: timedelta = DEFAULT_CACHE_RETRY_AFTER,
    ) -> None:
        if max_age is not None and max_age <= timedelta(0):
            raise ConfigurationError("CachingStore max_age must be positive or None")
        if lease <= timedelta(0):
            raise ConfigurationError("CachingStore lease must be positive")
        if retry_after <= timedelta(0):
            raise ConfigurationError("CachingStore retry_after must be positive")
        self.cache = cache
        self.store = store
        self.max_age = max_age
        self.lease = lease
        self.retry_after = retry_after
        self._health = _CacheHealth()
        self._process = ProcessGuard(self._reset_after_fork, "CachingStore")

    def _reset_after_fork(self) -> None:
        # The parent keeps its own debts to the cache; a lock held by one of
        # its threads at the fork would be held forever here.
        self._health = _CacheHealth()

    # Per instance, where the base class has a class attribute: it is the
    # durable store's.
    @property
    def expires_natively(self) -> bool:  # type: ignore[override]
        return self.store.expires_natively

    @classmethod
    def from_url(cls, url: str, **options: t.Any) -> SessionStore:
        raise ConfigurationError(
            "A CachingStore is made of two stores, not a URL: use"
            " CachingStore(cache, store), or set SESSION_STORE to the durable"
            " store and SESSION_CACHE to the cache."
        )

    # -- the cache entry format ------------------------------------------------

    def _to_cache(self, record: Record, now: datetime) -> Record:
        true_expiry = to_epoch_micros(record.expires_at)
        expires_at = record.expires_at
        if self.max_age is not None:
            expires_at = min(expires_at, now + self.max_age)
        payload = _HEADER.pack(_FORMAT_TAG, true_expiry) + record.payload
        return Record(record.key, payload, expires_at, record.version)

    @staticmethod
    def _from_cache(entry: Record) -> Record | None:
        payload = entry.payload
        if len(payload) < _HEADER.size or payload[:1] != _FORMAT_TAG:
            return None
        _, true_expiry = _HEADER.unpack_from(payload)
        expires_at = from_epoch_micros(true_expiry)
        if expires_at is None:  # no datetime can hold it: unreadable
            return None
        return Record(entry.key, payload[_HEADER.size :], expires_at, entry.version)

    @staticmethod
    def _is_lease(entry: Record) -> bool:
        # Real records start at version 1; leases use negative versions.
        return entry.version < 1

    # -- cache health (the circuit breaker) -------------------------------------

    def _cache_failed(
        self,
        action: str,
        key: str,
        exc: TowerSessError,
        *,
        owes_delete: bool,
        owed_too: t.Iterable[str] = (),
    ) -> None:
        """Stop calling the cache for ``retry_after``; remember ``key`` (and
        ``owed_too``) when its entry may now be stale (a write the cache did
        not get)."""
        health = self._health
        with health.mutex:
            was_in_use = not health.skip_until
            health.skip_until = time.monotonic() + self.retry_after.total_seconds()
            if owes_delete:
                self._owe(health, key)
                for other in owed_too:
                    self._owe(health, other)
        if was_in_use:
            logger.warning(
                "session cache: %s failed for key %s: %s; serving sessions from"
                " the durable store alone, and trying the cache again in %s",
                action,
                short_key(key),
                _reason(exc),
                self.retry_after,
            )
        else:
            logger.debug(
                "session cache: %s failed for key %s: %s",
                action,
                short_key(key),
                _reason(exc),
            )

    def _owe(self, health: _CacheHealth, key: str) -> None:
        # Called with health.mutex held.
        if health.owed is None:
            return
        health.owed.add(key)
        if len(health.owed) > MAX_OWED_DELETES:
            health.owed = None

    def _skipping_cache(self) -> bool:
        """Whether the cache is being left alone; tries it again when due."""
        health = self._health
        return bool(health.skip_until) and not self._try_again()

    def _skipping_cache_for(self, key: str) -> bool:
        """Like :meth:`_skipping_cache`, for a write of ``key``: when the
        cache is skipped, its entry for ``key`` is owed a delete."""
        if not self._skipping_cache():
            return False
        health = self._health
        with health.mutex:
            if not health.skip_until:
                # Back in use meanwhile: the caller deletes the entry itself.
                return False
            self._owe(health, key)
            return True

    def _reading_past_cache(self) -> bool:
        health = self._health
        if self._skipping_cache():
            return True
        return (
            bool(health.read_past_until) and time.monotonic() < health.read_past_until
        )

    def _try_again(self) -> bool:
        """Try a skipped cache again if ``retry_after`` is over: pay the
        deletes owed to it, then use it. Returns whether it is in use."""
        if time.monotonic() < self._health.skip_until:
            return False
        self._process.check()
        health = self._health
        if not health.probing.acquire(blocking=False):
            return False  # another thread is trying it; do not wait for it
        try:
            while health.skip_until:
                with health.mutex:
                    owed = health.owed
                    if owed is not None and not owed:
                        # Closed under the mutex: a write that finds the
                        # cache skipped owes its key before this point, and
                        # one that comes after deletes its entry itself.
                        health.skip_until = 0.0
                        break
                    health.owed = set()
                if owed is None:
                    self._read_past_for_max_age(health)
                    continue
                for key in owed:
                    try:
                        self.cache.delete(key)
                    except TowerSessError as exc:
                        with health.mutex:
                            for unpaid in owed:
                                self._owe(health, unpaid)
                        self._cache_failed(
                            "deleting a stale entry", key, exc, owes_delete=True
                        )
                        return False
            logger.warning("session cache: back in use")
            return True
        finally:
            health.probing.release()

    def _read_past_for_max_age(self, health: _CacheHealth) -> None:
        if self.max_age is None:
            logger.error(
                "session cache: more than %d sessions were written while the"
                " cache was unreachable, and without max_age their stale"
                " copies there may be served until they expire. Set"
                " SESSION_CACHE_MAX_AGE to bound this.",
                MAX_OWED_DELETES,
            )
            return
        # Every entry written before now is gone by then.
        health.read_past_until = time.monotonic() + self.max_age.total_seconds()
        logger.warning(
            "session cache: more than %d sessions were written while the cache"
            " was unreachable; reading past the cache for %s, until every"
            " entry from before has expired",
            MAX_OWED_DELETES,
            self.max_age,
        )

    def _write_failed(self, action: str, key: str, exc: TowerSessError) -> None:
        """A cache write failed: it may have been applied, or be applied late
        (a command sent to a frozen server runs when it thaws). Delete the
        entry now if the cache still answers, and owe the delete anyway."""
        with contextlib.suppress(TowerSessError):
            self.cache.delete(key)
        self._cache_failed(action, key, exc, owes_delete=True)

    def _invalidate(self, key: str) -> None:
        """Delete the cache entry; on failure, owe it and carry on."""
        if self._skipping_cache_for(key):
            return
        try:
            self.cache.delete(key)
        except TowerSessError as exc:
            self._cache_failed("invalidating", key, exc, owes_delete=True)

    def _invalidate_many(self, keys: t.Collection[str]) -> None:
        """Delete the cache entries of ``keys`` in one cache call; on
        failure, owe them all and carry on (as :meth:`_invalidate`)."""
        if not keys:
            return
        if self._skipping_cache():
            health = self._health
            with health.mutex:
                if health.skip_until:
                    for key in keys:
                        self._owe(health, key)
                    return
        try:
            self.cache.delete_many(keys)
        except TowerSessError as exc:
            first, *rest = keys
            self._cache_failed(
                "invalidating", first, exc, owes_delete=True, owed_too=rest
            )

    def _lose_track(self, action: str, exc: BaseException) -> None:
        """A durable deletion failed and which keys it deleted is unknown:
        treat the cache as owed more deletes than it can remember (it is
        read past for ``max_age``, as after a long cache outage)."""
        health = self._health
        with health.mutex:
            health.owed = None
            health.skip_until = health.skip_until or time.monotonic()
        logger.warning(
            "session cache: %s failed in the durable store (%s); not reading"
            " the cache until entries it may have left stale are gone",
            action,
            _reason(exc),
        )

    # -- reads -----------------------------------------------------------------

    def _cached(self, key: str) -> tuple[bool, Record | None]:
        """Look ``key`` up in the cache.

        Returns ``(True, record)`` for a usable hit, ``(True, None)`` for an
        empty slot (the caller may fill it), ``(False, None)`` when the
        durable store must answer and the cache be left alone (a failing
        cache, another reader's lease, an unreadable entry).
        """
        if self._reading_past_cache():
            return False, None
        try:
            entry = self.cache.load(key)
        except TowerSessError as exc:
            self._cache_failed("read", key, exc, owes_delete=False)
            return False, None
        if entry is None:
            return True, None
        if self._is_lease(entry):
            return False, None
        record = self._from_cache(entry)
        if record is None:
            # Not written by a CachingStore (or by a future format), or
            # tampered with: drop it so the next read can fill the slot
            # properly.
            refuse_record(
                "CachingStore", key, "unreadable entry in the cache; deleting it"
            )
            self._invalidate(key)
            return False, None
        if record.is_expired():
            return False, None
        return True, record

    def load(self, key: str) -> Record | None:
        check_key(key)
        usable, record = self._cached(key)
        if record is not None:
            return record
        if not usable:
            return self.store.load(key)
        return self._load_and_fill(key)

    def _load_and_fill(self, key: str) -> Record | None:
        token = -(secrets.randbelow(2**31 - 1) + 1)
        try:
            self.cache.create(Record(key, b"", utcnow() + self.lease, token))
        except CreateError:
            # Another reader is filling the slot, or a writer just filled
            # it: read through and leave the cache to them.
            return self.store.load(key)
        except TowerSessError as exc:
            # A lease that lands late is harmless: readers skip leases, and
            # it runs out.
            self._cache_failed("taking the fill lease", key, exc, owes_delete=False)
            return self.store.load(key)
        # If the durable read fails, the lease just runs out.
        record = self.store.load(key)
        if record is None:
            # Give the slot back. Whatever is there now is this lease, another
            # reader's lease, or a copy a writer put there after removing the
            # lease; deleting any of those only costs a cache miss.
            self._invalidate(key)
            return None
        try:
            self.cache.save(self._to_cache(record, utcnow()), expected_version=token)
        except (UpdateError, VersionConflict):
            # The lease is gone: a write or delete happened after the lease
            # was taken, so this copy may be stale. Leave the cache alone.
            pass
        except TowerSessError as exc:
            # The fill may or may not have happened (or may happen late); the
            # record is fresh, but be safe: leave nothing behind.
            self._write_failed("filling", key, exc)
        return record

    def colocation_prefix(self, user_id: str) -> str:
        """The durable store's: its per-user index is the one that counts
        (the cache keeps records by key only)."""
        return self.store.colocation_prefix(user_id)

    def load_current(self, key: str) -> Record | None:
        """Read the durable store, which decides every compare-and-set.

        A save that lost a compare-and-set merges into the record this
        returns. The cache cannot serve it: the writer that won updates the
        cache only after the durable store, so until then (or until the next
        fill) a cached copy is the version that just lost, and a merge on it
        fails its next compare-and-set as surely as the first one. Nor is
        the cache filled from here: the conflict has just deleted the entry,
        and a fill would only race the winner's writes.

        .. versionadded:: 0.2
        """
        check_key(key)
        return self.store.load_current(key)

    def exists(self, key: str) -> bool:
        check_key(key)
        _, record = self._cached(key)
        if record is not None:
            return True
        return self.store.exists(key)

    # -- writes ----------------------------------------------------------------

    def create(self, record: Record) -> None:
        check_key(record.key)
        # A new key has nothing cached to go stale: no debt while skipping.
        if self._skipping_cache():
            self.store.create(record)
            return
        # The slot is leased before the durable create, as a reader's fill:
        # once the durable store has the record, the per-user index lists it,
        # and a revoke or a trim may end it (deleting the lease) before the
        # record reaches the cache, which must then not get it.
        token = self._lease(record.key)
        try:
            self.store.create(record)
        except BaseException:
            if token is not None:
                self._invalidate(record.key)
            raise
        if token is None:
            # A reader's lease, or a leftover the cache should not have:
            # either way the slot cannot be trusted, so empty it (or the
            # cache failed, and is being skipped).
            self._invalidate(record.key)
            return
        try:
            self.cache.save(self._to_cache(record, utcnow()), expected_version=token)
        except (UpdateError, VersionConflict):
            # The lease is gone: the session was ended meanwhile.
            pass
        except TowerSessError as exc:
            self._write_failed("write", record.key, exc)

    def _lease(self, key: str) -> int | None:
        """Take ``key``'s empty slot for a write (a lease, as a reader's
        fill does); its version, or ``None`` if the slot is taken or the
        cache failed."""
        token = -(secrets.randbelow(2**31 - 1) + 1)
        try:
            self.cache.create(Record(key, b"", utcnow() + self.lease, token))
        except CreateError:
            return None
        except TowerSessError as exc:
            # A lease that lands late is harmless: readers skip leases, and
            # it runs out.
            self._cache_failed("taking the write lease", key, exc, owes_delete=False)
            return None
        return token

    def save(self, record: Record, expected_version: int) -> None:
        check_key(record.key)
        try:
            self.store.save(record, expected_version)
        except Exception:
            # A conflict or a deleted record means the cached copy is stale;
            # any other failure leaves the durable state unknown. Either way
            # the next read must go to the durable store.
            self._invalidate(record.key)
            raise
        if self._skipping_cache_for(record.key):
            return
        try:
            self.cache.save(self._to_cache(record, utcnow()), expected_version)
        except UpdateError:
            # Nothing cached: the next read fills the slot.
            pass
        except VersionConflict:
            # The cache holds another version or a reader's lease; it cannot
            # tell which copy is newer, so it holds none.
            self._invalidate(record.key)
        except TowerSessError as exc:
            self._write_failed("write", record.key, exc)

    def touch(self, key: str, expires_at: datetime) -> None:
        check_key(key)
        # The cached entry carries the old expiry inside its payload, and
        # rewriting it would need its payload (a read, and a race): drop it
        # instead. Touches come at most once per refresh interval.
        try:
            self.store.touch(key, expires_at)
        finally:
            self._invalidate(key)

    def delete(self, key: str) -> None:
        check_key(key)
        try:
            self.store.delete(key)
        finally:
            self._invalidate(key)

    def delete_many(self, keys: t.Collection[str]) -> None:
        """Delete in the durable store (its one round trip), then the cache
        entries, in one cache call, whatever the durable outcome.

        .. versionadded:: 0.2
        """
        wanted = [check_key(key) for key in keys]
        try:
            self.store.delete_many(wanted)
        finally:
            self._invalidate_many(wanted)

    # -- maintenance -------------------------------------------------------------

    # A caching store has the capabilities of its two stores: known only
    # once it is built, hence the call-time checks below.

    def as_purging(self) -> Purging | None:
        # Cache entries never outlive their durable record: whether there is
        # anything to purge is the durable store's to say.
        return self if self.store.as_purging() is not None else None

    def as_migrating(self) -> Migrating | None:
        if self.store.as_migrating() is None and self.cache.as_migrating() is None:
            return None
        return self

    def as_counting(self) -> Counting | None:
        # The durable store holds every session; the cache holds only some.
        return self if self.store.as_counting() is not None else None

    def count_live(self) -> int:
        """The durable store's count: the cache holds only some sessions.

        .. versionadded:: 0.2
        """
        durable = self.store.as_counting()
        if durable is None:
            raise TypeError(f"{self.store.describe()} cannot count its sessions")
        return durable.count_live()

    def count_expired(self) -> int:
        durable = self.store.as_purging()
        return 0 if durable is None else durable.count_expired()

    def purge_expired(
        self, batch_size: int = 1000, *, on_batch: BatchCallback | None = None
    ) -> int:
        """Purge the durable store (the count returned), then the cache;
        each only if it is :class:`~.base.Purging`.

        Cache entries never outlive their durable record, so the cache purge
        only frees memory in a cache that does not expire entries by itself;
        its failure is logged, not raised.
        """
        durable = self.store.as_purging()
        purged = 0
        if durable is not None:
            purged = durable.purge_expired(batch_size, on_batch=on_batch)
        cache = self.cache.as_purging()
        if cache is None or self._skipping_cache():
            return purged
        try:
            cache.purge_expired(batch_size)
        except TowerSessError as exc:
            logger.warning("session cache: purge failed: %s", _reason(exc))
        return purged

    def migrate(self) -> list[str]:
        """Migrate the durable store, then the cache; each only if it is
        :class:`~.base.Migrating`."""
        lines: list[str] = []
        for role, layer in (("durable store", self.store), ("cache", self.cache)):
            migrating = layer.as_migrating()
            if migrating is not None:
                lines.extend(f"{role}: {line}" for line in migrating.migrate())
        return lines

    def migration_sql(self) -> str | None:
        layers = (self.store.as_migrating(), self.cache.as_migrating())
        parts = [sql for layer in layers if layer and (sql := layer.migration_sql())]
        return "\n".join(parts) if parts else None

    def close(self) -> None:
        try:
            self.cache.close()
        finally:
            self.store.close()

    def describe(self) -> str:
        return (
            f"CachingStore(cache={self.cache.describe()},"
            f" store={self.store.describe()})"
        )


# -- the durable store's per-user capabilities --------------------------------
#
# Each is a mixin a CachingStore gets when its durable store has the
# capability (see CachingStore.__new__). Listings and counts come from the
# durable store (the cache holds no index, and only some sessions); deletions
# are the durable store's, then the deleted keys' cache entries go in one
# cache call, or are owed to the cache like any missed invalidation.


class _PerUserCaching(CachingStore, PerUserIndex):
    def sessions_of(self, user_id: str) -> list[Record]:
        """The durable store's listing.

        .. versionadded:: 0.2
        """
        return t.cast(PerUserIndex, self.store.as_per_user()).sessions_of(user_id)

    def delete_sessions_of(
        self,
        user_id: str,
        keys: t.Collection[str] | None = None,
        *,
        keep: str | None = None,
    ) -> list[str]:
        """Delete in the durable store, then the deleted keys' cache entries.

        If the durable store fails, the keys it may have deleted are those
        of ``keys`` (their entries are deleted), or unknown (the cache is
        read past until every entry from before has expired).

        .. versionadded:: 0.2
        """
        check_user_id(user_id)
        if keep is not None:
            check_key(keep)
        wanted = None if keys is None else [check_key(key) for key in keys]
        durable = t.cast(PerUserIndex, self.store.as_per_user())
        try:
            ended = durable.delete_sessions_of(user_id, wanted, keep=keep)
        except BaseException as exc:
            if wanted is None:
                self._lose_track("revoking the sessions of a user", exc)
            else:
                self._invalidate_many([key for key in wanted if key != keep])
            raise
        self._invalidate_many(ended)
        return ended

    def trim_sessions_of(self, user_id: str, limit: int, *, keep: str) -> list[str]:
        """Trim in the durable store, then delete the trimmed keys' cache
        entries (see :meth:`delete_sessions_of` for a durable failure).

        .. versionadded:: 0.2
        """
        check_user_id(user_id)
        check_key(keep)
        durable = t.cast(PerUserIndex, self.store.as_per_user())
        try:
            ended = durable.trim_sessions_of(user_id, limit, keep=keep)
        except BaseException as exc:
            self._lose_track("trimming the sessions of a user", exc)
            raise
        self._invalidate_many(ended)
        return ended


class _CountingPerUserCaching(CachingStore, CountingPerUser):
    def per_user_counts(self, top: int) -> list[tuple[str, int]]:
        """The durable store's counts.

        .. versionadded:: 0.2
        """
        durable = t.cast(CountingPerUser, self.store.as_counting_per_user())
        return durable.per_user_counts(top)


class _LegacyKeysCaching(CachingStore, LegacyKeys):
    def unhashed_keys(
        self, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """The durable store's.

        .. versionadded:: 0.2
        """
        return t.cast(LegacyKeys, self.store).unhashed_keys(cursor, limit)

    def count_unhashed(self) -> int:
        """The durable store's.

        .. versionadded:: 0.2
        """
        return t.cast(LegacyKeys, self.store).count_unhashed()


def _capabilities(store: SessionStore) -> tuple[bool, bool, bool]:
    return (
        store.as_per_user() is not None,
        store.as_counting_per_user() is not None,
        isinstance(store, LegacyKeys),
    )


_MIXINS = (_PerUserCaching, _CountingPerUserCaching, _LegacyKeysCaching)
_classes: dict[tuple[type, bool, bool, bool], type] = {}
_classes_lock = threading.Lock()


def _with_capabilities(cls: type, per_user: bool, counting: bool, legacy: bool) -> type:
    """``cls``, or a subclass of it with the mixins of the capabilities
    given; one class per combination, made once."""
    if not (per_user or counting or legacy) or issubclass(cls, _MIXINS):
        return cls
    with _classes_lock:
        made = _classes.get((cls, per_user, counting, legacy))
        if made is None:
            chosen = (per_user, counting, legacy)
            bases = tuple(m for m, on in zip(_MIXINS, chosen) if on)
            made = type(cls.__name__, (*bases, cls), {"__module__": cls.__module__})
            _classes[cls, per_user, counting, legacy] = made
        return made
