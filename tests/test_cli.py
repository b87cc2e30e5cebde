"""The ``flask sessions`` commands: migrate and purge-expired."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import typing as t
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask
from flask import session

from flask_towersess import ServerSessionInterface
from flask_towersess import SessionExt
from flask_towersess import cli
from flask_towersess.cli import sessions_command
from flask_towersess.errors import ConfigurationError
from flask_towersess.extension import DEFAULT_SQLITE_FILENAME
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.base import utcnow
from flask_towersess.stores.memory import MemoryStore
from flask_towersess.stores.sqlalchemy import SQLAlchemyStore

from .fixtures_sql import MYSQL_URL
from .fixtures_sql import POSTGRESQL_URL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = re.compile(r"^purged (\d+) expired sessions? in \d+\.\d\d s$")
#: Nothing listens on port 1: connecting fails at once with "refused".
UNREACHABLE_URLS = {
    "postgresql": "postgresql+psycopg2://postgres@127.0.0.1:1/test",
    "mariadb": "mysql+pymysql://root@127.0.0.1:1/test",
}


def make_app(**config: t.Any) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="test secret", TESTING=True, **config)

    @app.post("/set/<key>/<value>")
    def set_(key: str, value: str) -> str:
        session[key] = value
        return "ok"

    return app


def store_of(app: Flask) -> SessionStore:
    return app.extensions["towersess"].get_store(app)  # type: ignore[no-any-return]


def invoke(app: Flask, *args: str) -> t.Any:
    return app.test_cli_runner().invoke(args=["sessions", *args])


def add_records(
    store: SessionStore, *, expired: int, live: int
) -> tuple[list[str], list[str]]:
    """Insert records directly; return the keys of the expired and live ones."""
    now = utcnow()
    expired_keys = [secrets.token_urlsafe(32) for _ in range(expired)]
    live_keys = [secrets.token_urlsafe(32) for _ in range(live)]
    for i, key in enumerate(expired_keys):
        store.create(Record(key, b"old", now - timedelta(minutes=i + 1)))
    for key in live_keys:
        store.create(Record(key, b"live", now + timedelta(hours=1)))
    return expired_keys, live_keys


def stored_count(store: SessionStore) -> int:
    """Every record in the store, expired or not."""
    if isinstance(store, MemoryStore):
        return len(store)
    assert isinstance(store, SQLAlchemyStore)
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(store.table)
            ).scalar_one()
        )


# -- fixtures ----------------------------------------------------------------


def build_sql_app(
    request: pytest.FixtureRequest, tmp_path: t.Any, backend: str
) -> Flask:
    """An app on an SQL backend, on a table of its own that does not exist
    yet; the table is dropped (and the engine disposed) after the test."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/cli.sqlite3"
    else:
        # The store fixture skips (or, in CI, fails) when the server is down.
        request.getfixturevalue(f"{backend}_store")
        url = {"postgresql": POSTGRESQL_URL, "mariadb": MYSQL_URL}[backend]
    table = f"towersess_cli_{uuid.uuid4().hex[:10]}"
    app = make_app(SESSION_STORE=url, SESSION_STORE_OPTIONS={"table": table})
    SessionExt(app)
    store = store_of(app)
    assert isinstance(store, SQLAlchemyStore)

    def drop() -> None:
        store.table.drop(store.engine, checkfirst=True)
        store.close()

    request.addfinalizer(drop)
    return app


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def sql_app(request: pytest.FixtureRequest, tmp_path: t.Any) -> Flask:
    return build_sql_app(request, tmp_path, request.param)


@pytest.fixture
def migrated_app(sql_app: Flask) -> Flask:
    store_of(sql_app).migrate()
    return sql_app


@pytest.fixture(params=["memory", "sqlite", "postgresql", "mariadb"])
def purge_app(request: pytest.FixtureRequest, tmp_path: t.Any) -> Flask:
    """A migrated app whose store needs purging: each SQL backend, and memory."""
    if request.param == "memory":
        app = make_app(SESSION_STORE="memory://")
        SessionExt(app)
        return app
    app = build_sql_app(request, tmp_path, request.param)
    store_of(app).migrate()
    return app


# -- migrate -----------------------------------------------------------------


def test_migrate_creates_table_and_index(sql_app: Flask) -> None:
    store = store_of(sql_app)
    assert isinstance(store, SQLAlchemyStore)
    table = store.table.name

    result = invoke(sql_app, "migrate")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"created table {table} with its indexes\n"
    inspector = sa.inspect(store.engine)
    assert inspector.has_table(table)
    indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes(table)}
    assert indexes[f"ix_{table}_expires_at"] == ["expires_at"]

    # Idempotent, and says so.
    again = invoke(sql_app, "migrate")
    assert again.exit_code == 0, again.output
    assert again.stdout == f"table {table} is up to date; nothing to do\n"


def test_migrate_adds_a_missing_index(migrated_app: Flask) -> None:
    store = store_of(migrated_app)
    assert isinstance(store, SQLAlchemyStore)
    expiry = f"ix_{store.table.name}_expires_at"
    (index,) = [ix for ix in store.table.indexes if ix.name == expiry]
    with store.engine.begin() as conn:
        index.drop(conn)

    result = invoke(migrated_app, "migrate")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"created index {index.name} on {store.table.name}\n"
    names = {
        ix["name"] for ix in sa.inspect(store.engine).get_indexes(store.table.name)
    }
    assert index.name in names


def test_migrate_sql_prints_ddl_and_creates_nothing(sql_app: Flask) -> None:
    store = store_of(sql_app)
    assert isinstance(store, SQLAlchemyStore)
    table = store.table.name

    result = invoke(sql_app, "migrate", "--sql")
    assert result.exit_code == 0, result.output
    assert f"CREATE TABLE {table} (" in result.stdout
    assert (
        f"CREATE INDEX ix_{table}_expires_at ON {table} (expires_at);" in result.stdout
    )
    for column in ("session_key", "payload", "expires_at", "version"):
        assert column in result.stdout
    assert not sa.inspect(store.engine).has_table(table)


def test_migrate_sql_runs_without_a_database() -> None:
    # Printing DDL for Alembic must not need the database to be up.
    app = make_app(SESSION_STORE=UNREACHABLE_URLS["postgresql"])
    SessionExt(app)
    try:
        result = invoke(app, "migrate", "--sql")
        assert result.exit_code == 0, result.output
        assert "CREATE TABLE sessions (" in result.stdout
    finally:
        store_of(app).close()


def test_migrate_memory_store() -> None:
    app = make_app(SESSION_STORE="memory://")
    SessionExt(app)
    result = invoke(app, "migrate")
    assert result.exit_code == 0, result.output
    assert "nothing to migrate" in result.stdout
    sql = invoke(app, "migrate", "--sql")
    assert sql.exit_code == 0, sql.output
    assert sql.stdout == "-- MemoryStore: no SQL schema\n"


# -- purge-expired ------------------------------------------------------------


def test_purge_expired_deletes_exactly_the_expired(purge_app: Flask) -> None:
    store = store_of(purge_app)
    expired, live = add_records(store, expired=5, live=3)

    result = invoke(purge_app, "purge-expired", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    match = SUMMARY.match(result.stdout.strip())
    assert match is not None, result.stdout
    assert match.group(1) == "5"
    # No bar when stderr is not a terminal (cron, logs, this runner).
    assert result.stderr == ""

    assert stored_count(store) == 3
    for key in live:
        record = store.load(key)
        assert record is not None and record.payload == b"live"
    for key in expired:
        assert store.load(key) is None

    again = invoke(purge_app, "purge-expired")
    assert again.exit_code == 0, again.output
    assert SUMMARY.match(again.stdout.strip()) is not None
    assert again.stdout.startswith("purged 0 expired sessions in ")


def test_purge_expired_works_in_batches(migrated_app: Flask) -> None:
    store = store_of(migrated_app)
    assert isinstance(store, SQLAlchemyStore)
    add_records(store, expired=5, live=2)
    deletes: list[str] = []

    def on_execute(conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            deletes.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", on_execute)
    try:
        result = invoke(migrated_app, "purge-expired", "--batch-size", "2")
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", on_execute)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("purged 5 expired sessions in ")
    # 2 + 2 + 1, then one that finds nothing left; on MySQL the batch that
    # read fewer keys than a batch ends the purge (it reads before deleting).
    mysql = store.engine.dialect.name in ("mysql", "mariadb")
    assert len(deletes) == (3 if mysql else 4)
    assert stored_count(store) == 2


def test_purge_expired_dry_run_deletes_nothing(purge_app: Flask) -> None:
    store = store_of(purge_app)
    add_records(store, expired=4, live=2)

    result = invoke(purge_app, "purge-expired", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout == "4 expired sessions would be purged (dry run)\n"
    assert stored_count(store) == 6
    assert store.count_expired() == 4


def test_purge_expired_rejects_a_zero_batch() -> None:
    app = make_app(SESSION_STORE="memory://")
    SessionExt(app)
    result = invoke(app, "purge-expired", "--batch-size", "0")
    assert result.exit_code == 2
    assert "--batch-size" in result.output


def test_purge_expired_progress_bar(
    purge_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runner's stderr is no terminal, so pretend it is: the command then
    # counts first and feeds each batch to a progress bar on stderr (click
    # itself, seeing no real terminal, prints only the bar's label; the
    # subprocess test below checks the drawn bar on a real pseudo-terminal).
    monkeypatch.setattr(cli, "_stderr_is_terminal", lambda: True)
    store = store_of(purge_app)
    add_records(store, expired=5, live=1)
    batches: list[int] = []
    purge = store.purge_expired

    def spy(batch_size: int = 1000, *, on_batch: t.Any = None) -> int:
        assert on_batch is not None

        def record(count: int) -> None:
            batches.append(count)
            on_batch(count)

        return purge(batch_size, on_batch=record)

    monkeypatch.setattr(store, "purge_expired", spy)
    result = invoke(purge_app, "purge-expired", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert batches == [2, 2, 1]
    assert "Purging expired sessions" in result.stderr
    assert result.stdout.startswith("purged 5 expired sessions in ")


# -- failures -----------------------------------------------------------------


@pytest.mark.parametrize("backend", sorted(UNREACHABLE_URLS))
@pytest.mark.parametrize(
    "args",
    [("purge-expired",), ("purge-expired", "--dry-run"), ("migrate",)],
    ids=["purge", "dry-run", "migrate"],
)
def test_unreachable_store(backend: str, args: tuple[str, ...]) -> None:
    app = make_app(SESSION_STORE=UNREACHABLE_URLS[backend])
    SessionExt(app)
    try:
        result = invoke(app, *args)
    finally:
        store_of(app).close()
    assert result.exit_code == 1
    assert result.stdout == ""
    message = result.stderr
    assert message.count("\n") == 1, message  # one line
    assert message.startswith("Error: cannot reach the session store (SQLAlchemyStore ")
    assert "127.0.0.1:1/test" in message
    assert "503" not in message
    # The driver's first line only: not psycopg2's "Is the server running",
    # nor SQLAlchemy's link.
    assert "Is the server running" not in message
    assert "Background on this error" not in message


@pytest.mark.parametrize(
    "args",
    [("purge-expired",), ("purge-expired", "--dry-run")],
    ids=["purge", "dry-run"],
)
def test_purge_with_missing_table(sql_app: Flask, args: tuple[str, ...]) -> None:
    result = invoke(sql_app, *args)
    assert result.exit_code == 1
    message = result.stderr
    assert message.count("\n") == 1, message
    table = store_of(sql_app).table.name  # type: ignore[attr-defined]
    assert f"session table {table!r} does not exist" in message
    assert "run `flask sessions migrate`" in message


def test_request_with_missing_table(sql_app: Flask) -> None:
    client = sql_app.test_client()
    with pytest.raises(ConfigurationError, match="run `flask sessions migrate`"):
        client.post("/set/user/ann")
    # And once migrated, the same request works.
    assert invoke(sql_app, "migrate").exit_code == 0
    assert client.post("/set/user/ann").text == "ok"


def test_app_without_the_extension() -> None:
    # Without SessionExt there is no `sessions` group at all ...
    app = make_app()
    result = invoke(app, "migrate")
    assert result.exit_code == 2
    assert "No such command 'sessions'" in result.output

    # ... and if a project adds the group itself, it says what is missing.
    app.cli.add_command(sessions_command)
    for args in (("migrate",), ("purge-expired",)):
        result = invoke(app, *args)
        assert result.exit_code == 1
        assert result.stderr == (
            "Error: flask-towersess is not set up on this app: call SessionExt(app).\n"
        )


def test_interface_without_the_extension() -> None:
    # ServerSessionInterface used on its own: the commands find its store.
    store = MemoryStore()
    app = make_app()
    app.session_interface = ServerSessionInterface(store)
    app.cli.add_command(sessions_command)
    add_records(store, expired=2, live=1)
    result = invoke(app, "purge-expired")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("purged 2 expired sessions in ")
    assert len(store) == 1


# -- the real `flask` command, on the example app -------------------------------


@pytest.fixture
def example_env(tmp_path: t.Any) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SESSION_STORE", None)
    env.pop("FLASK_APP", None)
    env["TOWERSESS_INSTANCE_PATH"] = str(tmp_path / "instance")
    return env


def run_flask(env: dict[str, str], *args: str, **kwargs: t.Any) -> t.Any:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "examples/app.py", "sessions", *args],
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
        **kwargs,
    )


def test_flask_command_on_the_example(example_env: dict[str, str]) -> None:
    path = os.path.join(example_env["TOWERSESS_INSTANCE_PATH"], DEFAULT_SQLITE_FILENAME)

    result = run_flask(example_env, "migrate", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "created table sessions with its indexes\n"
    assert os.path.exists(path)
    result = run_flask(example_env, "migrate", capture_output=True, text=True)
    assert result.stdout == "table sessions is up to date; nothing to do\n"

    store = SQLAlchemyStore.from_url(f"sqlite:///{path}")
    try:
        expired, live = add_records(store, expired=3, live=2)
        result = run_flask(
            example_env,
            "purge-expired",
            "--dry-run",
            capture_output=True,
            text=True,
        )
        assert result.stdout == "3 expired sessions would be purged (dry run)\n"

        result = run_flask(
            example_env,
            "purge-expired",
            "--batch-size",
            "2",
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        match = SUMMARY.match(result.stdout.strip())
        assert match is not None and match.group(1) == "3", result.stdout
        assert result.stderr == ""
        assert stored_count(store) == 2
        assert all(store.load(key) is not None for key in live)
    finally:
        store.close()


#: A password found in no message by chance.
PASSWORD = "Tw-cli-s3cret-41d0"


def with_url(url: str, **parts: str) -> str:
    """``url`` with ``parts`` (user name, password, database) replaced."""
    return sa.engine.make_url(url).set(**parts).render_as_string(hide_password=False)


#: ``SESSION_STORE`` values the commands fail on, each in one line: stores
#: that cannot be reached, and settings the server refuses.
FAILING_STORES = {
    "postgresql-unreachable": UNREACHABLE_URLS["postgresql"],
    "mariadb-unreachable": UNREACHABLE_URLS["mariadb"],
    "redis-unreachable": "redis://127.0.0.1:1/0",
    "postgresql-unknown-user": with_url(
        POSTGRESQL_URL, username="towersess_nobody", password=PASSWORD
    ),
    "postgresql-unknown-database": with_url(
        POSTGRESQL_URL, database="towersess_nosuchdb"
    ),
    "mariadb-wrong-password": with_url(MYSQL_URL, password=PASSWORD),
    "redis-database-out-of-range": "redis://127.0.0.1:6379/99",
}


@pytest.mark.parametrize(
    ("url", "command", "start"),
    [
        pytest.param(
            url,
            command,
            # An outage, or a setting to fix, named.
            "cannot reach the session store"
            if "unreachable" in name
            else "SESSION_STORE (",
            id=f"{name}-{command}",
        )
        for name, url in FAILING_STORES.items()
        for command in ("migrate", "purge-expired")
        # Redis needs no migration: migrate does not connect.
        if not (url.startswith("redis://") and command == "migrate")
    ],
)
def test_flask_command_fails_in_one_line(
    example_env: dict[str, str], url: str, command: str, start: str
) -> None:
    """What cron mail and deploy logs get from the real command: one line on
    stderr and exit status 1; no log line before it (Python prints warnings
    to stderr when nothing is set up), no second line of a driver's text."""
    example_env["SESSION_STORE"] = url
    result = run_flask(example_env, command, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {start}"), result.stderr
    assert PASSWORD not in result.stderr


@pytest.mark.parametrize(
    "url", ["nosuch://x", "postgresql://user@127.0.0.1:notaport/test"]
)
def test_flask_command_with_a_bad_url_fails_in_one_line(
    example_env: dict[str, str], url: str
) -> None:
    example_env["SESSION_STORE"] = url
    result = run_flask(example_env, "migrate", capture_output=True, text=True)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "SESSION_STORE" in result.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_flask_command_draws_a_progress_bar_on_a_terminal(
    example_env: dict[str, str],
) -> None:
    import pty

    assert run_flask(example_env, "migrate", capture_output=True).returncode == 0
    path = os.path.join(example_env["TOWERSESS_INSTANCE_PATH"], DEFAULT_SQLITE_FILENAME)
    store = SQLAlchemyStore.from_url(f"sqlite:///{path}")
    try:
        add_records(store, expired=4, live=1)
    finally:
        store.close()

    # stderr on a real pseudo-terminal: what a person running it by hand sees.
    controller, terminal = pty.openpty()
    try:
        result = run_flask(
            example_env,
            "purge-expired",
            "--batch-size",
            "2",
            stdout=subprocess.PIPE,
            stderr=terminal,
        )
        os.close(terminal)
        terminal = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # Linux: EIO once the terminal side is closed
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        if terminal != -1:
            os.close(terminal)
        os.close(controller)
    assert result.returncode == 0
    assert result.stdout.decode().startswith("purged 4 expired sessions in ")
    screen = drawn.decode()
    assert "Purging expired sessions" in screen
    assert "100%" in screen
    assert "#" in screen


@pytest.mark.parametrize("topology", ["redis", "redis_cluster", "redis_sentinel"])
def test_redis_commands_are_clear_no_ops(
    request: pytest.FixtureRequest, topology: str
) -> None:
    store = request.getfixturevalue(f"{topology}_store")
    app = make_app(SESSION_STORE=store)
    SessionExt(app)
    migrate = invoke(app, "migrate")
    assert migrate.exit_code == 0, migrate.output
    assert (
        migrate.output
        == "RedisStore needs no migration; there is nothing to migrate.\n"
    )
    nothing_to_purge = (
        "RedisStore expires sessions by itself; there is nothing to purge.\n"
    )
    purge = invoke(app, "purge-expired")
    assert purge.exit_code == 0, purge.output
    assert purge.output == nothing_to_purge
    dry = invoke(app, "purge-expired", "--dry-run")
    assert dry.exit_code == 0 and dry.output == nothing_to_purge
