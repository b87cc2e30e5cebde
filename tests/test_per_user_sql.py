"""SQLAlchemyStore's per-user index, on SQLite, PostgreSQL and MariaDB.

The index is the table's ``user_id`` column and its ``(user_id,
expires_at)`` index, written by the request's own statement: these tests
check it is exact (expired, deleted, retired, anonymous records are never
listed), that requests still cost one statement each and the per-user
operations a fixed number, that a table made by 0.1 is upgraded in place
and keeps serving before it is, and that hostile stored values are listed
as ``None``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import threading
import time
import typing as t
from datetime import datetime
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from flask_towersess.errors import ConfigurationError
from flask_towersess.stores import sqlalchemy as sql_module
from flask_towersess.stores._statements import CoreExecutor
from flask_towersess.stores._statements import DBAPIExecutor
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import utcnow
from flask_towersess.stores.sqlalchemy import SQLAlchemyStore
from flask_towersess.stores.sqlalchemy import create_engine

from .helpers import at_once
from .helpers import unhashed_pages

RETIRED = datetime(2000, 1, 1).astimezone()  # how the session layer retires a key


def hashed_key() -> str:
    return hashlib.sha256(secrets.token_urlsafe(32).encode()).hexdigest()


def login(
    store: SQLAlchemyStore,
    user_id: str | None,
    *,
    active: datetime | None = None,
    ttl: float = 600,
    key: str | None = None,
) -> Record:
    now = utcnow()
    record = Record(
        key or hashed_key(),
        b"payload",
        now + timedelta(seconds=ttl),
        1,
        user_id=user_id,
        created_at=now,
        last_active_at=active or now,
        user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
        ip="203.0.113.7",
    )
    store.create(record)
    return record


def listed(store: SQLAlchemyStore, user_id: str) -> set[str]:
    return {record.key for record in store.sessions_of(user_id)}


def rows_of(store: SQLAlchemyStore, user_id: str) -> int:
    """Rows holding ``user_id``, live or not, counted behind the store's back."""
    c = store.table.c
    with store.engine.connect() as conn:
        query = sa.select(sa.func.count()).where(c.user_id == user_id)
        return int(conn.execute(query).scalar_one())


def own_engine_store(
    store: SQLAlchemyStore, table: str | None = None
) -> SQLAlchemyStore:
    url = store.engine.url.render_as_string(hide_password=False)
    return SQLAlchemyStore(create_engine(url), table=table or store.table.name)


@pytest.fixture
def counted_store(sql_store: SQLAlchemyStore) -> t.Iterator[SQLAlchemyStore]:
    """A store on ``sql_store``'s table with an engine of its own, whose
    statements a ``before_cursor_execute`` listener counts (a listener stays
    on an engine for good: the shared one must keep its direct path)."""
    store = own_engine_store(sql_store)
    store.statements = []  # type: ignore[attr-defined]

    def listener(conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
        store.statements.append(statement)  # type: ignore[attr-defined]

    sa.event.listen(store.engine, "before_cursor_execute", listener)
    yield store
    store.engine.dispose()


@contextlib.contextmanager
def statements(store: SQLAlchemyStore) -> t.Iterator[list[str]]:
    seen: list[str] = store.statements  # type: ignore[attr-defined]
    seen.clear()
    yield seen


# -- the index is exact ---------------------------------------------------------


def test_listing_shows_the_fields(sql_store: SQLAlchemyStore) -> None:
    record = login(sql_store, "alice")
    (info,) = sql_store.sessions_of("alice")
    assert info.key == record.key
    assert info.user_id == "alice"
    assert info.payload == b""
    for name in ("created_at", "last_active_at", "expires_at"):
        got, wanted = getattr(info, name), getattr(record, name)
        assert abs(got - wanted) < timedelta(milliseconds=1), name
    assert info.user_agent == record.user_agent
    assert info.ip == record.ip
    assert sql_store.sessions_of("bob") == []


def test_expired_records_leave_the_listing_without_a_purge(
    sql_store: SQLAlchemyStore,
) -> None:
    short = login(sql_store, "alice", ttl=1)
    long = login(sql_store, "alice")
    assert listed(sql_store, "alice") == {short.key, long.key}
    time.sleep(1.2)
    assert listed(sql_store, "alice") == {long.key}
    assert sql_store.per_user_counts(10) == [("alice", 1)]
    assert sql_store.delete_sessions_of("alice") == [long.key]
    assert rows_of(sql_store, "alice") == 1  # the expired row, for the purge


def test_user_ids_are_compared_exactly(sql_store: SQLAlchemyStore) -> None:
    # MySQL's default collations would fold case and accents.
    for user in ("Alice", "alice", "alicé", "用户"):
        login(sql_store, user)
    for user in ("Alice", "alice", "alicé", "用户"):
        (info,) = sql_store.sessions_of(user)
        assert info.user_id == user
    assert sql_store.sessions_of("ALICE") == []


def test_login_logout_cycles_leave_nothing(sql_store: SQLAlchemyStore) -> None:
    for _ in range(1000):
        record = login(sql_store, "cycler")
        sql_store.delete(record.key)
    assert sql_store.sessions_of("cycler") == []
    assert rows_of(sql_store, "cycler") == 0


def test_parallel_logins_are_all_listed(sql_store: SQLAlchemyStore) -> None:
    def one(barrier: threading.Barrier) -> str:
        barrier.wait()
        return login(sql_store, "busy").key

    keys = at_once(*[one] * 20)
    assert len(set(keys)) == 20
    assert listed(sql_store, "busy") == set(keys)


def test_rotation_moves_the_entry(sql_store: SQLAlchemyStore) -> None:
    # What cycle_key() does: create the new record, then retire the old one
    # by compare-and-set (empty, long expired, anonymous).
    old = login(sql_store, "alice")
    new = login(sql_store, "alice")
    sql_store.save(Record(old.key, b"", RETIRED, old.version + 1), old.version)
    assert listed(sql_store, "alice") == {new.key}
    assert sql_store.load(old.key) is None


def test_a_save_that_changes_the_user_moves_the_entry(
    sql_store: SQLAlchemyStore,
) -> None:
    record = login(sql_store, "alice")
    as_bob = Record(
        record.key,
        b"v2",
        record.expires_at,
        2,
        user_id="bob",
        created_at=record.created_at,
    )
    sql_store.save(as_bob, 1)
    assert listed(sql_store, "alice") == set()
    assert listed(sql_store, "bob") == {record.key}
    anonymous = Record(record.key, b"v3", record.expires_at, 3)
    sql_store.save(anonymous, 2)
    assert listed(sql_store, "bob") == set()
    assert sql_store.per_user_counts(10) == []


def test_touch_sets_last_active(sql_store: SQLAlchemyStore) -> None:
    long_ago = utcnow() - timedelta(hours=5)
    record = login(sql_store, "alice", active=long_ago)
    later = utcnow() + timedelta(hours=2)
    before = utcnow()
    sql_store.touch(record.key, later)
    (info,) = sql_store.sessions_of("alice")
    assert info.last_active_at is not None and info.last_active_at >= before
    assert abs(info.expires_at - later) < timedelta(milliseconds=1)


# -- ending sessions ----------------------------------------------------------------


def test_delete_sessions_of(sql_store: SQLAlchemyStore) -> None:
    mine = [login(sql_store, "alice").key for _ in range(4)]
    bobs = login(sql_store, "bob").key
    anonymous = login(sql_store, None).key
    # Some keys, one of them another user's and one anonymous: left alone.
    ended = sql_store.delete_sessions_of("alice", [mine[0], bobs, anonymous])
    assert ended == [mine[0]]
    # All but one.
    assert set(sql_store.delete_sessions_of("alice", keep=mine[1])) == set(mine[2:])
    assert listed(sql_store, "alice") == {mine[1]}
    # All.
    assert sql_store.delete_sessions_of("alice") == [mine[1]]
    assert sql_store.delete_sessions_of("alice") == []
    assert sql_store.delete_sessions_of("alice", []) == []
    assert listed(sql_store, "bob") == {bobs}
    assert sql_store.load(anonymous) is not None


def test_delete_many(sql_store: SQLAlchemyStore) -> None:
    records = [login(sql_store, "alice") for _ in range(5)]
    sql_store.delete_many([r.key for r in records[:3]] + [hashed_key()])
    assert listed(sql_store, "alice") == {r.key for r in records[3:]}
    sql_store.delete_many([])


def test_trim_keeps_the_most_recent_and_the_current(
    sql_store: SQLAlchemyStore,
) -> None:
    start = utcnow() - timedelta(hours=1)
    records = [
        login(sql_store, "alice", active=start + timedelta(minutes=i)) for i in range(6)
    ]
    # The current session is the least recent one: it stays anyway.
    ended = sql_store.trim_sessions_of("alice", 3, keep=records[0].key)
    assert set(ended) == {r.key for r in records[1:3]}
    assert listed(sql_store, "alice") == {records[0].key, *(r.key for r in records[3:])}
    assert sql_store.trim_sessions_of("alice", 3, keep=records[5].key) == [
        records[0].key
    ]
    assert sql_store.trim_sessions_of("alice", 3, keep=records[5].key) == []


def test_trim_orders_records_without_activity_last_and_ties_by_key(
    sql_store: SQLAlchemyStore,
) -> None:
    same = utcnow() - timedelta(minutes=5)
    keys = sorted(hashed_key() for _ in range(3))
    for key in keys:
        login(sql_store, "alice", active=same, key=key)
    legacy = Record(
        hashed_key(), b"0.1", utcnow() + timedelta(hours=1), user_id="alice"
    )
    sql_store.create(legacy)  # no last_active_at: least recent of all
    current = login(sql_store, "alice")
    ended = sql_store.trim_sessions_of("alice", 3, keep=current.key)
    # Survivors: current, then the two greatest keys of the tie.
    assert set(ended) == {legacy.key, keys[0]}


@pytest.mark.parametrize("together", [False, True], ids=["trims-race", "logins-race"])
def test_racing_logins_agree(sql_store: SQLAlchemyStore, together: bool) -> None:
    """Two logins trim at once: both new sessions survive, the limit holds."""
    for round_ in range(8):
        user = f"racer{round_}"
        start = utcnow() - timedelta(hours=1)
        for i in range(5):
            login(sql_store, user, active=start + timedelta(minutes=i))
        new = _race_logins(sql_store, user, together)
        assert listed(sql_store, user) == set(new)


def _race_logins(store: SQLAlchemyStore, user: str, together: bool) -> list[str]:
    """Two threads each log ``user`` in and trim to 2: with ``together``
    the logins start at once, else the trims do. Their new keys."""

    def one(barrier: threading.Barrier) -> str:
        if together:
            barrier.wait()
        record = login(store, user)
        if not together:
            barrier.wait()
        store.trim_sessions_of(user, 2, keep=record.key)
        return record.key

    return at_once(one, one)


def test_per_user_counts(sql_store: SQLAlchemyStore) -> None:
    for user, count in (("a", 3), ("b", 1), ("c", 3), ("d", 2)):
        for _ in range(count):
            login(sql_store, user)
    login(sql_store, None)
    login(sql_store, "e", ttl=-1)  # expired
    assert sql_store.per_user_counts(3) == [("a", 3), ("c", 3), ("d", 2)]
    assert sql_store.per_user_counts(0) == []


def test_bad_user_ids_are_refused(sql_store: SQLAlchemyStore) -> None:
    for bad in ("", "x" * 256, "line\nbreak"):
        with pytest.raises(ValueError):
            sql_store.sessions_of(bad)
        with pytest.raises(ValueError):
            login(sql_store, bad)
    with pytest.raises(TypeError):
        sql_store.delete_sessions_of(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sql_store.delete_sessions_of("alice", ["not a key!"])


def test_metadata_is_made_to_fit(sql_store: SQLAlchemyStore) -> None:
    # A database would refuse these (PostgreSQL a NUL, VARCHAR(256) more).
    now = utcnow()
    record = Record(
        hashed_key(),
        b"x",
        now + timedelta(hours=1),
        user_id="alice",
        created_at=now,
        user_agent="A\x00B\ud800" + "x" * 300,
        ip="f" * 46,
    )
    sql_store.create(record)
    (info,) = sql_store.sessions_of("alice")
    assert info.user_agent is not None
    assert info.user_agent.startswith("ABx") and len(info.user_agent) <= 256
    assert info.ip is None


# -- keys 0.1 stored unhashed ------------------------------------------------------


def test_unhashed_keys(sql_store: SQLAlchemyStore) -> None:
    now = utcnow()
    unhashed = sorted(secrets.token_urlsafe(32) for _ in range(7))
    # 64 characters, but upper case: not of the hashed form either.
    unhashed.append("A" * 64)
    unhashed.sort()
    for key in unhashed:
        sql_store.create(Record(key, b"0.1", now + timedelta(hours=1)))
    sql_store.create(
        Record(secrets.token_urlsafe(32), b"old", now - timedelta(hours=1))
    )
    for _ in range(3):
        login(sql_store, "alice")
    assert sql_store.count_unhashed() == 8
    pages = unhashed_pages(sql_store, 3)
    seen = [key for page in pages for key in page]
    # In the database's collation order, each key once.
    assert sorted(seen) == unhashed and len(set(seen)) == len(seen)
    assert len(pages) == 3


# -- statements -----------------------------------------------------------------------


def test_requests_cost_one_statement_each(counted_store: SQLAlchemyStore) -> None:
    store = counted_store
    record = Record(
        hashed_key(),
        b"x",
        utcnow() + timedelta(hours=1),
        user_id="alice",
        created_at=utcnow(),
        last_active_at=utcnow(),
        user_agent="UA",
    )
    with statements(store) as seen:
        store.create(record)
    assert len(seen) == 1
    with statements(store) as seen:
        store.load(record.key)
    assert len(seen) == 1
    saved = Record(record.key, b"y", record.expires_at, 2, user_id="bob")
    with statements(store) as seen:
        store.save(saved, 1)
    assert len(seen) == 1
    with statements(store) as seen:
        store.touch(record.key, record.expires_at + timedelta(minutes=1))
    assert len(seen) == 1
    with statements(store) as seen:
        store.delete(record.key)
    assert len(seen) == 1


def test_requests_keep_the_direct_path(
    sql_store: SQLAlchemyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the per-user columns, the per-request statements still skip
    # Connection.execute() on an engine nobody listens to.
    direct: list[str] = []
    core: list[str] = []
    for cls, seen in ((DBAPIExecutor, direct), (CoreExecutor, core)):
        for name in ("first", "rowcount", "all"):
            monkeypatch.setattr(cls, name, _recording(getattr(cls, name), seen))
    record = login(sql_store, "alice")
    sql_store.load(record.key)
    sql_store.save(Record(record.key, b"v2", record.expires_at, 2, user_id="alice"), 1)
    sql_store.touch(record.key, record.expires_at)
    sql_store.sessions_of("alice")
    sql_store.trim_sessions_of("alice", 5, keep=record.key)
    sql_store.delete(record.key)
    assert core == []
    assert direct[:5] == ["rowcount", "first", "rowcount", "rowcount", "all"]


def _recording(method: t.Any, seen: list[str]) -> t.Any:
    def recorded(self: t.Any, *args: t.Any) -> t.Any:
        seen.append(method.__name__)
        return method(self, *args)

    return recorded


@pytest.mark.parametrize("returning", [True, False], ids=["returning", "for-update"])
def test_per_user_operations_cost_a_fixed_number_of_statements(
    counted_store: SQLAlchemyStore, returning: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = counted_store
    with store.engine.connect():
        pass  # the dialect meets the server (MariaDB: RETURNING)
    if not returning:
        # The path of MySQL, and of SQLite before 3.35: a transaction that
        # locks the rows, then deletes.
        monkeypatch.setattr(store.engine.dialect, "delete_returning", False)
    costs = []
    for count in (10, 1000):
        user = f"many{count}"
        _bulk_login(store, user, count)
        keep = store.sessions_of(user)[0].key
        cost = {}
        with statements(store) as seen:
            assert len(store.sessions_of(user)) == count
        cost["list"] = len(seen)
        with statements(store) as seen:
            # Leaves at least 8 records besides ``keep``.
            assert len(store.trim_sessions_of(user, 8, keep=keep)) >= 1
        cost["trim"] = len(seen)
        some = [r.key for r in store.sessions_of(user) if r.key != keep][:5]
        with statements(store) as seen:
            assert len(store.delete_sessions_of(user, some)) == 5
        cost["some"] = len(seen)
        with statements(store) as seen:
            assert len(store.delete_sessions_of(user, keep=keep)) > 0
        cost["all"] = len(seen)
        with statements(store) as seen:
            store.delete_many([keep, hashed_key()])
        cost["many"] = len(seen)
        assert store.sessions_of(user) == []
        costs.append(cost)
    assert costs[0] == costs[1]
    if returning and store.engine.dialect.name in ("sqlite", "postgresql"):
        assert costs[0] == {"list": 1, "trim": 1, "some": 1, "all": 1, "many": 1}
    elif returning:  # MariaDB: trims in a transaction of two
        assert costs[0] == {"list": 1, "trim": 2, "some": 1, "all": 1, "many": 1}
    else:
        extra = 1 if store.engine.dialect.name == "sqlite" else 0  # the write lock
        assert costs[0]["trim"] == costs[0]["all"] == 2 + extra


def _bulk_login(store: SQLAlchemyStore, user: str, count: int) -> None:
    now = utcnow()
    rows = [
        {
            "session_key": hashed_key(),
            "payload": b"x",
            "expires_at": (now + timedelta(hours=1)).replace(tzinfo=None),
            "version": 1,
            "user_id": user,
            "last_active_at": (now - timedelta(seconds=i)).replace(tzinfo=None),
        }
        for i in range(count)
    ]
    with store.engine.begin() as conn:
        conn.execute(store.table.insert(), rows)


# -- hostile stored values -------------------------------------------------------------


def _set(store: SQLAlchemyStore, key: str, column: str, value: object) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                f"UPDATE {store.table.fullname} SET {column} = :v WHERE session_key = :k"
            ),
            {"v": value, "k": key},
        )


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("created_at", "garbage"),
        ("created_at", 12345),
        ("last_active_at", "2024-02-30 00:00:00"),
        ("last_active_at", b"\xff\x00"),
        ("user_agent", b"\xff\xfe"),
        ("user_agent", "u" * 1000),
        ("ip", b"\x00"),
        ("ip", "1" * 46),
    ],
)
def test_sqlite_hostile_metadata_is_listed_as_none(
    sqlite_store: SQLAlchemyStore, column: str, value: object
) -> None:
    record = login(sqlite_store, "alice")
    _set(sqlite_store, record.key, column, value)
    (info,) = sqlite_store.sessions_of("alice")
    assert getattr(info, column) is None
    assert info.key == record.key


def test_sqlite_unreadable_expiry_is_not_listed(sqlite_store: SQLAlchemyStore) -> None:
    record = login(sqlite_store, "alice")
    other = login(sqlite_store, "alice")
    _set(sqlite_store, record.key, "expires_at", "zzz not a time")
    _set(sqlite_store, other.key, "version", "abc")
    assert sqlite_store.sessions_of("alice") == []


@pytest.mark.parametrize("value", ["10000-01-01 00:00:00", "infinity", "-infinity"])
def test_postgresql_times_python_cannot_hold_are_listed_as_none(
    postgresql_store: SQLAlchemyStore, value: str
) -> None:
    record = login(postgresql_store, "alice")
    _set(postgresql_store, record.key, "created_at", value)
    _set(postgresql_store, record.key, "last_active_at", value)
    (info,) = postgresql_store.sessions_of("alice")
    assert info.created_at is None and info.last_active_at is None


# -- a table made by 0.1 ---------------------------------------------------------------


def table_0_1(metadata: sa.MetaData, name: str) -> sa.Table:
    """The table as flask-towersess 0.1.0 made it (build_table at 2212bc3)."""
    key_type = sa.String(64).with_variant(
        mysql.VARCHAR(64, charset="ascii", collation="ascii_bin"), "mysql", "mariadb"
    )
    payload_type = sa.LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")
    time_type = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    return sa.Table(
        name,
        metadata,
        sa.Column("session_key", key_type, primary_key=True),
        sa.Column("payload", payload_type, nullable=False),
        sa.Column("expires_at", time_type, nullable=False, index=True),
        sa.Column("version", sa.Integer, nullable=False),
    )


_tables = iter(range(10**6))


@pytest.fixture
def old_table(
    sql_store: SQLAlchemyStore,
) -> t.Iterator[tuple[SQLAlchemyStore, list[Record]]]:
    """A table 0.1.0 made, with records 0.1.0 wrote (unhashed keys), and a
    0.2 store on it that has not migrated it."""
    name = f"towersess_v01_{os.getpid()}_{next(_tables)}"
    engine = sql_store.engine
    table = table_0_1(sa.MetaData(), name)
    table.create(engine)
    now = utcnow()
    records = [
        Record(secrets.token_urlsafe(32), b"0.1 data", now + timedelta(hours=1), 3)
        for _ in range(3)
    ]
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {
                    "session_key": r.key,
                    "payload": r.payload,
                    "expires_at": r.expires_at.replace(tzinfo=None),
                    "version": r.version,
                }
                for r in records
            ],
        )
    store = SQLAlchemyStore(engine, table=name)
    try:
        yield store, records
    finally:
        table.drop(engine, checkfirst=True)


def test_migrate_upgrades_a_0_1_table(
    old_table: tuple[SQLAlchemyStore, list[Record]],
) -> None:
    store, records = old_table
    name = store.table.name
    index = f"ix_{name}_user_id_expires_at"
    columns = ["user_id", "created_at", "last_active_at", "user_agent", "ip"]
    assert store.pending_migrations() == [
        *(f"add column {c} to {name}" for c in columns),
        f"create index {index} on {name}",
    ]
    assert store.migrate() == [
        *(f"added column {c} to {name}" for c in columns),
        f"created index {index} on {name}",
    ]
    assert store.pending_migrations() == []
    assert store.migrate() == [f"table {name} is up to date; nothing to do"]
    for record in records:
        assert store.load(record.key) == record
    assert store.count_unhashed() == 3
    new = login(store, "alice")
    assert listed(store, "alice") == {new.key}
    indexes = {
        ix["name"]: ix["column_names"]
        for ix in sa.inspect(store.engine).get_indexes(name)
    }
    assert indexes[index] == ["user_id", "expires_at"]


def test_a_0_1_table_keeps_serving_before_the_migration(
    old_table: tuple[SQLAlchemyStore, list[Record]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, records = old_table
    caplog.set_level(logging.WARNING, logger="flask_towersess.stores.sqlalchemy")
    # 0.1's records are read, saved, touched, deleted.
    old = records[0]
    assert store.load(old.key) == old
    store.save(Record(old.key, b"v4", old.expires_at, 4, user_id="alice"), 3)
    store.touch(old.key, old.expires_at + timedelta(minutes=5))
    loaded = store.load(old.key)
    assert loaded is not None and loaded.payload == b"v4"
    # New sessions are written without the per-user fields, with a warning.
    new = login(store, "alice")
    assert store.load(new.key) is not None
    warnings = [r for r in caplog.records if "flask sessions migrate" in r.getMessage()]
    assert len(warnings) == 1  # once: the columns are not tried on every write
    store.delete(records[1].key)
    assert store.load(records[1].key) is None
    # The per-user API says what to do; a login's trim lets it go on.
    with pytest.raises(ConfigurationError, match="flask sessions migrate"):
        store.sessions_of("alice")
    with pytest.raises(ConfigurationError, match="flask sessions migrate"):
        store.delete_sessions_of("alice")
    assert store.trim_sessions_of("alice", 1, keep=new.key) == []
    # Migrated elsewhere (the CLI, another host): noticed at the next look.
    elsewhere = own_engine_store(store)
    elsewhere.migrate()
    elsewhere.engine.dispose()
    newer = login(store, "alice")
    assert listed(store, "alice") == set()  # still writing the 0.1 way
    monkeypatch.setattr(sql_module, "RECHECK_SECONDS", 0)
    newest = login(store, "alice")
    assert listed(store, "alice") == {newest.key}
    # Sessions written meanwhile join the index at their next save.
    store.save(Record(newer.key, b"v2", newer.expires_at, 2, user_id="alice"), 1)
    assert listed(store, "alice") == {newest.key, newer.key}


def test_auto_migrate_upgrades_an_old_sqlite_file(tmp_path: t.Any) -> None:
    # The zero-config default migrates itself, an old file included.
    url = f"sqlite:///{tmp_path}/old.sqlite3"
    engine = create_engine(url)
    table_0_1(sa.MetaData(), "sessions").create(engine)
    old = Record(secrets.token_urlsafe(32), b"0.1", utcnow() + timedelta(hours=1))
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO sessions VALUES (?, ?, ?, 1)",
            (old.key, old.payload, old.expires_at.replace(tzinfo=None).isoformat(" ")),
        )
    engine.dispose()
    store = SQLAlchemyStore.from_url(url, auto_migrate=True)
    try:
        assert store.load(old.key) == old
        assert store.pending_migrations() == []
        new = login(store, "alice")
        assert listed(store, "alice") == {new.key}
    finally:
        store.close()


def test_migration_sql_shows_the_new_table_and_the_upgrade(
    sql_store: SQLAlchemyStore,
) -> None:
    sql = sql_store.migration_sql()
    new, upgrade = sql.split("-- Upgrading a table made by flask-towersess 0.1")
    name = sql_store.table.name
    assert f"CREATE TABLE {name} (" in new
    assert "user_id VARCHAR(255)" in new
    assert f"ix_{name}_user_id_expires_at ON {name} (user_id, expires_at)" in new
    assert "ALTER TABLE" not in new
    for column in ("user_id", "created_at", "last_active_at", "user_agent", "ip"):
        assert "ADD COLUMN" in upgrade and column in upgrade
    dialect = sql_store.engine.dialect.name
    if dialect == "postgresql":
        assert "CREATE INDEX CONCURRENTLY" in upgrade
        assert "cannot run inside a transaction" in upgrade
    elif dialect in ("mysql", "mariadb"):
        assert "ALGORITHM=INSTANT" in upgrade and "LOCK=NONE" in upgrade


def test_postgresql_rebuilds_an_index_a_failed_concurrent_build_left_invalid(
    postgresql_store: SQLAlchemyStore,
) -> None:
    store = own_engine_store(postgresql_store)
    name = store.table.name
    index = f"ix_{name}_user_id_expires_at"
    try:
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE pg_index SET indisvalid = false"
                f" WHERE indexrelid = '{index}'::regclass"
            )
        assert store.pending_migrations() == [
            f"rebuild invalid index {index} on {name}"
        ]
        assert store.migrate() == [f"rebuilt invalid index {index} on {name}"]
        assert store.pending_migrations() == []
    finally:
        store.engine.dispose()
