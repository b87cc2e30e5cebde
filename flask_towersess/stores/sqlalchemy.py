"""Sessions in an SQL table, through SQLAlchemy Core.

SQLite, PostgreSQL and MySQL/MariaDB. One statement per read and per write,
compiled once; an index on the expiry column for the purge. Never the ORM,
never the app's ``db.session``: a session save must not commit, or be rolled
back with, the app's own unit of work.

.. versionadded:: 0.1
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import logging
import os
import random
import re
import signal
import socket
import threading
import time
import typing as t
from datetime import datetime
from datetime import timezone

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateColumn
from sqlalchemy.schema import CreateIndex
from sqlalchemy.schema import CreateTable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from ..errors import ConfigurationError
from ..errors import CreateError
from ..errors import TowerSessError
from ..errors import UpdateError
from ..errors import VersionConflict
from ._errors import raise_translated
from ._errors import store_unavailable
from ._fork import ProcessGuard
from ._statements import CoreExecutor
from ._statements import DBAPIExecutor
from ._statements import Executor
from ._statements import Row
from ._statements import Statement
from ._statements import can_run_directly
from ._statements import connect_error
from ._statements import has_statement_observers
from ._statements import in_autocommit
from ._urls import redact_message
from ._urls import redact_url
from .base import IP_LENGTH
from .base import NEVER_ACTIVE
from .base import USER_AGENT_LENGTH
from .base import USER_ID_LENGTH
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

logger = logging.getLogger(__name__)

_T = t.TypeVar("_T")


def _connect(engine: sa.engine.Engine) -> sa.Connection:
    """A connection from ``engine``; a failure to get one is _NotConnected
    (not retried: the server is not there)."""
    try:
        return engine.connect()
    except sa_exc.DBAPIError as exc:
        raise _NotConnected(exc) from exc


class _NotUpgraded(ConfigurationError):
    """The table lacks the per-user columns: 0.1 made it, and ``flask
    sessions migrate`` has not run since."""


#: Seconds a store whose table lacked the per-user columns writes without
#: them before it tries them again (once ``flask sessions migrate`` has run
#: elsewhere, this is how long the app takes to notice).
RECHECK_SECONDS = 60


class _NotConnected(Exception):
    """No connection could be opened; ``error`` says why (never retried)."""

    def __init__(self, error: sa_exc.DBAPIError) -> None:
        super().__init__(error)
        self.error = error


class _Retry:
    """When a statement that lost a race for a lock runs again.

    :param attempts: runs in all, the first one included.
    :param within: seconds after the first run past which no retry starts,
        or ``None``: an error that came only after a long wait (a lock wait
        timeout, SQLite's busy timeout) is then reported at once, not waited
        for a second time.
    """

    def __init__(self, attempts: int, within: float | None) -> None:
        self.attempts = attempts
        self.within = within

    def pause(self, failures: int, elapsed: float) -> float | None:
        """Seconds to wait before the next run, or ``None``: no next run."""
        if failures >= self.attempts:
            return None
        if self.within is not None and elapsed >= self.within:
            return None
        # Growing and jittered, so that the two sides of a deadlock do not
        # meet again at once.
        return random.uniform(0.5, 1.5) * _RETRY_PAUSE * 2.0 ** (failures - 1)


#: Seconds before the first retry; each next one waits twice as long.
_RETRY_PAUSE = 0.02

#: How a session operation retries a statement that lost a race for a lock
#: (:func:`_lost_lock_race`): 3 runs at most, none started more than 2 s
#: after the first. A deadlock, reported as soon as it forms, is retried; so
#: is a lock wait that timed out after a second (a MySQL server set to fail
#: fast); a longer wait (MySQL's default 50 s, SQLite's busy timeout) is not
#: waited out a second time. The pauses add well under 0.1 s.
#:
#: Every operation is safe to run again after such an error. Its statements
#: run in autocommit, so the one that failed was a transaction of its own,
#: rolled back whole by the database, and what ran before it has the same
#: effect when run twice:
#:
#: - ``load``, ``exists``, ``count_expired``: one read;
#: - ``create``: one insert; replacing an expired record, a delete of the
#:   key if it is expired, then the insert: a second run deletes nothing
#:   more, and the insert fails if the key is taken either way;
#: - ``save``: one compare-and-set update, then, only if it matched nothing,
#:   a read of the version: the update matches nothing again the second
#:   time (versions only grow, expiries only pass);
#: - ``touch`` and ``delete``: one update, one delete, of one key;
#: - a purge batch (with :data:`_PURGE_RETRY`): one delete, or on MySQL one
#:   transaction of a read and a delete, rolled back whole on any error; the
#:   delete takes only rows still expired.
_REQUEST_RETRY = _Retry(attempts=3, within=2.0)

#: How a purge retries a batch that lost a race for a lock. More patient
#: than a request: a purge runs from cron, and a batch that stops it
#: leaves expired rows for the next run; each run is still bounded by the
#: statement timeouts.
_PURGE_RETRY = _Retry(attempts=5, within=None)


def _naive_utc(moment: datetime) -> datetime:
    # The column is a timezone-less DATETIME/TIMESTAMP holding UTC on every
    # dialect, so all three compare and index it the same way.
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


#: A key no record has (keys are at least 8 characters): ``keep`` when
#: there is nothing to keep, so that one statement serves both cases.
_NO_KEY = ""

#: The most keys one ``IN (...)`` carries: far below every driver's limit
#: on parameters (SQLite's is 32766), far above a user's sessions.
KEYS_PER_STATEMENT = 5000


def _chunks(keys: list[str]) -> t.Iterator[list[str]]:
    for start in range(0, len(keys), KEYS_PER_STATEMENT):
        yield keys[start : start + KEYS_PER_STATEMENT]


def _delete_rows(statement: Statement, values: dict[str, t.Any], run: Executor) -> int:
    return run.rowcount(statement, values)


def _all_keys(rows: t.Sequence[Row]) -> list[str]:
    return [row[0] for row in rows]


def _page_values(cursor: str | None, limit: int) -> dict[str, t.Any]:
    """The parameters of a key-page statement: live keys after ``cursor``
    (``None``: from the first), ``limit`` of them."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return {
        "after": "" if cursor is None else cursor,
        "now": _naive_utc(utcnow()),
        "limit": limit,
    }


def _recency(row: Row) -> tuple[datetime, str]:
    """The order of :meth:`SQLAlchemyStore.trim_sessions_of` on a row of
    ``(key, last_active_at as text)``: a row without (or with an
    unreadable) ``last_active_at`` is the least recent."""
    key, last_active_at = row
    return (_listed_time(last_active_at) or NEVER_ACTIVE, key)


def _aware_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc)


def _naive_utc_or_none(moment: object) -> datetime | None:
    """A per-user time for its column; ``None`` for anything but an aware
    datetime (the field is shown, never trusted)."""
    if isinstance(moment, datetime) and moment.tzinfo is not None:
        return _naive_utc(moment)
    return None


def _fitting_text(value: object, length: int, *, cut: bool = True) -> str | None:
    """``value`` as its column takes it: at most ``length`` printable
    characters (cut to that, or, with ``cut=False``, ``None`` when longer),
    or ``None`` if it is not text."""
    if type(value) is not str:
        return None
    if len(value) > length:
        if not cut:
            return None
        value = value[:length]
    if not value.isprintable():
        # NUL (refused by PostgreSQL), lone surrogates (by every driver's
        # UTF-8 encoder), line breaks (forged log lines in a device list).
        value = "".join(char for char in value if char.isprintable())
    return value


#: A time as the databases write it in text: SQLite's DATETIME, PostgreSQL's
#: timestamp cast to text, a MySQL date its driver could not convert.
_TIME_TEXT = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?"
)


def _listed_time(value: object) -> datetime | None:
    """A time read by :class:`_as_text`, as an aware datetime; ``None`` if
    it is not one (text, a number, a year past 9999, infinity)."""
    if isinstance(value, datetime):
        return _aware_utc(value) if value.tzinfo is None else value
    if not isinstance(value, str):
        return None
    found = _TIME_TEXT.fullmatch(value)
    if found is None:
        return None
    year, month, day, hour, minute, second, fraction = found.groups()
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((fraction or "0").ljust(6, "0")),
            tzinfo=timezone.utc,
        )
    except ValueError:  # February 30th, month 13
        return None


#: The columns 0.1 made: a table without one of them is not a session table.
CORE_COLUMNS = ("session_key", "payload", "expires_at", "version")

#: The columns 0.2 added for the per-user index. All nullable, with no
#: default: ``migrate()`` adds them to a 0.1 table without rewriting it, and
#: the rows 0.1 wrote (or a 0.1 process still writes) hold NULL in them.
PER_USER_COLUMNS = ("user_id", "created_at", "last_active_at", "user_agent", "ip")


def build_table(metadata: sa.MetaData, name: str) -> sa.Table:
    """The session table, with the column types each dialect needs.

    .. versionchanged:: 0.2
        The per-user columns (:data:`PER_USER_COLUMNS`) and an index on
        ``(user_id, expires_at)``: a user's live sessions are one index
        range, however many sessions other users, or that user's expired
        ones, hold.
    """
    key_type = sa.String(64).with_variant(
        # Session keys are case-sensitive; MySQL's default collations are not.
        mysql.VARCHAR(64, charset="ascii", collation="ascii_bin"),
        "mysql",
        "mariadb",
    )
    payload_type = sa.LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")
    # DATETIME(6): MySQL drops fractions of a second otherwise.
    time_type = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    # User ids are compared exactly ("Alice" is not "alice"), and may be
    # any printable text (an e-mail address): MySQL's default collations
    # fold case, and a database's default charset may be latin1.
    user_id_type = sa.String(USER_ID_LENGTH).with_variant(
        mysql.VARCHAR(USER_ID_LENGTH, charset="utf8mb4", collation="utf8mb4_bin"),
        "mysql",
        "mariadb",
    )
    table = sa.Table(
        name,
        metadata,
        sa.Column("session_key", key_type, primary_key=True),
        sa.Column("payload", payload_type, nullable=False),
        sa.Column("expires_at", time_type, nullable=False, index=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("user_id", user_id_type),
        sa.Column("created_at", time_type),
        sa.Column("last_active_at", time_type),
        sa.Column("user_agent", _text_type(USER_AGENT_LENGTH)),
        sa.Column("ip", _text_type(IP_LENGTH)),
    )
    sa.Index(
        _index_name(name, "user_id_expires_at"), table.c.user_id, table.c.expires_at
    )
    return table


def _text_type(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4"), "mysql", "mariadb"
    )


def _index_name(table: str, columns: str) -> str:
    """``ix_<table>_<columns>``, shortened with a digest to fit the 63
    characters PostgreSQL keeps (MySQL: 64)."""
    name = f"ix_{table}_{columns}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:54]}_{digest}"


class _Writes:
    """The statements a request writes a record with.

    Two sets per store: with the per-user columns, and without them for a
    table ``migrate()`` has not upgraded yet (a 0.2 app deployed before
    ``flask sessions migrate`` ran; see
    :meth:`SQLAlchemyStore._without_per_user_columns`). Both take the same
    values (:meth:`SQLAlchemyStore._write_values`): the bound names are not
    the column names, so a value a statement does not use is ignored.
    """

    __slots__ = ("per_user", "insert", "update", "touch")

    def __init__(self, table: sa.Table, per_user: bool) -> None:
        self.per_user = per_user
        c = table.c
        key: sa.BindParameter[str] = sa.bindparam("key")
        now: sa.BindParameter[datetime] = sa.bindparam("now")
        values: dict[str, t.Any] = {
            "payload": sa.bindparam("new_payload"),
            "expires_at": sa.bindparam("new_expires_at"),
            "version": sa.bindparam("new_version"),
        }
        touched: dict[str, t.Any] = {"expires_at": sa.bindparam("new_expires_at")}
        if per_user:
            values.update(
                (name, sa.bindparam(f"new_{name}")) for name in PER_USER_COLUMNS
            )
            # A touch is activity: the device list shows it.
            touched["last_active_at"] = now
        self.insert = Statement(table.insert().values(session_key=key, **values))
        self.update = Statement(
            table.update()
            .where(
                c.session_key == key,
                c.version == sa.bindparam("expected_version"),
                c.expires_at > now,
            )
            .values(**values)
        )
        self.touch = Statement(
            table.update()
            .where(c.session_key == key, c.expires_at > now)
            .values(**touched)
        )


class _as_text(FunctionElement[str]):
    """A column's value as the driver hands it over, unconverted, for
    values read to be shown (a device list), never trusted: a value no
    datetime can hold (``10000-01-01`` in PostgreSQL, text in SQLite's
    ``DATETIME``) must become ``None`` in one row, not fail the query.

    PostgreSQL: cast to text (psycopg2 fails on a timestamp past year
    9999 before any code of ours sees it). Elsewhere: the column as it is,
    without SQLAlchemy's conversion (SQLite gives its text, MySQL's drivers
    a ``datetime``, or a ``str`` for a date they cannot convert).
    """

    type = sa.String()
    inherit_cache = True
    name = "towersess_as_text"


@compiles(_as_text)
def _as_text_default(element: _as_text, compiler: SQLCompiler, **kw: t.Any) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(_as_text, "postgresql")
def _as_text_postgresql(element: _as_text, compiler: SQLCompiler, **kw: t.Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS TEXT)"


class _unhashed(FunctionElement[bool]):
    """True for a key not of :data:`~.base.HASHED_KEY_PATTERN` (64 lowercase
    hex characters): one 0.1 wrote under the cookie's own key."""

    type = sa.Boolean()
    inherit_cache = True
    name = "towersess_unhashed"


@compiles(_unhashed)
def _unhashed_default(element: _unhashed, compiler: SQLCompiler, **kw: t.Any) -> str:
    # 0.1's keys are 43 characters long.
    return f"(length({compiler.process(element.clauses, **kw)}) <> 64)"


@compiles(_unhashed, "sqlite")
def _unhashed_sqlite(element: _unhashed, compiler: SQLCompiler, **kw: t.Any) -> str:
    key = compiler.process(element.clauses, **kw)
    # GLOB is case-sensitive.
    return f"(length({key}) <> 64 OR {key} GLOB '*[^0-9a-f]*')"


@compiles(_unhashed, "postgresql")
def _unhashed_postgresql(element: _unhashed, compiler: SQLCompiler, **kw: t.Any) -> str:
    return f"({compiler.process(element.clauses, **kw)} !~ '^[0-9a-f]{{64}}$')"


@compiles(_unhashed, "mysql", "mariadb")
def _unhashed_mysql(element: _unhashed, compiler: SQLCompiler, **kw: t.Any) -> str:
    # The key column's ascii_bin collation makes REGEXP case-sensitive.
    return f"({compiler.process(element.clauses, **kw)} NOT REGEXP '^[0-9a-f]{{64}}$')"


class SQLAlchemyStore(
    SessionStore,
    Purging,
    Migrating,
    Counting,
    PerUserIndex,
    CountingPerUser,
    LegacyKeys,
):
    """Keep sessions in an SQL table.

    :param engine: an SQLAlchemy :class:`~sqlalchemy.engine.Engine`, or a
        Flask-SQLAlchemy ``db`` (its ``db.engine`` is used, in the app context).
    :param table: the table name.
    :param schema: the schema (PostgreSQL) or database (MySQL) holding it.
    :param auto_migrate: create the table on first use. Only the zero-config
        SQLite default does this; everywhere else run ``flask sessions
        migrate`` (or :meth:`migrate`) as a deploy step.
    :param read_timeout: seconds a statement may wait for the server before
        its connection is cut and the call fails with
        :class:`~flask_towersess.errors.StoreUnavailable`; ``None`` for no
        limit. For drivers without a read timeout of their own (psycopg2), so
        that a frozen server cannot hold a worker; MySQL drivers get theirs
        from ``create_engine``.

    The per-user index is the table itself: its ``user_id`` column and an
    index on ``(user_id, expires_at)``, written by the same statement as the
    record, so it is exact without help and costs no extra round trip.

    A table made by 0.1 lacks the per-user columns until ``flask sessions
    migrate`` adds them. Until then the store keeps serving requests: the
    first write that fails for want of them switches the store to the 0.1
    statements (with a warning to run the migration), and it tries the
    columns again a minute later (:data:`RECHECK_SECONDS`). Sessions written
    meanwhile carry no user until ``flask sessions migrate`` fills it in
    (:meth:`unindexed_keys`), or their next save after the migration does.

    .. versionadded:: 0.1

    .. versionchanged:: 0.2
        The per-user index (:class:`~.base.PerUserIndex`), its columns, and
        their migration.
    """

    url_schemes = ("sqlite", "postgresql", "postgres", "mysql", "mariadb")

    def __init__(
        self,
        engine: sa.engine.Engine | t.Any,
        *,
        table: str = "sessions",
        schema: str | None = None,
        auto_migrate: bool = False,
        read_timeout: float | None = 30.0,
    ) -> None:
        if isinstance(engine, sa.engine.Engine):
            self._engine: sa.engine.Engine | None = engine
            self._db = None
        elif _is_flask_sqlalchemy(engine):
            # Flask-SQLAlchemy: its engine exists per app, so resolve it in the
            # app context of each call.
            self._engine = None
            self._db = engine
        else:
            raise ConfigurationError(
                "SQLAlchemyStore takes an SQLAlchemy Engine or a Flask-SQLAlchemy"
                f" db, not {type(engine).__qualname__}"
            )
        self._owns_engine = False
        self.table = build_table(sa.MetaData(schema=schema), table)
        self._auto_migrate = auto_migrate
        self.read_timeout = read_timeout
        # True once nothing is left to do before the first statement: at once
        # unless the store migrates itself on first use.
        self._migrated = not auto_migrate
        self._migrate_lock = threading.Lock()
        # Per engine (Flask-SQLAlchemy has one per app): may the statements
        # skip Connection.execute()? Listeners and logging are checked per
        # call, autocommit per connection; see _statements.runs_directly.
        self._can_run_directly: dict[sa.engine.Engine, bool] = {}
        # Every engine this store has connected through (one, or one per app
        # with Flask-SQLAlchemy): what a forked child must start afresh.
        self._engines_used: set[sa.engine.Engine] = set()
        self._process = ProcessGuard(self._reset_after_fork, "SQLAlchemyStore")
        # Per engine whose table lacks the per-user columns: when a write
        # found that out (time.monotonic()). Empty, as it should be, once
        # the table is migrated: then a write costs one falsy check.
        self._not_upgraded_since: dict[sa.engine.Engine, float] = {}
        self._build_statements()

    @classmethod
    def from_url(cls, url: str, **options: t.Any) -> SQLAlchemyStore:
        """Build the store with its own engine.

        ``table``, ``schema`` and ``auto_migrate`` go to the store, every other
        option to :func:`sqlalchemy.create_engine`. SQLite gets WAL mode and a
        busy timeout, so several worker processes can share the file.
        """
        store_options = {
            name: options.pop(name)
            for name in ("table", "schema", "auto_migrate", "read_timeout")
            if name in options
        }
        engine = create_engine(url, **options)
        store = cls(engine, **store_options)
        store._owns_engine = True
        return store

    @classmethod
    def accepts(cls, obj: object) -> bool:
        return isinstance(obj, sa.engine.Engine) or _is_flask_sqlalchemy(obj)

    def _reset_after_fork(self) -> None:
        # dispose(close=False): the child gets an empty pool of its own and
        # never closes (or uses) a socket the parent still has. Done for an
        # engine the app passed in as well: SQLAlchemy asks the same for any
        # engine that crosses a fork, and the store shares its pool.
        engines = set(self._engines_used)
        if self._engine is not None:
            engines.add(self._engine)
        for engine in engines:
            engine.dispose(close=False)
        # A lock another thread held at the fork stays held in the child.
        self._migrate_lock = threading.Lock()

    def _use_engine(self) -> sa.engine.Engine:
        """The engine for the next statements, in this process."""
        self._process.check()
        engine = self.engine
        if engine not in self._engines_used:
            self._engines_used.add(engine)
        return engine

    @property
    def engine(self) -> sa.engine.Engine:
        if self._engine is not None:
            return self._engine
        return self._db.engine  # type: ignore[union-attr,no-any-return]

    def _url_text(self) -> str:
        """The engine's URL, fit for messages: no password anywhere in it."""
        return redact_url(self.engine.url.render_as_string(hide_password=True))

    def describe(self) -> str:
        return f"SQLAlchemyStore {self._url_text()} table {self.table.fullname}"

    def _key_pages(self, conditions: tuple[t.Any, ...]) -> tuple[Statement, Statement]:
        """A page of the keys of the rows matching ``conditions``, in key
        order after ``:after`` (the primary key's order, which ``:limit``
        stops early), and the count of all of them: what the upgrade's
        batches walk, and what ``migrate --check`` reports."""
        c = self.table.c
        page = Statement(
            sa.select(c.session_key)
            .where(*conditions, c.session_key > sa.bindparam("after"))
            .order_by(c.session_key)
            .limit(sa.bindparam("limit"))
        )
        count = Statement(
            sa.select(sa.func.count()).select_from(self.table).where(*conditions)
        )
        return page, count

    def _build_statements(self) -> None:
        # Built once with bound parameters: compiled once per dialect for
        # the direct path, and served from SQLAlchemy's compiled cache on the
        # Connection path, so no request pays for statement construction.
        c = self.table.c
        key: sa.BindParameter[str] = sa.bindparam("key")
        now: sa.BindParameter[datetime] = sa.bindparam("now")
        # Reads look the key up alone and check the expiry in Python: an
        # expiry bound costs PostgreSQL a timestamp parameter and more
        # planning on every read, for a row the primary key finds anyway.
        self._select = Statement(
            sa.select(c.payload, c.expires_at, c.version).where(c.session_key == key)
        )
        self._select_version = Statement(
            sa.select(c.version).where(c.session_key == key, c.expires_at > now)
        )
        self._writes = _Writes(self.table, per_user=True)
        self._writes_0_1 = _Writes(self.table, per_user=False)
        self._delete_expired_key = Statement(
            self.table.delete().where(c.session_key == key, c.expires_at <= now)
        )
        self._delete = Statement(self.table.delete().where(c.session_key == key))
        keys: sa.BindParameter[list[str]] = sa.bindparam("keys", expanding=True)
        self._delete_keys = Statement(
            self.table.delete().where(c.session_key.in_(keys))
        )
        # -- the per-user index: one range of the (user_id, expires_at) index.
        user_id: sa.BindParameter[str] = sa.bindparam("user_id")
        of_user = (c.user_id == user_id, c.expires_at > now)
        self._sessions_of = Statement(
            sa.select(
                c.session_key,
                _as_text(c.expires_at),
                c.version,
                _as_text(c.created_at),
                _as_text(c.last_active_at),
                c.user_agent,
                c.ip,
            ).where(*of_user)
        )
        # Which of a user's records to end: all but ``keep`` (a key no
        # record has when there is none), or only those of ``keys``.
        ending = (*of_user, c.session_key != sa.bindparam("keep"))
        # What the transaction of a dialect without DELETE ... RETURNING
        # locks: (key, last_active_at) rows.
        self._select_of_user = sa.select(
            c.session_key, _as_text(c.last_active_at)
        ).where(*of_user)
        self._select_ending = self._select_of_user.where(
            c.session_key != sa.bindparam("keep")
        )
        self._select_ending_of_keys = self._select_ending.where(c.session_key.in_(keys))
        self._delete_ending = Statement(
            self.table.delete().where(*ending).returning(c.session_key)
        )
        self._delete_ending_of_keys = Statement(
            self.table.delete()
            .where(*ending, c.session_key.in_(keys))
            .returning(c.session_key)
        )
        # The records trim_sessions_of keeps besides ``keep``: the ``limit``
        # most recently active, by one total order (a record without
        # last_active_at is the least recent: IS NULL sorts false first on
        # every dialect, where NULLS LAST is not portable).
        recent = (
            sa.select(c.session_key)
            .where(*of_user)
            .order_by(
                c.last_active_at.is_(None),
                c.last_active_at.desc(),
                c.session_key.desc(),
            )
            .limit(sa.bindparam("limit"))
        )
        self._delete_trimmed = Statement(
            self.table.delete()
            .where(*ending, c.session_key.not_in(recent.scalar_subquery()))
            .returning(c.session_key)
        )
        self._per_user_counts = Statement(
            sa.select(c.user_id, sa.func.count())
            .where(c.user_id.is_not(None), c.expires_at > now)
            .group_by(c.user_id)
            .order_by(sa.func.count().desc(), c.user_id)
            .limit(sa.bindparam("top"))
        )
        # -- keys 0.1 stored unhashed, for the key-hashing migration.
        unhashed = (_unhashed(c.session_key), c.expires_at > now)
        self._unhashed_keys, self._count_unhashed = self._key_pages(unhashed)
        # -- rows a 0.2 app wrote before the per-user columns existed (see
        # _without_per_user_columns), for the backfill of the index: under a
        # hashed key, without created_at. Every write with the columns sets
        # created_at; last_active_at would not do, as a touch sets it alone.
        # In key order, like the unhashed keys: the primary key's order,
        # which the LIMIT stops early.
        unindexed = (
            sa.not_(_unhashed(c.session_key)),
            c.created_at.is_(None),
            c.expires_at > now,
        )
        self._unindexed_keys, self._count_unindexed = self._key_pages(unindexed)
        # SQLite without RETURNING: takes the write lock, changes nothing.
        self._take_write_lock = (
            self.table.update().where(sa.false()).values(version=c.version)
        )
        self._count_expired = Statement(
            sa.select(sa.func.count())
            .select_from(self.table)
            .where(c.expires_at <= now)
        )
        # A range on the expiry index: the database counts index entries,
        # not table rows.
        self._count_live = Statement(
            sa.select(sa.func.count()).select_from(self.table).where(c.expires_at > now)
        )

    # -- error handling --------------------------------------------------------

    def _translate(self, exc: Exception, *, sent: int = 0) -> TowerSessError | None:
        """Map a driver error to the error the session layer expects (see
        :meth:`SessionStore._translate <.base.SessionStore._translate>`).

        :param sent: the bytes of payload the failed statement carried, to
            tell a statement too large for MySQL from a lost server.
        """
        if isinstance(exc, sa_exc.TimeoutError):  # pool checkout timed out
            return store_unavailable(self._url_text(), exc, logger)
        if not isinstance(exc, sa_exc.DBAPIError):
            return None
        if _may_be_schema_error(exc):
            # Only on failure: a missing or foreign table is a set-up mistake
            # with a fix, not an outage.
            try:
                with self.engine.connect() as conn:
                    problem = self._table_problem(sa.inspect(conn))
            except sa_exc.SQLAlchemyError:
                problem = None
            if problem is not None:
                return problem
        setting = _misconfiguration(exc, self.engine.url)
        if setting is None and sent and self._packet_too_large(exc, sent):
            setting = _PACKET_TOO_LARGE
        if setting is not None:
            return self._misconfigured(self._url_text(), setting, logger)
        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)) or (
            exc.connection_invalidated
        ):
            return store_unavailable(self._url_text(), exc.orig, logger)
        return None

    def _packet_too_large(self, exc: sa_exc.DBAPIError, sent: int) -> bool:
        """Whether MySQL dropped the connection for a statement larger than
        its ``max_allowed_packet``.

        A server that refuses such a packet while the client is still
        sending it resets the connection, which PyMySQL reports as "server
        has gone away" (2006), as it would a crash. So the server is asked
        for its limit, and only then: if it answers, it is up, and a payload
        that may not fit in a packet is the reason.
        """
        if _error_code(exc) not in _LOST_CONNECTION_CODES or (
            self.engine.dialect.name not in ("mysql", "mariadb")
        ):
            return False
        try:
            with self.engine.connect() as conn:
                limit = conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar()
        except sa_exc.SQLAlchemyError:
            return False  # no answer: an outage after all
        # The payload travels escaped (up to twice its size) in the text of
        # the statement.
        return limit is not None and 2 * sent + _STATEMENT_OVERHEAD > int(limit)

    def _table_problem(self, inspector: sa.Inspector) -> ConfigurationError | None:
        """Why the table cannot hold sessions, or ``None`` if it can: a
        missing table, a foreign one, or (:class:`_NotUpgraded`) one made
        by 0.1."""
        problem = self._foreign_table_problem(inspector)
        if problem is not None:
            return problem
        missing = self._missing_columns(inspector)
        if missing:
            return _NotUpgraded(
                f"The session table {self.table.fullname!r} in {self._url_text()}"
                f" has no {', '.join(c.name for c in missing)} column: it was made"
                " by flask-towersess 0.1. Run `flask sessions migrate` to add"
                " them (online: nobody is logged out)."
            )
        return None

    def _foreign_table_problem(
        self, inspector: sa.Inspector
    ) -> ConfigurationError | None:
        """Why the table is not one this package made (of any version), or
        ``None``."""
        url = self._url_text()
        name, schema = self.table.name, self.table.schema
        if not inspector.has_table(name, schema=schema):
            return ConfigurationError(
                f"The session table {self.table.fullname!r} does not exist in"
                f" {url}: run `flask sessions migrate` to create it."
            )
        found = {column["name"] for column in inspector.get_columns(name, schema)}
        missing = [name for name in CORE_COLUMNS if name not in found]
        if missing:
            return ConfigurationError(
                f"The table {self.table.fullname!r} in {url} is not a flask-towersess"
                f" session table (it has no {', '.join(missing)} column; another"
                " package, such as Flask-Session, may own it). Choose another"
                ' table: SESSION_STORE_OPTIONS = {"table": "towersess_sessions"}.'
            )
        return None

    def _missing_columns(self, inspector: sa.Inspector) -> list[sa.Column[t.Any]]:
        """The per-user columns the (existing) table lacks."""
        name, schema = self.table.name, self.table.schema
        found = {column["name"] for column in inspector.get_columns(name, schema)}
        return [self.table.c[name] for name in PER_USER_COLUMNS if name not in found]

    def _run(
        self,
        work: t.Callable[[Executor], _T],
        *,
        retry: _Retry = _REQUEST_RETRY,
        sent: int = 0,
        direct: bool = True,
    ) -> _T:
        """Run ``work`` on a pooled connection, with errors translated.

        ``work`` may run more than once: see :data:`_REQUEST_RETRY`.

        :param sent: the bytes of payload ``work`` writes (see
            :meth:`_translate`).
        :param direct: whether ``work`` may take the direct path; not for a
            statement with an expanding ``IN``, which the direct path's
            compiled-once SQL cannot hold.
        """
        return self._run_on(self._engine_for_statements(), work, retry, sent, direct)

    def _run_on(
        self,
        engine: sa.engine.Engine,
        work: t.Callable[[Executor], _T],
        retry: _Retry = _REQUEST_RETRY,
        sent: int = 0,
        direct: bool = True,
    ) -> _T:
        """:meth:`_run` on ``engine``."""
        if direct:
            known = self._can_run_directly.get(engine)
            if known is None:
                known = self._can_run_directly[engine] = can_run_directly(engine)
            direct = known
        if direct and not has_statement_observers(engine):
            run = self._run_on_dbapi_connection
        else:
            run = self._run_on_connection
        return self._attempt(lambda: run(engine, work), retry, sent)

    def _write(self, work: t.Callable[[Executor, _Writes], _T], *, sent: int = 0) -> _T:
        """:meth:`_run` ``work`` with the statements that fit the table:
        with the per-user columns, or without them on a table made by 0.1
        (see :meth:`_without_per_user_columns`)."""
        engine = self._engine_for_statements()
        writes = self._writes
        if self._not_upgraded_since:
            writes = self._writes_for(engine)
        try:
            return self._run_on(engine, lambda run: work(run, writes), sent=sent)
        except _NotUpgraded:
            if not writes.per_user:
                raise
            self._without_per_user_columns(engine)
            old = self._writes_0_1
            return self._run_on(engine, lambda run: work(run, old), sent=sent)

    def _writes_for(self, engine: sa.engine.Engine) -> _Writes:
        since = self._not_upgraded_since.get(engine)
        if since is None:
            return self._writes
        if time.monotonic() - since < RECHECK_SECONDS:
            return self._writes_0_1
        # Time to look again: the next write tries the per-user columns,
        # and comes back here if they are still missing.
        self._not_upgraded_since.pop(engine, None)
        return self._writes

    def _without_per_user_columns(self, engine: sa.engine.Engine) -> None:
        """Write without the per-user columns for a while: a 0.2 app runs on
        a table made by 0.1, before ``flask sessions migrate`` ran.

        Failing every request instead would take the site down for a deploy
        step done in the wrong order; the sessions keep working, and only
        the per-user index misses the records written meanwhile.
        """
        self._not_upgraded_since[engine] = time.monotonic()
        logger.warning(
            "the session table %s has no per-user columns (it was made by"
            " flask-towersess 0.1): sessions are saved without their user and"
            " device, so they cannot be listed or revoked per user. Run"
            " `flask sessions migrate` to upgrade the table (online); this"
            " store will use the new columns within %d s of it.",
            self.table.fullname,
            RECHECK_SECONDS,
        )

    def _run_transaction(
        self,
        work: t.Callable[[sa.Connection], _T],
        *,
        isolation_level: str,
        retry: _Retry,
    ) -> _T:
        """Run ``work`` in one transaction at ``isolation_level``, with errors
        translated; the transaction is rolled back whole if ``work`` fails."""
        engine = self._engine_for_statements()
        return self._attempt(
            lambda: self._run_in_transaction(engine, work, isolation_level), retry, 0
        )

    def _engine_for_statements(self) -> sa.engine.Engine:
        if not self._migrated:
            self._ensure_migrated()
        return self._use_engine()

    def _attempt(self, call: t.Callable[[], _T], retry: _Retry, sent: int) -> _T:
        """``call()``, again on a fresh connection if the pooled one was dead,
        and again after a pause if it lost a race for a lock (``retry``).
        ``sent``: as for :meth:`_run`."""
        reconnected = False
        failures = 0
        started = time.monotonic()
        while True:
            try:
                return call()
            except _NotConnected as exc:
                raise_translated(exc.error, self._translate(exc.error))
            except sa_exc.DBAPIError as exc:
                # The parameters hold session keys: keep them out of the
                # message, whatever the engine's hide_parameters says.
                exc.hide_parameters = True
                if exc.connection_invalidated and not reconnected:
                    # A pooled connection the server had dropped (a restart,
                    # an idle timeout): retry once on a fresh one, instead of
                    # pinging before every statement. A failure to connect is
                    # not retried: that would only double the wait.
                    reconnected = True
                    continue
                if _lost_lock_race(exc):
                    failures += 1
                    pause = retry.pause(failures, time.monotonic() - started)
                    if pause is not None:
                        logger.debug(
                            "session statement lost a race for a lock (%s);"
                            " trying again in %.3f s",
                            _error_code(exc),
                            pause,
                        )
                        time.sleep(pause)
                        continue
                if isinstance(exc, sa_exc.IntegrityError):
                    raise
                raise_translated(exc, self._translate(exc, sent=sent))
            except sa_exc.TimeoutError as exc:  # pool checkout timed out
                raise_translated(exc, self._translate(exc))

    def _run_on_connection(
        self, engine: sa.engine.Engine, work: t.Callable[[Executor], _T]
    ) -> _T:
        with _connect(engine) as conn:
            dbapi_connection = conn.connection.dbapi_connection
            if not in_autocommit(engine.dialect, dbapi_connection):
                # Every operation is one statement, atomic on its own: a
                # transaction around it would only add BEGIN and COMMIT
                # round trips. Asked per connection: an engine made with
                # create_engine(isolation_level="AUTOCOMMIT") is in
                # autocommit already, and switching it again would only add
                # work at each checkout and checkin.
                conn.execution_options(isolation_level="AUTOCOMMIT")
            watch = self._watch(dbapi_connection, engine.dialect)
            try:
                return work(CoreExecutor(conn))
            finally:
                self._end_watch(watch, conn.invalidate)

    def _run_on_dbapi_connection(
        self, engine: sa.engine.Engine, work: t.Callable[[Executor], _T]
    ) -> _T:
        dialect = engine.dialect
        try:
            conn = engine.raw_connection()
        except dialect.loaded_dbapi.Error as exc:
            raise _NotConnected(connect_error(exc, dialect)) from exc
        if not in_autocommit(dialect, conn.dbapi_connection):
            # A statement run here would wait for a COMMIT nobody sends. Not
            # an engine made in autocommit: its connections go through
            # Connection.execute(), which switches them, from now on.
            conn.close()
            self._can_run_directly[engine] = False
            return self._run_on_connection(engine, work)
        try:
            watch = self._watch(conn.dbapi_connection, dialect)
            try:
                return work(DBAPIExecutor(conn, dialect))
            finally:
                # The executor has invalidated the connection already if the
                # driver noticed the cut.
                self._end_watch(watch, lambda: _invalidate_once(conn))
        finally:
            conn.close()  # back to the pool

    def _run_in_transaction(
        self,
        engine: sa.engine.Engine,
        work: t.Callable[[sa.Connection], _T],
        isolation_level: str,
    ) -> _T:
        with _connect(engine) as conn:
            conn.execution_options(isolation_level=isolation_level)
            watch = self._watch(conn.connection.dbapi_connection, engine.dialect)
            try:
                with conn.begin():
                    result = work(conn)
            finally:
                self._end_watch(watch, conn.invalidate)
                if not conn.invalidated:
                    # Back in the pool, the connection returns to autocommit,
                    # but MySQL would keep it at this level: the statements
                    # of the next user (the app's, on a shared engine) must
                    # run at the level the database gives them.
                    conn.execution_options(isolation_level=conn.default_isolation_level)
            return result

    def _watch(self, dbapi_connection: t.Any, dialect: sa.Dialect) -> int | None:
        """Put the statements about to run under the watchdog, if needed."""
        if self.read_timeout is None or dialect.driver not in _NEEDS_WATCHDOG:
            return None
        return _watchdog.watch(dbapi_connection.fileno(), self.read_timeout)

    def _end_watch(self, watch: int | None, invalidate: t.Callable[[], None]) -> None:
        if watch is not None and _watchdog.done(watch):
            # The socket is shut down: the connection must not go back to
            # the pool, whoever owns it.
            invalidate()
            raise store_unavailable(
                self._url_text(),
                f"no answer within read_timeout={self.read_timeout} s",
                logger,
            )

    def _ensure_migrated(self) -> None:
        if not self._auto_migrate or self._migrated:
            return
        with self._migrate_lock:
            if not self._migrated:
                self._migrate()
                self._migrated = True

    # -- the contract ----------------------------------------------------------

    def load(self, key: str) -> Record | None:
        check_key(key)

        def read(run: Executor) -> Row | Exception | None:
            try:
                return run.first(self._select, {"key": key})
            except (ValueError, TypeError, OverflowError) as exc:
                # A value the driver cannot turn into Python (a year past
                # 9999 on PostgreSQL, text in SQLite's DATETIME column): the
                # statement ran, only the row is unreadable.
                return exc

        row = self._run(read)
        if row is None:
            return None
        if isinstance(row, Exception):
            refuse_record("SQLAlchemyStore", key, f"unreadable row: {row!r:.200}")
            return None
        payload, expires_at, version = row
        if isinstance(expires_at, datetime) and expires_at.tzinfo is None:
            expires_at = _aware_utc(expires_at)
        record = checked_record("SQLAlchemyStore", key, payload, expires_at, version)
        if record is None or record.expires_at <= utcnow():
            return None  # unusable, or expired and not yet purged: gone
        return record

    @staticmethod
    def _write_values(record: Record) -> dict[str, t.Any]:
        """The values of the statements of :class:`_Writes` for ``record``.

        The per-user fields are made to fit their columns: a database that
        refuses a value (PostgreSQL a NUL, a VARCHAR an overlong text) must
        not fail the request that saves the session.
        """
        if record.user_id is not None:
            check_user_id(record.user_id)
        return {
            "key": record.key,
            "new_payload": record.payload,
            "new_expires_at": _naive_utc(record.expires_at),
            "new_version": record.version,
            "new_user_id": record.user_id,
            "new_created_at": _naive_utc_or_none(record.created_at),
            "new_last_active_at": _naive_utc_or_none(record.last_active_at),
            "new_user_agent": _fitting_text(record.user_agent, USER_AGENT_LENGTH),
            "new_ip": _fitting_text(record.ip, IP_LENGTH, cut=False),
        }

    def create(self, record: Record) -> None:
        check_key(record.key)
        params = self._write_values(record)
        sent = len(record.payload)
        try:
            self._write(lambda run, w: run.rowcount(w.insert, params), sent=sent)
            return
        except sa_exc.IntegrityError:
            pass

        # The key is taken. Only an expired record may be replaced: it no
        # longer exists as far as the session layer is concerned. The insert
        # fails again if the record is live (or another writer took the key
        # meanwhile). Not "deleted nothing, so it is live": _run may run this
        # twice, and the second time finds the first one's deletion done.
        def replace_expired(run: Executor, writes: _Writes) -> None:
            now = _naive_utc(utcnow())
            run.rowcount(self._delete_expired_key, {"key": record.key, "now": now})
            run.rowcount(writes.insert, params)

        try:
            self._write(replace_expired, sent=sent)
        except sa_exc.IntegrityError as exc:  # another writer took the key meanwhile
            raise CreateError(
                f"a session with key {short_key(record.key)} exists"
            ) from exc

    def save(self, record: Record, expected_version: int) -> None:
        check_key(record.key)
        now = _naive_utc(utcnow())
        values = self._write_values(record)
        values["now"] = now
        values["expected_version"] = expected_version

        def work(run: Executor, writes: _Writes) -> None:
            if run.rowcount(writes.update, values) == 1:
                return
            # Only on failure: tell a deleted record from a concurrent save.
            current = run.first(self._select_version, {"key": record.key, "now": now})
            if current is None:
                raise UpdateError("the session no longer exists")
            raise VersionConflict(
                f"expected version {expected_version}, found {current[0]}"
            )

        self._write(work, sent=len(record.payload))

    def touch(self, key: str, expires_at: datetime) -> None:
        check_key(key)
        values = {
            "key": key,
            "now": _naive_utc(utcnow()),
            "new_expires_at": _naive_utc(expires_at),
        }
        self._write(lambda run, writes: run.rowcount(writes.touch, values))

    def delete(self, key: str) -> None:
        check_key(key)
        self._run(lambda run: run.rowcount(self._delete, {"key": key}))

    def exists(self, key: str) -> bool:
        check_key(key)
        values = {"key": key, "now": _naive_utc(utcnow())}
        return (
            self._run(lambda run: run.first(self._select_version, values)) is not None
        )

    def delete_many(self, keys: t.Collection[str]) -> None:
        """Delete the rows of ``keys``: one ``DELETE ... IN`` per
        :data:`KEYS_PER_STATEMENT` keys.

        .. versionadded:: 0.2
        """
        for chunk in _chunks([check_key(key) for key in keys]):
            values = {"keys": chunk}
            self._run(
                functools.partial(_delete_rows, self._delete_keys, values),
                direct=False,
            )

    # -- the per-user index ------------------------------------------------------

    def sessions_of(self, user_id: str) -> list[Record]:
        """The live records of ``user_id``: one range of the ``(user_id,
        expires_at)`` index, so the cost grows with that user's live
        sessions only. ``payload`` is left empty.

        A stored value that is not what this package writes is listed as
        ``None`` (:func:`~.base.checked_info`); a row whose expiry or
        version cannot be read is left out, as :meth:`load` refuses it.

        :raises ~flask_towersess.errors.ConfigurationError: the table was
            made by 0.1 and not migrated yet.

        .. versionadded:: 0.2
        """
        check_user_id(user_id)
        values = {"user_id": user_id, "now": _naive_utc(utcnow())}
        rows = self._run(lambda run: run.all(self._sessions_of, values))
        now = utcnow()
        records = []
        for key, expires_at, version, created_at, last_active_at, agent, ip in rows:
            record = checked_record(
                "SQLAlchemyStore", key, b"", _listed_time(expires_at), version
            )
            if record is None or record.expires_at <= now:
                continue
            records.append(
                checked_info(
                    record,
                    user_id=user_id,
                    created_at=_listed_time(created_at),
                    last_active_at=_listed_time(last_active_at),
                    user_agent=agent,
                    ip=ip,
                )
            )
        return records

    def delete_sessions_of(
        self,
        user_id: str,
        keys: t.Collection[str] | None = None,
        *,
        keep: str | None = None,
    ) -> list[str]:
        """Delete the live records of ``user_id`` (all, or those of
        ``keys``), except ``keep``; the keys deleted.

        One ``DELETE ... RETURNING`` (SQLite 3.35 and later, PostgreSQL,
        MariaDB); on MySQL, one transaction of a ``SELECT ... FOR UPDATE``
        and a ``DELETE`` of the rows it locked. Either way a fixed number of
        statements, however many sessions the user has (``keys`` beyond
        :data:`KEYS_PER_STATEMENT` take one more each).

        .. versionadded:: 0.2
        """
        check_user_id(user_id)
        base = {"user_id": user_id, "keep": _NO_KEY if keep is None else keep}
        if keep is not None:
            check_key(keep)
        if keys is None:
            return self._delete_of_user(
                self._delete_ending, self._select_ending, base, _all_keys
            )
        wanted = [check_key(key) for key in keys]
        deleted: list[str] = []
        for chunk in _chunks(wanted):
            deleted += self._delete_of_user(
                self._delete_ending_of_keys,
                self._select_ending_of_keys,
                {**base, "keys": chunk},
                _all_keys,
            )
        return deleted

    def trim_sessions_of(self, user_id: str, limit: int, *, keep: str) -> list[str]:
        """Delete the live records of ``user_id`` other than ``keep`` and
        the ``limit`` most recently active, as one atomic step; the keys
        deleted.

        SQLite and PostgreSQL: one ``DELETE ... WHERE session_key NOT IN
        (the limit most recent) RETURNING``. SQLite runs a statement alone
        against every other writer; on PostgreSQL, two logins trimming at
        once each see the other's new session if they started after it was
        written, and both order by the same total order, so they agree on
        the survivors. MySQL and MariaDB (no ``LIMIT`` in such a subquery):
        one transaction that locks the user's live rows (``SELECT ... FOR
        UPDATE``, which reads the latest rows and waits for a concurrent
        trim's locks) and deletes those beyond the limit.

        On a table not migrated yet (made by 0.1) nothing is indexed per
        user: nothing is trimmed, with a warning, and the login goes on.

        .. versionadded:: 0.2
        """
        check_user_id(user_id)
        check_key(keep)
        if limit < 0:
            raise ValueError("limit must be at least 0")
        values = {"user_id": user_id, "keep": keep, "limit": limit}

        def beyond_limit(rows: t.Sequence[Row]) -> list[str]:
            ranked = sorted(rows, key=_recency, reverse=True)
            return [key for key, _ in ranked[limit:] if key != keep]

        try:
            return self._delete_of_user(
                self._delete_trimmed,
                self._select_of_user,
                values,
                beyond_limit,
                one_statement=self._trims_in_one_statement(),
            )
        except _NotUpgraded:
            logger.warning(
                "SESSION_MAX_PER_USER not applied: the session table %s has no"
                " per-user columns yet; run `flask sessions migrate`",
                self.table.fullname,
            )
            return []

    def _trims_in_one_statement(self) -> bool:
        # MySQL and MariaDB refuse LIMIT in an IN subquery.
        dialect = self.engine.dialect
        return dialect.name in ("sqlite", "postgresql") and dialect.delete_returning

    def _delete_of_user(
        self,
        delete: Statement,
        select: sa.Select[t.Any],
        values: dict[str, t.Any],
        choose: t.Callable[[t.Sequence[Row]], list[str]],
        *,
        one_statement: bool | None = None,
    ) -> list[str]:
        """Delete some live records of one user; the keys deleted.

        With ``DELETE ... RETURNING`` (``one_statement``, by default where
        the dialect has it), ``delete`` alone, in autocommit. Otherwise one
        transaction: ``select`` locks the candidate rows (``key,
        last_active_at``), ``choose`` picks the keys to delete among them,
        and those are deleted.
        """
        values = {**values, "now": _naive_utc(utcnow())}
        engine = self._engine_for_statements()
        if one_statement is None:
            # Known once the dialect met the server (MariaDB or MySQL); a
            # store migrated or used before has.
            one_statement = bool(engine.dialect.delete_returning)
        if one_statement:
            expanding = "keys" in values
            rows = self._run_on(
                engine, lambda run: run.all(delete, values), direct=not expanding
            )
            return [row[0] for row in rows]
        sqlite = engine.dialect.name == "sqlite"

        def work(conn: sa.Connection) -> list[str]:
            if sqlite:
                # No row locks: a write that changes nothing takes the
                # database's one write lock before the read.
                conn.execute(self._take_write_lock)
            rows = conn.execute(select.with_for_update(), values).all()
            keys = choose(rows)
            if keys:
                conn.execute(self._delete_keys.core, {"keys": keys})
            return keys

        return self._run_transaction(
            work,
            isolation_level="SERIALIZABLE" if sqlite else "READ COMMITTED",
            retry=_REQUEST_RETRY,
        )

    def per_user_counts(self, top: int) -> list[tuple[str, int]]:
        """The ``top`` users with the most live sessions, most first: one
        ``GROUP BY`` over the ``(user_id, expires_at)`` index.

        .. versionadded:: 0.2
        """
        if top < 1:
            return []
        values = {"now": _naive_utc(utcnow()), "top": top}
        rows = self._run(lambda run: run.all(self._per_user_counts, values))
        return [(str(user), int(count)) for user, count in rows]

    # -- keys 0.1 stored unhashed ------------------------------------------------

    def unhashed_keys(
        self, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """Up to ``limit`` keys of live rows not of
        :data:`~.base.HASHED_KEY_PATTERN`, in key order after ``cursor``.

        .. versionadded:: 0.2
        """
        values = _page_values(cursor, limit)
        rows = self._run(lambda run: run.all(self._unhashed_keys, values))
        keys = [row[0] for row in rows]
        return keys, (keys[-1] if len(keys) == limit else None)

    def count_unhashed(self) -> int:
        """.. versionadded:: 0.2"""
        values = {"now": _naive_utc(utcnow())}
        row = self._run(lambda run: run.first(self._count_unhashed, values))
        return int(row[0]) if row is not None else 0

    def unindexed_keys(
        self, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """Up to ``limit`` keys of live rows under hashed keys without
        ``created_at``: rows a 0.2 app wrote while the table still lacked
        the per-user columns (its first writes after ``migrate`` fill them
        in), in key order after ``cursor``. For the backfill of the
        per-user index by ``flask sessions migrate``; none on a table
        without the per-user columns yet.

        .. versionadded:: 0.2
        """
        values = _page_values(cursor, limit)
        try:
            rows = self._run(lambda run: run.all(self._unindexed_keys, values))
        except _NotUpgraded:
            return [], None  # nothing to fill in before the columns exist
        keys = [row[0] for row in rows]
        return keys, (keys[-1] if len(keys) == limit else None)

    def count_unindexed(self) -> int:
        """How many live rows :meth:`unindexed_keys` would list.

        .. versionadded:: 0.2
        """
        values = {"now": _naive_utc(utcnow())}
        try:
            row = self._run(lambda run: run.first(self._count_unindexed, values))
        except _NotUpgraded:
            return 0
        return int(row[0]) if row is not None else 0

    def count_live(self) -> int:
        """How many rows have not expired: one ``SELECT count(*)`` over the
        expiry index.

        .. versionadded:: 0.2
        """
        values = {"now": _naive_utc(utcnow())}
        row = self._run(lambda run: run.first(self._count_live, values))
        return int(row[0]) if row is not None else 0

    def count_expired(self) -> int:
        values = {"now": _naive_utc(utcnow())}
        row = self._run(lambda run: run.first(self._count_expired, values))
        return int(row[0]) if row is not None else 0

    def _purge_statement(self, batch_size: int) -> Statement:
        """The statement that deletes one batch, on all dialects but MySQL."""
        build = _PURGE_STATEMENTS.get(self.engine.dialect.name, _purge_by_key)
        return Statement(build(self.table, batch_size))

    def purge_expired(
        self, batch_size: int = 1000, *, on_batch: BatchCallback | None = None
    ) -> int:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.engine.dialect.name in ("mysql", "mariadb"):
            purge_batch = self._mysql_purge_batch(batch_size)
        else:
            purge_batch = self._statement_purge_batch(batch_size)
        total = 0
        while True:
            deleted, more = purge_batch()
            if deleted > 0:
                total += deleted
                if on_batch is not None:
                    on_batch(deleted)
            if not more:
                return total

    def _statement_purge_batch(
        self, batch_size: int
    ) -> t.Callable[[], tuple[int, bool]]:
        statement = self._purge_statement(batch_size)

        def batch() -> tuple[int, bool]:
            # One short statement per batch: no lock is held longer than one
            # batch takes, and rows never travel to Python.
            deleted = self._run(
                lambda run: run.rowcount(statement, {"now": _naive_utc(utcnow())}),
                retry=_PURGE_RETRY,
            )
            return deleted, deleted > 0

        return batch

    def _mysql_purge_batch(self, batch_size: int) -> t.Callable[[], tuple[int, bool]]:
        """MySQL and MariaDB: read a batch of expired keys, delete those keys.

        A delete by expiry range, under InnoDB's default REPEATABLE READ,
        takes next-key locks on the expiry index, and on every row it scans
        when the optimizer prefers a table scan: saves, touches and inserts
        of live sessions then wait for the purge or deadlock with it. Here
        the read takes no lock, and the delete, at READ COMMITTED (no gap
        locks), locks only the rows it deletes, by primary key, in key order,
        as a session write does: two purges, or a purge and a write, cannot
        wait on each other in a cycle.
        """
        select, delete = _purge_by_selected_keys(self.table, batch_size)

        def work(conn: sa.Connection) -> tuple[int, bool]:
            now = _naive_utc(utcnow())
            keys = sorted(conn.execute(select, {"now": now}).scalars())
            if not keys:
                return 0, False
            deleted = conn.execute(delete, {"keys": keys, "now": now}).rowcount
            # Fewer than a batch: no more were expired when it was read. A
            # batch that deleted less than it read (another purge took rows,
            # or a request touched them) is no reason to stop.
            return deleted, len(keys) == batch_size

        def batch() -> tuple[int, bool]:
            return self._run_transaction(
                work, isolation_level="READ COMMITTED", retry=_PURGE_RETRY
            )

        return batch

    # -- migrations ------------------------------------------------------------

    def _migrate(self) -> list[str]:
        engine = self._use_engine()
        database = engine.url.database
        if engine.dialect.name == "sqlite" and database not in (None, "", ":memory:"):
            # SQLite creates the file but not its folder (a fresh instance
            # folder, for one).
            os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
        for attempt in range(1, _MIGRATE_ATTEMPTS + 1):
            try:
                done = self._create_missing(engine)
                break
            except sa_exc.DBAPIError as exc:
                retry = _lost_creation_race(exc) or _lost_lock_race(exc)
                if attempt == _MIGRATE_ATTEMPTS or not retry:
                    raise
                # Another process (a second worker starting, a second deploy
                # host) created the same thing at the same moment, or a long
                # transaction held the table past the lock timeout: look
                # again, and do only what is still left.
                logger.info("session table: concurrent migration, trying again")
                time.sleep(random.uniform(0.05, 0.25) * attempt)
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                _use_wal(conn.connection.dbapi_connection, engine.dialect)
        # Writes use the per-user columns again at once.
        self._not_upgraded_since.pop(engine, None)
        return done or [f"table {self.table.fullname} is up to date; nothing to do"]

    def _create_missing(self, engine: sa.engine.Engine) -> list[str]:
        """Create the table, or add the columns and indexes it lacks; say
        what was done, one line each.

        ``IF NOT EXISTS`` where the dialect has it, so that two processes
        migrating at once both succeed; where it has not (MySQL), the
        loser's error is caught by :meth:`_migrate`, which looks again.
        """
        name = self.table.fullname
        dialect = engine.dialect
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            exists = inspector.has_table(self.table.name, schema=self.table.schema)
            if exists:
                problem = self._foreign_table_problem(inspector)
                if problem is not None:
                    raise problem
                columns = self._missing_columns(inspector)
                indexes = self._missing_indexes(conn, inspector)
        if not exists:
            # A new, empty table: everything in one transaction.
            with engine.begin() as conn:
                conn.execute(CreateTable(self.table, if_not_exists=True))
                for index in self._indexes():
                    conn.execute(
                        CreateIndex(
                            index, if_not_exists=_has_index_if_not_exists(dialect)
                        )
                    )
            return [f"created table {name} with its indexes"]
        done: list[str] = []
        if columns:
            self._add_columns(engine, columns)
            done += [f"added column {column.name} to {name}" for column in columns]
        for index, invalid in indexes:
            self._create_index(engine, index, invalid=invalid)
            verb = "rebuilt invalid index" if invalid else "created index"
            done.append(f"{verb} {index.name} on {name}")
        return done

    def _indexes(self) -> list[sa.Index]:
        return sorted(self.table.indexes, key=lambda index: str(index.name))

    def _missing_indexes(
        self, conn: sa.Connection, inspector: sa.Inspector
    ) -> list[tuple[sa.Index, bool]]:
        """The indexes to create: each missing one, and (PostgreSQL) each
        left invalid by a ``CREATE INDEX CONCURRENTLY`` that failed, with
        ``True``."""
        existing = {
            ix["name"]
            for ix in inspector.get_indexes(self.table.name, self.table.schema)
        }
        invalid: set[str] = set()
        if conn.dialect.name == "postgresql":
            table = conn.dialect.identifier_preparer.format_table(self.table)
            invalid = set(
                conn.execute(
                    sa.text(
                        "SELECT c.relname FROM pg_index i"
                        " JOIN pg_class c ON c.oid = i.indexrelid"
                        " WHERE i.indrelid = CAST(:table AS regclass)"
                        " AND NOT i.indisvalid"
                    ),
                    {"table": table},
                ).scalars()
            )
        return [
            (index, index.name in invalid)
            for index in self._indexes()
            if index.name not in existing or index.name in invalid
        ]

    def _add_columns(
        self, engine: sa.engine.Engine, columns: list[sa.Column[t.Any]]
    ) -> None:
        """Add the per-user columns to a 0.1 table, online.

        All nullable without a default: no database rewrites the table for
        that. PostgreSQL changes only its catalog, but needs the table's
        ACCESS EXCLUSIVE lock for a moment, and every query on the table
        queues behind an ALTER that waits for it: a ``lock_timeout`` gives
        up soon instead (behind a long transaction), and :meth:`_migrate`
        tries again. MySQL and MariaDB: ``ALGORITHM=INSTANT`` where the
        server has it, else ``INPLACE`` with ``LOCK=NONE`` (reads and writes
        go on while it runs), else whatever the server does.
        """
        dialect = engine.dialect
        if dialect.name in ("mysql", "mariadb"):
            for algorithm in _MYSQL_ALTER_ALGORITHMS:
                try:
                    with engine.connect() as conn:
                        for sql in self._add_columns_sql(dialect, columns, algorithm):
                            conn.exec_driver_sql(sql)
                    return
                except sa_exc.DBAPIError as exc:
                    if algorithm is None or _error_code(exc) not in _ALGORITHM_REFUSED:
                        raise
                    logger.info(
                        "session table: %s refused by the server, trying the next",
                        algorithm,
                    )
        with engine.begin() as conn:
            if dialect.name == "postgresql":
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
            for sql in self._add_columns_sql(dialect, columns):
                conn.exec_driver_sql(sql)

    def _add_columns_sql(
        self,
        dialect: sa.Dialect,
        columns: list[sa.Column[t.Any]],
        algorithm: str | None = "ALGORITHM=INSTANT",
    ) -> list[str]:
        table = dialect.identifier_preparer.format_table(self.table)
        specs = [str(CreateColumn(c).compile(dialect=dialect)).strip() for c in columns]
        if dialect.name == "sqlite":  # one column per ALTER
            return [f"ALTER TABLE {table} ADD COLUMN {spec}" for spec in specs]
        if dialect.name == "postgresql":
            clauses = [f"ADD COLUMN IF NOT EXISTS {spec}" for spec in specs]
        else:
            clauses = [f"ADD COLUMN {spec}" for spec in specs]
            if dialect.name in ("mysql", "mariadb") and algorithm is not None:
                clauses.append(algorithm)
        return [f"ALTER TABLE {table} " + ", ".join(clauses)]

    def _create_index(
        self, engine: sa.engine.Engine, index: sa.Index, *, invalid: bool = False
    ) -> None:
        """Create ``index`` on the existing table, online.

        PostgreSQL: ``CREATE INDEX CONCURRENTLY`` (writes go on while it is
        built, where a plain one would block every save until it is done),
        which cannot run in a transaction: it runs in autocommit. If it
        fails half-way it leaves an invalid index behind, which the next
        ``migrate()`` drops (concurrently) and builds again. MySQL and
        MariaDB: ``ALGORITHM=INPLACE LOCK=NONE``. SQLite: a plain ``CREATE
        INDEX``, which holds the write lock while it runs.
        """
        dialect = engine.dialect
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            if invalid:
                name = dialect.identifier_preparer.format_index(index)
                conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            conn.exec_driver_sql(self._create_index_sql(dialect, index))

    def _create_index_sql(self, dialect: sa.Dialect, index: sa.Index) -> str:
        sql = str(
            CreateIndex(index, if_not_exists=_has_index_if_not_exists(dialect)).compile(
                dialect=dialect
            )
        ).strip()
        if dialect.name == "postgresql":
            return sql.replace("CREATE INDEX ", "CREATE INDEX CONCURRENTLY ", 1)
        if dialect.name in ("mysql", "mariadb"):
            return f"{sql} ALGORITHM=INPLACE LOCK=NONE"
        return sql

    def migrate(self) -> list[str]:
        """Create the table, or upgrade a table made by 0.1: add the
        per-user columns and the ``(user_id, expires_at)`` index, online
        (see :meth:`_add_columns` and :meth:`_create_index`). Nobody is
        logged out: the rows 0.1 wrote stay valid, with NULL per-user
        fields. Idempotent; one line per action.

        .. versionchanged:: 0.2
            Upgrades a 0.1 table.
        """
        try:
            lines = self._migrate()
        except sa_exc.DBAPIError as exc:
            raise_translated(exc, self._translate(exc))
        self._migrated = True
        return lines

    def pending_migrations(self) -> list[str]:
        """What :meth:`migrate` would do on the live table, one line each:
        the table, each missing column and index. Empty when up to date.

        .. versionadded:: 0.2
        """
        name = self.table.fullname
        try:
            with _connect(self._use_engine()) as conn:
                inspector = sa.inspect(conn)
                if not inspector.has_table(self.table.name, schema=self.table.schema):
                    return [f"create table {name} with its indexes"]
                problem = self._foreign_table_problem(inspector)
                if problem is not None:
                    raise problem
                lines = [
                    f"add column {column.name} to {name}"
                    for column in self._missing_columns(inspector)
                ]
                for index, invalid in self._missing_indexes(conn, inspector):
                    verb = "rebuild invalid index" if invalid else "create index"
                    lines.append(f"{verb} {index.name} on {name}")
                return lines
        except _NotConnected as exc:
            raise_translated(exc.error, self._translate(exc.error))
        except sa_exc.DBAPIError as exc:
            raise_translated(exc, self._translate(exc))

    def migration_sql(self) -> str:
        """The DDL of a new table, then the DDL that upgrades a table made
        by 0.1 (what :meth:`migrate` runs on one). Needs no database.

        .. versionchanged:: 0.2
            The upgrade of a 0.1 table.
        """
        dialect = self.engine.dialect
        statements = [str(CreateTable(self.table).compile(dialect=dialect))]
        statements += [
            str(CreateIndex(ix).compile(dialect=dialect)) for ix in self._indexes()
        ]
        new = "\n".join(f"{s.strip()};\n" for s in statements)
        per_user = [self.table.c[name] for name in PER_USER_COLUMNS]
        upgrade = self._add_columns_sql(dialect, per_user)
        (index,) = [ix for ix in self._indexes() if "user_id" in ix.columns]
        upgrade.append(self._create_index_sql(dialect, index))
        note = _UPGRADE_NOTES.get(dialect.name, "")
        return (
            f"{new}\n-- Upgrading a table made by flask-towersess 0.1"
            f" (what `flask sessions migrate` runs on it):{note}\n"
            + "".join(f"{sql};\n" for sql in upgrade)
        )

    def close(self) -> None:
        if self._owns_engine and self._engine is not None:
            self._engine.dispose()


def create_engine(url: str, **options: t.Any) -> sa.engine.Engine:
    """An engine set up for sessions: bounded timeouts, and for SQLite WAL
    mode plus a busy timeout so concurrent writers wait instead of failing.

    :param options: passed to :func:`sqlalchemy.create_engine`, overriding
        the defaults set here.
    :raises ConfigurationError: the URL cannot be parsed, names an unknown
        driver, or an option is refused; the message never holds a password.
    """
    try:
        return _create_engine(sa.engine.make_url(url), options)
    except ConfigurationError:
        raise
    except (sa_exc.ArgumentError, ValueError, TypeError) as exc:
        # Not chained: a driver's or SQLAlchemy's message may quote the URL.
        raise ConfigurationError(
            f"The session store cannot use the database URL {redact_url(str(url))}"
            " with its options (SESSION_STORE, SESSION_STORE_OPTIONS):"
            f" {redact_message(str(exc), str(url))}"
        ) from None


def _create_engine(
    sa_url: sa.engine.URL, options: dict[str, t.Any]
) -> sa.engine.Engine:
    sa_url = _with_installed_driver(sa_url)
    backend = sa_url.get_backend_name()
    if backend == "sqlite":
        connect_args = options.setdefault("connect_args", {})
        connect_args.setdefault("timeout", 30)
        options.setdefault("isolation_level", "AUTOCOMMIT")
        options.setdefault("pool_reset_on_return", None)
        if options.get("poolclass") is None and _is_sqlite_file(sa_url):
            # A file database gets a QueuePool, sized as for a server.
            _size_pool(options)
        engine = sa.create_engine(sa_url, **options)

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: t.Any, record: t.Any) -> None:
            _use_wal(dbapi_conn, engine.dialect)
            # NORMAL sync is durable across application crashes, which is
            # what sessions need; it is per connection and takes no lock.
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    # Statements run in autocommit (see SQLAlchemyStore._run_on_connection):
    # set at connect time, it costs no round trip per checkout, and there is
    # no transaction to roll back when a connection returns to the pool.
    options.setdefault("isolation_level", "AUTOCOMMIT")
    options.setdefault("pool_reset_on_return", None)
    if backend in ("mysql", "mariadb"):
        # PyMySQL sends a ROLLBACK to the server even in autocommit, and
        # SQLAlchemy calls it when a Connection closes: a round trip per
        # statement on the Connection path, for nothing.
        options.setdefault("skip_autocommit_rollback", True)
    if options.get("poolclass") in (None, sa.pool.QueuePool):
        # Queue-pool options; NullPool (behind PgBouncer, say) rejects them.
        _size_pool(options)
        options.setdefault("pool_timeout", 10)
        # Below MySQL's default wait_timeout of 8 hours, with a wide margin.
        options.setdefault("pool_recycle", 3600)
    connect_args = options.setdefault("connect_args", {})
    for name, value in _CONNECT_TIMEOUTS.get(backend, {}).items():
        connect_args.setdefault(name, value)
    return sa.create_engine(sa_url, **options)


#: Connections a store keeps open per process, and how many more it may
#: open at busy moments (closed again when returned). A request holds a
#: connection for one statement, so a process needs about one per thread
#: serving requests at once: SQLAlchemy's default of 5 made a server with 8
#: threads open and close a connection on most statements. Set ``pool_size``
#: and ``max_overflow`` in ``SESSION_STORE_OPTIONS`` to change them.
DEFAULT_POOL_SIZE = 10
DEFAULT_MAX_OVERFLOW = 20


def _size_pool(options: dict[str, t.Any]) -> None:
    options.setdefault("pool_size", DEFAULT_POOL_SIZE)
    options.setdefault("max_overflow", DEFAULT_MAX_OVERFLOW)


def _is_sqlite_file(url: sa.engine.URL) -> bool:
    database = url.database or ""
    return (
        database not in ("", ":memory:")
        and not database.startswith("file::memory:")
        and url.query.get("mode") != "memory"
    )


#: How many times a migration that lost a race to another process's looks
#: again before it gives up.
_MIGRATE_ATTEMPTS = 5

#: Seconds a connection keeps trying to switch a new SQLite file to WAL
#: while other processes hold it (the switch takes a lock SQLite does not
#: wait for by itself).
_WAL_TIMEOUT = 30.0


def _use_wal(dbapi_conn: t.Any, dialect: sa.Dialect) -> None:
    """Put an SQLite file in WAL mode: readers and one writer work at once.

    The mode is kept in the file, so only a connection to a new file has to
    change it; asking first spares every other connection the exclusive lock
    the change takes. Several worker processes opening a new file at once
    race for that lock, and SQLite reports "database is locked" at once
    instead of calling its busy handler, so the loser tries again.
    """
    deadline = time.monotonic() + _WAL_TIMEOUT
    delay = 0.01
    while True:
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("PRAGMA journal_mode")
            mode = str(cursor.fetchone()[0]).lower()
            if mode not in ("wal", "memory"):  # an in-memory database has no WAL
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except dialect.loaded_dbapi.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        finally:
            cursor.close()
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 0.25)


#: Driver error codes and messages of a migration that lost a race: the
#: table, column or index exists already (MySQL 1050, 1060, 1061;
#: PostgreSQL 42P07, 42701, and 23505 from its catalog when two CREATE
#: TABLE IF NOT EXISTS run at once), or a deadlock between the two (1213,
#: 40P01).
_RACE_CODES = {1050, 1060, 1061, 1213, "42P07", "42701", "23505", "40P01"}


def _lost_creation_race(exc: sa_exc.DBAPIError) -> bool:
    text = str(exc.orig)
    return (
        _error_code(exc) in _RACE_CODES
        or "already exists" in text
        or "duplicate column" in text
        or "database is locked" in text
    )


def _has_index_if_not_exists(dialect: sa.Dialect) -> bool:
    """MySQL (not MariaDB) has no ``CREATE INDEX IF NOT EXISTS``."""
    return not (dialect.name == "mysql" and not getattr(dialect, "is_mariadb", False))


#: How MySQL and MariaDB are asked to add the per-user columns, in order:
#: instantly (a change of the data dictionary only: MySQL 8.0.12, MariaDB
#: 10.3), in place without blocking reads or writes, as the server likes.
_MYSQL_ALTER_ALGORITHMS = ("ALGORITHM=INSTANT", "ALGORITHM=INPLACE, LOCK=NONE", None)

#: The server cannot alter the table with that algorithm or lock (1845,
#: 1846), or does not know the word (1064, a server before INSTANT).
_ALGORITHM_REFUSED = {1845, 1846, 1064}

#: How long PostgreSQL's ALTER TABLE waits for the table's lock, with every
#: session query queued behind it, before it gives up (and is tried again).
_LOCK_TIMEOUT = "2s"

#: What migration_sql says about a dialect's upgrade statements.
_UPGRADE_NOTES = {
    "postgresql": (
        "\n-- ADD COLUMN without a default changes only the catalog;"
        "\n-- CREATE INDEX CONCURRENTLY cannot run inside a transaction"
        " (in Alembic: autocommit_block())."
    ),
    "mysql": "\n-- Online: ALGORITHM=INSTANT (or INPLACE, LOCK=NONE) and LOCK=NONE.",
    "mariadb": "\n-- Online: ALGORITHM=INSTANT (or INPLACE, LOCK=NONE) and LOCK=NONE.",
}


#: For URLs that name no driver (``postgresql://``, ``mysql://``): the
#: drivers to try, in order. SQLAlchemy's own defaults (psycopg 3, mysqlclient)
#: are not what the ``postgres`` and ``mysql`` extras install.
_DRIVERS = {
    "postgresql": (("psycopg2", "psycopg2"), ("psycopg", "psycopg")),
    "mysql": (("pymysql", "pymysql"), ("mysqldb", "MySQLdb")),
    "mariadb": (("pymysql", "pymysql"), ("mysqldb", "MySQLdb")),
}


def _with_installed_driver(url: sa.engine.URL) -> sa.engine.URL:
    if url.drivername == "postgres":  # the scheme Heroku and others hand out
        url = url.set(drivername="postgresql")
    candidates = _DRIVERS.get(url.drivername)
    if candidates is None:  # a driver is named, or the dialect has one
        return url
    for driver, module in candidates:
        if importlib.util.find_spec(module) is not None:
            return url.set(drivername=f"{url.drivername}+{driver}")
    names = " or ".join(module for _, module in candidates)
    raise ConfigurationError(
        f"no database driver for {url.drivername}:// is installed: install"
        f" {names} (pip install 'flask-towersess[{_EXTRAS[url.drivername]}]')"
    )


_EXTRAS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}


def _expired(table: sa.Table) -> sa.ColumnElement[bool]:
    return table.c.expires_at <= sa.bindparam("now")


def _purge_by_key(table: sa.Table, batch_size: int) -> sa.Delete:
    batch = sa.select(table.c.session_key).where(_expired(table)).limit(batch_size)
    # The expiry is checked again by the delete itself: a row touched after
    # the subquery chose it is live and must stay.
    return table.delete().where(
        table.c.session_key.in_(batch.scalar_subquery()), _expired(table)
    )


def _purge_by_rowid(table: sa.Table, batch_size: int) -> sa.Delete:
    # SQLite: the rowid is the table's own b-tree key, so no second lookup
    # through the session-key index per deleted row. The statement holds the
    # database's only write lock from start to end, so no row it chose can be
    # touched before it is deleted.
    rowid: sa.ColumnClause[int] = sa.literal_column("rowid")
    batch = sa.select(rowid).select_from(table).where(_expired(table)).limit(batch_size)
    return table.delete().where(rowid.in_(batch.scalar_subquery()))


def _purge_by_ctid(table: sa.Table, batch_size: int) -> sa.Delete:
    # PostgreSQL: rows are addressed by ctid, which the planner turns into a
    # direct row fetch; with "key IN (subquery)" it hashes the whole table for
    # large batches. SKIP LOCKED lets two purgers (cron on two hosts) take
    # different rows instead of waiting on each other, and FOR UPDATE keeps
    # the chosen rows where they are until they are deleted. (A ctid is only
    # unique within one partition: for a partitioned table, purge by key.)
    ctid: sa.ColumnClause[t.Any] = sa.literal_column("ctid")
    batch = (
        sa.select(ctid)
        .select_from(table)
        .where(_expired(table))
        .limit(batch_size)
        .with_for_update(skip_locked=True)
    )
    return table.delete().where(
        ctid == sa.any_(sa.func.array(batch.scalar_subquery())), _expired(table)
    )


def _purge_by_selected_keys(
    table: sa.Table, batch_size: int
) -> tuple[sa.Select[tuple[str]], sa.Delete]:
    """MySQL: the read of a batch of expired keys, and the delete of those
    keys that are still expired (see ``SQLAlchemyStore._mysql_purge_batch``).

    Two statements: MySQL cannot delete from a table it reads in a subquery.
    The read walks the expiry index alone (it holds the primary key).
    """
    c = table.c
    select = (
        sa.select(c.session_key)
        .where(_expired(table))
        .order_by(c.expires_at)
        .limit(batch_size)
    )
    delete = table.delete().where(
        c.session_key.in_(sa.bindparam("keys", expanding=True)), _expired(table)
    )
    return select, delete


#: How each dialect deletes one batch of expired rows in one statement;
#: others purge by key. MySQL and MariaDB use _purge_by_selected_keys.
_PURGE_STATEMENTS: dict[str, t.Callable[[sa.Table, int], sa.Delete]] = {
    "postgresql": _purge_by_ctid,
    "sqlite": _purge_by_rowid,
}


def _invalidate_once(conn: t.Any) -> None:
    if conn.is_valid:
        conn.invalidate()


#: Drivers that cannot time out a read by themselves.
_NEEDS_WATCHDOG = frozenset({"psycopg2"})


class _Watchdog:
    """Cuts the connection of a statement that outlives its deadline.

    One daemon thread per process, started on first use, wakes a few times a
    second; watching a statement costs a dict insert and removal under a
    lock. The socket is shut down (not closed) while the lock is held, and a
    statement leaves the watch list under the same lock, so the descriptor
    shut down is always the statement's own: the driver's blocked read then
    fails, and the connection is discarded.
    """

    interval = 0.2

    def __init__(self) -> None:
        self._tokens = itertools.count()
        self._start()
        self._process = ProcessGuard(self._start, "SQLAlchemyStore watchdog")

    def _start(self) -> None:
        # Also run in a forked child: it inherits neither the patrol thread
        # nor a usable lock (the patrol may have held it at the fork), and
        # the parent's statements are not its own.
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[float, int]] = {}
        self._fired: set[int] = set()
        self._running = False

    def watch(self, fileno: int, timeout: float) -> int:
        self._process.check()
        with self._lock:
            token = next(self._tokens)
            self._watched[token] = (time.monotonic() + timeout, fileno)
            if not self._running:
                self._running = True
                threading.Thread(
                    target=self._patrol, name="flask-towersess-watchdog", daemon=True
                ).start()
        return token

    def done(self, token: int) -> bool:
        """End the watch; return whether the deadline had passed."""
        with self._lock:
            self._watched.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def _patrol(self) -> None:
        # Signals go to the threads that serve requests, never here: a
        # server's C-level handler (uWSGI's SIGTERM) run on this thread
        # would start the interpreter's shutdown from the wrong thread, and
        # the worker would hang until it is killed.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        while True:
            time.sleep(self.interval)
            now = time.monotonic()
            with self._lock:
                for token, (deadline, fileno) in list(self._watched.items()):
                    if deadline <= now:
                        del self._watched[token]
                        self._fired.add(token)
                        _shut_down(fileno)


def _shut_down(fileno: int) -> None:
    try:
        sock = socket.socket(fileno=os.dup(fileno))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


_watchdog = _Watchdog()


#: Driver error codes meaning "no such table" or "no such column" (MySQL
#: 1146, 1054; PostgreSQL SQLSTATE 42P01, 42703); SQLite only has messages.
_SCHEMA_ERROR_CODES = {1146, 1054, "42P01", "42703"}


def _may_be_schema_error(exc: sa_exc.DBAPIError) -> bool:
    """Whether the error may come from a missing or foreign table.

    Checked before looking at the table, which takes a connection: a database
    that cannot be reached must cost one connection attempt, not two.
    """
    orig = exc.orig
    if _error_code(exc) in _SCHEMA_ERROR_CODES:
        return True
    text = str(orig)
    # SQLite: "no such column" in a read or an UPDATE, "table ... has no
    # column named" in an INSERT.
    return (
        "no such table" in text
        or "no such column" in text
        or "has no column named" in text
    )


#: Bytes of a statement beyond its payload: the SQL text and the other values.
_STATEMENT_OVERHEAD = 1024

#: Error codes of a connection lost mid-statement (MySQL "server has gone
#: away", "lost connection").
_LOST_CONNECTION_CODES = {2006, 2013}

_PACKET_TOO_LARGE = (
    "a session is larger than the MySQL/MariaDB server takes in one statement"
    " (its max_allowed_packet); raise max_allowed_packet on the server, or"
    " set SESSION_MAX_PAYLOAD_SIZE well below it"
)


#: The SQLSTATE of a failed PostgreSQL connection, from the server's message:
#: libpq keeps the code of a connection error to itself, so psycopg2 has no
#: pgcode for it. English only: in another lc_messages the error is left
#: what it was before, an outage.
_LIBPQ_MESSAGES = (
    (re.compile(r"password authentication failed|no password supplied"), "28P01"),
    (
        re.compile(
            r'role ".*" does not exist|no pg_hba\.conf entry'
            r"|is not permitted to log in"
        ),
        "28000",
    ),
    (re.compile(r'database ".*" does not exist'), "3D000"),
)


def _misconfiguration(exc: sa_exc.DBAPIError, url: sa.engine.URL) -> str | None:
    """What is wrong with the connection settings, if ``exc`` is a server's
    refusal of them (credentials, the database); ``None`` for anything else.

    By the driver's error code: PostgreSQL's SQLSTATE, MySQL's error number.
    """
    backend = url.get_backend_name()
    code = _error_code(exc)
    text = str(exc.orig)
    if backend == "postgresql" and not getattr(exc.orig, "pgcode", None):
        code = next((c for found, c in _LIBPQ_MESSAGES if found.search(text)), None)
    server = _SERVER_NAMES.get(backend, "the database server")
    user, database = url.username, url.database
    if code in ("28P01", 1045):
        # MySQL says the same for an unknown user; PostgreSQL does too under
        # password authentication.
        return (
            f"{server} refused the login of user {user!r}; fix the user name"
            " or the password in the URL"
        )
    if code == "28000":
        return (
            f"{server} does not let user {user!r} in ({_server_reason(text)});"
            " fix the user name in the URL, or let the user log in (LOGIN,"
            " pg_hba.conf)"
        )
    if code == 1044:
        return (
            f"user {user!r} may not use database {database!r}; grant it access,"
            " or fix the database name in the URL"
        )
    if code in ("3D000", 1049):
        return (
            f"database {database!r} does not exist on {server}; create it, or"
            " fix the database name in the URL"
        )
    if code == 1153:  # the server read the whole statement before refusing it
        return _PACKET_TOO_LARGE
    return None


_SERVER_NAMES = {
    "postgresql": "PostgreSQL",
    "mysql": "MySQL/MariaDB",
    "mariadb": "MariaDB",
}


def _server_reason(text: str) -> str:
    """The server's own words in a connection error, on one line."""
    reason = text.rpartition("FATAL:")[2] or text
    return " ".join(reason.split())[:200]


#: Driver error codes of a statement that lost a race for a lock and was
#: rolled back: MySQL and MariaDB 1213 (deadlock) and 1205 (lock wait
#: timeout); PostgreSQL SQLSTATE 40P01 (deadlock_detected), 40001
#: (serialization_failure, under REPEATABLE READ or SERIALIZABLE) and 55P03
#: (lock_not_available: a ``lock_timeout`` ran out).
_LOCK_RACE_CODES = {1213, 1205, "40P01", "40001", "55P03"}

#: SQLite's primary result codes SQLITE_BUSY and SQLITE_LOCKED. The busy
#: timeout waits out most of them, but not every one: a WAL snapshot that
#: went stale or a recovery in another process fails at once.
_SQLITE_LOCK_CODES = {5, 6}


def _lost_lock_race(exc: sa_exc.DBAPIError) -> bool:
    """Whether the statement failed only because it lost a race for a lock
    (a deadlock, a lock wait timeout, a busy SQLite file)."""
    if _error_code(exc) in _LOCK_RACE_CODES:
        return True
    orig = exc.orig
    if type(orig).__module__ != "sqlite3":
        return False
    # Python 3.11 and later give SQLite's extended result code, whose low
    # byte is the primary one; before, only the message tells.
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _SQLITE_LOCK_CODES
    return "database is locked" in str(orig) or "table is locked" in str(orig)


def _error_code(exc: sa_exc.DBAPIError) -> object:
    """The driver's error code: a SQLSTATE on PostgreSQL, a number on MySQL."""
    orig = exc.orig
    return getattr(orig, "pgcode", None) or next(iter(getattr(orig, "args", ())), None)


def _is_flask_sqlalchemy(obj: object) -> bool:
    # By class, not by attributes: some clients (a pymongo Database) answer
    # any attribute name.
    return type(obj).__module__.split(".")[0] == "flask_sqlalchemy"


#: Bounded driver timeouts, so a database that hangs cannot hang a worker.
#: psycopg2 has no read timeout of its own: statement_timeout bounds slow
#: statements on the server, and keepalives plus tcp_user_timeout bound a
#: host that stopped answering at the network level.
_CONNECT_TIMEOUTS: dict[str, dict[str, t.Any]] = {
    "postgresql": {
        "connect_timeout": 5,
        "options": "-c statement_timeout=30000",
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": 30000,
    },
    "mysql": {"connect_timeout": 5, "read_timeout": 30, "write_timeout": 30},
    "mariadb": {"connect_timeout": 5, "read_timeout": 30, "write_timeout": 30},
}
