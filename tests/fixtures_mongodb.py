"""Store fixtures for MongoDB and the caching store (a pytest plugin).

By default the MongoDB fixtures run on mongomock, in memory. With
``TOWERSESS_MONGODB_URL`` set (``mongodb://127.0.0.1:27017/towersess_test``)
they run on that server instead: every test gets its own collection, dropped
afterwards.
"""

from __future__ import annotations

import os
import threading
import typing as t
import uuid

import pytest

from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.caching import CachingStore
from flask_towersess.stores.memory import MemoryStore
from flask_towersess.stores.mongodb import MongoDBStore

from .services import service_unavailable

#: The real server to test against, if any.
MONGODB_URL = os.environ.get("TOWERSESS_MONGODB_URL")


@pytest.fixture
def mongodb_collection() -> t.Iterator[t.Any]:
    """A fresh, empty collection without indexes (no TTL index yet)."""
    name = f"towersess_test_{uuid.uuid4().hex}"
    if MONGODB_URL:
        pymongo = pytest.importorskip("pymongo")
        client = pymongo.MongoClient(MONGODB_URL, serverSelectionTimeoutMS=3000)
        try:
            client.admin.command("ping")
        except pymongo.errors.PyMongoError as exc:
            client.close()
            service_unavailable(f"MongoDB at {MONGODB_URL} is unreachable: {exc}")
        collection = client.get_default_database("towersess_test")[name]
        try:
            yield collection
        finally:
            collection.drop()
            client.close()
    else:
        mongomock = pytest.importorskip("mongomock")
        collection = mongomock.MongoClient().towersess_test[name]
        apply_atomically(collection)
        yield collection
        collection.drop()


#: The collection methods the store calls.
_OPERATIONS = (
    "find_one",
    "find",
    "replace_one",
    "update_one",
    "delete_one",
    "delete_many",
    "count_documents",
    "create_index",
    "index_information",
    "aggregate",
)

#: Those that return a cursor: mongomock reads the documents while the
#: cursor is iterated, after the call returned.
_CURSORS = frozenset({"find", "aggregate"})


class _SnapshotCursor:
    """A mongomock cursor read whole under the collection's lock on its
    first iteration, as a server's reply is one snapshot. mongomock reads
    each matched document while the cursor is iterated: a document another
    thread deletes meanwhile raises ``KeyError`` inside mongomock, which
    no MongoDB server does."""

    def __init__(self, cursor: t.Any, lock: threading.RLock) -> None:
        self._cursor = cursor
        self._lock = lock

    def _chain(self, name: str, *args: t.Any, **kwargs: t.Any) -> _SnapshotCursor:
        with self._lock:
            self._cursor = getattr(self._cursor, name)(*args, **kwargs)
        return self

    def sort(self, *args: t.Any, **kwargs: t.Any) -> _SnapshotCursor:
        return self._chain("sort", *args, **kwargs)

    def limit(self, *args: t.Any, **kwargs: t.Any) -> _SnapshotCursor:
        return self._chain("limit", *args, **kwargs)

    def skip(self, *args: t.Any, **kwargs: t.Any) -> _SnapshotCursor:
        return self._chain("skip", *args, **kwargs)

    _documents: t.Iterator[t.Any] | None = None

    def __iter__(self) -> _SnapshotCursor:
        return self

    def __next__(self) -> t.Any:
        if self._documents is None:
            with self._lock:
                self._documents = iter(list(self._cursor))
        return next(self._documents)

    def __getattr__(self, name: str) -> t.Any:
        # What else mongomock itself calls on its cursors (its own methods
        # call find() too, and get this).
        return getattr(self._cursor, name)


def apply_atomically(collection: t.Any) -> None:
    """Run each operation on a mongomock collection under one lock.

    A MongoDB server applies every single-document write atomically, and a
    compare-and-set (``update_one`` on ``version``) relies on it. mongomock
    matches and then writes in Python, with no lock: two threads can both
    match the same version, and a threaded test would find mongomock's lost
    write, not the store's. Cursors are read whole under the lock too
    (:class:`_SnapshotCursor`).
    """
    lock = threading.RLock()

    def atomic(name: str, method: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
        def call(*args: t.Any, **kwargs: t.Any) -> t.Any:
            with lock:
                result = method(*args, **kwargs)
            if name in _CURSORS:
                return _SnapshotCursor(result, lock)
            return result

        return call

    for name in _OPERATIONS:
        setattr(collection, name, atomic(name, getattr(collection, name)))


@pytest.fixture
def mongodb_store(mongodb_collection: t.Any) -> t.Iterator[MongoDBStore]:
    """A fresh, empty, migrated MongoDBStore (see :func:`mongodb_collection`).

    The collection's client belongs to :func:`mongodb_collection`, which
    closes it.
    """
    store = MongoDBStore(mongodb_collection)
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def caching_store(sqlite_store: SessionStore) -> CachingStore:
    """A fresh, empty CachingStore: a MemoryStore cache in front of SQLite."""
    return CachingStore(MemoryStore(), sqlite_store)
