"""The 0.1.0 -> 0.2 upgrade, end to end (issue 17).

0.1.0 (from the git history, in a virtualenv of its own: ``legacy_python``)
creates the store and writes sessions, anonymous and logged-in ones. An app
on the current code serves those cookies before the upgrade (sessions found
under their unhashed key are moved as they are used), then ``flask sessions
migrate`` runs while a thread keeps sending requests with the 0.1.0
cookies: every one of them must find its session, data intact, nobody
logged out, no write lost. After it, the store holds no key a cookie can
carry, the logged-in sessions are in their users' index, ``migrate
--check`` is satisfied and a second ``migrate`` changes nothing.

Runs on SQLite, PostgreSQL, MariaDB, Redis and MongoDB (mongomock, filled
with the documents 0.1.0 wrote), and on a MemoryStore filled with the
records 0.1.0 wrote to SQLite.
"""

from __future__ import annotations

import re
import threading
import time
import traceback
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask import session

from flask_towersess import SessionExt
from flask_towersess import upgrade
from flask_towersess.per_user import session_handle
from flask_towersess.session import stored_key
from flask_towersess.stores.base import LegacyKeys
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.memory import MemoryStore

from .legacy import LegacyPython
from .legacy import LegacySession
from .legacy import LegacyWrite
from .legacy import encode_value
from .test_legacy_harness import Target
from .test_legacy_harness import target  # noqa: F401 - the fixture

SECRET_KEY = "upgrade from 0.1.0 secret"
#: Three of each kind legacy_writer.py writes: 3 logged-in users.
COUNT = 21


def current_app(where: Target, memory: MemoryStore | None) -> Flask:
    """An app on the current code, on the store 0.1.0 wrote."""
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET_KEY, TESTING=True)
    if memory is not None:
        SessionExt(app, store=memory)
    elif where.collection is not None:
        from flask_towersess.stores.mongodb import MongoDBStore

        SessionExt(app, store=MongoDBStore(where.collection, **where.options))
    else:
        app.config.update(
            SESSION_STORE=where.url, SESSION_STORE_OPTIONS=dict(where.options)
        )
        SessionExt(app)

    @app.get("/read")
    def read() -> dict[str, t.Any]:
        return {
            "data": encode_value(dict(session)),
            "new": session.new,
            "key": session.session_key,  # type: ignore[attr-defined]
        }

    @app.post("/bump")
    def bump() -> str:
        session["bumps"] = session.get("bumps", 0) + 1
        return str(session["bumps"])

    return app


def read(app: Flask, legacy: LegacySession, bumps: int = 0) -> None:
    """A request with the 0.1.0 cookie finds the session 0.1.0 wrote."""
    client = app.test_client()
    client.set_cookie(legacy.cookie_name, legacy.cookie)
    response = client.get("/read")
    assert response.status_code == 200, response.text
    got = response.get_json()
    assert got["new"] is False, legacy.kind
    assert got["key"] == legacy.key, legacy.kind
    expected = dict(legacy.data)
    if bumps:
        expected["bumps"] = bumps
    assert got["data"] == encode_value(expected), legacy.kind


def bump(app: Flask, legacy: LegacySession) -> int:
    client = app.test_client()
    client.set_cookie(legacy.cookie_name, legacy.cookie)
    response = client.post("/bump")
    assert response.status_code == 200, response.text
    return int(response.text)


def keys_in_backend(where: Target, memory: MemoryStore | None) -> set[str]:
    """Every key the backend holds, read behind the store's back."""
    if memory is not None:
        return set(memory._records)  # noqa: SLF001 - the backend itself
    if where.collection is not None:
        return {str(doc["_id"]) for doc in where.collection.find({}, {"_id": 1})}
    if where.name == "redis":
        import redis

        prefix = where.options["key_prefix"]
        client = redis.Redis.from_url(where.url)
        try:
            names = [
                key.decode()[len(prefix) :]
                for key in client.scan_iter(match=prefix + "*", count=1000)
            ]
        finally:
            client.close()
        # A hashed key is kept under "{" + its first two digits + "}" + it
        # (a Cluster hash tag; RedisStore.redis_key()).
        return {
            name[4:] if name[:1] == "{" and name[3:4] == "}" else name for name in names
        }
    engine = sa.create_engine(where.url)
    try:
        with engine.connect() as conn:
            table = where.options["table"]
            rows = conn.exec_driver_sql(f"SELECT session_key FROM {table}")
            return {row[0] for row in rows}
    finally:
        engine.dispose()


def memory_from(written: LegacyWrite) -> MemoryStore:
    """A MemoryStore holding the records 0.1.0 wrote, as 0.1.0 wrote them."""
    memory = MemoryStore()
    for legacy in written.sessions:
        memory.create(
            Record(legacy.key, legacy.payload, legacy.expires_at, legacy.version)
        )
    return memory


def test_upgrade_from_0_1_0_under_traffic(
    legacy_python: LegacyPython,
    target: Target,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upgrade_under_traffic(legacy_python, target, monkeypatch, on_memory=False)


def test_upgrade_from_0_1_0_on_a_memory_store(
    legacy_python: LegacyPython, tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records 0.1.0 wrote (to SQLite), copied as they are into a
    MemoryStore: the command's own work, on a store with every capability."""
    sqlite = Target("sqlite", f"sqlite:///{tmp_path}/legacy.sqlite3", {"table": "t"})
    upgrade_under_traffic(legacy_python, sqlite, monkeypatch, on_memory=True)


def upgrade_under_traffic(
    legacy_python: LegacyPython,
    where: Target,
    monkeypatch: pytest.MonkeyPatch,
    *,
    on_memory: bool,
) -> None:
    # 0.1.0 creates the store and writes its sessions.
    written = legacy_python.write_sessions(
        where.url, secret_key=SECRET_KEY, options=where.options, count=COUNT
    )
    where.load_documents(written)
    sessions = written.sessions
    legacy_keys = {s.key for s in sessions}
    assert len(legacy_keys) == COUNT
    memory = memory_from(written) if on_memory else None
    assert legacy_keys <= keys_in_backend(where, memory)
    logged_in = [s for s in sessions if "_user_id" in s.data]
    assert len(logged_in) == 3

    app = current_app(where, memory)
    store = app.extensions["towersess"].get_store(app)
    # The 0.2 store contract the upgrade stands on (base.py): until a store
    # has it, say so first, rather than through what follows from it.
    assert isinstance(store, LegacyKeys), (
        f"{store.describe()} cannot list the keys 0.1.0 stored unhashed"
        " (LegacyKeys): migrate could not move them"
    )
    assert store.as_per_user() is not None, (
        f"{store.describe()} keeps no per-user index: sessions_for cannot list"
        " the moved sessions"
    )

    # Before migrate: the 0.1.0 cookies work, and the sessions used are
    # moved under their hash by the requests themselves.
    used_before = sessions[::4]
    for legacy in used_before:
        read(app, legacy)
    held = keys_in_backend(where, memory)
    for legacy in used_before:
        assert legacy.key not in held and stored_key(legacy.key) in held

    # Each key migrate moves, slowed down a little, so that the requests
    # below interleave with it whatever the store's speed; the traffic
    # starts with the first.
    moved_by_migrate: list[str] = []
    started = threading.Event()
    real_rehash_key = upgrade.rehash_key

    def rehash_key(store: SessionStore, key: str, **kwargs: t.Any) -> bool:
        started.set()
        done = real_rehash_key(store, key, **kwargs)
        if done:
            moved_by_migrate.append(key)
        time.sleep(0.01)
        return done

    monkeypatch.setattr(upgrade, "rehash_key", rehash_key)

    # During migrate: a thread keeps reading every session, and bumping a
    # counter in the anonymous ones, with the 0.1.0 cookies; from the last
    # written, while migrate goes in the store's order.
    bumps = {s.key: 0 for s in sessions if s.kind == "anonymous"}
    errors: list[BaseException] = []
    during = 0
    migrating = threading.Event()
    stop = threading.Event()
    passes = 0

    def traffic() -> None:
        nonlocal during, passes
        try:
            started.wait(60)
            while not stop.is_set():
                for legacy in reversed(sessions):
                    was_migrating = migrating.is_set()
                    if legacy.key in bumps:
                        bumps[legacy.key] = bump(app, legacy)
                    read(app, legacy, bumps.get(legacy.key, 0))
                    if was_migrating and migrating.is_set():
                        during += 1
                passes += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        migrating.set()
        result = app.test_cli_runner().invoke(
            args=["sessions", "migrate", "--batch-size", "2"]
        )
        migrating.clear()
        started.set()  # had migrate nothing to move, the traffic goes on
        # A whole pass after it, too.
        after = passes + 2
        deadline = time.monotonic() + 60
        while passes < after and not errors and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(60)
    assert not errors, "".join(traceback.format_exception(errors[0]))
    assert result.exit_code == 0, result.output + _traceback_of(result)
    assert passes >= 2
    assert during > 0, "no request ran during the migration"
    # Every key left was moved once: by migrate, or by a request first.
    assert moved_by_migrate, "the requests moved every key before migrate"
    assert set(moved_by_migrate) <= legacy_keys - {s.key for s in used_before}
    assert len(set(moved_by_migrate)) == len(moved_by_migrate)
    summary = result.stdout.splitlines()[-1]
    hashed = f"hashed {len(moved_by_migrate)} session key" + (
        "s" if len(moved_by_migrate) != 1 else ""
    )
    if where.name in ("sqlite", "postgresql", "mariadb") and not on_memory:
        # The sessions the requests moved before migrate, written while the
        # table had no per-user columns: migrate fills in their user (but
        # for one a request saved first, which wrote the fields itself).
        indexed = re.fullmatch(
            re.escape(hashed) + r"; indexed (\d+) sessions? written before the"
            r" upgrade",
            summary,
        )
        assert indexed is not None, summary
        assert 0 < int(indexed.group(1)) <= len(used_before)
        lister = upgrade.unindexed_keys_of(store)
        assert lister is not None and lister.count_unindexed() == 0
    else:
        # Every write of these stores carries the per-user fields.
        assert summary == hashed
        assert upgrade.unindexed_keys_of(store) is None

    # After: no unhashed key in the backend, every session under its hash.
    held = keys_in_backend(where, memory)
    assert not legacy_keys & held
    for legacy in sessions:
        assert stored_key(legacy.key) in held
    assert not [key for key in held if len(key) == 43]

    check = app.test_cli_runner().invoke(args=["sessions", "migrate", "--check"])
    assert check.exit_code == 0, check.output
    assert check.stdout.endswith(" is up to date; nothing to migrate\n")

    # The logged-in sessions are in their users' index.
    ext = app.extensions["towersess"]
    for legacy in logged_in:
        listed = ext.sessions_for(legacy.data["_user_id"], app=app)
        assert [info.id for info in listed] == [session_handle(stored_key(legacy.key))]

    # The 0.1.0 cookies still work: nobody logged out, no write lost.
    for legacy in sessions:
        read(app, legacy, bumps.get(legacy.key, 0))
    assert all(bumps.values())

    # A second migrate changes nothing, and says so.
    before = keys_in_backend(where, memory)
    again = app.test_cli_runner().invoke(args=["sessions", "migrate"])
    assert again.exit_code == 0, again.output
    assert "hashed" not in again.stdout
    assert "nothing to" in again.stdout
    assert keys_in_backend(where, memory) == before


def legacy_records(app: Flask, memory: MemoryStore, count: int) -> list[str]:
    """``count`` records of the 0.1.0 shape (payload ``{"data": ...}``
    under the cookie's key itself); every other one logged in."""
    from datetime import timedelta

    from flask_towersess.session import new_session_key
    from flask_towersess.stores.base import utcnow

    serializer = app.session_interface.serializer  # type: ignore[attr-defined]
    keys = []
    for n in range(count):
        key = new_session_key()
        data: dict[str, t.Any] = {"n": n}
        if n % 2:
            data["_user_id"] = f"u{n}"
        payload = serializer.dumps({"data": data})
        memory.create(Record(key, payload, utcnow() + timedelta(days=1)))
        keys.append(key)
    return keys


def test_check_interrupted_and_resumed_migration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--check reports the unhashed keys and fails until none is left; a
    migration the store fails in the middle of says so in one line, and the
    next run moves the rest; a record left under both keys keeps the
    hashed one."""
    from flask_towersess.errors import StoreUnavailable

    memory = MemoryStore()
    app = current_app(Target("memory", "memory://", {}), memory)
    keys = legacy_records(app, memory, 7)
    runner = app.test_cli_runner()

    check = runner.invoke(args=["sessions", "migrate", "--check"])
    assert check.exit_code == 1
    assert check.stdout == "7 session keys stored unhashed (by 0.1)\n"
    assert check.stderr == (
        "Error: MemoryStore is not up to date: run `flask sessions migrate`.\n"
    )
    both = runner.invoke(args=["sessions", "migrate", "--check", "--sql"])
    assert both.exit_code == 1 and len(both.stderr.splitlines()) == 1

    real_rehash_key = upgrade.rehash_key
    calls = 0

    def failing(store: SessionStore, key: str, **kwargs: t.Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise StoreUnavailable("the store went away")
        return real_rehash_key(store, key, **kwargs)

    monkeypatch.setattr(upgrade, "rehash_key", failing)
    failed = runner.invoke(args=["sessions", "migrate", "--batch-size", "2"])
    assert failed.exit_code == 1
    assert failed.stderr.startswith("Error: cannot reach the session store")
    assert len(failed.stderr.splitlines()) == 1
    assert memory.count_unhashed() == 4
    monkeypatch.setattr(upgrade, "rehash_key", real_rehash_key)

    # A move that stopped between its create and its delete.
    (left,) = [key for key in keys if memory.load(key) is not None][:1]
    copy = memory.load(left)
    assert copy is not None
    n = keys.index(left)
    memory.create(
        Record(
            stored_key(left),
            copy.payload,
            copy.expires_at,
            user_id=f"u{n}" if n % 2 else None,
        )
    )

    resumed = runner.invoke(args=["sessions", "migrate"])
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stdout == "hashed 4 session keys\n"
    assert memory.count_unhashed() == 0
    for key in keys:
        assert memory.load(key) is None and memory.load(stored_key(key))
    ext = app.extensions["towersess"]
    assert [len(ext.sessions_for(f"u{n}", app=app)) for n in (1, 3, 5)] == [1, 1, 1]

    done = runner.invoke(args=["sessions", "migrate", "--check"])
    assert done.exit_code == 0
    assert done.stdout == "MemoryStore is up to date; nothing to migrate\n"
    again = runner.invoke(args=["sessions", "migrate"])
    assert again.stdout == (
        "MemoryStore needs no migration; there is nothing to migrate.\n"
    )


def _traceback_of(result: t.Any) -> str:
    """The traceback of what a CLI run raised ('' if nothing), for the
    failure message: the output alone hides where an error came from."""
    if result.exc_info is None or isinstance(result.exception, SystemExit):
        return ""
    return "".join(traceback.format_exception(*result.exc_info))
