"""A thread-safe, per-process store held in a dict.

For tests and single-process development: every worker process has its own
sessions, and they are gone when the process ends.

.. versionadded:: 0.1
"""

from __future__ import annotations

import logging
import os
import threading
import typing as t
from datetime import datetime

from ..errors import CreateError
from ..errors import UpdateError
from ..errors import VersionConflict
from ._fork import ProcessGuard
from .base import BatchCallback
from .base import Counting
from .base import Purging
from .base import Record
from .base import SessionStore
from .base import check_key
from .base import short_key
from .base import utcnow

logger = logging.getLogger("flask_towersess.stores")


class MemoryStore(SessionStore, Purging, Counting):
    """Keep sessions in this process's memory.

    Expired records are never returned; :meth:`purge_expired` frees them.
    There is nothing to migrate.

    .. versionchanged:: 0.2
        No ``migrate()`` method: the store is not :class:`~.base.Migrating`.
    """

    url_schemes = ("memory",)

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
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

    def load(self, key: str) -> Record | None:
        check_key(key)
        with self._lock:
            return self._live(key, utcnow())

    def create(self, record: Record) -> None:
        check_key(record.key)
        with self._lock:
            if self._live(record.key, utcnow()) is not None:
                raise CreateError(f"a session with key {short_key(record.key)} exists")
            self._records[record.key] = record

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
            self._records[record.key] = record

    def touch(self, key: str, expires_at: datetime) -> None:
        check_key(key)
        with self._lock:
            current = self._live(key, utcnow())
            if current is not None:
                self._records[key] = Record(
                    current.key, current.payload, expires_at, current.version
                )

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._records.pop(key, None)

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
                    del self._records[key]
            if not expired:
                return total
            total += len(expired)
            if on_batch is not None:
                on_batch(len(expired))

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
