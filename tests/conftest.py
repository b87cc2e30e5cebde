from __future__ import annotations

import typing as t

import pytest
from flask import Flask

from flask_towersess import SessionExt
from flask_towersess.stores.base import SessionStore

from .helpers import CountingStore

pytest_plugins = [
    "tests.fixtures_sql",
    "tests.fixtures_mongodb",
    "tests.fixtures_redis",
    "tests.fixtures_memcached",
    "tests.legacy",
]

#: Every store the shared contract runs on; each name has a ``<name>_store``
#: fixture giving a fresh, empty store.
STORE_NAMES = [
    "memory",
    "sqlite",
    "sqlite_core",
    "postgresql",
    "mariadb",
    "redis",
    "redis_cluster",
    "redis_sentinel",
    "mongodb",
    "memcached",
    "caching",
    "caching_redis_postgresql",
    "caching_memcached_sqlite",
]


@pytest.fixture
def caching_redis_postgresql_store(
    redis_store: SessionStore, postgresql_store: SessionStore
) -> SessionStore:
    """Redis in front of PostgreSQL: the production pairing."""
    from flask_towersess.stores.caching import CachingStore

    return CachingStore(redis_store, postgresql_store)


@pytest.fixture
def caching_memcached_sqlite_store(
    memcached_store: SessionStore, sqlite_store: SessionStore
) -> SessionStore:
    """memcached in front of SQLite: the cache a Flask-Session user keeps."""
    from flask_towersess.stores.caching import CachingStore

    return CachingStore(memcached_store, sqlite_store)


@pytest.fixture(params=STORE_NAMES)
def store(request: pytest.FixtureRequest) -> SessionStore:
    """Each store in turn, fresh and empty."""
    return t.cast(SessionStore, request.getfixturevalue(f"{request.param}_store"))


@pytest.fixture
def counting_store(store: SessionStore) -> CountingStore:
    return CountingStore(store)


@pytest.fixture
def app(counting_store: CountingStore) -> Flask:
    """An app on each store, counting store calls; with a few views."""
    app = Flask(__name__)
    app.config.update(SECRET_KEY="test secret", TESTING=True)
    SessionExt(app, store=counting_store)
    return app


@pytest.fixture
def client(app: Flask) -> t.Any:
    return app.test_client()


#: The stores the per-user API may run on (never memcached, which keeps no
#: index); only those whose class keeps a per-user index now are used, so
#: each joins the per-user tests when its implementation lands.
PER_USER_CANDIDATES: dict[str, tuple[str, ...]] = {
    "memory": ("memory",),
    "sqlite": ("sqlalchemy",),
    "postgresql": ("sqlalchemy",),
    "mariadb": ("sqlalchemy",),
    "redis": ("redis",),
    "mongodb": ("mongodb",),
    "caching": ("caching", "memory", "sqlalchemy"),
    "caching_redis_postgresql": ("caching", "redis", "sqlalchemy"),
}


_PER_USER_METHODS = ("sessions_of", "delete_sessions_of", "trim_sessions_of")


def _keeps_per_user_index(modules: tuple[str, ...]) -> bool:
    """Whether every store class involved has the per-user methods (the
    :class:`~flask_towersess.stores.PerUserIndex` protocol), without
    connecting to anything: decided at collection.

    A :class:`~flask_towersess.stores.caching.CachingStore` has them only on
    the subclass its constructor picks when the durable store has them, so
    its class is the one of a caching store built in front of an (empty,
    in-process) :class:`~flask_towersess.stores.memory.MemoryStore`; its
    durable store's class is checked as any other module of the tuple.
    """
    import importlib

    classes = {
        "memory": "MemoryStore",
        "sqlalchemy": "SQLAlchemyStore",
        "redis": "RedisStore",
        "mongodb": "MongoDBStore",
        "caching": "CachingStore",
    }
    for module in modules:
        try:
            found = importlib.import_module(f"flask_towersess.stores.{module}")
        except ImportError:
            return False
        cls = getattr(found, classes[module])
        if module == "caching":
            from flask_towersess.stores.memory import MemoryStore

            cls = type(cls(MemoryStore(), MemoryStore()))
        if not all(callable(getattr(cls, name, None)) for name in _PER_USER_METHODS):
            return False
    return True


PER_USER_STORE_NAMES = [
    name
    for name, modules in PER_USER_CANDIDATES.items()
    if _keeps_per_user_index(modules)
]


@pytest.fixture(params=PER_USER_STORE_NAMES)
def per_user_store(request: pytest.FixtureRequest) -> SessionStore:
    """Each store with a per-user index (``as_per_user()`` is not ``None``),
    fresh and empty."""
    store = t.cast(SessionStore, request.getfixturevalue(f"{request.param}_store"))
    assert store.as_per_user() is not None, f"{request.param} keeps no index"
    return store
