"""The store contract every session backend implements.

A store persists opaque payload bytes under a session key, with an expiry
moment and a version number. It knows nothing of serialization, cookies or
Flask: :class:`~flask_towersess.ServerSession` owns all of that.

.. versionadded:: 0.1
"""

from __future__ import annotations

import abc
import dataclasses
import typing as t
from datetime import datetime
from datetime import timezone

from ..errors import ConfigurationError

#: Called by :meth:`SessionStore.purge_expired` after each batch with the
#: number of records that batch deleted (used for the CLI progress bar).
BatchCallback = t.Callable[[int], None]


def utcnow() -> datetime:
    """The current time as an aware UTC datetime; every store's clock."""
    return datetime.now(timezone.utc)


@dataclasses.dataclass(frozen=True)
class Record:
    """One stored session.

    :param key: the session key (the ID the cookie carries).
    :param payload: the serialized session state, opaque to the store.
    :param expires_at: aware UTC datetime after which the record is gone; a
        store never returns a record whose ``expires_at`` has passed.
    :param version: starts at 1 and grows by one with every save; saves are
        compare-and-set on it, so concurrent writers cannot overwrite each
        other unnoticed.
    """

    key: str
    payload: bytes
    expires_at: datetime
    version: int = 1

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at <= (now or utcnow())


class SessionStore(abc.ABC):
    """Base class of the session stores.

    Subclasses implement :meth:`load`, :meth:`create`, :meth:`save`,
    :meth:`touch` and :meth:`delete`; the other methods have defaults that
    suit a store whose backend expires records by itself.

    Every method may raise :class:`~flask_towersess.errors.StoreUnavailable`
    when the backend cannot be reached.
    """

    #: True when the backend deletes expired records by itself (Redis TTL,
    #: MongoDB TTL index), so :meth:`purge_expired` has nothing to do.
    expires_natively: t.ClassVar[bool] = False

    #: URL schemes :func:`~flask_towersess.stores.store_from_url` hands to
    #: this class's :meth:`from_url`.
    url_schemes: t.ClassVar[tuple[str, ...]] = ()

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

    def exists(self, key: str) -> bool:
        """Whether a live record is stored under ``key``."""
        return self.load(key) is not None

    def count_expired(self) -> int:
        """How many expired records :meth:`purge_expired` would delete."""
        return 0

    def purge_expired(
        self, batch_size: int = 1000, *, on_batch: BatchCallback | None = None
    ) -> int:
        """Delete expired records, ``batch_size`` at a time.

        Safe to run from several processes at once. Returns how many records
        this call deleted. Stores whose backend expires records natively
        (see :attr:`expires_natively`) have nothing to do and return 0.
        """
        return 0

    def migrate(self) -> list[str]:
        """Create or upgrade what the store needs (tables, indexes).

        Idempotent. Returns one line per action, saying what was done.
        """
        return [f"{type(self).__name__} needs no migration."]

    def migration_sql(self) -> str | None:
        """The DDL :meth:`migrate` would run, for stores that have some."""
        return None

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
    def accepts(cls, obj: object) -> bool:
        """Whether ``obj`` is a native client this store can wrap.

        Used by ``SESSION_STORE`` to turn an engine, a client or a collection
        into a store without naming the backend.
        """
        return False

    def __repr__(self) -> str:
        return f"<{self.describe()}>"
