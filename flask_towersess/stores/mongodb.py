"""Sessions in a MongoDB collection, with pymongo.

One document per session::

    {"_id": "<session key>", "payload": BinData, "expires_at": ISODate, "version": 3,
     "user_id": "42", "created_at": ISODate, "last_active_at": ISODate,
     "user_agent": "Mozilla/5.0 ...", "ip": "203.0.113.7"}

The per-user fields (since 0.2) are left out when they are ``None``: an
anonymous session has no ``user_id`` field at all, so the partial index on
``(user_id, expires_at)`` (:data:`USER_INDEX_NAME`) holds the sessions of
users only, and each entry carries its document's own expiry.

:meth:`MongoDBStore.migrate` creates a TTL index on ``expires_at`` with
``expireAfterSeconds=0``, so the server deletes a document once its
``expires_at`` has passed. The server's TTL monitor only runs about once a
minute, so every read also filters on ``expires_at`` itself: an expired
session is never returned, whether or not it has been deleted yet.

pymongo is imported when a store is built, not when this module is imported,
so flask-towersess works without it for the other backends.

.. versionadded:: 0.1
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import typing as t
from datetime import datetime
from datetime import timezone
from urllib.parse import parse_qsl
from urllib.parse import unquote
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ..errors import CreateError
from ..errors import TowerSessError
from ..errors import UpdateError
from ..errors import VersionConflict
from ._errors import ErrorTranslation
from ._errors import store_unavailable
from ._fork import ProcessGuard
from ._urls import redact_message
from ._urls import redact_url
from ._urls import url_location
from .base import KEY_PATTERN
from .base import NEVER_ACTIVE
from .base import BatchCallback
from .base import Counting
from .base import CountingPerUser
from .base import LegacyKeys
from .base import Migrating
from .base import PerUserIndex
from .base import Purging
from .base import Record
from .base import SessionStore
from .base import check_key
from .base import check_user_id
from .base import checked_info
from .base import checked_record
from .base import refuse_record
from .base import short_key
from .base import utcnow

if t.TYPE_CHECKING:
    from pymongo.collection import Collection

logger = logging.getLogger(__name__)

#: Name of the TTL index :meth:`MongoDBStore.migrate` creates.
TTL_INDEX_NAME = "expires_at_1"

#: Name of the per-user index :meth:`MongoDBStore.migrate` creates (since
#: 0.2): ``(user_id, expires_at)``, on documents that have a ``user_id``.
USER_INDEX_NAME = "user_id_1_expires_at_1"
_USER_INDEX_KEY = [("user_id", 1), ("expires_at", 1)]
_USER_INDEX_FILTER = {"user_id": {"$exists": True}}

#: The per-user fields a document carries (when not ``None``).
_INFO_FIELDS = ("user_id", "created_at", "last_active_at", "user_agent", "ip")
_DATE_FIELDS = frozenset({"created_at", "last_active_at"})
#: What a listing reads: everything but the payload.
_LISTING = {"payload": False}
#: An ``_id`` of the form the session layer stores keys in since 0.2.
_HASHED_ID = re.compile(r"^[0-9a-f]{64}$")

_INSTALL_HINT = (
    "MongoDBStore needs pymongo: install flask-towersess[mongodb]"
    " (or `pip install pymongo`)."
)

#: Client options :meth:`MongoDBStore.from_url` sets unless the URL or the
#: caller does. pymongo's own defaults wait 30 s to find a server and forever
#: for a socket, which turns a dead database into hung workers instead of a
#: quick 503.
DEFAULT_CLIENT_OPTIONS: dict[str, t.Any] = {
    "serverSelectionTimeoutMS": 5000,
    "connectTimeoutMS": 5000,
    "socketTimeoutMS": 10000,
    "appname": "flask-towersess",
}

# Modules whose ``Collection`` class :meth:`MongoDBStore.accepts`. pymongo 4.9
# moved the class to ``pymongo.synchronous.collection``; the async collection
# lives elsewhere and is deliberately not accepted (its methods are coroutines).
_COLLECTION_MODULES = frozenset(
    {"pymongo.collection", "pymongo.synchronous.collection", "mongomock.collection"}
)


@dataclasses.dataclass(frozen=True)
class _DriverErrors:
    duplicate_key: type[Exception]
    # The base class of every driver error, to look at before deciding
    # whether it means "unreachable".
    base: type[Exception]
    connection_failure: tuple[type[Exception], ...]
    # A reply the driver cannot decode (a date past year 9999).
    invalid_document: tuple[type[Exception], ...] = ()
    # pymongo's ConfigurationError: settings it finds unusable only once it
    # meets the server (an SRV record, a server too old for the driver).
    configuration: tuple[type[Exception], ...] = ()


@functools.cache
def _driver_errors() -> _DriverErrors:
    try:
        from bson.errors import InvalidBSON
        from pymongo import errors
    except ImportError:
        # A mongomock collection can be used without pymongo installed;
        # mongomock then defines the error classes itself.
        try:
            import mongomock
        except ImportError:
            raise ConfigurationError(_INSTALL_HINT) from None
        return _DriverErrors(
            duplicate_key=mongomock.DuplicateKeyError,
            base=mongomock.OperationFailure,
            connection_failure=(),
        )
    return _DriverErrors(
        duplicate_key=errors.DuplicateKeyError,
        base=errors.PyMongoError,
        # ConnectionFailure covers AutoReconnect, NetworkTimeout,
        # ServerSelectionTimeoutError, NotPrimaryError and
        # WaitQueueTimeoutError; other timeouts are found by ``.timeout``.
        connection_failure=(errors.ConnectionFailure,),
        invalid_document=(InvalidBSON,),
        configuration=(errors.ConfigurationError,),
    )


def _to_bson_date(value: datetime) -> datetime:
    # BSON dates are UTC milliseconds. Sending naive UTC is what pymongo does
    # with an aware datetime anyway, and it keeps mongomock (which compares
    # Python datetimes) from mixing naive and aware values.
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def _from_bson_date(value: datetime) -> datetime:
    # pymongo returns naive UTC unless the client was made with tz_aware=True.
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


class MongoDBStore(
    SessionStore,
    Purging,
    Migrating,
    Counting,
    PerUserIndex,
    CountingPerUser,
    LegacyKeys,
):
    """Keep sessions in a MongoDB collection.

    :param collection: a pymongo ``Collection`` (a mongomock one works too,
        for tests). The client's own settings (write concern, read
        preference, ``tz_aware``) are used as they are.
    :param owns_client: close the collection's client in :meth:`close`.
        :meth:`from_url` sets it, since it made the client; a collection
        passed in belongs to the app, which closes its client itself.

    Run :meth:`migrate` (``flask sessions migrate``) once to create the TTL
    index; without it the store still works, but expired documents stay until
    :meth:`purge_expired` deletes them.

    .. versionadded:: 0.1
    """

    expires_natively = True
    url_schemes = ("mongodb", "mongodb+srv")

    def __init__(
        self, collection: Collection[t.Any], *, owns_client: bool = False
    ) -> None:
        self.collection = collection
        self._owns_client = owns_client
        self._where = collection.full_name
        # How to open the collection again on a client of its own, for a
        # forked child: set by from_url, which knows how the client was made.
        self._reopen: t.Callable[[], Collection[t.Any]] | None = None
        self._process = ProcessGuard(self._reset_after_fork, "MongoDBStore")
        # Around every driver call: a forked child first opens a client of
        # its own, then _translate sorts out the driver's errors.
        self._translated_errors = ErrorTranslation(
            (_driver_errors().base,), self._translate, before=self._process.check
        )

    # -- construction ----------------------------------------------------------

    @classmethod
    def from_url(
        cls, url: str, *, collection: str = "sessions", **client_options: t.Any
    ) -> MongoDBStore:
        """Connect to ``mongodb://[user:password@]host[:port][,host...]/database``.

        The database comes from the URL path, the collection from
        ``collection``. ``client_options`` go to ``pymongo.MongoClient`` and
        override options given in the URL's query string. Unless one of them
        sets it, the client gets a bounded server selection, connect and
        socket timeout (see :data:`DEFAULT_CLIENT_OPTIONS`), so an
        unreachable server fails fast with
        :class:`~flask_towersess.errors.StoreUnavailable`.

        No connection is made here; pymongo connects in the background.

        :raises ConfigurationError: the URL names no database, pymongo is
            not installed, or pymongo rejects the URL or an option.
        """
        parts = urlsplit(url)
        database = unquote(parts.path.lstrip("/"))
        if not database:
            raise ConfigurationError(
                f"The MongoDB URL must name the database, as in"
                f" {parts.scheme or 'mongodb'}://host/dbname (got no path in"
                f" {redact_url(url)!r})."
            )
        # pymongo option names are case-insensitive; a default must not
        # override what the URL or the caller chose.
        given = {name.lower() for name, _ in parse_qsl(parts.query)}
        given.update(name.lower() for name in client_options)
        options = dict(client_options)
        for name, value in DEFAULT_CLIENT_OPTIONS.items():
            if name.lower() not in given:
                options[name] = value
        if "timeoutms" in given:
            # With client-side operation timeouts the socket timeout is
            # derived from timeoutMS; a fixed one would cut operations short.
            options.pop("socketTimeoutMS", None)

        try:
            import pymongo
            from pymongo import errors as pymongo_errors
        except ImportError:
            raise ConfigurationError(_INSTALL_HINT) from None
        try:
            client: pymongo.MongoClient[t.Any] = pymongo.MongoClient(url, **options)
        except (pymongo_errors.ConfigurationError, TypeError, ValueError) as exc:
            # Not chained: pymongo's error may quote the URL.
            raise ConfigurationError(
                "pymongo rejected the MongoDB URL or options"
                f" ({redact_url(url)}): {redact_message(str(exc), url)}"
            ) from None
        try:
            coll = client[database][collection]
        except (pymongo_errors.InvalidName, TypeError) as exc:
            client.close()
            raise ConfigurationError(f"Invalid MongoDB name: {exc}") from exc
        store = cls(coll, owns_client=True)
        store._reopen = lambda: pymongo.MongoClient(url, **options)[database][
            collection
        ]
        store._where = f"{url_location(url)}/{coll.full_name}"
        return store

    @classmethod
    def accepts(cls, obj: object) -> bool:
        """Whether ``obj`` is a pymongo (or mongomock) ``Collection``.

        Decided from the class, so that nothing is imported: an app that
        never uses MongoDB must not pay for, or need, pymongo.
        """
        return any(
            klass.__name__ == "Collection" and klass.__module__ in _COLLECTION_MODULES
            for klass in type(obj).__mro__
        )

    # -- helpers -----------------------------------------------------------------

    def _reset_after_fork(self) -> None:
        # pymongo's clients are not fork-safe (its documentation: create
        # clients after forking): its monitor threads stay in the parent. A
        # client the store made is made again in the child; the parent's is
        # left alone, never closed, since its sockets are the parent's too. A
        # collection the app passed in is the app's to reopen (pymongo warns
        # when one made before the fork is used); see docs/deploying.rst.
        if self._reopen is not None:
            self.collection = self._reopen()

    def _translate(self, exc: Exception) -> TowerSessError | None:
        errors = _driver_errors()
        problem = _misconfiguration(exc, errors)
        if problem is not None:
            return self._misconfigured(self._where, problem, logger)
        if isinstance(exc, errors.connection_failure) or getattr(exc, "timeout", False):
            return store_unavailable(self._where, exc, logger)
        return None

    @staticmethod
    def _live(key: str, now: datetime) -> dict[str, t.Any]:
        return {"_id": key, "expires_at": {"$gt": _to_bson_date(now)}}

    @staticmethod
    def _document(record: Record) -> dict[str, t.Any]:
        """The document of ``record``, without its ``None`` fields (an
        anonymous session has no ``user_id``: the per-user index skips it)."""
        document = {
            "_id": record.key,
            "payload": bytes(record.payload),
            "expires_at": _to_bson_date(record.expires_at),
            "version": record.version,
        }
        if record.user_id is not None:
            document["user_id"] = check_user_id(record.user_id)
        for name in _INFO_FIELDS[1:]:
            value = getattr(record, name)
            if value is not None:
                document[name] = _to_bson_date(value) if name in _DATE_FIELDS else value
        return document

    @staticmethod
    def _record(key: str, document: t.Mapping[str, t.Any]) -> Record | None:
        expires_at = document.get("expires_at")
        if isinstance(expires_at, datetime):
            expires_at = _from_bson_date(expires_at)
        return checked_record(
            "MongoDBStore",
            key,
            document.get("payload"),
            expires_at,
            document.get("version"),
        )

    # -- the store API -----------------------------------------------------------

    def load(self, key: str) -> Record | None:
        check_key(key)
        with self._translated_errors:
            try:
                document = self.collection.find_one(self._live(key, utcnow()))
            except _driver_errors().invalid_document as exc:
                refuse_record(
                    "MongoDBStore", key, f"undecodable document: {exc!r:.200}"
                )
                return None
        return None if document is None else self._record(key, document)

    def create(self, record: Record) -> None:
        check_key(record.key)
        now = _to_bson_date(utcnow())
        # One atomic upsert: it replaces an expired document the TTL monitor
        # has not removed yet, and inserts when there is none. A live
        # document does not match the filter, so the upsert tries to insert
        # a second document with the same _id, and the unique _id index
        # refuses it.
        with self._translated_errors:
            try:
                self.collection.replace_one(
                    {"_id": record.key, "expires_at": {"$lte": now}},
                    self._document(record),
                    upsert=True,
                )
            except _driver_errors().duplicate_key as exc:
                raise CreateError(
                    f"a session with key {short_key(record.key)} exists"
                ) from exc

    def save(self, record: Record, expected_version: int) -> None:
        check_key(record.key)
        document = self._document(record)
        del document["_id"]
        update: dict[str, t.Any] = {"$set": document}
        # A field now None is removed: a user_id that goes (a retired key, a
        # logout that keeps the session) takes the index entry with it.
        gone = {name: "" for name in _INFO_FIELDS if name not in document}
        if gone:
            update["$unset"] = gone
        query = self._live(record.key, utcnow())
        query["version"] = expected_version
        with self._translated_errors:
            # No upsert: a deleted or expired session must stay gone. One
            # command, as before 0.2: the per-user fields ride along.
            result = self.collection.update_one(query, update)
            if result.matched_count:
                return
            # Tell "gone" from "changed by someone else": one more read, only
            # on the unhappy path.
            current = self.collection.find_one(
                self._live(record.key, utcnow()), {"version": True}
            )
        if current is None:
            raise UpdateError("the session no longer exists")
        raise VersionConflict(
            f"expected version {expected_version}, found {current.get('version')!r}"
        )

    def touch(self, key: str, expires_at: datetime) -> None:
        check_key(key)
        now = utcnow()
        with self._translated_errors:
            # The index entry's deadline is the document's own expires_at:
            # moving it moves the entry, in the same write.
            self.collection.update_one(
                self._live(key, now),
                {
                    "$set": {
                        "expires_at": _to_bson_date(expires_at),
                        "last_active_at": _to_bson_date(now),
                    }
                },
            )

    def delete(self, key: str) -> None:
        check_key(key)
        with self._translated_errors:
            self.collection.delete_one({"_id": key})

    def delete_many(self, keys: t.Collection[str]) -> None:
        """Delete the documents of ``keys``: one ``delete_many``.

        .. versionadded:: 0.2
        """
        wanted = [check_key(key) for key in keys]
        if not wanted:
            return
        with self._translated_errors:
            self.collection.delete_many({"_id": {"$in": wanted}})

    # -- the per-user index ------------------------------------------------------

    @staticmethod
    def _of_user(user_id: str, now: datetime) -> dict[str, t.Any]:
        # Equality on user_id implies the partial index's {"$exists": true},
        # so the server uses the index: the cost follows the user's live
        # sessions, whatever the collection holds.
        return {"user_id": user_id, "expires_at": {"$gt": _to_bson_date(now)}}

    def _listed(self, document: t.Mapping[str, t.Any]) -> Record | None:
        key = document.get("_id")
        if not isinstance(key, str):
            return None
        record = self._record(key, {**document, "payload": b""})
        if record is None:
            return None
        fields = {}
        for name in _INFO_FIELDS:
            value = document.get(name)
            if name in _DATE_FIELDS and isinstance(value, datetime):
                value = _from_bson_date(value)
            fields[name] = value
        return checked_info(record, **fields)

    def sessions_of(self, user_id: str) -> list[Record]:
        """The live documents of ``user_id``, without their payload: one
        ``find`` on the per-user index.

        .. versionadded:: 0.2
        """
        check_user_id(user_id)
        with self._translated_errors:
            documents = list(
                self.collection.find(self._of_user(user_id, utcnow()), _LISTING)
            )
        return [r for r in map(self._listed, documents) if r is not None]

    def delete_sessions_of(
        self,
        user_id: str,
        keys: t.Collection[str] | None = None,
        *,
        keep: str | None = None,
    ) -> list[str]:
        """Delete the live documents of ``user_id`` (those of ``keys``
        only, if given) but ``keep``: two round trips however many there
        are, a ``find`` of their keys and one ``delete_many``.

        The delete repeats the user and the expiry: a document that changed
        hands meanwhile (a retired key) is left alone.

        .. versionadded:: 0.2
        """
        check_user_id(user_id)
        if keep is not None:
            check_key(keep)
        query = self._of_user(user_id, utcnow())
        ids: dict[str, t.Any] = {}
        if keys is not None:
            ids["$in"] = [check_key(key) for key in keys]
            if not ids["$in"]:
                return []
        if keep is not None:
            ids["$ne"] = keep
        if ids:
            query["_id"] = ids
        with self._translated_errors:
            found = [
                document["_id"]
                for document in self.collection.find(query, {"_id": True})
            ]
            if not found:
                return []
            self.collection.delete_many({**query, "_id": {"$in": found}})
        return found

    def trim_sessions_of(self, user_id: str, limit: int, *, keep: str) -> list[str]:
        """Delete the live documents of ``user_id`` but ``keep`` and the
        ``limit`` most recently active: a ``find`` of their keys and
        activity, then one ``delete_many``.

        "Atomic" here, without multi-document transactions (a standalone
        server and mongomock have none): the outcome is one a single step
        could have had. The trim deletes only documents that were outside
        the ``limit`` most recent (by ``(last_active_at, key)``, one total
        order) when it read them, and only if their ``last_active_at`` has
        not moved since: a session active meanwhile, or created meanwhile,
        is never deleted by it. Two trims racing therefore each delete
        only what both orders agree is beyond the limit, plus, where the
        limit leaves room for one of the two new sessions only, the older
        of them.

        .. versionadded:: 0.2
        """
        check_user_id(user_id)
        check_key(keep)
        if limit < 0:
            raise ValueError("limit must be 0 or more")
        query = self._of_user(user_id, utcnow())
        with self._translated_errors:
            documents = list(
                self.collection.find(query, {"_id": True, "last_active_at": True})
            )
            live = [
                (_recency(document.get("last_active_at"), document["_id"]), document)
                for document in documents
                if isinstance(document.get("_id"), str)
            ]
            live.sort(key=lambda pair: pair[0], reverse=True)
            ended = [document for _, document in live[limit:]]
            ended = [document for document in ended if document["_id"] != keep]
            if not ended:
                return []
            # Each as it was read: {"last_active_at": None} matches a
            # document without the field, as it was.
            self.collection.delete_many(
                {
                    "user_id": user_id,
                    "$or": [
                        {
                            "_id": document["_id"],
                            "last_active_at": document.get("last_active_at"),
                        }
                        for document in ended
                    ],
                }
            )
        return [document["_id"] for document in ended]

    def per_user_counts(self, top: int) -> list[tuple[str, int]]:
        """The ``top`` users with the most live documents: one aggregation
        over the per-user index.

        .. versionadded:: 0.2
        """
        if top < 1:
            return []
        pipeline: list[dict[str, t.Any]] = [
            {
                "$match": {
                    "user_id": {"$exists": True, "$type": "string"},
                    "expires_at": {"$gt": _to_bson_date(utcnow())},
                }
            },
            {"$group": {"_id": "$user_id", "count": {"$sum": 1}}},
            {"$sort": {"count": -1, "_id": 1}},
            {"$limit": int(top)},
        ]
        with self._translated_errors:
            rows = list(self.collection.aggregate(pipeline))
        return [
            (row["_id"], int(row["count"]))
            for row in rows
            if isinstance(row.get("_id"), str)
        ]

    # -- keys 0.1 stored unhashed --------------------------------------------------

    @staticmethod
    def _unhashed(now: datetime) -> dict[str, t.Any]:
        return {
            "_id": {"$type": "string", "$not": _HASHED_ID},
            "expires_at": {"$gt": _to_bson_date(now)},
        }

    def unhashed_keys(
        self, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """Live documents whose ``_id`` is not of
        :data:`~.base.HASHED_KEY_PATTERN`, in ``_id`` order from ``cursor``.

        .. versionadded:: 0.2
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        query = self._unhashed(utcnow())
        if cursor is not None:
            query["_id"]["$gt"] = cursor
        with self._translated_errors:
            ids = [
                document["_id"]
                for document in self.collection.find(query, {"_id": True})
                .sort("_id", 1)
                .limit(limit)
            ]
        # An _id no session key has (written by something else) is skipped,
        # not handed to a caller that would refuse it.
        keys = [key for key in ids if KEY_PATTERN.fullmatch(key)]
        return keys, (ids[-1] if len(ids) == limit else None)

    def count_unhashed(self) -> int:
        """.. versionadded:: 0.2"""
        with self._translated_errors:
            return self.collection.count_documents(self._unhashed(utcnow()))

    def exists(self, key: str) -> bool:
        check_key(key)
        with self._translated_errors:
            found = self.collection.find_one(self._live(key, utcnow()), {"_id": True})
        return found is not None

    def count_live(self) -> int:
        """How many documents have not expired (a count over the TTL
        index on ``expires_at``).

        .. versionadded:: 0.2
        """
        with self._translated_errors:
            return self.collection.count_documents(
                {"expires_at": {"$gt": _to_bson_date(utcnow())}}
            )

    def count_expired(self) -> int:
        """How many expired documents the TTL monitor has not deleted yet."""
        with self._translated_errors:
            return self.collection.count_documents(
                {"expires_at": {"$lte": _to_bson_date(utcnow())}}
            )

    def purge_expired(
        self, batch_size: int = 1000, *, on_batch: BatchCallback | None = None
    ) -> int:
        """Delete expired documents now, ``batch_size`` at a time.

        The TTL index does this by itself within about a minute; this is for
        a collection without the index, or to free space at once. Each batch
        is one ``find`` of ``_id`` values and one ``delete_many``, so a large
        backlog never becomes one long-running delete. Two purges running at
        once only split the work.
        """
        if batch_size < 1:
            # MongoDB reads limit(0) as "no limit".
            raise ValueError("batch_size must be at least 1")
        total = 0
        while True:
            expired = {"expires_at": {"$lte": _to_bson_date(utcnow())}}
            with self._translated_errors:
                keys = [
                    document["_id"]
                    for document in self.collection.find(expired, {"_id": True}).limit(
                        batch_size
                    )
                ]
                if not keys:
                    return total
                # Repeat the expiry condition: a key re-created since the
                # find (a replaced expired document) must survive.
                deleted = self.collection.delete_many(
                    {"_id": {"$in": keys}, **expired}
                ).deleted_count
            total += deleted
            if on_batch is not None and deleted:
                on_batch(deleted)

    def _plan(self) -> list[tuple[str, t.Callable[[], object]]]:
        """What :meth:`migrate` has to do, from ``index_information()``: a
        line and an action each."""
        where = f"MongoDB collection {self._where}"
        steps: list[tuple[str, t.Callable[[], object]]] = []
        ttl_ok = user_ok = False
        for name, spec in self.collection.index_information().items():
            # Directions may come back as 1 or 1.0, or a string such as
            # "hashed"; only ascending indexes on exactly these keys count.
            key = [tuple(part) for part in spec["key"]]
            if key == [("expires_at", 1)]:
                ttl = spec.get("expireAfterSeconds")
                if ttl is not None and int(ttl) == 0:
                    ttl_ok = True
                    continue
                # MongoDB refuses two indexes on one key: replace it.
                steps.append(
                    (
                        f"{where}: dropped index {name!r} on expires_at"
                        f" (expireAfterSeconds={ttl}) to replace it",
                        functools.partial(self._drop_index, name),
                    )
                )
            elif key == _USER_INDEX_KEY:
                if spec.get("partialFilterExpression") == _USER_INDEX_FILTER:
                    user_ok = True
                    continue
                steps.append(
                    (
                        f"{where}: dropped index {name!r} on (user_id,"
                        " expires_at) (not partial on user_id) to replace it",
                        functools.partial(self._drop_index, name),
                    )
                )
        if ttl_ok:
            steps = [step for step in steps if "on expires_at" not in step[0]]
        else:
            steps.append(
                (
                    f"{where}: created TTL index {TTL_INDEX_NAME!r} on"
                    " expires_at (expireAfterSeconds=0)",
                    functools.partial(
                        self.collection.create_index,
                        [("expires_at", 1)],
                        name=TTL_INDEX_NAME,
                        expireAfterSeconds=0,
                    ),
                )
            )
        if user_ok:
            steps = [step for step in steps if "(user_id," not in step[0]]
        else:
            steps.append(
                (
                    f"{where}: created per-user index {USER_INDEX_NAME!r} on"
                    " (user_id, expires_at), partial on documents with a user_id",
                    functools.partial(
                        self.collection.create_index,
                        _USER_INDEX_KEY,
                        name=USER_INDEX_NAME,
                        partialFilterExpression=_USER_INDEX_FILTER,
                    ),
                )
            )
        return steps

    def migrate(self) -> list[str]:
        """Create the TTL index on ``expires_at`` (``expireAfterSeconds=0``)
        and the per-user index on ``(user_id, expires_at)``, partial on
        documents that have a ``user_id`` (:data:`USER_INDEX_NAME`).

        Idempotent. An index on ``expires_at`` alone with other options (no
        TTL, or another ``expireAfterSeconds``), or on ``(user_id,
        expires_at)`` not partial on ``user_id``, is dropped and created
        again, since MongoDB refuses two indexes on one key. A collection
        0.1 created (the TTL index alone) gains the per-user index; its
        documents need no rewrite (those without a ``user_id`` are
        anonymous to the index until the session layer saves them again).

        .. versionchanged:: 0.2
            The per-user index.
        """
        with self._translated_errors:
            steps = self._plan()
            for _, action in steps:
                action()
        if not steps:
            return [
                f"MongoDB collection {self._where}: TTL index {TTL_INDEX_NAME!r}"
                f" and per-user index {USER_INDEX_NAME!r} already exist;"
                " nothing to do"
            ]
        return [line for line, _ in steps]

    def pending_migrations(self) -> list[str]:
        """What :meth:`migrate` would do, from ``index_information()``;
        empty when both indexes exist.

        .. versionadded:: 0.2
        """
        with self._translated_errors:
            steps = self._plan()
        return [
            line.replace(": created ", ": create ").replace(": dropped ", ": drop ")
            for line, _ in steps
        ]

    def _drop_index(self, name: str) -> None:
        errors = _driver_errors()
        try:
            self.collection.drop_index(name)
        except errors.base as exc:
            # Another host running migrate at the same time dropped it first
            # (IndexNotFound); anything else is a real error.
            if getattr(exc, "code", None) != 27:
                raise

    def close(self) -> None:
        if self._owns_client:
            self.collection.database.client.close()

    def describe(self) -> str:
        return f"MongoDBStore({self._where})"


def _recency(last_active_at: object, key: str) -> tuple[datetime, str]:
    """The order of :meth:`MongoDBStore.trim_sessions_of`, as
    :class:`~.memory.MemoryStore` has it: a document without a readable
    ``last_active_at`` is the least recent."""
    if isinstance(last_active_at, datetime):
        return _from_bson_date(last_active_at), key
    return NEVER_ACTIVE, key


#: Server error codes of settings MongoDB refused: the credentials
#: (AuthenticationFailed, UserNotFound), and the user's roles (Unauthorized).
_AUTHENTICATION_CODES = frozenset({18, 11})
_UNAUTHORIZED = 13


def _misconfiguration(exc: Exception, errors: _DriverErrors) -> str | None:
    """What is wrong with the store's settings, if ``exc`` says the server
    or pymongo refused them; ``None`` for any other error."""
    code = getattr(exc, "code", None)
    if code in _AUTHENTICATION_CODES:
        return (
            "MongoDB refused the credentials; fix the user name, the password"
            " or authSource in the URL"
        )
    if code == _UNAUTHORIZED:
        return (
            "the MongoDB user may not use the session collection; grant it the"
            " readWrite role on the database (and createIndex for migrate)"
        )
    if isinstance(exc, errors.configuration):
        return f"pymongo cannot use it: {' '.join(str(exc).split())[:300]}"
    return None
