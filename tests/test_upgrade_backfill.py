"""The per-user index backfill of ``flask sessions migrate`` (issue 17).

A 0.2 app that serves on a table 0.1.0 made, before ``migrate`` added the
per-user columns, writes its sessions without them: those it moves from
an unhashed key, and new ones (logins too). ``migrate`` fills in their user
from each session's data, so that every logged-in session is listed by
``sessions_for``; ``--check`` counts the ones left; a second ``migrate``
changes nothing. On SQLite, PostgreSQL and MariaDB, with and without
``SESSION_ENCRYPTION_KEY``.
"""

from __future__ import annotations

import base64
import re
import typing as t
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask
from flask import session
from flask.testing import FlaskClient

from flask_towersess import upgrade
from flask_towersess.per_user import mark_revoked
from flask_towersess.per_user import revoked_at
from flask_towersess.per_user import session_handle
from flask_towersess.session import stored_key
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import utcnow
from flask_towersess.stores.sqlalchemy import SQLAlchemyStore

from .apps import add_flask_login
from .apps import session_app
from .fixtures_sql import MYSQL_URL
from .fixtures_sql import POSTGRESQL_URL
from .legacy import LegacyPython
from .legacy import LegacySession
from .test_legacy_harness import Target
from .test_legacy_harness import _sql_engine

SECRET_KEY = "upgrade backfill secret"
ENCRYPTION_KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def sql_target(request: pytest.FixtureRequest, tmp_path: t.Any) -> t.Iterator[Target]:
    """An SQL database, with a table name of its own."""
    name = request.param
    if name == "sqlite":
        yield Target(name, f"sqlite:///{tmp_path}/backfill.sqlite3", {"table": "t"})
        return
    url = POSTGRESQL_URL if name == "postgresql" else MYSQL_URL
    table = f"towersess_backfill_{uuid.uuid4().hex[:12]}"
    engine = _sql_engine(url)
    try:
        yield Target(name, url, {"table": table})
    finally:
        sa.Table(table, sa.MetaData()).drop(engine, checkfirst=True)
        engine.dispose()


def app_on(where: Target, config: dict[str, t.Any]) -> Flask:
    """The 0.2 app, with Flask-Login, on the table 0.1.0 made."""
    app = session_app(
        None,
        SECRET_KEY=SECRET_KEY,
        TESTING=True,
        SESSION_STORE=where.url,
        SESSION_STORE_OPTIONS=dict(where.options),
        **config,
    )
    add_flask_login(app)

    @app.post("/visit")
    def visit() -> str:
        session["visits"] = session.get("visits", 0) + 1
        return str(session["visits"])

    return app


def store_of(app: Flask) -> SQLAlchemyStore:
    store = app.extensions["towersess"].get_store(app)
    assert isinstance(store, SQLAlchemyStore)
    return store


def legacy_client(app: Flask, legacy: LegacySession) -> FlaskClient:
    client = app.test_client()
    client.set_cookie(legacy.cookie_name, legacy.cookie)
    return client


def me(client: FlaskClient) -> str:
    response = client.get("/me")
    assert response.status_code == 200, response.text
    return response.text


def rows(where: Target) -> dict[str, tuple[t.Any, ...]]:
    """Every row, read behind the store's back: key -> (version, user_id,
    created_at is set, last_active_at is set); the last three ``None,
    False, False`` on a table without the per-user columns."""
    fields = "user_id, created_at, last_active_at"
    if not has_user_column(where):
        fields = "NULL, NULL, NULL"
    engine = sa.create_engine(where.url)
    try:
        with engine.connect() as conn:
            found = conn.exec_driver_sql(
                f"SELECT session_key, version, {fields} FROM {where.options['table']}"
            )
            return {
                row[0]: (row[1], row[2], row[3] is not None, row[4] is not None)
                for row in found
            }
    finally:
        engine.dispose()


def has_user_column(where: Target) -> bool:
    engine = sa.create_engine(where.url)
    try:
        columns = sa.inspect(engine).get_columns(where.options["table"])
        return "user_id" in {column["name"] for column in columns}
    finally:
        engine.dispose()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_sessions_written_before_migrate_are_indexed(
    legacy_python: LegacyPython, sql_target: Target, encrypted: bool
) -> None:
    config = {"SESSION_ENCRYPTION_KEY": ENCRYPTION_KEY} if encrypted else {}
    # 0.1.0 makes the table: two anonymous sessions, two logged-in ones.
    written = legacy_python.write_sessions(
        sql_target.url,
        secret_key=SECRET_KEY,
        options=sql_target.options,
        config=config,
        count=4,
        kinds=["anonymous", "logged_in"],
    )
    legacy = written.sessions
    assert [s.data.get("_user_id") for s in legacy] == [None, "u1", None, "u3"]

    # The 0.2 app serves before migrate: the 0.1.0 cookies it sees are
    # moved under their hash, logins and visits make new sessions; all are
    # written without the per-user fields the table has no columns for.
    app = app_on(sql_target, config)
    store = store_of(app)
    assert me(legacy_client(app, legacy[0])) == "anonymous"
    assert me(legacy_client(app, legacy[1])) == "u1"
    devices: dict[str, list[FlaskClient]] = {"alice": [], "bob": []}
    for user in ("alice", "bob", "bob"):
        client = app.test_client()
        assert client.post(f"/login/{user}").status_code == 200
        devices[user].append(client)
    visitor = app.test_client()
    assert visitor.post("/visit").text == "1"
    # A revoke-all's mark, written without the fields as well.
    mark_revoked(store, "carol", lasting=timedelta(days=1))
    assert not has_user_column(sql_target)
    before = rows(sql_target)
    hashed = {key for key in before if len(key) == 64}
    assert len(hashed) == 7 and len(before) == 9

    runner = app.test_cli_runner()
    result = runner.invoke(args=["sessions", "migrate"])
    assert result.exit_code == 0, result.output
    # Two 0.1.0 keys left to hash; the two moved before, three logins and
    # the visit to index (the mark is no session).
    assert result.stdout.splitlines()[-1] == (
        "hashed 2 session keys; indexed 6 sessions written before the upgrade"
    )

    after = rows(sql_target)
    assert len(after) == 9 and all(len(key) == 64 for key in after)
    # Every row has its fields now; the indexed ones moved one version on.
    assert all(fields[2:] == (True, True) for fields in after.values())
    for key in hashed:
        assert after[key][0] == before[key][0] + 1
    assert store.count_unindexed() == 0

    ext = app.extensions["towersess"]

    def listed(user: str) -> list[str]:
        return sorted(info.id for info in ext.sessions_for(user, app=app))

    for session_ in legacy[1::2]:
        user = session_.data["_user_id"]
        assert listed(user) == [session_handle(stored_key(session_.key))]
    assert len(listed("alice")) == 1 and len(listed("bob")) == 2
    users = {fields[1] for fields in after.values()}
    assert users == {None, "u1", "u3", "alice", "bob"}
    assert revoked_at(store, "carol") is not None

    # Nobody is logged out, and the anonymous sessions keep their data.
    for session_ in legacy:
        assert me(legacy_client(app, session_)) == session_.data.get(
            "_user_id", "anonymous"
        )
    for user, clients in devices.items():
        assert [me(client) for client in clients] == [user] * len(clients)
    assert visitor.post("/visit").text == "2"

    check = runner.invoke(args=["sessions", "migrate", "--check"])
    assert check.exit_code == 0, check.output
    assert check.stdout.endswith(" is up to date; nothing to migrate\n")

    # A second migrate changes nothing, and says so.
    settled = rows(sql_target)
    again = runner.invoke(args=["sessions", "migrate"])
    assert again.exit_code == 0, again.output
    assert "hashed" not in again.stdout and "indexed" not in again.stdout
    assert "nothing to do" in again.stdout
    assert rows(sql_target) == settled


def test_a_touch_before_the_backfill_leaves_the_session_to_index(
    legacy_python: LegacyPython, sql_target: Target
) -> None:
    """A touch sets last_active_at alone: a session written without its
    user and touched once the columns exist is still listed, and indexed;
    ``--check`` counts it until then."""
    legacy_python.write_sessions(
        sql_target.url,
        secret_key=SECRET_KEY,
        options=sql_target.options,
        count=1,
        kinds=["anonymous"],
    )
    app = app_on(sql_target, {})
    store = store_of(app)
    client = app.test_client()
    assert client.post("/login/dana").status_code == 200
    (key,) = [key for key in rows(sql_target) if len(key) == 64]

    # The schema alone, as migrate's first step does it.
    store.migrate()
    store.touch(key, utcnow() + timedelta(days=2))
    assert rows(sql_target)[key][1:] == (None, False, True)
    assert store.count_unindexed() == 1
    assert store.unindexed_keys(None, 10) == ([key], None)

    runner = app.test_cli_runner()
    check = runner.invoke(args=["sessions", "migrate", "--check"])
    assert check.exit_code == 1
    assert check.stdout.splitlines() == [
        "1 session key stored unhashed (by 0.1)",
        "1 session not in the per-user index (written before the upgrade)",
    ]
    assert check.stderr.endswith("run `flask sessions migrate`.\n")

    result = runner.invoke(args=["sessions", "migrate", "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    assert re.search(
        r"^hashed 1 session key; indexed 1 session written before the upgrade$",
        result.stdout,
        re.M,
    )
    ext = app.extensions["towersess"]
    assert [info.id for info in ext.sessions_for("dana", app=app)] == [
        session_handle(key)
    ]
    assert me(client) == "dana"
    assert runner.invoke(args=["sessions", "migrate", "--check"]).exit_code == 0


def test_a_request_that_saves_first_wins(
    legacy_python: LegacyPython, sql_target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backfill writes by compare-and-set: a request that saved the
    session after the backfill read it keeps its write (and its fields)."""
    legacy_python.write_sessions(
        sql_target.url,
        secret_key=SECRET_KEY,
        options=sql_target.options,
        count=1,
        kinds=["anonymous"],
    )
    app = app_on(sql_target, {})
    store = store_of(app)
    client = app.test_client()
    assert client.post("/login/erin").status_code == 200
    (key,) = [key for key in rows(sql_target) if len(key) == 64]
    store.migrate()

    real_load_current = store.load_current

    def load_then_request(stored: str) -> Record | None:
        record = real_load_current(stored)
        # A request saves the session in between: with its fields.
        monkeypatch.undo()
        assert client.post("/visit").text == "1"
        return record

    monkeypatch.setattr(store, "load_current", load_then_request)
    assert upgrade.index_record(store, key) is False
    version, user, created, active = rows(sql_target)[key]
    assert (user, created, active) == ("erin", True, True)
    assert store.count_unindexed() == 0
    assert client.post("/visit").text == "2"


def test_migrate_leaves_a_move_under_way_to_its_mover() -> None:
    # A request moving a 0.1 key has created the hashed record and not yet
    # retired the unhashed one when the migration reaches the key: the
    # migration must not delete the unhashed record, which the mover would
    # take for a session ended meanwhile (it would then delete its move, and
    # the user would be logged out by the upgrade). A move a minute old is a
    # stopped one, and its leftover is cleared.
    from datetime import timedelta

    from flask_towersess import upgrade
    from flask_towersess.serializers import MsgPackSerializer
    from flask_towersess.session import new_session_key
    from flask_towersess.session import stored_key
    from flask_towersess.stores.base import Record
    from flask_towersess.stores.base import utcnow
    from flask_towersess.stores.memory import MemoryStore

    store = MemoryStore()
    key = new_session_key()
    payload = MsgPackSerializer().dumps({"data": {"_user_id": "ann"}})
    expires_at = utcnow() + timedelta(hours=1)
    store.create(Record(key, payload, expires_at, 3))
    hashed = Record(stored_key(key), payload, expires_at, 1, "ann", utcnow(), utcnow())
    store.create(hashed)  # the mover's first step

    assert upgrade.rehash_key(store, key)
    assert store.load(key) is not None  # left to its mover
    # The mover's second step succeeds: the session is kept.
    store.save(Record(key, b"", utcnow() - timedelta(seconds=1), 4), 3)
    store.delete(key)
    assert store.load(stored_key(key)) is not None

    # A move that stopped a minute ago: its leftover is cleared.
    other = new_session_key()
    store.create(Record(other, payload, expires_at, 1))
    old = utcnow() - timedelta(minutes=2)
    store.create(Record(stored_key(other), payload, expires_at, 1, "ann", old, old))
    assert upgrade.rehash_key(store, other)
    assert store.load(other) is None
    assert store.load(stored_key(other)) is not None
