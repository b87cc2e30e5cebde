"""Several processes starting at once on one database.

Workers of a server start together, and deploy hosts run ``flask sessions
migrate`` together: the zero-config SQLite store migrating itself on first
use in two workers at once answered 500 (``table sessions already exists``,
or ``database is locked`` from switching the new file to WAL). Here several
processes, released at the same moment, each migrate and then write a
session, on a table (or a SQLite file) that does not exist yet; every one of
them must succeed, and the table must end up complete.

Each worker is a subprocess: a plain ``python -c`` that sleeps until a shared
start time, so that their first statements really meet.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import typing as t
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from .fixtures_sql import MYSQL_URL
from .fixtures_sql import POSTGRESQL_URL
from .fixtures_sql import _server_engine

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 6
ROUNDS = 2

#: Each worker: build the store, wait for the common start, then migrate
#: (explicitly, or by first use for the auto-migrating store) and write.
WORKER = textwrap.dedent(
    """
    import sys, time
    from datetime import timedelta
    from flask_towersess.stores import Record, store_from_url
    from flask_towersess.stores.base import utcnow

    url, table, start_at, how, index = sys.argv[1:6]
    store = store_from_url(url, table=table, auto_migrate=(how == "first-use"))
    time.sleep(max(0.0, float(start_at) - time.time()))
    if how == "migrate":
        print(store.migrate())
    key = f"w{index}".ljust(43, "x")
    store.create(Record(key, b"payload", utcnow() + timedelta(minutes=5)))
    assert store.load(key).payload == b"payload"
    """
)


def start_together(
    url: str, table: str, how: str
) -> list[subprocess.CompletedProcess[str]]:
    start_at = time.time() + 1.5  # after every interpreter has started
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, table, str(start_at), how, str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(PROCESSES)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append(
            subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        )
    return results


def check_table(url: str, table: str) -> None:
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        assert inspector.has_table(table)
        indexes = {ix["name"] for ix in inspector.get_indexes(table)}
        assert any(name and "expires_at" in name for name in indexes), indexes
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table}").scalar()
        assert rows == PROCESSES
    finally:
        engine.dispose()


def drop_table(url: str, table: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sessions.sqlite3'}"
    url = POSTGRESQL_URL if request.param == "postgresql" else MYSQL_URL
    _server_engine(url).dispose()  # fails (CI) or skips when the server is down
    return url


def test_processes_migrating_at_once_all_succeed(database_url: str) -> None:
    """``flask sessions migrate`` from several deploy hosts at once."""
    for _ in range(ROUNDS):
        table = f"towersess_start_{uuid.uuid4().hex[:10]}"
        try:
            results = start_together(database_url, table, "migrate")
            failures = [r.stderr[-2000:] for r in results if r.returncode != 0]
            assert not failures, failures
            check_table(database_url, table)
        finally:
            drop_table(database_url, table)


def test_new_sqlite_file_opened_by_many_processes_at_once(tmp_path: Path) -> None:
    """The zero-config store in several workers: a new file, migrated on
    first use, each process switching it to WAL as it connects."""
    for round_ in range(ROUNDS):
        path = tmp_path / f"fresh{round_}" / "sessions.sqlite3"
        url = f"sqlite:///{path}"
        results = start_together(url, "sessions", "first-use")
        failures = [r.stderr[-2000:] for r in results if r.returncode != 0]
        assert not failures, failures
        check_table(url, "sessions")
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        engine.dispose()
        assert mode == "wal"


def test_migrate_reports_what_it_did_once_the_race_is_over(database_url: str) -> None:
    from flask_towersess.stores import store_from_url

    table = f"towersess_start_{uuid.uuid4().hex[:10]}"
    store = store_from_url(database_url, table=table)
    try:
        assert store.migrate() == [f"created table {table} with its indexes"]
        assert store.migrate() == [f"table {table} is up to date; nothing to do"]
    finally:
        t.cast(t.Any, store).close()
        drop_table(database_url, table)
