"""ShelfStore: a complete session store on the standard library's sqlite3.

The example of docs/extending.rst. It uses only the public store API of
flask-towersess and passes its contract suite (tests/test_extending.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from urllib.parse import urlsplit

from flask_towersess.errors import ConfigurationError
from flask_towersess.errors import CreateError
from flask_towersess.errors import StoreUnavailable
from flask_towersess.errors import UpdateError
from flask_towersess.errors import VersionConflict
from flask_towersess.stores import Migrating
from flask_towersess.stores import Purging
from flask_towersess.stores import Record
from flask_towersess.stores import SessionStore
from flask_towersess.stores.base import BatchCallback
from flask_towersess.stores.base import check_key
from flask_towersess.stores.base import checked_record
from flask_towersess.stores.base import utcnow

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def _micros(moment: datetime) -> int:
    # Whole microseconds since the epoch: exact, and ordered like the moments.
    return (moment - _EPOCH) // _MICROSECOND


class ShelfStore(SessionStore, Purging, Migrating):
    """Sessions in an SQLite file, through the standard library's sqlite3.

    :param path: the database file.
    :param table: the table name.
    """

    # The schemes this class is registered under (in the package's entry
    # points); store_from_url() hands such URLs to from_url().
    url_schemes = ("shelf",)

    def __init__(self, path: str, *, table: str = "sessions") -> None:
        if not table.isidentifier():
            raise ConfigurationError(f"ShelfStore table {table!r} is not a name")
        self.path = path
        self.table = table

    @classmethod
    def from_url(cls, url: str, **options: t.Any) -> ShelfStore:
        # shelf:///relative.db or shelf:////absolute/path.db, like sqlite://
        path = urlsplit(url).path[1:]
        if not path:
            raise ConfigurationError(f"{url!r} names no file: shelf:///path.db")
        return cls(path, **options)

    @contextlib.contextmanager
    def _connect(self) -> t.Iterator[sqlite3.Connection]:
        # A connection per call: a sqlite3 connection belongs to one thread,
        # and the store is shared by all the threads of a worker.
        try:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        try:
            yield connection
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise ConfigurationError(
                    f"ShelfStore table {self.table!r} is missing: run"
                    " `flask sessions migrate`"
                ) from exc
            raise StoreUnavailable(f"{self.path}: {exc}") from exc
        finally:
            connection.close()

    # -- the five methods every store implements -------------------------------

    def load(self, key: str) -> Record | None:
        check_key(key)
        with self._connect() as db:
            row = db.execute(
                f"SELECT payload, expires_at, version FROM {self.table}"
                " WHERE session_key = ? AND expires_at > ?",
                (key, _micros(utcnow())),
            ).fetchone()
        if row is None:
            return None
        payload, expires_at, version = row
        if not isinstance(expires_at, int):
            expires_at = None  # checked_record() refuses it
        else:
            expires_at = _EPOCH + expires_at * _MICROSECOND
        # Never trust what comes back: a wrong type is refused and logged.
        return checked_record("ShelfStore", key, payload, expires_at, version)

    def create(self, record: Record) -> None:
        check_key(record.key)
        with self._connect() as db:
            # One statement: the insert, or the replacement of an expired
            # record under the same key; a live one is left alone.
            cursor = db.execute(
                f"INSERT INTO {self.table} VALUES (?, ?, ?, ?)"
                " ON CONFLICT (session_key) DO UPDATE SET payload = excluded.payload,"
                " expires_at = excluded.expires_at, version = excluded.version"
                f" WHERE {self.table}.expires_at <= ?",
                (
                    record.key,
                    record.payload,
                    _micros(record.expires_at),
                    record.version,
                    _micros(utcnow()),
                ),
            )
            if cursor.rowcount == 0:
                raise CreateError("a live session with this key exists")

    def save(self, record: Record, expected_version: int) -> None:
        check_key(record.key)
        now = _micros(utcnow())
        with self._connect() as db:
            # The compare-and-set: only a live record at the expected version.
            cursor = db.execute(
                f"UPDATE {self.table} SET payload = ?, expires_at = ?, version = ?"
                " WHERE session_key = ? AND version = ? AND expires_at > ?",
                (
                    record.payload,
                    _micros(record.expires_at),
                    record.version,
                    record.key,
                    expected_version,
                    now,
                ),
            )
            if cursor.rowcount == 1:
                return
            # Nothing updated: say why, without ever writing the record back.
            row = db.execute(
                f"SELECT version FROM {self.table}"
                " WHERE session_key = ? AND expires_at > ?",
                (record.key, now),
            ).fetchone()
        if row is None:
            raise UpdateError("the session no longer exists")
        raise VersionConflict(f"expected version {expected_version}, found {row[0]}")

    def touch(self, key: str, expires_at: datetime) -> None:
        check_key(key)
        with self._connect() as db:
            db.execute(
                f"UPDATE {self.table} SET expires_at = ?"
                " WHERE session_key = ? AND expires_at > ?",
                (_micros(expires_at), key, _micros(utcnow())),
            )

    def delete(self, key: str) -> None:
        check_key(key)
        with self._connect() as db:
            db.execute(f"DELETE FROM {self.table} WHERE session_key = ?", (key,))

    # -- optional: SQLite does not expire rows, so purge them ------------------

    def count_expired(self) -> int:
        with self._connect() as db:
            row = db.execute(
                f"SELECT count(*) FROM {self.table} WHERE expires_at <= ?",
                (_micros(utcnow()),),
            ).fetchone()
        return int(row[0])

    def purge_expired(
        self, batch_size: int = 1000, *, on_batch: BatchCallback | None = None
    ) -> int:
        total = 0
        while True:
            with self._connect() as db:
                deleted = db.execute(
                    f"DELETE FROM {self.table} WHERE rowid IN (SELECT rowid FROM"
                    f" {self.table} WHERE expires_at <= ? LIMIT ?)",
                    (_micros(utcnow()), batch_size),
                ).rowcount
            if not deleted:
                return total
            total += deleted
            if on_batch is not None:
                on_batch(deleted)

    # -- optional: the table, made by `flask sessions migrate` -----------------

    def migrate(self) -> list[str]:
        with self._connect() as db:
            exists = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                (self.table,),
            ).fetchone()
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} (session_key TEXT PRIMARY"
                " KEY, payload BLOB NOT NULL, expires_at INTEGER NOT NULL,"
                " version INTEGER NOT NULL)"
            )
            db.execute(
                f"CREATE INDEX IF NOT EXISTS ix_{self.table}_expires_at"
                f" ON {self.table} (expires_at)"
            )
        if exists:
            return [f"table {self.table} is up to date; nothing to do"]
        return [f"created table {self.table} in {self.path}"]

    def describe(self) -> str:
        return f"ShelfStore {self.path} table {self.table}"
