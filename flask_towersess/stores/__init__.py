"""Session stores, and the factory that builds one from a URL or a client.

Each backend lives in its own module and imports its driver only when a
store is built, so installing flask-towersess does not pull in every driver.

A URL's scheme names its store class through the ``flask_towersess.stores``
entry-point group, open to any installed package (see docs/extending.rst).

.. versionadded:: 0.1
.. versionchanged:: 0.2
    URL schemes come from entry points; store classes can be named by path.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import re
import sys
import typing as t
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from .base import Counting
from .base import CountingPerUser
from .base import LegacyKeys
from .base import Migrating
from .base import PerUserIndex
from .base import Purging
from .base import Record
from .base import SessionStore
from .memory import MemoryStore

if t.TYPE_CHECKING:
    from .caching import CachingStore
    from .memcached import MemcachedStore
    from .mongodb import MongoDBStore
    from .redis import RedisStore
    from .sqlalchemy import SQLAlchemyStore

__all__ = [
    "BUILTIN_STORES",
    "ENTRY_POINT_GROUP",
    "CachingStore",
    "Counting",
    "CountingPerUser",
    "MemcachedStore",
    "MemoryStore",
    "LegacyKeys",
    "Migrating",
    "MongoDBStore",
    "PerUserIndex",
    "Purging",
    "Record",
    "RedisStore",
    "SQLAlchemyStore",
    "SessionStore",
    "store_class_for_scheme",
    "store_class_from_path",
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
    "MemcachedStore": ".memcached",
}

#: The entry-point group that maps a URL scheme to a store class
#: (``scheme = module:Class``). Our own stores are declared in it too, in
#: setup.cfg; a package that declares a scheme there makes ``scheme://``
#: work in ``SESSION_STORE`` once it is installed.
ENTRY_POINT_GROUP = "flask_towersess.stores"

#: Our distribution, as entry points name it.
_DIST_NAME = "flask-towersess"

#: The same declarations as our setup.cfg (a test keeps them equal), for a
#: source checkout that is imported without being installed (on
#: ``PYTHONPATH``, vendored): it has no metadata, and the zero-configuration
#: SQLite store works there, so ``memory://`` and the others should too.
#: Third-party stores always come from installed metadata: nothing hides them.
BUILTIN_STORES: dict[str, str] = {
    "memory": "flask_towersess.stores.memory:MemoryStore",
    "sqlite": "flask_towersess.stores.sqlalchemy:SQLAlchemyStore",
    "postgresql": "flask_towersess.stores.sqlalchemy:SQLAlchemyStore",
    "postgres": "flask_towersess.stores.sqlalchemy:SQLAlchemyStore",
    "mysql": "flask_towersess.stores.sqlalchemy:SQLAlchemyStore",
    "mariadb": "flask_towersess.stores.sqlalchemy:SQLAlchemyStore",
    "redis": "flask_towersess.stores.redis:RedisStore",
    "rediss": "flask_towersess.stores.redis:RedisStore",
    "unix": "flask_towersess.stores.redis:RedisStore",
    "redis+sentinel": "flask_towersess.stores.redis:RedisStore",
    "redis+cluster": "flask_towersess.stores.redis:RedisStore",
    "mongodb": "flask_towersess.stores.mongodb:MongoDBStore",
    "mongodb+srv": "flask_towersess.stores.mongodb:MongoDBStore",
    "memcached": "flask_towersess.stores.memcached:MemcachedStore",
}

#: ``package.module:Class``: a store class named by its import path.
_CLASS_PATH = re.compile(
    r"(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)"
)


def __getattr__(name: str) -> t.Any:
    module = _STORE_MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


@dataclasses.dataclass(frozen=True)
class _Provider:
    """Where the store class of one URL scheme comes from."""

    scheme: str
    target: str  # "module:Class"
    dist: str  # the distribution that declares it
    entry_point: importlib.metadata.EntryPoint | None = None


def _entry_points() -> list[tuple[importlib.metadata.EntryPoint, str]]:
    """The installed ``flask_towersess.stores`` entry points, each with the
    name of the distribution that declares it."""
    found: list[tuple[importlib.metadata.EntryPoint, str]] = []
    if sys.version_info >= (3, 10):
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.metadata["Name"] if ep.dist is not None else "?"
            found.append((ep, dist or "?"))
        return found
    # Python 3.9: entry points do not know their distribution; read them
    # per distribution, the first of each name on sys.path winning, as
    # entry_points() does on later versions.
    seen: set[str] = set()
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"] or "?"
        normalized = re.sub(r"[-_.]+", "-", name).lower()
        if normalized in seen:
            continue
        seen.add(normalized)
        for ep in distribution.entry_points:
            if ep.group == ENTRY_POINT_GROUP:
                found.append((ep, name))
    return found


def _providers() -> dict[str, list[_Provider]]:
    """Every URL scheme with the providers of its store class.

    Read afresh on each call (once per app set-up), so a store installed
    while the process runs is found. A scheme with more than one provider
    from different distributions is refused when it is used.
    """
    providers: dict[str, list[_Provider]] = {}
    own_declared = False
    for ep, dist in _entry_points():
        scheme = ep.name.lower()
        if _same_dist(dist, _DIST_NAME):
            own_declared = True
        providers.setdefault(scheme, []).append(_Provider(scheme, ep.value, dist, ep))
    if not own_declared:
        # Not installed (a checkout on PYTHONPATH): our own declarations,
        # from the table above instead of the missing metadata.
        for scheme, target in BUILTIN_STORES.items():
            providers.setdefault(scheme, []).append(
                _Provider(scheme, target, _DIST_NAME)
            )
    return providers


def _same_dist(a: str, b: str) -> bool:
    return re.sub(r"[-_.]+", "-", a).lower() == re.sub(r"[-_.]+", "-", b).lower()


def _load_provider(provider: _Provider) -> type[SessionStore]:
    """Import the store class of ``provider``; only its module is imported."""
    what = (
        f"the {ENTRY_POINT_GROUP!r} entry point {provider.scheme!r} of the"
        f" {provider.dist!r} distribution ({provider.target})"
    )
    try:
        if provider.entry_point is not None:
            obj = provider.entry_point.load()
        else:
            obj = _import_target(provider.target)
    except Exception as exc:
        raise ConfigurationError(
            f"Cannot load {what}: {type(exc).__name__}: {exc}. Reinstall or"
            f" upgrade {provider.dist!r} (pip install --upgrade"
            f" {provider.dist}), or uninstall it if it is not needed."
        ) from exc
    return _check_store_class(obj, what)


def _import_target(target: str) -> object:
    module_name, _, attr = target.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _check_store_class(obj: object, what: str) -> type[SessionStore]:
    if not (isinstance(obj, type) and issubclass(obj, SessionStore)):
        raise ConfigurationError(
            f"{what} is {obj!r}, not a subclass of flask_towersess.stores.SessionStore."
        )
    return obj


def store_class_for_scheme(scheme: str) -> type[SessionStore]:
    """The store class that handles URLs of ``scheme``.

    Found in the ``flask_towersess.stores`` entry-point group, under the
    whole scheme first (``redis+sentinel``, ``mongodb+srv``), then under the
    part before a ``+`` (``mysql+pymysql`` is ``mysql``, with SQLAlchemy's
    driver name after it). Only the module of that class is imported.

    :raises ConfigurationError: no installed store handles the scheme (the
        message lists the ones that do); two distributions declare it; or
        its entry point cannot be loaded (the message names the
        distribution to reinstall).

    .. versionadded:: 0.2
    """
    scheme = scheme.lower()
    providers = _providers()
    for candidate in (scheme, scheme.split("+", 1)[0]):
        found = providers.get(candidate)
        if not found:
            continue
        dists = sorted({p.dist for p in found})
        if len(dists) > 1:
            raise ConfigurationError(
                f"The URL scheme {candidate!r} is declared by several"
                f" distributions ({', '.join(dists)}) in the"
                f" {ENTRY_POINT_GROUP!r} entry-point group: uninstall all but"
                " one, or give SESSION_STORE a store object."
            )
        return _load_provider(found[0])
    known = sorted(providers)
    raise ConfigurationError(
        f"No session store handles the URL scheme {scheme!r}. Use one of:"
        f" {', '.join(s + '://' for s in known)}, or install the package"
        f" that provides {scheme}:// stores (it declares the scheme in the"
        f" {ENTRY_POINT_GROUP!r} entry-point group)."
    )


def store_class_from_path(path: str) -> type[SessionStore]:
    """Import the store class named ``package.module:Class``.

    :raises ConfigurationError: the module or the attribute does not exist,
        or is not a :class:`SessionStore` subclass.

    .. versionadded:: 0.2
    """
    if _CLASS_PATH.fullmatch(path) is None:
        raise ConfigurationError(
            f"{path!r} is not a store class path: write package.module:Class."
        )
    try:
        obj = _import_target(path)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"Cannot import the store class {path!r}: {type(exc).__name__}: {exc}."
        ) from exc
    return _check_store_class(obj, f"the store class {path!r}")


def is_store_class_path(value: str) -> bool:
    """Whether ``value`` is written as a class path (``package.module:Class``)
    rather than a URL (which has ``://``)."""
    return "://" not in value and _CLASS_PATH.fullmatch(value) is not None


def _store_classes() -> list[type[SessionStore]]:
    """The classes whose :meth:`~SessionStore.accepts` turns a client into a
    store: ours first (importing them loads no driver), then those of the
    installed entry points, imported only when ours all said no."""
    classes: list[type[SessionStore]] = [MemoryStore]
    for name in _STORE_MODULES:
        classes.append(__getattr__(name))
    return classes


def _third_party_classes() -> t.Iterator[type[SessionStore]]:
    own = {target for target in BUILTIN_STORES.values()}
    seen: set[str] = set()
    for providers in _providers().values():
        for provider in providers:
            if provider.target in own or provider.target in seen:
                continue
            seen.add(provider.target)
            yield _load_provider(provider)


def store_from_url(
    url: str, *, as_cache: bool = False, **options: t.Any
) -> SessionStore:
    """Build a store from a URL.

    ``memory://``, ``sqlite:///path``, ``postgresql://...``,
    ``mysql+pymysql://...``, ``redis://``, ``rediss://``, ``unix://``,
    ``redis+sentinel://...``, ``redis+cluster://...``, ``mongodb://host/db``,
    ``memcached://host:port[,host:port...]``, and the scheme of any
    installed store package (see :doc:`/extending`). ``options`` go to the
    store class's ``from_url``, or to its ``cache_from_url`` (shorter
    timeouts) when ``as_cache`` is true.

    .. versionchanged:: 0.2
        Added ``as_cache``. Schemes are looked up in the
        ``flask_towersess.stores`` entry-point group.

    :raises ConfigurationError: the scheme belongs to no store.
    """
    cls = store_class_for_scheme(urlsplit(url).scheme)
    build = cls.cache_from_url if as_cache else cls.from_url
    return build(url, **options)


def store_for(
    value: t.Any, *, as_cache: bool = False, **options: t.Any
) -> SessionStore:
    """Turn a ``SESSION_STORE`` value into a store.

    ``value`` is a store (returned as is), a URL, a store class or the
    path of one (``"package.module:Class"``, built with ``options`` as
    keyword arguments), or a native client that a store class
    :meth:`~SessionStore.accepts`: an SQLAlchemy engine or a
    Flask-SQLAlchemy ``db``, a redis-py client, a pymongo collection, a
    pymemcache client (or the client of an installed third-party store).
    ``as_cache`` is passed on to :func:`store_from_url` for a URL.

    .. versionchanged:: 0.2
        A store class, or its path, is accepted; clients of installed
        third-party stores too.
    """
    if isinstance(value, SessionStore):
        return value
    if isinstance(value, str) and is_store_class_path(value):
        return _construct(store_class_from_path(value), value, options)
    if isinstance(value, type) and issubclass(value, SessionStore):
        return _construct(value, value.__qualname__, options)
    if isinstance(value, str):
        return store_from_url(value, as_cache=as_cache, **options)
    for cls in _store_classes():
        if cls.accepts(value):
            return cls(value, **options)  # type: ignore[call-arg]
    for cls in _third_party_classes():
        if cls.accepts(value):
            return cls(value, **options)  # type: ignore[call-arg]
    raise ConfigurationError(
        f"SESSION_STORE must be a URL, a SessionStore, a store class (or its"
        f" path, package.module:Class), or a client a store can wrap"
        f" (SQLAlchemy engine, Flask-SQLAlchemy db, redis client, pymongo"
        f" collection, pymemcache client); got"
        f" {type(value).__module__}.{type(value).__qualname__}."
    )


def _construct(
    cls: type[SessionStore], name: str, options: dict[str, t.Any]
) -> SessionStore:
    # A class takes its settings as keyword arguments (SESSION_STORE_OPTIONS):
    # a wrong or missing one is a configuration mistake, not a crash.
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigurationError(
            f"{name} cannot be built from SESSION_STORE_OPTIONS"
            f" {sorted(options)}: {exc}."
        ) from exc
