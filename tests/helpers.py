"""Test helpers shared by several test modules."""

from __future__ import annotations

import time
import typing as t
from collections import Counter
from datetime import datetime

from flask_towersess.stores.base import BatchCallback
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
