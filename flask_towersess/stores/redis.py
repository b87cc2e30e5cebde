"""A session store on Redis: standalone, Sentinel-managed or Cluster.

Each session is one Redis string under ``key_prefix + session_key``. The
value is a fixed 17-byte header followed by the payload::

    offset  size  field
    0       1     format tag, 0xF1 (format 1)
    1       8     version, signed, big-endian
    9       8     expires_at, microseconds since the Unix epoch, signed, big-endian
    17      ...   payload (opaque bytes)

The key also carries a Redis expiry (``PXAT``) at the same moment, so Redis
deletes expired sessions by itself: there is nothing to purge and nothing to
migrate. Keeping the version and the expiry in the value lets :meth:`load`
be a single ``GET``. Every operation reads or writes exactly one key, so the
store works unchanged on Redis Cluster.

redis-py is imported only when a store is built, so this module imports
without it (``pip install 'flask-towersess[redis]'`` adds it).

.. versionadded:: 0.1
"""

from __future__ import annotations

import logging
import struct
import sys
import typing as t
from datetime import datetime
from urllib.parse import SplitResult
from urllib.parse import unquote
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

from ..errors import ConfigurationError
from ..errors import CreateError
from ..errors import StoreUnavailable
from ..errors import TowerSessError
from ..errors import UpdateError
from ..errors import VersionConflict
from ._epoch import from_epoch_micros
from ._epoch import to_epoch_micros
from ._errors import ErrorTranslation
from ._errors import store_unavailable
from ._urls import redact_url
from .base import KEY_PATTERN
from .base import MAX_VERSION
from .base import MIN_VERSION
from .base import Counting
from .base import Record
from .base import SessionStore
from .base import check_key
from .base import refuse_record
from .base import short_key
from .base import utcnow

if t.TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import RedisCluster
    from redis.sentinel import Sentinel

    #: The clients a :class:`RedisStore` can wrap. A Sentinel-managed master
    #: (``Sentinel(...).master_for(name)``) is a ``Redis``. Unparametrized:
    #: redis-py's own annotations are not generic, types-redis's are.
    RedisClient: t.TypeAlias = "Redis | RedisCluster"

__all__ = ["RedisStore"]

logger = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "session:"

#: Port numbers assumed when a ``redis+sentinel://`` or ``redis+cluster://``
#: host has none.
SENTINEL_DEFAULT_PORT = 26379
CLUSTER_DEFAULT_PORT = 6379

#: Client options :meth:`RedisStore.from_url` uses unless told otherwise. A
#: web request must not hang on a dead server: 5 s bounds every connect and
#: every reply. ``retry`` (one retry, see :func:`_default_retry`) is added
#: at call time because building it needs redis-py.
DEFAULT_CLIENT_OPTIONS: dict[str, t.Any] = {
    "socket_timeout": 5.0,
    "socket_connect_timeout": 5.0,
}

#: What :meth:`RedisStore.cache_from_url` uses instead. A cache in front of a
#: durable store must fail fast: a frozen cache would otherwise cost every
#: request the full timeout before the durable store answers. A quarter of a
#: second is a hundred times a loopback or same-zone round trip. A timeout
#: is not retried (the caching store stops calling the cache for a while
#: instead); a reset connection is, once.
CACHE_CLIENT_OPTIONS: dict[str, t.Any] = {
    "socket_timeout": 0.25,
    "socket_connect_timeout": 0.25,
}

# The value header. A tag byte first, so a value this store did not write
# (another app, Flask-Session's pickles under the same "session:" prefix) is
# recognised and ignored instead of being misread, and so a later format can
# live next to this one.
_TAG = 0xF1
_HEADER = struct.Struct(">Bqq")
# What a compare-and-set compares: the tag and the version.
_VERSION_PREFIX = struct.Struct(">Bq")
_EXPIRY = struct.Struct(">q")
_EXPIRY_OFFSET = _VERSION_PREFIX.size

# Replies of the save script.
_SAVED = 1
_MISSING = 0
_CONFLICT = -1

# Compare-and-set in one round trip. The script runs atomically on the
# server, so no other client can slip a write between the check and the SET.
# A missing key is reported, never recreated (a logout elsewhere must stick).
# Only the header's tag and version are read: GETRANGE of a missing key is
# the empty string, which no record is.
_SAVE_SCRIPT = """
local current = redis.call('GETRANGE', KEYS[1], 0, string.len(ARGV[1]) - 1)
if current == '' then
  return 0
end
if current ~= ARGV[1] then
  return -1
end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
return 1
"""

# Move the expiry without sending or rewriting the payload: patch the 8
# expiry bytes of the header in place (SETRANGE keeps the key's TTL and
# value) and move the TTL. A key that is missing, or is not a record of this
# format, is left alone: SETRANGE would otherwise create it.
_TOUCH_SCRIPT = """
if redis.call('GETRANGE', KEYS[1], 0, 0) ~= ARGV[1]
    or redis.call('STRLEN', KEYS[1]) < tonumber(ARGV[2]) then
  return 0
end
redis.call('SETRANGE', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIREAT', KEYS[1], ARGV[5])
return 1
"""


def _require_driver() -> None:
    """Fail with a clear message when redis-py is not installed."""
    try:
        import redis  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "RedisStore needs the redis package. Install it with"
            " pip install 'flask-towersess[redis]'."
        ) from exc


def _default_retry(*, on_timeout: bool = True) -> t.Any:
    # One retry, quickly: enough to replace a pooled connection that a
    # server restart or a Sentinel failover closed, without multiplying the
    # socket timeout by redis-py's own default of ten attempts.
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError
    from redis.exceptions import TimeoutError
    from redis.retry import Retry

    errors = (ConnectionError, TimeoutError) if on_timeout else (ConnectionError,)
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), 1, supported_errors=errors)


def _pxat(micros: int) -> int:
    # Rounded down, so Redis drops the key no later than the record expires;
    # at least 1 because Redis rejects a zero or negative PXAT, and 1 ms
    # after the epoch is just as much in the past.
    return max(1, micros // 1000)


class _Script(t.Protocol):
    """What ``register_script`` returns: a redis-py
    :class:`~redis.commands.core.Script`, called with keys and arguments."""

    def __call__(
        self, keys: t.Sequence[str], args: t.Sequence[bytes | int]
    ) -> t.Any: ...  # pragma: no cover


class _Commands(t.Protocol):
    """The part of a redis-py client this store uses.

    ``Redis`` and ``RedisCluster`` both provide it; typing against it keeps
    the store independent of how each client class is annotated.
    """

    def get(self, name: str) -> bytes | None: ...  # pragma: no cover

    def set(
        self, name: str, value: bytes, *, nx: bool, pxat: int
    ) -> bool | None: ...  # pragma: no cover

    def delete(self, *names: str) -> int: ...  # pragma: no cover

    def exists(self, *names: str) -> int: ...  # pragma: no cover

    def ping(self) -> t.Any: ...  # pragma: no cover

    def scan_iter(
        self, match: str, count: int, **options: t.Any
    ) -> t.Iterator[bytes]: ...  # pragma: no cover

    def register_script(self, script: str) -> _Script: ...  # pragma: no cover


class RedisStore(SessionStore, Counting):
    """Keep sessions in Redis, expired by Redis's own TTL.

    :param client: a redis-py :class:`redis.Redis`, a
        :class:`redis.cluster.RedisCluster`, or a Sentinel-managed master
        (``Sentinel(...).master_for("mymaster")``). It is used as is, and
        :meth:`close` leaves it open: it belongs to the caller. It must not
        decode responses (``decode_responses=False``, the default), since
        records are binary.
    :param key_prefix: prepended to every session key; only keys under it
        are ever read or written.

    Every operation is one round trip on one key: ``GET`` to load, ``SET NX
    PXAT`` to create, a Lua compare-and-set to save, a small Lua script to
    touch, ``DEL`` to delete. Connection failures and timeouts raise
    :class:`~flask_towersess.errors.StoreUnavailable` with the redis-py
    error as ``__cause__``; refused credentials, ACL permissions or database
    number raise :class:`~flask_towersess.errors.ConfigurationError`.

    Needs Redis 6.2 or later (``PXAT``).

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        No ``count_expired()``, ``purge_expired()`` or ``migrate()``: Redis
        expires sessions by itself and there is nothing to create, so the
        store is neither :class:`~.base.Purging` nor :class:`~.base.Migrating`.
        It is :class:`~.base.Counting`: :meth:`count_live` scans the keys.
    """

    expires_natively = True
    url_schemes = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")

    def __init__(
        self, client: RedisClient, *, key_prefix: str = DEFAULT_KEY_PREFIX
    ) -> None:
        _require_driver()
        _check_client(client)
        if not isinstance(key_prefix, str):
            raise ConfigurationError(
                f"key_prefix must be a str, got {type(key_prefix).__name__}."
            )
        #: The redis-py client, exactly as given (or as :meth:`from_url` built it).
        self.client: RedisClient = client
        self.key_prefix = key_prefix
        self._commands = t.cast("_Commands", client)
        # redis-py's Script: register_script only hashes the script; each
        # call is an EVALSHA, and a server that does not know the script
        # (a restart, a failover, a new cluster node) gets a SCRIPT LOAD
        # (on every primary, on a Cluster) and the EVALSHA again.
        self._save_script = self._commands.register_script(_SAVE_SCRIPT)
        self._touch_script = self._commands.register_script(_TOUCH_SCRIPT)
        from redis.exceptions import ResponseError

        self._unavailable_errors = _unavailable_errors()
        # Every call runs in this; _translate sorts the errors out.
        # ResponseError is among them for the settings the server refuses
        # with a plain one ("DB index is out of range"); any other is raised
        # as it was.
        self._translated_errors = ErrorTranslation(
            self._unavailable_errors + (ResponseError,), self._translate
        )
        self._response_error = ResponseError
        # What close() calls: only closers of what from_url built. A client
        # the caller passed in is theirs to close.
        self._owned: list[t.Callable[[], None]] = []
        self._where = _describe_client(client)

    # -- building --------------------------------------------------------

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        **client_options: t.Any,
    ) -> RedisStore:
        """Build a store and its own client from a URL.

        - ``redis://[[user]:password@]host[:port][/db]``,
          ``rediss://...`` (TLS) and ``unix://[[user]:password@]/path?db=N``:
          :meth:`redis.Redis.from_url`, query options included.
        - ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``:
          a :class:`redis.sentinel.Sentinel` over the listed Sentinels and
          its master for ``service``. The credentials are the master's; give
          the Sentinels theirs with ``sentinel_kwargs={"password": ...}``.
        - ``redis+cluster://[[user]:password@]host:port[,host:port...]``:
          a :class:`redis.cluster.RedisCluster` started from those nodes.

        ``client_options`` go to the redis-py client (``ssl_ca_certs``,
        ``max_connections``, ...). Unless given, ``socket_timeout`` and
        ``socket_connect_timeout`` are 5 s and ``retry`` is one quick retry.
        The store owns this client: :meth:`close` closes it.

        :raises ConfigurationError: the URL cannot be used, or redis-py is
            not installed.
        :raises StoreUnavailable: a Cluster URL whose nodes cannot be
            reached (the Cluster client connects at once; the others connect
            on first use).
        """
        _require_driver()
        defaults = {**DEFAULT_CLIENT_OPTIONS, "retry": _default_retry()}
        return cls._build(url, key_prefix, {**defaults, **client_options})

    @classmethod
    def cache_from_url(
        cls,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        **client_options: t.Any,
    ) -> RedisStore:
        """Like :meth:`from_url`, with the defaults of a cache in front of a
        durable store (``SESSION_CACHE``): ``socket_timeout`` and
        ``socket_connect_timeout`` are 0.25 s, and a timeout is not retried.
        See :data:`CACHE_CLIENT_OPTIONS`.

        .. versionadded:: 0.2
        """
        _require_driver()
        defaults = {**CACHE_CLIENT_OPTIONS, "retry": _default_retry(on_timeout=False)}
        return cls._build(url, key_prefix, {**defaults, **client_options})

    @classmethod
    def _build(cls, url: str, key_prefix: str, options: dict[str, t.Any]) -> RedisStore:
        scheme = _split(url).scheme.lower()
        owned: list[t.Callable[[], None]] = []
        client: RedisClient
        if scheme in ("redis", "rediss", "unix"):
            client = _client_from_url(url, options)
        elif scheme == "redis+sentinel":
            sentinel, client = _sentinel_client(url, options)
            owned.append(lambda: _close_sentinel(sentinel))
        elif scheme == "redis+cluster":
            client = _cluster_client(url, options)
        else:
            raise ConfigurationError(
                f"RedisStore cannot use a {scheme or 'scheme-less'!r} URL; use"
                f" one of {', '.join(s + '://' for s in cls.url_schemes)}."
            )
        # The client first: the master client before its Sentinel, the
        # reverse of how they were built.
        owned.insert(0, client.close)
        try:
            store = cls(client, key_prefix=key_prefix)
        except BaseException:
            for close in owned:
                close()
            raise
        store._owned = owned
        store._where = redact_url(url)
        return store

    @classmethod
    def accepts(cls, obj: object) -> bool:
        """Whether ``obj`` is a redis-py client (``Redis`` or ``RedisCluster``).

        Never imports redis: if redis-py has not been imported yet, nothing
        can be one of its clients.
        """
        client_mod = sys.modules.get("redis.client")
        cluster_mod = sys.modules.get("redis.cluster")
        kinds = tuple(
            kind
            for kind in (
                getattr(client_mod, "Redis", None),
                getattr(cluster_mod, "RedisCluster", None),
            )
            if isinstance(kind, type)
        )
        return bool(kinds) and isinstance(obj, kinds)

    # -- the store contract ------------------------------------------------

    def _key(self, key: str) -> str:
        return self.key_prefix + key

    def _translate(self, exc: Exception) -> TowerSessError | None:
        problem = _misconfiguration(exc)
        if problem is not None:
            return self._misconfigured(self._where, problem, logger)
        if isinstance(exc, self._unavailable_errors):
            return store_unavailable(self._where, exc, logger)
        return None

    def load(self, key: str) -> Record | None:
        check_key(key)
        with self._translated_errors:
            try:
                value = self._commands.get(self._key(key))
            except self._response_error as exc:
                if "WRONGTYPE" not in str(exc):
                    raise
                # A hash, list or set under the key: no session record either.
                refuse_record("RedisStore", key, "the key holds no string value")
                return None
        if value is None:
            return None
        if len(value) < _HEADER.size or value[0] != _TAG:
            # Another app's value under the prefix, or a damaged one.
            refuse_record(
                "RedisStore",
                key,
                f"not a flask-towersess session record under {self.key_prefix!r}",
            )
            return None
        _, version, micros = _HEADER.unpack_from(value)
        # The 8 bytes go up to year 294,000, a datetime only to 9999.
        expires_at = from_epoch_micros(micros)
        if expires_at is None:
            refuse_record("RedisStore", key, "expiry out of range")
            return None
        if not MIN_VERSION <= version <= MAX_VERSION:
            refuse_record("RedisStore", key, "version out of range")
            return None
        # Redis drops the key at the same moment (rounded down to the ms), so
        # this only matters when the app's clock runs ahead of Redis's.
        if expires_at <= utcnow():
            return None
        return Record(key, value[_HEADER.size :], expires_at, version)

    def create(self, record: Record) -> None:
        check_key(record.key)
        micros = to_epoch_micros(record.expires_at)
        value = _HEADER.pack(_TAG, record.version, micros) + record.payload
        # NX makes the existence check and the write one atomic step; the
        # expiry is in the same command so no key ever lives without a TTL.
        # An expiry already past stores nothing live: Redis drops the key.
        with self._translated_errors:
            created = self._commands.set(
                self._key(record.key), value, nx=True, pxat=_pxat(micros)
            )
        if not created:
            raise CreateError(f"a session with key {short_key(record.key)} exists")

    def save(self, record: Record, expected_version: int) -> None:
        check_key(record.key)
        micros = to_epoch_micros(record.expires_at)
        value = _HEADER.pack(_TAG, record.version, micros) + record.payload
        with self._translated_errors:
            result = self._save_script(
                [self._key(record.key)],
                [_VERSION_PREFIX.pack(_TAG, expected_version), value, _pxat(micros)],
            )
        if result == _SAVED:
            return
        if result == _MISSING:
            raise UpdateError("the session no longer exists")
        if result == _CONFLICT:
            raise VersionConflict(
                f"expected version {expected_version}; the session was saved"
                f" by another request meanwhile"
            )
        raise RuntimeError(f"unexpected reply from the save script: {result!r}")

    def touch(self, key: str, expires_at: datetime) -> None:
        check_key(key)
        micros = to_epoch_micros(expires_at)
        with self._translated_errors:
            self._touch_script(
                [self._key(key)],
                [
                    bytes([_TAG]),
                    _HEADER.size,
                    _EXPIRY_OFFSET,
                    _EXPIRY.pack(micros),
                    _pxat(micros),
                ],
            )

    def delete(self, key: str) -> None:
        check_key(key)
        with self._translated_errors:
            self._commands.delete(self._key(key))

    def exists(self, key: str) -> bool:
        # EXISTS sends no payload back. Redis's TTL is rounded down from the
        # record's expiry, so a key that exists is a record that is live.
        check_key(key)
        with self._translated_errors:
            return bool(self._commands.exists(self._key(key)))

    def count_live(self) -> int:
        """How many session keys are under :attr:`key_prefix`.

        Redis keeps no count of the keys under a prefix, so this walks them
        with ``SCAN`` (:data:`SCAN_BATCH` keys asked for per call, on every
        primary of a Cluster): its time grows with the whole database, not
        with the sessions alone, though it never blocks the server for
        long. Redis deletes expired keys by itself, so all are live, but for
        a key whose TTL has passed and that Redis has not dropped yet. Keys
        under the prefix that cannot be session keys are not counted.

        ``SCAN`` may return a key twice when Redis resizes its table during
        the walk; the keys are not kept to weed those out (a million
        sessions would take about 100 MB here), so on a busy server the
        count is an estimate, a little high at worst.

        .. versionadded:: 0.2
        """
        # The prefix is literal text; in a MATCH pattern *, ?, [ and \ are
        # not, so escape them.
        pattern = _glob_escape(self.key_prefix) + "*"
        options: dict[str, t.Any] = {}
        if _is_cluster(self.client):
            # Every key lives on exactly one primary; replicas would count
            # them twice.
            options["target_nodes"] = "primaries"
        start = len(self.key_prefix.encode())
        with self._translated_errors:
            return sum(
                1
                for name in self._commands.scan_iter(
                    match=pattern, count=SCAN_BATCH, **options
                )
                if _is_session_key(name[start:])
            )

    def ping(self) -> None:
        # PING: no key, no payload, and the same errors as any command.
        with self._translated_errors:
            self._commands.ping()

    def close(self) -> None:
        """Close the client if :meth:`from_url` created it; otherwise no-op."""
        owned, self._owned = self._owned, []
        for close in owned:
            close()

    def describe(self) -> str:
        return f"RedisStore({self._where}, key_prefix={self.key_prefix!r})"


# -- helpers -------------------------------------------------------------


#: How many keys :meth:`RedisStore.count_live` asks ``SCAN`` for per call:
#: large enough to need few round trips, small enough that each call keeps
#: the server busy for well under a millisecond.
SCAN_BATCH = 1000


def _glob_escape(text: str) -> str:
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)


def _is_session_key(name: bytes) -> bool:
    try:
        return KEY_PATTERN.fullmatch(name.decode("ascii")) is not None
    except UnicodeDecodeError:
        return False


def _is_cluster(client: object) -> bool:
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


#: How Redis words an ACL refusal met inside a script.
_SCRIPT_ACL_REFUSALS = (
    "ACL failure in script",  # Redis 7.2 and later
    "user executing the script can't",  # Redis 7.0
)


def _misconfiguration(exc: BaseException) -> str | None:
    """What is wrong with the store's settings, if the server refused them
    (credentials, ACL permissions, the database number); ``None`` for any
    other error.
    """
    from redis import exceptions as e

    text = str(exc)
    if isinstance(exc, e.AuthenticationWrongNumberOfArgsError):
        return (
            "this Redis server (before 6.0) has no users, only a password;"
            " remove the user name from the URL"
        )
    # AuthenticationError is a ConnectionError, but no retry will fix a bad
    # password. The texts are for replies redis-py left a plain ResponseError.
    if isinstance(exc, e.AuthenticationError) or text.startswith(
        ("NOAUTH", "WRONGPASS")
    ):
        return (
            "Redis refused the credentials; fix the user name and password in"
            " the URL (redis://user:password@host:port/db), or requirepass or"
            " the ACL on the server"
        )
    # A command refused inside a script comes back as a plain ResponseError
    # (Redis 7.0 and 7.2+ word it differently), not as NOPERM.
    if isinstance(exc, e.NoPermissionError) or (
        isinstance(exc, e.ResponseError)
        and any(refusal in text for refusal in _SCRIPT_ACL_REFUSALS)
    ):
        # Without the command the server names: the message is logged once
        # per store, whichever command meets the refusal first. The list is
        # checked against an ACL user in tests/test_config_errors.py.
        return (
            "the Redis user may not run a command the store needs; allow it"
            " GET, SET, DEL, EXISTS, EVALSHA, SCRIPT LOAD and PING, and in the"
            " store's scripts GETRANGE, STRLEN, SETRANGE and PEXPIREAT, on the"
            " key prefix"
        )
    if isinstance(exc, e.ResponseError) and "DB index is out of range" in text:
        return (
            "Redis has no database of that number (fewer are set by the"
            " server's `databases`); fix the database number in the URL"
        )
    return None


def _unavailable_errors() -> tuple[type[Exception], ...]:
    """The redis-py errors that mean "unavailable" (once
    :func:`_misconfiguration` has found none of its own among them)."""
    from redis import exceptions as e

    unavailable: tuple[type[Exception], ...] = (
        # Also covers MasterNotFoundError (Sentinel knows no master),
        # BusyLoadingError (the server is loading its data set) and
        # MaxConnectionsError (the pool is exhausted).
        e.ConnectionError,
        e.TimeoutError,
        # ClusterDownError, MasterDownError, and cluster retries exhausted.
        e.ClusterError,
        # Slots being migrated, or not covered by any reachable node.
        e.TryAgainError,
        e.RedisClusterException,
        # A plain client still pointed at a master that a failover demoted.
        e.ReadOnlyError,
    )
    # maxmemory reached: the write was refused and nothing changed. Looked
    # up by name because older redis-py releases lack the class.
    out_of_memory = getattr(e, "OutOfMemoryError", None)
    if isinstance(out_of_memory, type) and issubclass(out_of_memory, Exception):
        unavailable += (out_of_memory,)
    return unavailable


def _check_client(client: object) -> None:
    """Refuse what is not a synchronous, bytes-returning redis-py client."""
    if isinstance(client, str):
        raise ConfigurationError(
            "RedisStore takes a redis client; for a URL use RedisStore.from_url()."
        )
    from redis.sentinel import Sentinel

    if isinstance(client, Sentinel):
        raise ConfigurationError(
            "RedisStore takes the Sentinel-managed master, not the Sentinel:"
            " pass sentinel.master_for('service_name')."
        )
    if not RedisStore.accepts(client):
        raise ConfigurationError(
            "RedisStore needs a redis-py Redis or RedisCluster client (or"
            " Sentinel(...).master_for(...)); got"
            f" {type(client).__module__}.{type(client).__qualname__}."
        )
    encoder = getattr(client, "get_encoder", None)
    if encoder is not None and getattr(encoder(), "decode_responses", False):
        raise ConfigurationError(
            "RedisStore needs a client with decode_responses=False: session"
            " records are binary."
        )


def _close_sentinel(sentinel: Sentinel) -> None:
    # Sentinel.close() is recent (redis-py 6); closing its clients one by
    # one works with every version.
    for client in sentinel.sentinels:
        client.close()


def _client_from_url(url: str, options: dict[str, t.Any]) -> Redis:
    from redis import Redis

    try:
        return Redis.from_url(url, **options)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"Invalid Redis URL or options ({redact_url(url)}): {exc}"
        ) from exc


def _sentinel_client(url: str, options: dict[str, t.Any]) -> tuple[Sentinel, Redis]:
    from redis.sentinel import Sentinel

    nodes, path, connection = _parse_multi_host_url(url, SENTINEL_DEFAULT_PORT)
    parts = [unquote(part) for part in path.strip("/").split("/") if part]
    if not parts or len(parts) > 2:
        raise ConfigurationError(
            "A redis+sentinel URL names the service: redis+sentinel://"
            f"host:port[,host:port]/service_name[/db]; got {redact_url(url)}."
        )
    service = parts[0]
    if len(parts) == 2:
        if "db" in connection:
            raise ConfigurationError(f"The db is given twice in {redact_url(url)}.")
        connection["db"] = _parse_int(parts[1], "db", url)
    # As redis-py does for redis:// URLs, what the URL says wins over options.
    connection = {**options, **connection}
    sentinel_kwargs = connection.pop("sentinel_kwargs", None)
    if sentinel_kwargs is None:
        # The Sentinels get the timeouts and the retry policy (not the
        # master's password): a dead Sentinel must not hang a request any
        # longer than a dead master.
        sentinel_kwargs = {
            k: v
            for k, v in connection.items()
            if k.startswith("socket_") or k == "retry"
        }
    try:
        sentinel = Sentinel(nodes, sentinel_kwargs=sentinel_kwargs, **connection)
    except TypeError as exc:
        raise ConfigurationError(f"Invalid Sentinel options: {exc}") from exc
    return sentinel, sentinel.master_for(service)


def _cluster_client(url: str, options: dict[str, t.Any]) -> RedisCluster:
    from redis.cluster import ClusterNode
    from redis.cluster import RedisCluster
    from redis.exceptions import RedisClusterException
    from redis.exceptions import RedisError

    nodes, path, connection = _parse_multi_host_url(url, CLUSTER_DEFAULT_PORT)
    connection = {**options, **connection}
    db = path.strip("/")
    if db and _parse_int(db, "db", url) != 0 or connection.pop("db", 0) != 0:
        raise ConfigurationError(
            f"Redis Cluster has only database 0; got {redact_url(url)}."
        )
    try:
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            **connection,
        )
    except TypeError as exc:
        raise ConfigurationError(f"Invalid Redis Cluster options: {exc}") from exc
    except (RedisClusterException, RedisError) as exc:
        # RedisCluster asks the nodes for the slot map while it is built: at
        # start-up, where the error is raised once, not per request.
        problem = _misconfiguration(exc)
        if problem is not None:
            raise ConfigurationError(
                f"SESSION_STORE ({redact_url(url)}): {problem}"
            ) from exc
        raise StoreUnavailable() from exc


def _parse_multi_host_url(
    url: str, default_port: int
) -> tuple[list[tuple[str, int]], str, dict[str, t.Any]]:
    """Split ``scheme://[user:pw@]h1:p1,h2:p2/path?query``.

    Returns the hosts, the path, and the connection options from the
    credentials and the query string, typed as redis-py types them.
    """
    from redis.connection import parse_url

    parts = _split(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    nodes = [
        _parse_host(item.strip(), default_port, url)
        for item in hostlist.split(",")
        if item.strip()
    ]
    if not nodes:
        raise ConfigurationError(
            f"No host in {redact_url(url)}: list one or more host:port."
        )
    # Let redis-py read the credentials and the query string, as it does for
    # redis:// URLs, so options are spelled and typed the same everywhere.
    netloc = f"{userinfo}@localhost" if userinfo else "localhost"
    try:
        connection = parse_url(urlunsplit(("redis", netloc, "", parts.query, "")))
    except ValueError as exc:
        raise ConfigurationError(
            f"Invalid options in {redact_url(url)}: {exc}"
        ) from exc
    connection.pop("host", None)
    connection.pop("port", None)
    connection.pop("connection_class", None)
    return nodes, parts.path, connection


def _parse_host(item: str, default_port: int, url: str) -> tuple[str, int]:
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ConfigurationError(f"Bad host {item!r} in {redact_url(url)}.")
    else:
        host, sep, port_text = item.rpartition(":")
        if not sep:
            host, port_text = item, ""
    if not host:
        raise ConfigurationError(f"Bad host {item!r} in {redact_url(url)}.")
    port = _parse_int(port_text, "port", url) if port_text else default_port
    if not 0 < port < 65536:
        raise ConfigurationError(f"Bad port {port} in {redact_url(url)}.")
    return unquote(host), port


def _parse_int(text: str, what: str, url: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigurationError(
            f"The {what} must be a number; got {text!r} in {redact_url(url)}."
        ) from None


def _split(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:  # unbalanced IPv6 brackets, a bad port
        # The URL itself stays out of the message: it may hold a password.
        raise ConfigurationError(f"Invalid Redis URL: {exc}") from exc


def _describe_client(client: object) -> str:
    """Where a client connects, without credentials and without I/O."""
    try:
        nodes = getattr(client, "startup_nodes", None) or getattr(
            getattr(client, "nodes_manager", None), "startup_nodes", None
        )
        if nodes:
            return "redis+cluster://" + ",".join(sorted(nodes))
        pool = getattr(client, "connection_pool", None)
        service = getattr(pool, "service_name", None)
        kwargs: dict[str, t.Any] = getattr(pool, "connection_kwargs", {})
        db = kwargs.get("db", 0)
        if service is not None:
            return f"redis+sentinel service {service!r}, db {db}"
        if "path" in kwargs:
            return f"unix://{kwargs['path']}?db={db}"
        connection_class = getattr(pool, "connection_class", None)
        scheme = (
            "rediss" if "SSL" in getattr(connection_class, "__name__", "") else "redis"
        )
        return f"{scheme}://{kwargs.get('host')}:{kwargs.get('port')}/{db}"
    except Exception:  # pragma: no cover - a description must never fail
        return type(client).__name__
