"""A session store on memcached, through pymemcache.

Each session is one memcached item under ``key_prefix + session_key``. The
value is a fixed 17-byte header followed by the payload::

    offset  size  field
    0       1     format tag, 0xF1 (format 1)
    1       8     version, signed, big-endian
    9       8     expires_at, microseconds since the Unix epoch, signed, big-endian
    17      ...   payload (opaque bytes)

The item also carries a memcached expiry a little after the same moment,
so memcached drops expired sessions by itself: there is nothing to purge
and nothing to migrate. The header's expiry is the one that counts; the
item's only bounds how long memcached keeps it.

Every write that depends on the current record is a compare-and-set on
memcached's CAS token (``gets`` then ``cas``), so a record deleted or
changed meanwhile is never overwritten, and never brought back.

pymemcache is imported only when a store is built, so this module imports
without it (``pip install 'flask-towersess[memcached]'`` adds it).

.. versionadded:: 0.2
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
import typing as t
from datetime import datetime
from urllib.parse import parse_qsl
from urllib.parse import unquote
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ..errors import CreateError
from ..errors import SerializationError
from ..errors import TowerSessError
from ..errors import UpdateError
from ..errors import VersionConflict
from . import _header
from ._epoch import to_epoch_micros
from ._errors import ErrorTranslation
from ._errors import store_unavailable
from ._urls import redact_url
from .base import Record
from .base import SessionStore
from .base import check_key
from .base import short_key
from .base import utcnow

__all__ = ["MemcachedStore"]

logger = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "session:"
DEFAULT_PORT = 11211

#: memcached's longest key, in bytes.
MAX_KEY_BYTES = 250
#: The longest session key a cookie may carry (see :data:`~.base.KEY_PATTERN`).
_MAX_SESSION_KEY = 128

#: A relative expiry above this many seconds (30 days) is read by memcached
#: as an absolute Unix time; a longer lifetime is sent as one.
MAX_RELATIVE_EXPIRY = 30 * 24 * 3600

#: memcached reads an expiry as a signed 32-bit number: an absolute time
#: after January 2038 would wrap around. Such an item is stored without an
#: expiry of its own (its header still ends it; LRU reclaims it).
_MAX_ABSOLUTE_EXPIRY = 2**31 - 1

#: Client options :meth:`MemcachedStore.from_url` uses unless told otherwise:
#: a web request must not hang on a dead server.
DEFAULT_CLIENT_OPTIONS: dict[str, t.Any] = {"connect_timeout": 5.0, "timeout": 5.0}

#: What :meth:`MemcachedStore.cache_from_url` uses instead: a cache in front
#: of a durable store must fail fast (see :data:`.redis.CACHE_CLIENT_OPTIONS`).
CACHE_CLIENT_OPTIONS: dict[str, t.Any] = {"connect_timeout": 0.25, "timeout": 0.25}

#: How many times a compare-and-set is tried again when the CAS token moved
#: but the version did not (a concurrent touch): each try is one round trip
#: more, and a touch is rare (once per refresh interval).
_CAS_ATTEMPTS = 5

# The payload of a memcached reply that means "too big for an item".
_TOO_LARGE = "too large"


def _require_driver() -> None:
    """Fail with a clear message when pymemcache is not installed."""
    try:
        import pymemcache  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "MemcachedStore needs the pymemcache package. Install it with"
            " pip install 'flask-towersess[memcached]'."
        ) from exc


def _expire(micros: int, now_micros: int) -> int:
    """memcached's expiry for a record that ends at ``micros``.

    Seconds from now, rounded up and one more (memcached's clock ticks once
    a second, so an item may otherwise go up to a second early; late does
    not matter, the header decides); an absolute Unix time beyond 30 days,
    as memcached reads such a number; ``0`` (no expiry) past what memcached
    can count (2038); ``-1`` (expired at once) for a moment already past.
    """
    remaining = micros - now_micros
    if remaining <= 0:
        return -1
    seconds = -(-remaining // 1_000_000) + 1
    if seconds <= MAX_RELATIVE_EXPIRY:
        return seconds
    moment = -(-micros // 1_000_000) + 1
    return moment if moment <= _MAX_ABSOLUTE_EXPIRY else 0


class _Node(t.NamedTuple):
    """One server's client, and the lock a client without a pool needs."""

    client: t.Any
    lock: t.ContextManager[t.Any]


class MemcachedStore(SessionStore):
    """Keep sessions in memcached, expired by memcached itself.

    :param client: a pymemcache :class:`~pymemcache.client.base.PooledClient`,
        :class:`~pymemcache.client.base.Client` (calls on it are serialized
        by a lock: it holds one connection) or
        :class:`~pymemcache.client.hash.HashClient` (several servers). It
        must have no ``serde`` that changes bytes and must not ignore
        errors (``ignore_exc=False``, the default). It is used as is, and
        :meth:`close` leaves it open: it belongs to the caller.
    :param key_prefix: prepended to every session key. memcached keys are
        at most 250 bytes, so the prefix (with the client's own
        ``key_prefix``) is at most 122 ASCII characters.

    Loading is one ``get``; creating is ``add``; saving and touching are
    ``gets`` then ``cas``; deleting is ``delete``. For a ``HashClient``,
    the store picks each key's server with the client's own hash, then
    talks to that server directly: a server that is down is
    :class:`~flask_towersess.errors.StoreUnavailable` for the sessions it
    holds, never a silent miss (``HashClient`` would answer its default
    value while the server is retried, then move its keys to another server,
    where a logout made meanwhile would be lost when the server returns).

    What memcached cannot promise: it is a cache. It evicts least recently
    used items under memory pressure (the user is logged out), a restart
    loses every session, and an item is at most 1 MB by default (a bigger
    session fails to save with :exc:`~flask_towersess.errors.SerializationError`).

    .. versionadded:: 0.2
    """

    expires_natively = True
    url_schemes = ("memcached",)

    def __init__(self, client: t.Any, *, key_prefix: str = DEFAULT_KEY_PREFIX) -> None:
        _require_driver()
        if isinstance(client, str):
            raise ConfigurationError(
                "MemcachedStore takes a pymemcache client; for a URL use"
                " MemcachedStore.from_url()."
            )
        if not MemcachedStore.accepts(client):
            raise ConfigurationError(
                "MemcachedStore needs a pymemcache Client, PooledClient or"
                f" HashClient; got {type(client).__module__}."
                f"{type(client).__qualname__}."
            )
        if getattr(client, "ignore_exc", False):
            raise ConfigurationError(
                "MemcachedStore needs a client with ignore_exc=False: with it,"
                " a server that is down looks like a missing session, which"
                " logs users out instead of answering 503."
            )
        _check_prefix(key_prefix, getattr(client, "key_prefix", b""))
        #: The pymemcache client, exactly as given (or as :meth:`from_url` built it).
        self.client = client
        self.key_prefix = key_prefix
        self._nodes, self._hasher = _nodes(client)
        from pymemcache import exceptions as e

        self._server_error = e.MemcacheServerError
        self._closed_errors = (
            e.MemcacheUnexpectedCloseError,
            BrokenPipeError,
            ConnectionResetError,
        )
        self._translated_errors = ErrorTranslation(
            (OSError, e.MemcacheError), self._translate
        )
        self._owned = False
        self._where = _describe_client(client)

    # -- building --------------------------------------------------------

    @classmethod
    def from_url(
        cls, url: str, *, key_prefix: str = DEFAULT_KEY_PREFIX, **client_options: t.Any
    ) -> MemcachedStore:
        """Build a store and its own client from a URL.

        ``memcached://host[:port]`` (port 11211 by default) gives a
        :class:`~pymemcache.client.base.PooledClient`;
        ``memcached://h1:11211,h2:11211`` a
        :class:`~pymemcache.client.hash.HashClient` over those servers (with
        a pool per server). IPv6 hosts go in brackets. Query parameters
        ``connect_timeout``, ``timeout`` (seconds) and ``max_pool_size`` set
        those client options.

        ``client_options`` go to the pymemcache client; unless given,
        ``connect_timeout`` and ``timeout`` are 5 s. The store owns this
        client: :meth:`close` closes it.

        :raises ConfigurationError: the URL cannot be used, or pymemcache
            is not installed.
        """
        _require_driver()
        return cls._build(url, key_prefix, {**DEFAULT_CLIENT_OPTIONS, **client_options})

    @classmethod
    def cache_from_url(
        cls, url: str, *, key_prefix: str = DEFAULT_KEY_PREFIX, **client_options: t.Any
    ) -> MemcachedStore:
        """Like :meth:`from_url`, with the defaults of a cache in front of a
        durable store (``SESSION_CACHE``): ``connect_timeout`` and
        ``timeout`` are 0.25 s. See :data:`CACHE_CLIENT_OPTIONS`.
        """
        _require_driver()
        return cls._build(url, key_prefix, {**CACHE_CLIENT_OPTIONS, **client_options})

    @classmethod
    def _build(
        cls, url: str, key_prefix: str, options: dict[str, t.Any]
    ) -> MemcachedStore:
        from pymemcache.client.base import PooledClient
        from pymemcache.client.hash import HashClient

        servers, query = parse_url(url)
        options = {**options, **query}
        try:
            client: t.Any
            if len(servers) == 1:
                client = PooledClient(servers[0], **options)
            else:
                client = HashClient(servers, use_pooling=True, **options)
        except TypeError as exc:
            raise ConfigurationError(
                f"Invalid memcached client options ({redact_url(url)}): {exc}"
            ) from exc
        try:
            store = cls(client, key_prefix=key_prefix)
        except BaseException:
            client.close()
            raise
        store._owned = True
        store._where = redact_url(url)
        return store

    @classmethod
    def accepts(cls, obj: object) -> bool:
        """Whether ``obj`` is a pymemcache ``Client``, ``PooledClient`` or
        ``HashClient``.

        Never imports pymemcache: if it has not been imported yet, nothing
        can be one of its clients.
        """
        base = sys.modules.get("pymemcache.client.base")
        hashed = sys.modules.get("pymemcache.client.hash")
        kinds = tuple(
            kind
            for kind in (
                getattr(base, "Client", None),
                getattr(base, "PooledClient", None),
                getattr(hashed, "HashClient", None),
            )
            if isinstance(kind, type)
        )
        return bool(kinds) and isinstance(obj, kinds)

    # -- the store contract ------------------------------------------------

    def _node(self, name: str) -> _Node:
        # ``name`` is the memcached key: a HashClient hashes it (without the
        # client's own key_prefix) to pick the server; so does this store.
        if self._hasher is None:
            return self._nodes[""]
        server = self._hasher.get_node(name)
        node = self._nodes.get(server)
        if node is None:  # a server added to the HashClient since
            self._nodes, self._hasher = _nodes(self.client)
            node = self._nodes[server]
        return node

    def _translate(self, exc: Exception) -> TowerSessError | None:
        if isinstance(exc, self._server_error) and _TOO_LARGE in str(exc):
            return None  # handled where it is met: a write of a big session
        # Refused, reset, timed out (socket.timeout is an OSError), closed
        # mid-reply, or a server error (out of memory): all of them pass
        # once the server is back. A client error (a bug) is raised as is.
        from pymemcache import exceptions as e

        if isinstance(exc, (OSError, e.MemcacheServerError, e.MemcacheUnknownError)):
            return store_unavailable(self._where, exc, logger)
        return None

    def _parse(self, key: str, value: object) -> Record | None:
        """The live record in ``value`` (an item's value), or ``None``;
        a value this store did not write is refused."""
        if value is None:
            return None
        if not isinstance(value, bytes):
            value = b""  # refused by the parser, as any value not a record
        return _header.parse("MemcachedStore", key, value, self.key_prefix)

    def _gets(self, key: str) -> tuple[Record | None, t.Any]:
        value, token = self._read(key, "gets")
        return self._parse(key, value), token

    def _read(self, key: str, command: str) -> t.Any:
        """Send ``get`` or ``gets`` for ``key``. A pooled connection that a
        server restart closed fails once, on its next use: a read is tried
        once more (on a new connection), a write never (it may have been
        applied)."""
        name = self.key_prefix + key
        node = self._node(name)
        with self._translated_errors, node.lock:
            try:
                return getattr(node.client, command)(name)
            except self._closed_errors:
                return getattr(node.client, command)(name)

    def _write(self, key: str, size: int, command: str, *args: t.Any) -> t.Any:
        """Send ``command`` (``add`` or ``cas``) with ``args`` and wait for
        the reply; memcached's "too large" becomes a clear error."""
        node = self._node(self.key_prefix + key)
        try:
            with self._translated_errors, node.lock:
                return getattr(node.client, command)(*args, noreply=False)
        except self._server_error as exc:
            if _TOO_LARGE not in str(exc):
                raise
            raise SerializationError(
                f"The session {short_key(key)} is {size} bytes stored, more"
                " than the memcached server takes in one item (1 MB unless"
                " memcached runs with -I); keep less in the session."
            ) from exc

    def load(self, key: str) -> Record | None:
        check_key(key)
        return self._parse(key, self._read(key, "get"))

    def create(self, record: Record) -> None:
        check_key(record.key)
        micros = to_epoch_micros(record.expires_at)
        value = _header.pack_v1(record.version, micros, record.payload)
        name = self.key_prefix + record.key
        for _ in range(_CAS_ATTEMPTS):
            expire = _expire(micros, to_epoch_micros(utcnow()))
            added = self._write(
                record.key,
                len(value),
                "add",
                name,
                value,
                expire,
            )
            if added:
                return
            # memcached may keep an expired record a little longer: replace
            # it, as other stores do, but never a live one, nor a value this
            # store did not write (a collision: the session layer draws
            # another key).
            raw, token = self._read(record.key, "gets")
            if token is None:
                continue  # gone meanwhile: add again
            if not _header.is_record(raw) or self._parse(record.key, raw) is not None:
                break
            expire = _expire(micros, to_epoch_micros(utcnow()))
            if self._write(
                record.key,
                len(value),
                "cas",
                name,
                value,
                token,
                expire,
            ):
                return
        raise CreateError(f"a session with key {short_key(record.key)} exists")

    def save(self, record: Record, expected_version: int) -> None:
        check_key(record.key)
        micros = to_epoch_micros(record.expires_at)
        value = _header.pack_v1(record.version, micros, record.payload)
        name = self.key_prefix + record.key
        for _ in range(_CAS_ATTEMPTS):
            current, token = self._gets(record.key)
            if current is None:
                raise UpdateError("the session no longer exists")
            if current.version != expected_version:
                raise VersionConflict(
                    f"expected version {expected_version}, found {current.version}"
                )
            # A past expiry is stored too: memcached drops it at once (-1),
            # which ends the record in the same compare-and-set.
            expire = _expire(micros, to_epoch_micros(utcnow()))
            stored = self._write(
                record.key,
                len(value),
                "cas",
                name,
                value,
                token,
                expire,
            )
            if stored:
                return
            if stored is None:
                raise UpdateError("the session no longer exists")
            # The token moved: another save (the next read says so), or a
            # touch at the same version (tried again).
        raise VersionConflict(
            f"expected version {expected_version}; the session kept changing"
        )

    def touch(self, key: str, expires_at: datetime) -> None:
        # memcached's own "touch" moves the item's expiry, not the header's:
        # the value is written again, under a compare-and-set so that a save
        # made meanwhile is never undone.
        check_key(key)
        micros = to_epoch_micros(expires_at)
        name = self.key_prefix + key
        for _ in range(_CAS_ATTEMPTS):
            current, token = self._gets(key)
            if current is None:
                return
            value = _header.pack_v1(current.version, micros, current.payload)
            expire = _expire(micros, to_epoch_micros(utcnow()))
            stored = self._write(
                key,
                len(value),
                "cas",
                name,
                value,
                token,
                expire,
            )
            if stored is not False:
                return  # done, or deleted meanwhile

    def delete(self, key: str) -> None:
        check_key(key)
        name = self.key_prefix + key
        node = self._node(name)
        with self._translated_errors, node.lock:
            node.client.delete(name, noreply=False)

    def delete_many(self, keys: t.Collection[str]) -> None:
        """Delete the items of ``keys``: one round trip per server that
        holds any of them (pymemcache sends a server all its ``delete``
        commands in one write, then reads the replies).

        memcached keeps no index by user (it can neither list nor index its
        items), so this store is no :class:`~.base.PerUserIndex`: this is
        for a :class:`~.caching.CachingStore` invalidating the sessions its
        durable store revoked.

        .. versionadded:: 0.2
        """
        by_node: dict[int, tuple[_Node, list[str]]] = {}
        for key in keys:
            name = self.key_prefix + check_key(key)
            node = self._node(name)
            by_node.setdefault(id(node), (node, []))[1].append(name)
        for node, names in by_node.values():
            with self._translated_errors, node.lock:
                node.client.delete_many(names, noreply=False)

    def close(self) -> None:
        """Close the client if :meth:`from_url` created it; otherwise no-op."""
        owned, self._owned = self._owned, False
        if owned:
            self.client.close()

    def describe(self) -> str:
        return f"MemcachedStore({self._where}, key_prefix={self.key_prefix!r})"


# -- helpers -------------------------------------------------------------


def _check_prefix(key_prefix: object, client_prefix: object) -> None:
    if not isinstance(key_prefix, str):
        raise ConfigurationError(
            f"key_prefix must be a str, got {type(key_prefix).__name__}."
        )
    if not key_prefix.isascii() or any(
        ch.isspace() or not ch.isprintable() for ch in key_prefix
    ):
        raise ConfigurationError(
            "key_prefix must be printable ASCII without spaces: memcached keys"
            " cannot hold anything else."
        )
    extra = len(client_prefix) if isinstance(client_prefix, (bytes, str)) else 0
    room = MAX_KEY_BYTES - _MAX_SESSION_KEY - extra
    if len(key_prefix) > room:
        raise ConfigurationError(
            f"key_prefix is {len(key_prefix)} characters; memcached keys are at"
            f" most {MAX_KEY_BYTES} bytes and a session key up to"
            f" {_MAX_SESSION_KEY}, so it can be at most {room}."
        )


def _nodes(client: t.Any) -> tuple[dict[str, _Node], t.Any]:
    """Each server's client and lock, and the hash that picks among them
    (``None`` for a single server)."""
    from pymemcache.client.base import PooledClient
    from pymemcache.client.hash import HashClient

    def node(one: t.Any) -> _Node:
        # A PooledClient hands each thread a connection of its own; a plain
        # Client has one connection, which threads must take in turn.
        lock = (
            contextlib.nullcontext()
            if isinstance(one, PooledClient)
            else threading.Lock()
        )
        return _Node(one, lock)

    if isinstance(client, HashClient):
        return {name: node(one) for name, one in client.clients.items()}, client.hasher
    return {"": node(client)}, None


def parse_url(url: str) -> tuple[list[tuple[str, int]], dict[str, t.Any]]:
    """The servers of a ``memcached://`` URL and its client options.

    >>> parse_url("memcached://h1:11211,[::1]/?timeout=0.5")
    ([('h1', 11211), ('::1', 11211)], {'timeout': 0.5})
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # the URL stays out: it may hold a secret
        raise ConfigurationError(f"Invalid memcached URL: {exc}") from exc
    if parts.scheme.lower() != "memcached":
        raise ConfigurationError(
            f"MemcachedStore needs a memcached:// URL; got {redact_url(url)}."
        )
    if "@" in parts.netloc:
        raise ConfigurationError(
            "memcached has no user names or passwords (SASL is not supported);"
            f" remove them from {redact_url(url)}."
        )
    if parts.path.strip("/"):
        raise ConfigurationError(
            f"A memcached URL has no path (no databases): {redact_url(url)}."
        )
    servers = [
        _parse_host(item.strip(), url)
        for item in parts.netloc.split(",")
        if item.strip()
    ]
    if not servers:
        raise ConfigurationError(
            f"No server in {redact_url(url)}: list one or more host:port."
        )
    options: dict[str, t.Any] = {}
    for name, text in parse_qsl(parts.query, keep_blank_values=True):
        if name in ("connect_timeout", "timeout"):
            options[name] = _parse_number(text, name, url, float)
        elif name == "max_pool_size":
            options[name] = _parse_number(text, name, url, int)
        else:
            raise ConfigurationError(
                f"Unknown option {name!r} in {redact_url(url)}; a memcached URL"
                " takes connect_timeout, timeout and max_pool_size (give others"
                " in SESSION_STORE_OPTIONS)."
            )
    return servers, options


def _parse_host(item: str, url: str) -> tuple[str, int]:
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ConfigurationError(f"Bad host {item!r} in {redact_url(url)}.")
        port_text = rest[1:]
    else:
        host, sep, port_text = item.rpartition(":")
        if not sep:
            host, port_text = item, ""
    if not host:
        raise ConfigurationError(f"Bad host {item!r} in {redact_url(url)}.")
    port = _parse_number(port_text, "port", url, int) if port_text else DEFAULT_PORT
    if not 0 < port < 65536:
        raise ConfigurationError(f"Bad port {port} in {redact_url(url)}.")
    return unquote(host), port


_N = t.TypeVar("_N", int, float)


def _parse_number(text: str, what: str, url: str, kind: type[_N]) -> _N:
    try:
        value = kind(text)
    except ValueError:
        raise ConfigurationError(
            f"The {what} must be a number; got {text!r} in {redact_url(url)}."
        ) from None
    if value <= 0 or not math.isfinite(value):
        raise ConfigurationError(
            f"The {what} must be positive; got {text!r} in {redact_url(url)}."
        )
    return value


def _describe_client(client: object) -> str:
    """Where a client connects, without I/O."""
    try:
        clients = getattr(client, "clients", None)
        if isinstance(clients, dict):
            return "memcached://" + ",".join(sorted(clients))
        server = getattr(client, "server", None)
        if isinstance(server, tuple):
            host, port = server
            host = f"[{host}]" if ":" in str(host) else host
            return f"memcached://{host}:{port}"
        return f"memcached socket {server}"
    except Exception:  # pragma: no cover - a description must never fail
        return type(client).__name__
