"""The row of the fault table (docs/faults.rst) for a store refusing its
settings (refused credentials, unknown database, bad option): a
:class:`ConfigurationError` (a 500) naming the setting to fix, logged once,
never reported as an outage; and an outage is still a 503.

Against real servers: a PostgreSQL of this module's own that asks for
passwords (the shared one may trust every local login), the shared MariaDB,
Redis servers started here (one with ``requirepass``). MongoDB has no server
here: mongomock collections raise pymongo's own exceptions.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import typing as t
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask
from flask import session

from flask_towersess import SessionExt
from flask_towersess.errors import ConfigurationError
from flask_towersess.errors import StoreUnavailable
from flask_towersess.session import new_session_key
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.base import utcnow
from flask_towersess.stores.memory import MemoryStore
from flask_towersess.stores.mongodb import MongoDBStore
from flask_towersess.stores.redis import RedisStore
from flask_towersess.stores.sqlalchemy import SQLAlchemyStore

from .fixtures_redis import RedisProcess
from .fixtures_redis import free_port
from .fixtures_sql import MYSQL_URL
from .services import service_unavailable
from .test_faults import make_app

#: The password of every account set up here: distinctive, so that finding
#: it in a message or a log cannot be a coincidence.
PASSWORD = "Tw-s3cret-9f2c"
WRONG_PASSWORD = "Tw-wrong-77ab"
REQUESTS = 3

SQL_LOGGER = "flask_towersess.stores.sqlalchemy"
REDIS_LOGGER = "flask_towersess.stores.redis"
MONGODB_LOGGER = "flask_towersess.stores.mongodb"


def app_for(store: SessionStore, **config: object) -> Flask:
    app = make_app(store, **config)

    @app.get("/fill/<int:size>")
    def fill(size: int) -> str:
        session["big"] = "x" * size
        return "ok"

    return app


def check_configuration_error(
    store: SessionStore,
    caplog: pytest.LogCaptureFixture,
    logger: str,
    *expected: str,
    path: str = "/set/x",
    call: t.Callable[[], object] | None = None,
    **config: object,
) -> ConfigurationError:
    """Every request answers 500, the store's logger says why at ERROR once,
    naming the setting and ``expected``, and no password shows anywhere;
    ``call`` (a load by default) raises the same error, returned."""
    app = app_for(store, **config)
    client = app.test_client()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        statuses = [client.get(path).status_code for _ in range(REQUESTS)]
        with pytest.raises(ConfigurationError) as info:
            (call or (lambda: store.load(new_session_key())))()
    assert statuses == [500] * REQUESTS
    errors = [r for r in caplog.records if r.name == logger]
    assert [r.levelname for r in errors] == ["ERROR"], caplog.text
    message = errors[0].getMessage()
    assert str(info.value) == message
    assert message.startswith("SESSION_STORE (")
    for text in expected:
        assert text in message
    # Not in the store's message, nor in Flask's log of each 500 with its
    # chained driver error.
    assert PASSWORD not in caplog.text and WRONG_PASSWORD not in caplog.text
    assert not isinstance(info.value, StoreUnavailable)
    return info.value


def check_outage(
    store: SessionStore, caplog: pytest.LogCaptureFixture, logger: str
) -> None:
    """Every request that needs the session answers 503, with the driver's
    error logged as a warning, not as a configuration error."""
    app = app_for(store)
    client = app.test_client()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        statuses = [client.get("/set/x").status_code for _ in range(REQUESTS)]
        with pytest.raises(StoreUnavailable) as info:
            store.load(new_session_key())
    assert statuses == [503] * REQUESTS
    assert info.value.__cause__ is not None
    records = [r for r in caplog.records if r.name == logger]
    assert records and {r.levelname for r in records} == {"WARNING"}


# -- PostgreSQL ----------------------------------------------------------------


def _postgresql_programs() -> tuple[str, str] | None:
    initdb = shutil.which("initdb")
    if initdb is None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = found[-1] if found else None
    if initdb is None:
        return None
    return initdb, os.path.join(os.path.dirname(initdb), "postgres")


def _answers(port: int) -> bool:
    import psycopg2

    try:
        psycopg2.connect(
            host="127.0.0.1",
            port=port,
            user="postgres",
            password=PASSWORD,
            dbname="postgres",
            connect_timeout=2,
        ).close()
    except psycopg2.OperationalError:
        return False
    return True


@pytest.fixture(scope="module")
def postgresql_port() -> t.Iterator[int]:
    """A PostgreSQL server of this module's own, asking every login for a
    password (scram-sha-256); user ``postgres``, password :data:`PASSWORD`."""
    programs = _postgresql_programs()
    if programs is None:
        service_unavailable("PostgreSQL's initdb is not installed")
    assert programs is not None
    initdb, postgres = programs
    as_user: dict[str, t.Any] = {}
    # Not in pytest's tmp_path: its parents are private to the user running
    # the tests, and PostgreSQL will not run as root.
    workdir = tempfile.mkdtemp(prefix="towersess-pg-")
    try:
        password_file = os.path.join(workdir, "password")
        with open(password_file, "w") as f:
            f.write(PASSWORD)
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                service_unavailable("running as root and there is no postgres user")
            as_user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
            for path in (workdir, password_file):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        data = os.path.join(workdir, "data")
        subprocess.run(
            [initdb, "-D", data, "-U", "postgres", "--auth=scram-sha-256",
             f"--pwfile={password_file}", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=120, **as_user,
        )  # fmt: skip
        port = free_port()
        with open(os.path.join(workdir, "server.log"), "wb") as log:
            server = subprocess.Popen(
                [postgres, "-D", data, "-p", str(port), "-k", workdir,
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, **as_user,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while not _answers(port):
                if server.poll() is not None or time.monotonic() > deadline:
                    service_unavailable("the test's PostgreSQL server did not start")
                time.sleep(0.1)
            yield port
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize(
    ("credentials", "database", "expected"),
    [
        (f"postgres:{WRONG_PASSWORD}", "postgres", ["refused the login", "'postgres'"]),
        (f"towersess_nobody:{PASSWORD}", "postgres", ["'towersess_nobody'"]),
        (f"postgres:{PASSWORD}", "towersess_nosuchdb", ["'towersess_nosuchdb'"]),
    ],
    ids=["wrong-password", "unknown-user", "unknown-database"],
)
def test_postgresql_refusal_is_a_configuration_error(
    postgresql_port: int,
    caplog: pytest.LogCaptureFixture,
    credentials: str,
    database: str,
    expected: list[str],
) -> None:
    url = f"postgresql+psycopg2://{credentials}@127.0.0.1:{postgresql_port}/{database}"
    store = SQLAlchemyStore.from_url(url)
    try:
        error = check_configuration_error(store, caplog, SQL_LOGGER, *expected)
    finally:
        store.close()
    assert f"127.0.0.1:{postgresql_port}/{database}" in str(error)


# -- MariaDB -----------------------------------------------------------------


@pytest.fixture(scope="module")
def mariadb_user() -> t.Iterator[str]:
    """A MariaDB user with :data:`PASSWORD` and no rights on any database."""
    name = f"towersess_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(MYSQL_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"CREATE USER '{name}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'"
            )
    except sa.exc.OperationalError as exc:
        engine.dispose()
        service_unavailable(f"MariaDB at {MYSQL_URL} is unreachable: {exc.orig}")
    try:
        yield name
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP USER '{name}'@'127.0.0.1'")
        engine.dispose()


@pytest.mark.parametrize(
    ("credentials", "database", "expected"),
    [
        (f"root:{WRONG_PASSWORD}", "test", ["refused the login", "'root'"]),
        (f"towersess_nobody:{PASSWORD}", "test", ["'towersess_nobody'"]),
        ("root", "towersess_nosuchdb", ["'towersess_nosuchdb'", "does not exist"]),
        ("{user}:" + PASSWORD, "test", ["may not use database 'test'"]),
    ],
    ids=["wrong-password", "unknown-user", "unknown-database", "no-rights"],
)
def test_mariadb_refusal_is_a_configuration_error(
    mariadb_user: str,
    caplog: pytest.LogCaptureFixture,
    credentials: str,
    database: str,
    expected: list[str],
) -> None:
    credentials = credentials.format(user=mariadb_user)
    store = SQLAlchemyStore.from_url(
        f"mysql+pymysql://{credentials}@127.0.0.1:3306/{database}"
    )
    try:
        check_configuration_error(store, caplog, SQL_LOGGER, *expected)
    finally:
        store.close()


@contextlib.contextmanager
def small_packets(engine: sa.engine.Engine, limit: int) -> t.Iterator[None]:
    """Give the connections ``engine`` opens a ``max_allowed_packet`` of
    ``limit`` bytes.

    The session value is read-only, copied from the global one at connect
    time: so the global one is lowered for the moment of each connect, and
    put back at once. Other clients connecting in that instant get the low
    limit too, hence only as long as a connect takes.
    """
    admin = sa.create_engine(MYSQL_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        original = int(
            conn.exec_driver_sql("SELECT @@GLOBAL.max_allowed_packet").scalar_one()
        )
    lock = threading.Lock()

    def connect(dialect: t.Any, record: t.Any, cargs: t.Any, cparams: t.Any) -> t.Any:
        with lock, admin.connect() as conn:
            conn.exec_driver_sql(f"SET GLOBAL max_allowed_packet = {limit}")
            try:
                return dialect.loaded_dbapi.connect(*cargs, **cparams)
            finally:
                conn.exec_driver_sql(f"SET GLOBAL max_allowed_packet = {original}")

    sa.event.listen(engine, "do_connect", connect)
    engine.dispose()
    try:
        yield
    finally:
        sa.event.remove(engine, "do_connect", connect)
        engine.dispose()
        admin.dispose()


#: A payload the server reads whole before it refuses it (error 1153), and
#: one so large that the server resets the connection while PyMySQL still
#: sends it ("server has gone away", 2006), which is how an outage looks too.
@pytest.mark.parametrize(
    ("size", "codes"),
    [(40_000, {1153}), (8_000_000, {2006, 2013})],
    ids=["refused", "reset"],
)
def test_mariadb_packet_too_large_is_a_configuration_error(
    mariadb_store: SQLAlchemyStore,
    caplog: pytest.LogCaptureFixture,
    size: int,
    codes: set[int],
) -> None:
    store = SQLAlchemyStore.from_url(MYSQL_URL, table=mariadb_store.table.name)
    config = {"SESSION_MAX_PAYLOAD_SIZE": 2 * size}
    try:
        record = Record(new_session_key(), b"x" * size, utcnow() + timedelta(minutes=5))
        with small_packets(store.engine, 16 * 1024):
            error = check_configuration_error(
                store,
                caplog,
                SQL_LOGGER,
                "max_allowed_packet",
                "SESSION_MAX_PAYLOAD_SIZE",
                path=f"/fill/{size}",
                call=lambda: store.create(record),
                **config,
            )
        assert error.__cause__.orig.args[0] in codes  # type: ignore[union-attr]
        # With the server's own limit, the same session is saved.
        client = app_for(store, **config).test_client()
        assert client.get(f"/fill/{size}").status_code == 200
    finally:
        store.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg2://postgres@127.0.0.1:1/test",
        "mysql+pymysql://root@127.0.0.1:1/test",
    ],
    ids=["postgresql", "mariadb"],
)
def test_unreachable_database_is_still_an_outage(
    caplog: pytest.LogCaptureFixture, url: str
) -> None:
    store = SQLAlchemyStore.from_url(url, connect_args={"connect_timeout": 2})
    try:
        check_outage(store, caplog, SQL_LOGGER)
    finally:
        store.close()


# -- Redis -------------------------------------------------------------------


@pytest.fixture
def redis_with_password(
    redis_server_factory: t.Callable[..., RedisProcess],
) -> RedisProcess:
    server = redis_server_factory("--requirepass", PASSWORD)
    import redis

    with redis.Redis(port=server.port, password=PASSWORD) as client:
        # A user that may only PING: every command of the store is refused.
        client.execute_command(
            "ACL", "SETUSER", "towersess_pinger", "on", f">{PASSWORD}", "~*", "+ping"
        )
    return server


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        ("", ["refused the credentials"]),
        (f":{WRONG_PASSWORD}@", ["refused the credentials"]),
        (f"towersess_nobody:{PASSWORD}@", ["refused the credentials"]),
        (f"towersess_pinger:{PASSWORD}@", ["may not run a command"]),
    ],
    ids=["no-password", "wrong-password", "unknown-user", "no-permission"],
)
def test_redis_refusal_is_a_configuration_error(
    redis_with_password: RedisProcess,
    caplog: pytest.LogCaptureFixture,
    credentials: str,
    expected: list[str],
) -> None:
    port = redis_with_password.port
    store = RedisStore.from_url(f"redis://{credentials}127.0.0.1:{port}/0")
    try:
        check_configuration_error(store, caplog, REDIS_LOGGER, *expected)
    finally:
        store.close()


#: What the refusal message and docs/redis.rst tell an operator to allow.
STORE_COMMANDS = ["get", "set", "del", "exists", "evalsha", "script|load", "ping"]
SCRIPT_COMMANDS = [
    "getrange",
    "setrange",
    "pexpireat",
    "exists",
    "zadd",
    "zrem",
    "zrange",
    "zremrangebyscore",
]


@pytest.mark.parametrize(
    "missing", [None, "evalsha", "script|load", "setrange", "zadd", "getrange"]
)
def test_redis_commands_named_in_the_refusal_are_the_ones_needed(
    redis_with_password: RedisProcess,
    caplog: pytest.LogCaptureFixture,
    missing: str | None,
) -> None:
    # A user allowed exactly the commands the message names runs every
    # store operation, scripts loaded afresh (redis-py's Script sends SCRIPT
    # LOAD after NOSCRIPT) included; one without any of them is refused.
    import redis

    port = redis_with_password.port
    allowed = [c for c in STORE_COMMANDS + SCRIPT_COMMANDS if c != missing]
    with redis.Redis(port=port, password=PASSWORD) as admin:
        admin.execute_command(
            "ACL", "SETUSER", "towersess_exact", "reset", "on", f">{PASSWORD}",
            "~session:*", *(f"+{command}" for command in allowed),
        )  # fmt: skip
        admin.script_flush()
    store = RedisStore.from_url(
        f"redis://towersess_exact:{PASSWORD}@127.0.0.1:{port}/0"
    )
    record = Record(new_session_key(), b"v1", utcnow() + timedelta(minutes=5))

    def use_every_operation() -> None:
        store.create(record)
        saved = Record(record.key, b"v2", record.expires_at, 2)
        store.save(saved, 1)
        later = record.expires_at + timedelta(minutes=5)
        store.touch(record.key, later)
        assert store.load(record.key) == Record(record.key, b"v2", later, 2)
        assert store.exists(record.key)
        store.delete(record.key)
        # The per-user index: a user's record, listed and revoked.
        mine = Record(new_session_key(), b"v1", record.expires_at, user_id="u1")
        store.create(mine)
        assert [r.key for r in store.sessions_of("u1")] == [mine.key]
        assert store.delete_sessions_of("u1") == [mine.key]
        store.ping()

    try:
        if missing is None:
            use_every_operation()
        else:
            with pytest.raises(ConfigurationError, match="may not run a command"):
                use_every_operation()
    finally:
        store.close()


def test_redis_database_out_of_range_is_a_configuration_error(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    base = redis_url.rpartition("/")[0]
    store = RedisStore.from_url(f"{base}/99", socket_timeout=2)
    try:
        error = check_configuration_error(
            store, caplog, REDIS_LOGGER, "database number"
        )
    finally:
        store.close()
    assert str(error).startswith(f"SESSION_STORE ({base}/99)")


def test_stopped_redis_is_still_an_outage(
    redis_server_factory: t.Callable[..., RedisProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = redis_server_factory()
    store = RedisStore.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
    try:
        assert store.load(new_session_key()) is None  # up, and reachable
        server.stop()
        check_outage(store, caplog, REDIS_LOGGER)
    finally:
        store.close()


def test_misconfigured_cache_names_session_cache(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache that refuses its settings is logged, naming its own setting;
    the durable store serves the requests meanwhile."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="s",
        SESSION_STORE=MemoryStore(),
        SESSION_CACHE=f"{redis_url.rpartition('/')[0]}/99",
    )
    SessionExt(app)

    @app.get("/set/<value>")
    def set_(value: str) -> str:
        session["value"] = value
        return "ok"

    client = app.test_client()
    with caplog.at_level(logging.WARNING):
        statuses = [client.get(f"/set/{i}").status_code for i in range(REQUESTS)]
    assert statuses == [200] * REQUESTS
    records = [r for r in caplog.records if r.name == REDIS_LOGGER]
    assert [r.levelname for r in records] == ["ERROR"]
    assert records[0].getMessage().startswith("SESSION_CACHE (")


# -- MongoDB -------------------------------------------------------------------


def _mongodb_errors() -> t.Any:
    return pytest.importorskip("pymongo.errors")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            lambda e: e.OperationFailure("Authentication failed.", code=18),
            "refused the credentials",
        ),
        (
            lambda e: e.OperationFailure("not authorized on test", code=13),
            "readWrite",
        ),
        (
            lambda e: e.ConfigurationError("The DNS query name does not exist"),
            "DNS query name",
        ),
    ],
    ids=["authentication", "unauthorized", "pymongo-configuration"],
)
def test_mongodb_refusal_is_a_configuration_error(
    mongodb_collection: t.Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: t.Callable[[t.Any], Exception],
    expected: str,
) -> None:
    exception = error(_mongodb_errors())

    def refuse(*args: t.Any, **kwargs: t.Any) -> t.NoReturn:
        raise exception

    for name in ("find_one", "replace_one"):
        monkeypatch.setattr(mongodb_collection, name, refuse)
    store = MongoDBStore(mongodb_collection)
    check_configuration_error(store, caplog, MONGODB_LOGGER, expected)


def test_unreachable_mongodb_is_still_an_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("pymongo")
    # Nothing listens on port 1: server selection fails at once, then waits.
    store = MongoDBStore.from_url(
        "mongodb://127.0.0.1:1/towersess_test", serverSelectionTimeoutMS=300
    )
    try:
        check_outage(store, caplog, MONGODB_LOGGER)
    finally:
        store.close()
