"""Which way SQLAlchemyStore runs its statements, and that both ways agree.

On an engine made by the store's ``create_engine`` (autocommit from the
start, nothing listening) the per-request statements run on a pooled DBAPI
connection; anything that wants to see them (event listeners, statement
logging, execution options) gets them through ``Connection.execute()``. The
shared store contract runs on both: ``sqlite`` takes the direct path,
``sqlite_core`` the Connection path.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import typing as t
from datetime import timedelta

import pytest
import sqlalchemy as sa

from flask_towersess.errors import StoreUnavailable
from flask_towersess.session import new_session_key
from flask_towersess.stores import _sqlalchemy_fastpath
from flask_towersess.stores._sqlalchemy_fastpath import CHECKED_SQLALCHEMY
from flask_towersess.stores._sqlalchemy_fastpath import LISTENER_FLAG
from flask_towersess.stores._sqlalchemy_fastpath import has_connection_listeners
from flask_towersess.stores._statements import CoreExecutor
from flask_towersess.stores._statements import in_autocommit
from flask_towersess.stores._statements import runs_directly
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import utcnow
from flask_towersess.stores.sqlalchemy import SQLAlchemyStore
from flask_towersess.stores.sqlalchemy import create_engine

from .fixtures_sql import MYSQL_URL
from .fixtures_sql import POSTGRESQL_URL


def a_record(payload: bytes = b"data") -> Record:
    return Record(new_session_key(), payload, utcnow() + timedelta(minutes=10))


@pytest.fixture
def own_store(sql_store: SQLAlchemyStore) -> t.Iterator[SQLAlchemyStore]:
    """A store on the same table with an engine of its own: a listener
    stays on an engine for good, and must not change the shared one's path."""
    url = sql_store.engine.url.render_as_string(hide_password=False)
    store = SQLAlchemyStore(create_engine(url), table=sql_store.table.name)
    yield store
    store.engine.dispose()


def test_store_engines_take_the_direct_path(sql_store: SQLAlchemyStore) -> None:
    assert runs_directly(sql_store.engine)


def test_engines_that_must_see_statements_do_not(tmp_path: t.Any) -> None:
    url = f"sqlite:///{tmp_path}/paths.sqlite3"
    plain = sa.create_engine(url)  # transactions of its own
    assert not runs_directly(plain)
    with_options = create_engine(url).execution_options(schema_translate_map={})
    assert not runs_directly(with_options)
    echoing = create_engine(url, echo=True)
    assert not runs_directly(echoing)
    for engine in (plain, with_options, echoing):
        engine.dispose()


def test_the_same_rows_either_way(sql_store: SQLAlchemyStore) -> None:
    # Written on one path, read on the other: the dialect's own type
    # processors convert on both, so the stored values are the same.
    engine = sql_store.engine
    core = SQLAlchemyStore(
        engine.execution_options(logging_token="core"), table=sql_store.table.name
    )
    assert not runs_directly(core.engine)
    record = a_record(b"\x00\x01 payload")
    sql_store.create(record)
    assert core.load(record.key) == record
    saved = Record(record.key, b"v2", record.expires_at + timedelta(seconds=1), 2)
    core.save(saved, 1)
    assert sql_store.load(record.key) == saved
    with engine.connect() as conn:
        stored = conn.execute(
            sa.select(sql_store.table).where(
                sql_store.table.c.session_key == record.key
            )
        ).one()
    assert bytes(stored.payload) == b"v2"
    assert stored.expires_at == saved.expires_at.replace(tzinfo=None)
    assert stored.version == 2


def test_a_listener_added_later_sees_the_statements(
    own_store: SQLAlchemyStore,
) -> None:
    seen: list[str] = []
    record = a_record()
    own_store.create(record)

    def listener(conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
        seen.append(statement)

    sa.event.listen(own_store.engine, "before_cursor_execute", listener)
    assert own_store.load(record.key) == record
    assert any(statement.lstrip().upper().startswith("SELECT") for statement in seen)


def test_statement_logging_sees_the_statements(
    sql_store: SQLAlchemyStore, caplog: pytest.LogCaptureFixture
) -> None:
    record = a_record()
    sql_store.create(record)
    with caplog.at_level(logging.INFO, logger="sqlalchemy.engine.Engine"):
        sql_store.load(record.key)
    assert any(sql_store.table.name in r.getMessage() for r in caplog.records)


def test_the_private_listener_flag_means_what_the_direct_path_assumes(
    tmp_path: t.Any,
) -> None:
    # The one private SQLAlchemy attribute the store reads (see
    # _sqlalchemy_fastpath). If this fails after an upgrade, the store is
    # still right (it falls back to Connection.execute()) but slow: check
    # what the release replaced the flag with, and update the adapter.
    installed = f"SQLAlchemy {sa.__version__} (adapter checked on {CHECKED_SQLALCHEMY})"
    engine = create_engine(f"sqlite:///{tmp_path}/flag.sqlite3")
    derived = engine.execution_options(towersess_test="derived")
    try:
        for target in (engine, derived):
            flag = getattr(target, LISTENER_FLAG, None)
            assert type(flag) is bool and not flag, (
                f"{installed}: Engine.{LISTENER_FLAG} is {flag!r},"
                " not False, on an engine nobody listens to"
            )
        assert not has_connection_listeners(engine)
        # A listener on the derived engine is its own, not its parent's...
        sa.event.listen(derived, "before_execute", lambda *a: None)
        assert getattr(derived, LISTENER_FLAG) is True, installed
        assert getattr(engine, LISTENER_FLAG) is False, installed
        # ... and one on the parent reaches every engine derived from it,
        # even one made before the listener was added.
        sibling = engine.execution_options(towersess_test="sibling")
        sa.event.listen(engine, "before_cursor_execute", lambda *a: None)
        for target in (engine, derived, sibling):
            assert getattr(target, LISTENER_FLAG) is True, installed
            assert has_connection_listeners(target)
        # Pool events do not see statements, and do not count.
        other = create_engine(f"sqlite:///{tmp_path}/pool.sqlite3")
        sa.event.listen(other, "checkout", lambda *a: None)
        assert getattr(other, LISTENER_FLAG) is False, installed
        other.dispose()
    finally:
        engine.dispose()


@pytest.mark.parametrize("flag", ["_no_such_flag", "dialect"], ids=["gone", "retyped"])
def test_without_the_private_flag_statements_take_the_public_path(
    own_store: SQLAlchemyStore, monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    # A release that drops the flag, or gives it another type: every
    # statement goes through Connection.execute(), where listeners see it.
    monkeypatch.setattr(_sqlalchemy_fastpath, "LISTENER_FLAG", flag)
    engine = own_store.engine
    assert has_connection_listeners(engine)
    assert not runs_directly(engine)
    seen: list[str] = []
    monkeypatch.setattr(CoreExecutor, "first", _recording(CoreExecutor.first, seen))
    record = a_record()
    own_store.create(record)
    assert own_store.load(record.key) == record
    assert seen


def _recording(method: t.Any, seen: list[str]) -> t.Any:
    def recorded(self: t.Any, *args: t.Any) -> t.Any:
        seen.append(method.__name__)
        return method(self, *args)

    return recorded


def test_store_engines_start_their_connections_in_autocommit(
    sql_store: SQLAlchemyStore,
) -> None:
    # What the direct path asks of each connection, through the dialect's
    # public detect_autocommit_setting(), on every tested driver.
    engine = sql_store.engine
    connection = engine.raw_connection()
    try:
        assert in_autocommit(engine.dialect, connection.dbapi_connection)
    finally:
        connection.close()


def test_an_engine_not_in_autocommit_commits_through_connections(
    sql_store: SQLAlchemyStore,
) -> None:
    # An engine the app made with transactions of its own: its connections
    # are not in autocommit, so the store runs on Connection.execute() with
    # AUTOCOMMIT set per connection, and every write is committed.
    url = sql_store.engine.url.render_as_string(hide_password=False)
    plain = sa.create_engine(url)
    try:
        store = SQLAlchemyStore(plain, table=sql_store.table.name)
        connection = plain.raw_connection()
        try:
            assert not in_autocommit(plain.dialect, connection.dbapi_connection)
        finally:
            connection.close()
        assert not runs_directly(plain)
        record = a_record()
        store.create(record)
        saved = Record(record.key, b"v2", record.expires_at, 2)
        store.save(saved, 1)
        # Seen from the store's own engine: committed, not left pending.
        assert sql_store.load(record.key) == saved
    finally:
        plain.dispose()


@pytest.mark.parametrize("listened", [False, True], ids=["direct", "connection"])
def test_driver_errors_keep_session_keys_out_of_messages(
    own_store: SQLAlchemyStore, listened: bool
) -> None:
    # A value the column cannot take makes the driver fail; on either path
    # the error must not carry the parameters (session keys).
    if listened:
        sa.event.listen(own_store.engine, "before_cursor_execute", lambda *a: None)
    record = a_record()
    own_store.create(record)
    bad = Record(record.key, b"x", record.expires_at, 2**70)
    # (SQLite's driver refuses it before the statement: an OverflowError.)
    with pytest.raises((sa.exc.StatementError, OverflowError)) as raised:
        own_store.save(bad, 1)
    assert record.key not in str(raised.value)
    assert own_store.load(record.key) == record


def test_a_dropped_connection_is_replaced(sql_store: SQLAlchemyStore) -> None:
    # Every pooled connection is invalidated behind the store's back (a
    # database restart): the next call retries once on a fresh one.
    record = a_record()
    sql_store.create(record)
    with sql_store.engine.connect() as conn:
        conn.invalidate()
    sql_store.engine.pool.dispose()
    assert sql_store.load(record.key) == record


#: Per dialect: connection arguments that make a statement give up waiting
#: for a lock soon, and how soon (seconds).
SHORT_LOCK_WAITS: dict[str, tuple[dict[str, t.Any], float]] = {
    "sqlite": ({"timeout": 0.1}, 0.1),
    "postgresql": ({"options": "-c lock_timeout=200"}, 0.2),
    # Whole seconds only.
    "mysql": ({"init_command": "SET SESSION innodb_lock_wait_timeout=1"}, 1.0),
}


def impatient_store(store: SQLAlchemyStore, **options: t.Any) -> SQLAlchemyStore:
    """A store on ``store``'s table whose statements wait little for locks."""
    connect_args, _ = SHORT_LOCK_WAITS[store.engine.dialect.name]
    url = store.engine.url.render_as_string(hide_password=False)
    return SQLAlchemyStore.from_url(
        url, table=store.table.name, connect_args=connect_args, **options
    )


@contextlib.contextmanager
def locked(
    store: SQLAlchemyStore, key: str, *, release_after: float
) -> t.Iterator[None]:
    """Hold a write lock on ``key``'s row (SQLite: the whole file) from
    another connection, and let go of it ``release_after`` seconds in."""
    if store.engine.dialect.name == "sqlite":
        raw = sqlite3.connect(
            store.engine.url.database or "",
            isolation_level=None,
            check_same_thread=False,  # released by the timer's thread
        )
        raw.execute("BEGIN IMMEDIATE")
        timer = threading.Timer(release_after, raw.rollback)
        timer.start()
        try:
            yield
        finally:
            timer.join()
            raw.close()
        return
    url = store.engine.url.render_as_string(hide_password=False)
    engine = sa.create_engine(url)  # transactions of its own
    c = store.table.c
    try:
        with engine.connect() as conn:
            row = sa.select(c.version).where(c.session_key == key)
            conn.execute(row.with_for_update())
            timer = threading.Timer(release_after, conn.rollback)
            timer.start()
            try:
                yield
            finally:
                timer.join()
    finally:
        engine.dispose()


def retries_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum("race for a lock" in r.getMessage() for r in caplog.records)


def test_a_statement_that_timed_out_on_a_lock_runs_again(
    sql_store: SQLAlchemyStore, caplog: pytest.LogCaptureFixture
) -> None:
    # A lock wait timeout is what a deadlock is to the store: the statement
    # was rolled back, and is run again after a short pause.
    store = impatient_store(sql_store)
    _, wait = SHORT_LOCK_WAITS[store.engine.dialect.name]
    record = a_record()
    store.create(record)
    later = utcnow() + timedelta(hours=1)
    caplog.set_level(logging.DEBUG, logger="flask_towersess.stores.sqlalchemy")
    try:
        with locked(store, record.key, release_after=wait * 1.5):
            started = time.monotonic()
            store.touch(record.key, later)
            elapsed = time.monotonic() - started
        loaded = store.load(record.key)
    finally:
        store.close()
    assert elapsed >= wait  # it waited, and lost, once
    assert retries_logged(caplog) >= 1
    assert loaded is not None
    assert abs(loaded.expires_at - later) < timedelta(seconds=1)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_lock_races_are_retried_a_bounded_number_of_times(
    backend: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    store = impatient_store(request.getfixturevalue(f"{backend}_store"))
    _, wait = SHORT_LOCK_WAITS[store.engine.dialect.name]
    record = a_record()
    store.create(record)
    caplog.set_level(logging.DEBUG, logger="flask_towersess.stores.sqlalchemy")
    held = wait * 3 + 1
    try:
        with locked(store, record.key, release_after=held):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                store.touch(record.key, utcnow() + timedelta(hours=1))
            elapsed = time.monotonic() - started
    finally:
        store.close()
    assert retries_logged(caplog) == 2  # 3 runs in all
    assert elapsed < held  # gave up, instead of waiting for the lock


def test_a_purge_batch_that_timed_out_on_a_lock_runs_again(
    mariadb_store: SQLAlchemyStore, caplog: pytest.LogCaptureFixture
) -> None:
    # MySQL's purge batch is a transaction (a read, then a delete at READ
    # COMMITTED): rolled back whole, then run again. One pooled connection,
    # so the write after it shows the connection went back to the pool in
    # autocommit, as the direct path needs.
    store = impatient_store(mariadb_store, pool_size=1, max_overflow=0)
    now = utcnow()
    expired = [
        Record(new_session_key(), b"old", now - timedelta(minutes=i + 1))
        for i in range(5)
    ]
    live = a_record(b"live")
    for record in [*expired, live]:
        store.create(record)
    caplog.set_level(logging.DEBUG, logger="flask_towersess.stores.sqlalchemy")
    try:
        # The oldest: in the first batch.
        with locked(store, expired[-1].key, release_after=1.5):
            assert store.purge_expired(2) == 5
        assert retries_logged(caplog) >= 1
        written = a_record(b"after the purge")
        store.create(written)
    finally:
        store.close()
    assert mariadb_store.load(written.key) == written
    assert mariadb_store.load(live.key) == live
    assert mariadb_store.count_expired() == 0


@pytest.mark.parametrize("backend", ["sqlite_file", "postgresql", "mariadb"])
def test_pool_sized_for_a_threaded_server(backend: str, tmp_path: t.Any) -> None:
    """Enough pooled connections for a worker with 10 threads: SQLAlchemy's
    default of 5 closed and reopened a connection on most statements under
    gunicorn's gthread worker with 8 threads."""
    from flask_towersess.stores.sqlalchemy import DEFAULT_MAX_OVERFLOW
    from flask_towersess.stores.sqlalchemy import DEFAULT_POOL_SIZE

    url = {
        "sqlite_file": f"sqlite:///{tmp_path / 's.sqlite3'}",
        "postgresql": POSTGRESQL_URL,
        "mariadb": MYSQL_URL,
    }[backend]
    engine = create_engine(url)
    assert isinstance(engine.pool, sa.pool.QueuePool)
    assert (engine.pool.size(), engine.pool._max_overflow) == (
        DEFAULT_POOL_SIZE,
        DEFAULT_MAX_OVERFLOW,
    )
    assert DEFAULT_POOL_SIZE >= 10
    engine.dispose()
    # SESSION_STORE_OPTIONS reach create_engine, and win.
    engine = create_engine(url, pool_size=3, max_overflow=0)
    assert (engine.pool.size(), engine.pool._max_overflow) == (3, 0)
    engine.dispose()


def test_pool_options_left_out_where_the_pool_takes_none() -> None:
    # In-memory SQLite and NullPool reject queue-pool options.
    create_engine("sqlite://").dispose()
    create_engine(POSTGRESQL_URL, poolclass=sa.pool.NullPool).dispose()
