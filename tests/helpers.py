"""Test helpers shared by several test modules."""

from __future__ import annotations

import threading
import time
import typing as t
from collections import Counter
from datetime import datetime

from flask_towersess.stores.base import BatchCallback
from flask_towersess.stores.base import LegacyKeys
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import SessionStore


class CountingStore(SessionStore):
    """Wraps a store and counts the calls made to it, by method name."""

    def __init__(self, inner: SessionStore) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def reset(self) -> None:
        self.calls.clear()

    def load(self, key: str) -> Record | None:
        self.calls["load"] += 1
        return self.inner.load(key)

    def create(self, record: Record) -> None:
        self.calls["create"] += 1
        self.inner.create(record)

    def save(self, record: Record, expected_version: int) -> None:
        self.calls["save"] += 1
        self.inner.save(record, expected_version)

    def touch(self, key: str, expires_at: datetime) -> None:
        self.calls["touch"] += 1
        self.inner.touch(key, expires_at)

    def delete(self, key: str) -> None:
        self.calls["delete"] += 1
        self.inner.delete(key)

    def colocation_prefix(self, user_id: str) -> str:
        return self.inner.colocation_prefix(user_id)

    def exists(self, key: str) -> bool:
        self.calls["exists"] += 1
        return self.inner.exists(key)

    def purge_expired(
        self, batch_size: int = 1000, *, on_batch: BatchCallback | None = None
    ) -> int:
        self.calls["purge_expired"] += 1
        return self.inner.purge_expired(batch_size, on_batch=on_batch)

    def count_expired(self) -> int:
        return self.inner.count_expired()

    def migrate(self) -> list[str]:
        return self.inner.migrate()


class FailingStore(SessionStore):
    """A store whose every call raises ``error`` (a store that is down)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def _fail(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        raise self.error

    load = create = save = touch = delete = exists = _fail  # type: ignore[assignment]
    purge_expired = count_expired = migrate = _fail  # type: ignore[assignment]


def session_key(client: t.Any) -> str:
    """The session key in ``client``'s session cookie (which it must have)."""
    cookie = client.get_cookie("session")
    assert cookie is not None, "no session cookie"
    return str(cookie.value.partition(".")[0])


def timed(call: t.Callable[[], t.Any]) -> tuple[t.Any, float]:
    """``call()``'s result, and the seconds it took."""
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


T = t.TypeVar("T")


def at_once(*calls: t.Callable[[threading.Barrier], T]) -> list[T]:
    """Run each call in a thread of its own, given one barrier for all of
    them to wait on where the race should begin; their results, in the
    order of ``calls``. The first error a call raised is raised here."""
    barrier = threading.Barrier(len(calls))
    results: list[t.Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, call: t.Callable[[threading.Barrier], T]) -> None:
        try:
            results[index] = call(barrier)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()  # the others stop waiting for this one

    threads = [
        threading.Thread(target=run, args=(index, call))
        for index, call in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def unhashed_pages(store: LegacyKeys, limit: int) -> list[list[str]]:
    """Every page :meth:`~flask_towersess.stores.base.LegacyKeys.unhashed_keys`
    gives, ``limit`` keys at most each, from the first to the last."""
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        keys, cursor = store.unhashed_keys(cursor, limit)
        pages.append(keys)
        if cursor is None:
            return pages
