"""The store contract every session backend implements.

A store persists opaque payload bytes under a session key, with an expiry
moment and a version number. It knows nothing of serialization, cookies or
Flask: :class:`~flask_towersess.ServerSession` owns all of that.

.. versionadded:: 0.1
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import re
import typing as t
from datetime import datetime
from datetime import timezone

from ..errors import ConfigurationError
from ..errors import TowerSessError

#: Called by :meth:`SessionStore.purge_expired` after each batch with the
#: number of records that batch deleted (used for the CLI progress bar).
BatchCallback = t.Callable[[int], None]

#: Where stores report records they refuse to return (content no store of
#: this package wrote: tampering or corruption), next to the session
#: layer's warnings about undecodable payloads.
security_logger = logging.getLogger("flask_towersess.security")

#: The form of a session key: 8 to 128 characters of the URL-safe base64
#: alphabet. Keys made by this package are 43 characters long.
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,128}")
_match_key = KEY_PATTERN.fullmatch

#: The versions a store returns: a record at the top of the range could not
#: be saved again (its next version would overflow a 32-bit column), and the
#: bottom of the range leaves room for :class:`~.caching.CachingStore`'s
#: negative lease versions.
MIN_VERSION = -(2**31 - 1)
MAX_VERSION = 2**31 - 2


# Bound once: utcnow() runs several times on every write.
_now = datetime.now
_UTC = timezone.utc


def utcnow() -> datetime:
    """The current time as an aware UTC datetime; every store's clock."""
    return _now(_UTC)


def check_key(key: object) -> str:
    """Return ``key`` if it has the form of a session key; raise otherwise.

    Every store calls it first in each method that takes a key (or a
    record), so nothing else ever reaches a backend: not a query operator
    (``{"$ne": None}``), not a glob, not a key of another prefix. The session
    layer only ever passes valid keys; a script passing anything else gets
    the error at once instead of a silent miss.

    :raises TypeError: ``key`` is not a ``str``.
    :raises ValueError: ``key`` is a ``str`` not of the session-key form.

    .. versionadded:: 0.2
    """
    # One C call on the hot path: a str pattern raises TypeError for
    # anything that is not a str (bytes included).
    try:
        if _match_key(key) is not None:  # type: ignore[call-overload]
            # Not t.cast(): a Python call, on every store operation.
            return key  # type: ignore[return-value]
    except TypeError:
        raise TypeError(
            f"a session key is a str, not {type(key).__qualname__}"
        ) from None
    # Never the value itself: it may be a real key with a typo (a secret),
    # or text meant to forge log lines.
    raise ValueError(
        "not a session key: a session key is 8 to 128 characters of A-Z, a-z,"
        f" 0-9, '-' and '_' (got a str of {len(t.cast(str, key))} characters)"
    )


#: The most characters of a ``User-Agent`` a record keeps: real browsers
#: send 100 to 250; the rest of a longer one is dropped.
USER_AGENT_LENGTH = 256
#: The most characters of a user id a per-user index takes (a longer one is
#: refused with ``ValueError``): room for a UUID, an e-mail address, a
#: composite key.
USER_ID_LENGTH = 255
#: The most characters of a client address: an IPv6 address with an IPv4
#: tail (``ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255``).
IP_LENGTH = 45


def check_user_id(user_id: object) -> str:
    """Return ``user_id`` if a per-user index can take it; raise otherwise.

    :raises TypeError: not a ``str``.
    :raises ValueError: empty, longer than :data:`USER_ID_LENGTH`, or
        holding a control character.

    .. versionadded:: 0.2
    """
    if type(user_id) is not str:
        raise TypeError(f"a user id is a str, not {type(user_id).__qualname__}")
    if not 0 < len(user_id) <= USER_ID_LENGTH or not user_id.isprintable():
        raise ValueError(
            f"not a user id: 1 to {USER_ID_LENGTH} printable characters"
            f" (got a str of {len(user_id)} characters)"
        )
    return user_id


#: How many characters of a session key :func:`short_key` shows: enough to
#: tell sessions apart in a log, far too few to use (keys made by this
#: package carry 256 bits; six characters are 36 of them).
SHORT_KEY_LENGTH = 6


def short_key(key: str) -> str:
    """``key`` as logs and error messages show it: its first
    :data:`SHORT_KEY_LENGTH` characters and ``...``.

    A session key is a bearer secret: whoever reads a whole one in a log,
    a crash report or an exception message can use the session. Use this
    wherever a key would be shown.

    >>> short_key("Yq3Zk1bG0xWm8aE2cV5nR7tL9pH4sJ6dF1gK3hN5oQ0")
    'Yq3Zk1...'

    .. versionadded:: 0.2
    """
    return f"{key[:SHORT_KEY_LENGTH]}..."


#: A key of the session-key form that no session has: this package makes
#: 43-character keys, and a script would have to pick this one on purpose.
_PROBE_KEY = "flask-towersess-ping"


def refuse_record(store: str, key: str, reason: str) -> None:
    """Log, on the security logger, that ``store`` refused the record of
    ``key`` for ``reason``; the store then treats it as missing.

    .. versionadded:: 0.2
    """
    security_logger.warning(
        "Session %s: %s refused the stored record (%s); treating it as missing",
        short_key(key),
        store,
        reason,
    )


def checked_record(
    store: str, key: str, payload: object, expires_at: object, version: object
) -> Record | None:
    """A :class:`Record` of the values a backend returned, or ``None`` (and
    a warning, see :func:`refuse_record`) if one has a wrong type or range.

    ``payload`` must be bytes-like (``bytes``, ``bytearray``,
    ``memoryview``), ``expires_at`` an aware ``datetime``, ``version`` an
    ``int`` from :data:`MIN_VERSION` to :data:`MAX_VERSION`. Whether the
    record is still live is the caller's to check.

    .. versionadded:: 0.2
    """
    if type(payload) is not bytes:
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            refuse_record(store, key, f"payload is {type(payload).__name__}")
            return None
        payload = bytes(payload)
    if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
        refuse_record(store, key, f"expires_at is {type(expires_at).__name__}")
        return None
    if (
        not isinstance(version, int)
        or isinstance(version, bool)
        or not MIN_VERSION <= version <= MAX_VERSION
    ):
        kind = type(version).__name__
        if kind == "int":
            kind = "an int out of range"  # never the (attacker's) number itself
        refuse_record(store, key, f"version is {kind}")
        return None
    return Record(key, payload, expires_at, int(version))


def checked_info(record: Record, **fields: object) -> Record:
    """``record`` with the per-user fields a backend returned (``user_id``,
    ``created_at``, ``last_active_at``, ``user_agent``, ``ip``), each one
    of a wrong type or size replaced by ``None``: they are shown in a
    device list, never trusted.

    .. versionadded:: 0.2
    """
    clean: dict[str, t.Any] = {}
    for name, value in fields.items():
        if name in ("created_at", "last_active_at"):
            ok = isinstance(value, datetime) and value.tzinfo is not None
        elif name == "user_id":
            ok = type(value) is str and 0 < len(value) <= USER_ID_LENGTH
        elif name == "user_agent":
            ok = type(value) is str and len(value) <= USER_AGENT_LENGTH
        elif name == "ip":
            ok = type(value) is str and len(value) <= IP_LENGTH
        else:
            raise TypeError(f"not a per-user field: {name}")
        clean[name] = value if ok else None
    return dataclasses.replace(record, **clean)


@dataclasses.dataclass(frozen=True, init=False)
class Record:
    """One stored session.

    :param key: the record's key. Since 0.2 the session layer stores a
        session under the SHA-256 of the key its cookie carries (see
        :func:`~flask_towersess.session.stored_key`), never the key itself.
    :param payload: the serialized session state, opaque to the store.
    :param expires_at: aware UTC datetime after which the record is gone; a
        store never returns a record whose ``expires_at`` has passed.
    :param version: starts at 1 and grows by one with every save; saves are
        compare-and-set on it, so concurrent writers cannot overwrite each
        other unnoticed.
    :param user_id: who the session belongs to, ``None`` for an anonymous
        one. A store with a :class:`PerUserIndex` lists the record under
        that user; others may ignore it.
    :param created_at: when the session began (unchanged when its key is
        cycled).
    :param last_active_at: when the session was last written or touched.
    :param user_agent: the browser's ``User-Agent`` when it was last
        written (``SESSION_RECORD_USER_AGENT``), at most
        :data:`USER_AGENT_LENGTH` characters.
    :param ip: the client's address when it was last written
        (``SESSION_RECORD_IP``).

    A store without a per-user index need not keep the last five fields:
    the session layer does not read them back.

    .. versionchanged:: 0.2
        ``user_id``, ``created_at``, ``last_active_at``, ``user_agent`` and
        ``ip``.
    """

    key: str
    payload: bytes
    expires_at: datetime
    version: int = 1
    user_id: str | None = None
    created_at: datetime | None = None
    last_active_at: datetime | None = None
    user_agent: str | None = None
    ip: str | None = None

    # Written out rather than generated: a frozen dataclass's own __init__
    # sets each of the nine fields with object.__setattr__, which made
    # building a record cost as much as a store round trip to memory (about
    # 15k instructions; one or two are built on every write). Filling the
    # instance dict directly is what that does, a third of the cost. Same
    # signature and defaults as the fields above.
    def __init__(
        self,
        key: str,
        payload: bytes,
        expires_at: datetime,
        version: int = 1,
        user_id: str | None = None,
        created_at: datetime | None = None,
        last_active_at: datetime | None = None,
        user_agent: str | None = None,
        ip: str | None = None,
    ) -> None:
        fields = self.__dict__
        fields["key"] = key
        fields["payload"] = payload
        fields["expires_at"] = expires_at
        fields["version"] = version
        fields["user_id"] = user_id
        fields["created_at"] = created_at
        fields["last_active_at"] = last_active_at
        fields["user_agent"] = user_agent
        fields["ip"] = ip

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at <= (now or utcnow())


#: Earlier than any ``last_active_at``: the recency of a record without one.
NEVER_ACTIVE = datetime.min.replace(tzinfo=timezone.utc)


def recency(record: Record) -> tuple[datetime, str]:
    """The order of :meth:`PerUserIndex.trim_sessions_of`, ascending: least
    recently active first, a record without ``last_active_at`` before all
    others, then by key (one total order, which every store sorts by).

    .. versionadded:: 0.2
    """
    return (record.last_active_at or NEVER_ACTIVE, record.key)


class SessionStore(abc.ABC):
    """Base class of the session stores.

    Subclasses implement :meth:`load`, :meth:`create`, :meth:`save`,
    :meth:`touch` and :meth:`delete`; the other methods have defaults.
    What only some backends need is a capability a store adds by also
    subclassing it: :class:`Purging` (expired records to delete) and
    :class:`Migrating` (tables or indexes to create).

    Every method may raise :class:`~flask_towersess.errors.StoreUnavailable`
    when the backend cannot be reached, and
    :class:`~flask_towersess.errors.ConfigurationError` when it refuses the
    store's settings (credentials, database): no retry fixes those.
    """

    #: True when the backend deletes expired records by itself (Redis TTL,
    #: MongoDB TTL index). Such a store needs no :class:`Purging`, though it
    #: may have it (MongoDB, for a collection without its TTL index).
    expires_natively: t.ClassVar[bool] = False

    #: URL schemes :func:`~flask_towersess.stores.store_from_url` hands to
    #: this class's :meth:`from_url`.
    url_schemes: t.ClassVar[tuple[str, ...]] = ()

    #: The setting that errors about this store's connection name:
    #: :class:`~flask_towersess.SessionExt` sets ``"SESSION_CACHE"`` on the
    #: store it builds from that setting.
    _setting = "SESSION_STORE"

    # The configuration problems already logged (see _misconfigured); a
    # class-level empty default, replaced per instance on the first one.
    _logged_problems: frozenset[str] = frozenset()

    @abc.abstractmethod
    def load(self, key: str) -> Record | None:
        """Return the live record stored under ``key``, or ``None``."""

    @abc.abstractmethod
    def create(self, record: Record) -> None:
        """Store a new record.

        :raises CreateError: a live record with that key exists.
        """

    @abc.abstractmethod
    def save(self, record: Record, expected_version: int) -> None:
        """Replace a record, if it is still at ``expected_version``.

        ``record.version`` is the new version (``expected_version + 1``).

        :raises UpdateError: the record does not exist (or has expired); it
            is not recreated.
        :raises VersionConflict: the record exists at another version.
        """

    @abc.abstractmethod
    def touch(self, key: str, expires_at: datetime) -> None:
        """Move the expiry of a live record, without rewriting its payload.

        A missing record stays missing.
        """

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete the record, if there is one."""

    def delete_many(self, keys: t.Collection[str]) -> None:
        """Delete the records of ``keys`` that exist.

        The default calls :meth:`delete` for each; a store overrides it
        with one round trip (``DELETE ... IN``, a multi-key ``DEL``,
        ``delete_many``): revoking all of a user's sessions, or
        invalidating them in a cache, must not cost a round trip each.

        .. versionadded:: 0.2
        """
        for key in keys:
            self.delete(key)

    def exists(self, key: str) -> bool:
        """Whether a live record is stored under ``key``."""
        return self.load(key) is not None

    def load_current(self, key: str) -> Record | None:
        """Like :meth:`load`, from where :meth:`save`'s compare-and-set is
        decided.

        The session layer reads a record with this after its save lost a
        compare-and-set, to merge its changes into the version it must match
        next. The default is :meth:`load`; a store whose reads may be served
        from a copy (:class:`~flask_towersess.stores.CachingStore`) reads
        past the copy, which may be older than the version that won.

        .. versionadded:: 0.2
        """
        return self.load(key)

    def colocation_prefix(self, user_id: str) -> str:
        """How the stored keys of ``user_id``'s sessions should begin: ``""``
        (any key will do, the default) or up to four lowercase hex digits,
        an even number.

        For a store that keeps a user's records next to that user's index
        only when their keys say so (:class:`~.redis.RedisStore` on a
        Cluster, where one script reaches one hash slot). The session layer
        then picks, for a logged-in session, a cookie key whose
        :func:`~flask_towersess.session.stored_key` begins with it (about
        256 tries for two digits, a fraction of a millisecond, at log-in
        and key rotation only). A key that does not begin with it (written
        before, or by a script) must still work, at a cost the store
        documents.

        .. versionadded:: 0.2
        """
        return ""

    def ping(self) -> None:
        """Check that the backend answers and accepts the store's settings.

        For callers that need no data but must learn of an outage (the
        ``purge-expired`` command on a store with nothing to purge). The
        default asks :meth:`exists` about a key no session has.

        :raises StoreUnavailable: the backend cannot be reached.
        :raises ConfigurationError: the backend refuses the settings.

        .. versionadded:: 0.2
        """
        self.exists(_PROBE_KEY)

    def as_purging(self) -> Purging | None:
        """This store as a :class:`Purging` store, or ``None`` if it has no
        expired records to purge.

        .. versionadded:: 0.2
        """
        return self if isinstance(self, Purging) else None

    def as_migrating(self) -> Migrating | None:
        """This store as a :class:`Migrating` store, or ``None`` if it has
        nothing to create or upgrade.

        .. versionadded:: 0.2
        """
        return self if isinstance(self, Migrating) else None

    def as_counting(self) -> Counting | None:
        """This store as a :class:`Counting` store, or ``None`` if it cannot
        count its live sessions.

        .. versionadded:: 0.2
        """
        return self if isinstance(self, Counting) else None

    def as_per_user(self) -> PerUserIndex | None:
        """This store as a :class:`PerUserIndex` store, or ``None`` if it
        keeps no per-user index.

        .. versionadded:: 0.2
        """
        return self if isinstance(self, PerUserIndex) else None

    def as_counting_per_user(self) -> CountingPerUser | None:
        """This store as a :class:`CountingPerUser` store, or ``None`` if it
        keeps no per-user index to count from.

        .. versionadded:: 0.2
        """
        return self if isinstance(self, CountingPerUser) else None

    def close(self) -> None:  # noqa: B027 - most stores hold nothing to close
        """Release connections held by the store."""

    def describe(self) -> str:
        """A short, password-free description for logs and CLI output."""
        return type(self).__name__

    @classmethod
    def from_url(cls, url: str, **options: t.Any) -> SessionStore:
        """Build the store from a URL (and backend-specific options)."""
        raise ConfigurationError(f"{cls.__name__} cannot be built from a URL.")

    @classmethod
    def cache_from_url(cls, url: str, **options: t.Any) -> SessionStore:
        """Build the store from a URL as the cache of a
        :class:`~flask_towersess.stores.CachingStore` (``SESSION_CACHE``).

        A store whose calls can hang (a network server) overrides this with
        short timeouts: a cache is worth little time, and the durable store
        behind it answers when the cache does not. Defaults to
        :meth:`from_url`.

        .. versionadded:: 0.2
        """
        return cls.from_url(url, **options)

    @classmethod
    def accepts(cls, obj: object) -> bool:
        """Whether ``obj`` is a native client this store can wrap.

        Used by ``SESSION_STORE`` to turn an engine, a client or a collection
        into a store without naming the backend.
        """
        return False

    def _translate(self, exc: Exception) -> TowerSessError | None:
        """What a driver error means to the session layer: a
        :class:`~flask_towersess.errors.StoreUnavailable` (made with
        :func:`~._errors.store_unavailable`), a
        :class:`~flask_towersess.errors.ConfigurationError` (made with
        :meth:`_misconfigured`), or ``None`` for an error to raise as it is.

        Every store with a driver overrides it and applies it through
        :mod:`~flask_towersess.stores._errors`, so all of them sort errors,
        log them and chain them the same way. The default translates
        nothing.

        .. versionadded:: 0.2
        """
        return None

    def _misconfigured(
        self, where: str, problem: str, log: logging.Logger
    ) -> ConfigurationError:
        """The error for a connection setting the backend refused (a password,
        a user, a database), which no retry will fix.

        :param where: the store's URL or address, without secrets.
        :param problem: what is wrong and how to fix it, without secrets.

        The message is logged at ERROR the first time this store meets it,
        not on every request: it stays wrong until someone changes the
        setting, and a line per request would bury everything else.

        .. versionadded:: 0.2
        """
        message = f"{self._setting} ({where}): {problem}"
        if message not in self._logged_problems:
            self._logged_problems = self._logged_problems | {message}
            log.error("%s", message)
        return ConfigurationError(message)

    def __repr__(self) -> str:
        return f"<{self.describe()}>"


@t.runtime_checkable
class Purging(t.Protocol):
    """A store whose expired records stay until something deletes them (an
    SQL table, the memory store), and which can delete them.

    ``flask sessions purge-expired`` runs :meth:`purge_expired`; on a store
    without this capability it says there is nothing to purge. A store adds
    it by subclassing it next to :class:`SessionStore`, or just by having
    both methods.

    .. versionadded:: 0.2
        Before, every store had these methods, doing nothing where the
        backend expires records by itself.
    """

    def count_expired(self) -> int:
        """How many expired records :meth:`purge_expired` would delete."""
        ...

    def purge_expired(
        self, batch_size: int = 1000, *, on_batch: BatchCallback | None = None
    ) -> int:
        """Delete expired records, ``batch_size`` at a time.

        Safe to run from several processes at once. Returns how many records
        this call deleted; ``on_batch`` is called after each batch with the
        number it deleted.
        """
        ...


@t.runtime_checkable
class Migrating(t.Protocol):
    """A store that needs tables or indexes created before use, or upgraded
    after an upgrade of this package.

    ``flask sessions migrate`` runs :meth:`migrate`; on a store without this
    capability it says there is nothing to migrate. A store adds it by
    subclassing it next to :class:`SessionStore`, or just by having both
    methods.

    .. versionadded:: 0.2
        Before, every store had these methods, doing nothing where there was
        nothing to create.
    """

    def migrate(self) -> list[str]:
        """Create or upgrade what the store needs (tables, indexes).

        Idempotent. Returns one line per action, saying what was done.
        """
        ...

    def migration_sql(self) -> str | None:
        """The DDL :meth:`migrate` would run; ``None`` for a store without
        an SQL schema (the default for a subclass)."""
        return None

    def pending_migrations(self) -> list[str]:
        """What :meth:`migrate` would still do, one line each (a missing
        table, column or index); empty when nothing is left. For
        ``flask sessions migrate --check``.

        .. versionadded:: 0.2
        """
        return []


#: The form of a key as the session layer stores it since 0.2: the SHA-256
#: of the cookie's key, in lowercase hex (see
#: :func:`flask_towersess.session.stored_key`). 0.1 stored the cookie's key
#: itself: 43 characters of the URL-safe alphabet, never of this form.
HASHED_KEY_PATTERN = re.compile(r"[0-9a-f]{64}")


@t.runtime_checkable
class LegacyKeys(t.Protocol):
    """A store that may hold records 0.1 wrote under the cookie's key
    itself, and can list them, for the key-hashing step of
    ``flask sessions migrate``.

    A store that may also hold records a 0.2 app wrote before its schema
    was upgraded has the optional ``UnindexedKeys`` methods (``unindexed_keys``,
    ``count_unindexed``) too.

    .. versionadded:: 0.2
    """

    def unhashed_keys(
        self, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """Up to about ``limit`` keys of live records not of
        :data:`HASHED_KEY_PATTERN`, from ``cursor`` (``None``: the start),
        and the cursor to go on from (``None`` when there are no more).
        Records rewritten meanwhile may or may not be listed."""
        ...

    def count_unhashed(self) -> int:
        """How many live records are stored under keys not of
        :data:`HASHED_KEY_PATTERN`."""
        ...


class UnindexedKeys(t.Protocol):
    """The optional part of :class:`LegacyKeys`, by duck typing (a
    :class:`LegacyKeys` store need not have it, and ``isinstance`` does not
    ask for it): a store that may hold live records under hashed keys
    written without the per-user fields, by a 0.2 app while the store's
    schema was not upgraded yet (a 0.1 SQL table before ``flask sessions
    migrate`` added its columns), lists them, so that the upgrade can fill
    in their user (``flask_towersess.upgrade.index_unindexed``).

    A store whose writes always carry the per-user fields (memory, Redis,
    MongoDB: nothing for them to miss) leaves it out.

    .. versionadded:: 0.2
    """

    def unindexed_keys(
        self, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """Up to about ``limit`` keys of live records under hashed keys
        written without the per-user fields (by a store whose schema was not
        upgraded yet), from ``cursor`` (``None``: the start), and the cursor
        to go on from (``None`` when there are no more). A record written
        with the fields since is no longer listed."""
        ...

    def count_unindexed(self) -> int:
        """How many live records :meth:`unindexed_keys` would list."""
        ...


@t.runtime_checkable
class Counting(t.Protocol):
    """A store that can count its live sessions, for ``flask sessions
    stats``.

    Expired sessions are counted by :meth:`Purging.count_expired`, on a
    store that has them; a store that expires records by itself has none
    to count. A store adds this capability by subclassing it next to
    :class:`SessionStore`, or just by having the method.

    .. versionadded:: 0.2
    """

    def count_live(self) -> int:
        """How many sessions have not expired yet."""
        ...


@t.runtime_checkable
class PerUserIndex(t.Protocol):
    """A store that indexes its records by :attr:`Record.user_id`: the
    per-user sessions API (:meth:`~flask_towersess.SessionExt.sessions_for`,
    :meth:`~flask_towersess.SessionExt.revoke`, ``SESSION_MAX_PER_USER``)
    works on it.

    The index is kept by the store's own writes: :meth:`SessionStore.create`
    and :meth:`SessionStore.save` index a record with a ``user_id`` (and
    move its entry when the user changes), :meth:`SessionStore.delete`,
    :meth:`SessionStore.touch` and expiry keep it current, with no round
    trip a request would not make anyway. It must be exact without help:
    never an expired, deleted or anonymous record, whether or not anything
    purged, and whatever notifications the backend has turned off.

    .. versionadded:: 0.2
    """

    def sessions_of(self, user_id: str) -> list[Record]:
        """The live records of ``user_id``, with their per-user fields, in
        any order. ``payload`` may be empty: the list is for showing, and
        never decoded. Costs a fixed number of round trips, and time in
        proportion to that user's live sessions.

        :raises ValueError: ``user_id`` is not a user id
            (:func:`check_user_id`).
        """
        ...

    def delete_sessions_of(
        self,
        user_id: str,
        keys: t.Collection[str] | None = None,
        *,
        keep: str | None = None,
    ) -> list[str]:
        """Delete the live records of ``user_id`` (all, or those of
        ``keys``; a key of another user's record is left alone), except
        ``keep``, in a fixed number of round trips. Returns the keys
        deleted."""
        ...

    def trim_sessions_of(self, user_id: str, limit: int, *, keep: str) -> list[str]:
        """Delete the live records of ``user_id`` other than ``keep`` and
        the ``limit`` most recently active, in one atomic step. Returns the
        keys deleted.

        "Most recently active" orders by ``(last_active_at, key)``,
        descending (a record without ``last_active_at`` counts as least
        recent): one total order, so two logins trimming at once agree on
        which records survive, and never end each other's new session
        unless the limit leaves room for one of them only."""
        ...


@t.runtime_checkable
class CountingPerUser(t.Protocol):
    """A store with a per-user index that can say which users hold the
    most live sessions, for ``flask sessions stats --top N``.

    Counting by decoding every payload would be slow and would guess at the
    app's data: only a store with a :class:`PerUserIndex` has it.

    .. versionadded:: 0.2
    """

    def per_user_counts(self, top: int) -> list[tuple[str, int]]:
        """The ``top`` users with the most live sessions, as ``(user_id,
        count)`` pairs, most sessions first."""
        ...
