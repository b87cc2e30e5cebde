"""Session stores, and the factory that builds one from a URL or a client.

Each backend lives in its own module and imports its driver only when a
store is built, so installing flask-towersess does not pull in every driver.

.. versionadded:: 0.1
"""

from __future__ import annotations

import importlib
import typing as t
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from .base import Migrating
from .base import Purging
from .base import Record
from .base import SessionStore
from .memory import MemoryStore

if t.TYPE_CHECKING:
    from .caching import CachingStore
    from .mongodb import MongoDBStore
    from .redis import RedisStore
    from .sqlalchemy import SQLAlchemyStore

__all__ = [
    "CachingStore",
    "MemoryStore",
    "Migrating",
    "MongoDBStore",
    "Purging",
    "Record",
    "RedisStore",
    "SQLAlchemyStore",
    "SessionStore",
    "store_for",
    "store_from_url",
]

#: The store classes, by public name and the module that defines them. The
#: modules are imported on first use (they do not import their drivers at
#: module level either, but there is no reason to load them all).
_STORE_MODULES = {
    "SQLAlchemyStore": ".sqlalchemy",
    "RedisStore": ".redis",
    "MongoDBStore": ".mongodb",
    "CachingStore": ".caching",
}


def __getattr__(name: str) -> t.Any:
    module = _STORE_MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


def _store_classes() -> list[type[SessionStore]]:
    classes: list[type[SessionStore]] = [MemoryStore]
    for name in _STORE_MODULES:
        classes.append(__getattr__(name))
    return classes


def _scheme(url: str) -> str:
    # "mysql+pymysql" -> "mysql", "redis+sentinel" stays whole: try the full
    # scheme first, then the part before the driver suffix.
    return urlsplit(url).scheme.lower()


def store_from_url(
    url: str, *, as_cache: bool = False, **options: t.Any
) -> SessionStore:
    """Build a store from a URL.

    ``memory://``, ``sqlite:///path``, ``postgresql://...``,
    ``mysql+pymysql://...``, ``redis://``, ``rediss://``, ``unix://``,
    ``redis+sentinel://...``, ``redis+cluster://...``, ``mongodb://host/db``.
    ``options`` go to the store class's ``from_url``, or to its
    ``cache_from_url`` (shorter timeouts) when ``as_cache`` is true.

    .. versionchanged:: 0.2
        Added ``as_cache``.

    :raises ConfigurationError: the scheme belongs to no store.
    """
    scheme = _scheme(url)
    candidates = (scheme, scheme.split("+", 1)[0])
    for candidate in candidates:
        for cls in _store_classes():
            if candidate in cls.url_schemes:
                build = cls.cache_from_url if as_cache else cls.from_url
                return build(url, **options)
    known = sorted({s for cls in _store_classes() for s in cls.url_schemes})
    raise ConfigurationError(
        f"No session store handles the URL scheme {scheme!r}. Use one of:"
        f" {', '.join(s + '://' for s in known)}."
    )


def store_for(
    value: t.Any, *, as_cache: bool = False, **options: t.Any
) -> SessionStore:
    """Turn a ``SESSION_STORE`` value into a store.

    ``value`` is a store (returned as is), a URL, or a native client that a
    store class :meth:`~SessionStore.accepts`: an SQLAlchemy engine or a
    Flask-SQLAlchemy ``db``, a redis-py client, a pymongo collection.
    ``as_cache`` is passed on to :func:`store_from_url` for a URL.
    """
    if isinstance(value, SessionStore):
        return value
    if isinstance(value, str):
        return store_from_url(value, as_cache=as_cache, **options)
    for cls in _store_classes():
        if cls.accepts(value):
            return cls(value, **options)  # type: ignore[call-arg]
    raise ConfigurationError(
        f"SESSION_STORE must be a URL, a SessionStore, or a client a store can"
        f" wrap (SQLAlchemy engine, Flask-SQLAlchemy db, redis client, pymongo"
        f" collection); got {type(value).__module__}.{type(value).__qualname__}."
    )
