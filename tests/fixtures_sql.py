"""Store fixtures for the SQL backends: SQLite, PostgreSQL, MariaDB.

PostgreSQL and MariaDB are real servers (``TOWERSESS_POSTGRESQL_URL``,
``TOWERSESS_MYSQL_URL``); each test run uses its own table, emptied before
every test and dropped at the end.
"""

from __future__ import annotations

import os
import typing as t

import pytest
import sqlalchemy as sa

from flask_towersess.stores.memory import MemoryStore
from flask_towersess.stores.sqlalchemy import SQLAlchemyStore
from flask_towersess.stores.sqlalchemy import create_engine

from .services import service_unavailable

POSTGRESQL_URL = os.environ.get(
    "TOWERSESS_POSTGRESQL_URL",
    "postgresql+psycopg2://postgres:postgres@127.0.0.1:5432/test",
)
MYSQL_URL = os.environ.get(
    "TOWERSESS_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
)
SERVER_URLS = {"postgresql": POSTGRESQL_URL, "mariadb": MYSQL_URL}
TABLE = f"towersess_test_{os.getpid()}"


def _server_engine(url: str) -> sa.engine.Engine:
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        engine.dispose()
        service_unavailable(f"database at {url} is unreachable: {exc.orig}")
    return engine


@pytest.fixture(scope="session")
def _server_stores() -> t.Iterator[dict[str, SQLAlchemyStore | None]]:
    # Opened lazily, once per run: a test that needs only SQLite must not
    # fail because PostgreSQL is down.
    opened: dict[str, SQLAlchemyStore | None] = {}
    yield opened
    for store in opened.values():
        if store is not None:
            store.table.drop(store.engine, checkfirst=True)
            store.engine.dispose()


def _server_store(
    name: str, opened: dict[str, SQLAlchemyStore | None]
) -> SQLAlchemyStore:
    if name not in opened:
        opened[name] = None
        store = SQLAlchemyStore(_server_engine(SERVER_URLS[name]), table=TABLE)
        store.table.drop(store.engine, checkfirst=True)
        store.migrate()
        opened[name] = store
    store = opened[name]
    if store is None:
        service_unavailable(f"{name} is unreachable")
    assert store is not None
    with store.engine.begin() as conn:
        conn.execute(store.table.delete())
    return store


@pytest.fixture
def memory_store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def sqlite_store(tmp_path: t.Any) -> t.Iterator[SQLAlchemyStore]:
    store = SQLAlchemyStore.from_url(f"sqlite:///{tmp_path}/sessions.sqlite3")
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def sqlite_core_store(tmp_path: t.Any) -> t.Iterator[SQLAlchemyStore]:
    """SQLite on an engine whose statements the store must not bypass: one
    made by plain ``sqlalchemy.create_engine`` (transactions of its own),
    with a statement listener. Every call goes through
    ``Connection.execute()``; the other SQL stores take the direct path."""
    engine = sa.create_engine(f"sqlite:///{tmp_path}/core.sqlite3")
    sa.event.listen(engine, "before_cursor_execute", _count_statement)
    store = SQLAlchemyStore(engine)
    store.migrate()
    yield store
    engine.dispose()


def _count_statement(conn: t.Any, *args: t.Any) -> None:
    conn.info["statements"] = conn.info.get("statements", 0) + 1


@pytest.fixture
def postgresql_store(
    _server_stores: dict[str, SQLAlchemyStore | None],
) -> SQLAlchemyStore:
    return _server_store("postgresql", _server_stores)


@pytest.fixture
def mariadb_store(_server_stores: dict[str, SQLAlchemyStore | None]) -> SQLAlchemyStore:
    return _server_store("mariadb", _server_stores)


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def sql_store(request: pytest.FixtureRequest) -> SQLAlchemyStore:
    """Each SQL backend in turn."""
    return t.cast(SQLAlchemyStore, request.getfixturevalue(f"{request.param}_store"))
