"""A thread-safe, per-process store held in a dict.

For tests and single-process development: every worker process has its own
sessions, and they are gone when the process ends.

.. versionadded:: 0.1
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import typing as t
from datetime import datetime

from ..errors import CreateError
from ..errors import UpdateError
from ..errors import VersionConflict
from ._fork import ProcessGuard
from .base import HASHED_KEY_PATTERN
from .base import BatchCallback
from .base import Counting
from .base import CountingPerUser
from .base import LegacyKeys
from .base import PerUserIndex
from .base import Purging
from .base import Record
from .base import SessionStore
from .base import check_key
from .base import check_user_id
from .base import recency
from .base import short_key
from .base import utcnow

logger = logging.getLogger("flask_towersess.stores")


class MemoryStore(
    SessionStore, Purging, Counting, PerUserIndex, CountingPerUser, LegacyKeys
):
    """Keep sessions in this process's memory.

    Expired records are never returned; :meth:`purge_expired` frees them.
    There is nothing to migrate. The per-user index is a dict of key sets,
    kept by every write under the store's one lock.

    .. versionchanged:: 0.2
        No ``migrate()`` method: the store is not :class:`~.base.Migrating`.
    """

    url_schemes = ("memory",)

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self._by_user: dict[str, set[str]] = {}
        # One lock for the dict: every operation is a few dict steps, so a
        # finer scheme would cost more than it saves.
        self._mutex = threading.Lock()
        self._process = ProcessGuard(self._reset_after_fork, "MemoryStore")

    @property
    def _lock(self) -> threading.Lock:
        self._process.check()
        return self._mutex

    def _reset_after_fork(self) -> None:
        # Another thread may have held the lock at the fork: in the child
        # nobody would ever release it.
        self._mutex = threading.Lock()
        logger.warning(
            "a MemoryStore is in use in forked worker process %d: every worker"
            " process keeps its own sessions (and, as SESSION_CACHE, its own"
            " cache that other workers' writes never invalidate). With several"
            " worker processes use a shared store: SQLite, Redis, a database.",
            os.getpid(),
        )

    @classmethod
    def from_url(cls, url: str, **options: t.Any) -> MemoryStore:
        return cls(**options)

    def _live(self, key: str, now: datetime) -> Record | None:
        record = self._records.get(key)
        if record is None or record.expires_at <= now:
            return None
        return record

    def _put(self, record: Record) -> None:
        """Store ``record`` and move its index entry (under the lock)."""
        old = self._records.get(record.key)
        if old is not None and old.user_id != record.user_id:
            self._unindex(old)
        self._records[record.key] = record
        if record.user_id is not None:
            self._by_user.setdefault(record.user_id, set()).add(record.key)

    def _unindex(self, record: Record) -> None:
        if record.user_id is None:
            return
        keys = self._by_user.get(record.user_id)
        if keys is not None:
            keys.discard(record.key)
            if not keys:
                del self._by_user[record.user_id]

    def _remove(self, key: str) -> Record | None:
        record = self._records.pop(key, None)
        if record is not None:
            self._unindex(record)
        return record

    def _live_of(self, user_id: str, now: datetime) -> list[Record]:
        """The live records of ``user_id``; dead entries are dropped on the way."""
        live = []
        for key in list(self._by_user.get(user_id, ())):
            record = self._live(key, now)
            if record is None:
                self._remove(key)
            else:
                live.append(record)
        return live

    def load(self, key: str) -> Record | None:
        check_key(key)
        with self._lock:
            return self._live(key, utcnow())

    def create(self, record: Record) -> None:
        check_key(record.key)
        with self._lock:
            if self._live(record.key, utcnow()) is not None:
                raise CreateError(f"a session with key {short_key(record.key)} exists")
            self._put(record)

    def save(self, record: Record, expected_version: int) -> None:
        check_key(record.key)
        with self._lock:
            current = self._live(record.key, utcnow())
            if current is None:
                raise UpdateError("the session no longer exists")
            if current.version != expected_version:
                raise VersionConflict(
                    f"expected version {expected_version}, found {current.version}"
                )
            self._put(record)

    def touch(self, key: str, expires_at: datetime) -> None:
        check_key(key)
        with self._lock:
            now = utcnow()
            current = self._live(key, now)
            if current is not None:
                self._records[key] = dataclasses.replace(
                    current, expires_at=expires_at, last_active_at=now
                )

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._remove(key)

    def delete_many(self, keys: t.Collection[str]) -> None:
        for key in keys:
            check_key(key)
        with self._lock:
            for key in keys:
                self._remove(key)

    # -- the per-user index ------------------------------------------------------

    def sessions_of(self, user_id: str) -> list[Record]:
        """.. versionadded:: 0.2"""
        check_user_id(user_id)
        with self._lock:
            return self._live_of(user_id, utcnow())

    def delete_sessions_of(
        self,
        user_id: str,
        keys: t.Collection[str] | None = None,
        *,
        keep: str | None = None,
    ) -> list[str]:
        """.. versionadded:: 0.2"""
        check_user_id(user_id)
        wanted = None if keys is None else {check_key(key) for key in keys}
        with self._lock:
            ended = [
                record.key
                for record in self._live_of(user_id, utcnow())
                if record.key != keep and (wanted is None or record.key in wanted)
            ]
            for key in ended:
                self._remove(key)
            return ended

    def trim_sessions_of(self, user_id: str, limit: int, *, keep: str) -> list[str]:
        """.. versionadded:: 0.2"""
        check_user_id(user_id)
        with self._lock:
            live = self._live_of(user_id, utcnow())
            live.sort(key=recency, reverse=True)
            ended = [record.key for record in live[limit:] if record.key != keep]
            for key in ended:
                self._remove(key)
            return ended

    def per_user_counts(self, top: int) -> list[tuple[str, int]]:
        """.. versionadded:: 0.2"""
        now = utcnow()
        with self._lock:
            counts = [
                (user, len(self._live_of(user, now))) for user in list(self._by_user)
            ]
        counts = [pair for pair in counts if pair[1]]
        counts.sort(key=lambda pair: (-pair[1], pair[0]))
        return counts[:top]

    def count_live(self) -> int:
        """How many records have not expired yet.

        .. versionadded:: 0.2
        """
        now = utcnow()
        with self._lock:
            return sum(1 for r in self._records.values() if r.expires_at > now)

    def count_expired(self) -> int:
        now = utcnow()
        with self._lock:
            return sum(1 for r in self._records.values() if r.expires_at <= now)

    def purge_expired(
        self, batch_size: int = 1000, *, on_batch: BatchCallback | None = None
    ) -> int:
        total = 0
        while True:
            now = utcnow()
            # Hold the lock for one batch at a time so requests keep flowing
            # while a large purge runs.
            with self._lock:
                expired = [
                    key
                    for key, record in self._records.items()
                    if record.expires_at <= now
                ][:batch_size]
                for key in expired:
                    self._remove(key)
            if not expired:
                return total
            total += len(expired)
            if on_batch is not None:
                on_batch(len(expired))

    def unhashed_keys(
        self, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """.. versionadded:: 0.2"""
        now = utcnow()
        with self._lock:
            keys = sorted(
                key
                for key, record in self._records.items()
                if (cursor is None or key > cursor)
                and record.expires_at > now
                and not HASHED_KEY_PATTERN.fullmatch(key)
            )[:limit]
        return keys, (keys[-1] if len(keys) == limit else None)

    def count_unhashed(self) -> int:
        """.. versionadded:: 0.2"""
        return len(self.unhashed_keys(None, 2**62)[0])

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
