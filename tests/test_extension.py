"""SessionExt: set-up, configuration, the store it builds, store round trips."""

from __future__ import annotations

import os
import typing as t
import uuid
from collections import Counter

import pytest
import sqlalchemy as sa
from flask import Flask
from flask import session
from flask_sqlalchemy import SQLAlchemy

from flask_towersess import JSONSerializer
from flask_towersess import ServerSessionInterface
from flask_towersess import SessionExt
from flask_towersess.errors import ConfigurationError
from flask_towersess.extension import CONFIG_DEFAULTS
from flask_towersess.extension import DEFAULT_SQLITE_FILENAME
from flask_towersess.session import stored_key
from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.memory import MemoryStore
from flask_towersess.stores.sqlalchemy import SQLAlchemyStore

from .fixtures_sql import POSTGRESQL_URL
from .helpers import CountingStore


def add_views(app: Flask) -> None:
    @app.get("/idle")
    def idle() -> str:
        return "idle"

    @app.get("/get/<key>")
    def get(key: str) -> str:
        return str(session.get(key, ""))

    @app.post("/set/<key>/<value>")
    def set_(key: str, value: str) -> str:
        session[key] = value
        return "ok"


@pytest.fixture
def make_app(tmp_path: t.Any) -> t.Iterator[t.Callable[..., Flask]]:
    """Build apps with an instance folder under tmp_path; close their stores
    afterwards (the engines they own must not outlive the test)."""
    apps: list[Flask] = []

    def make(**config: t.Any) -> Flask:
        app = Flask(__name__, instance_path=str(tmp_path / f"instance{len(apps)}"))
        app.config.update(SECRET_KEY="test secret", TESTING=True, **config)
        add_views(app)
        apps.append(app)
        return app

    yield make
    for app in apps:
        ext = app.extensions.get("towersess")
        if ext is not None:
            ext.get_store(app).close()


def roundtrip(app: Flask, client: t.Any = None) -> None:
    """A value set in one request is there in the next."""
    client = client or app.test_client()
    assert client.post("/set/user/ann").status_code == 200
    assert client.get("/get/user").text == "ann"


# -- zero configuration ------------------------------------------------------


def test_zero_config_is_sqlite_in_instance_folder(make_app: t.Any) -> None:
    app = make_app()
    ext = SessionExt(app)
    path = os.path.join(app.instance_path, DEFAULT_SQLITE_FILENAME)
    # Nothing is created at start-up: not the folder, not the file.
    assert not os.path.exists(app.instance_path)

    store = ext.get_store(app)
    assert isinstance(store, SQLAlchemyStore)
    assert store.engine.url.database == path

    client = app.test_client()
    # A request that stores nothing does not need the store either.
    assert client.get("/get/user").text == ""
    assert not os.path.exists(path)

    # The first write creates the folder, the file and the table.
    roundtrip(app, client)
    assert os.path.exists(path)
    assert sa.inspect(store.engine).has_table("sessions")
    with store.engine.connect() as conn:
        keys = conn.execute(sa.select(store.table.c.session_key)).scalars().all()
    cookie = client.get_cookie("session")
    assert cookie is not None
    assert keys == [stored_key(cookie.value.rsplit(".", 1)[0])]


def test_zero_config_sessions_survive_a_restart(make_app: t.Any) -> None:
    # The data is on disk: a second app on the same instance folder (a
    # restarted server, another worker) sees the session of the first.
    first = make_app()
    SessionExt(first)
    client = first.test_client()
    client.post("/set/user/ann")
    cookie = client.get_cookie("session")
    assert cookie is not None

    second = make_app()
    second.instance_path = first.instance_path
    SessionExt(second)
    other = second.test_client()
    other.set_cookie("session", cookie.value)
    assert other.get("/get/user").text == "ann"


def test_zero_config_table_is_created_once(make_app: t.Any) -> None:
    app = make_app()
    ext = SessionExt(app)
    roundtrip(app)
    # Running the deploy step afterwards finds nothing to do.
    with app.app_context():
        lines = ext.get_store().migrate()
    assert lines == ["table sessions is up to date; nothing to do"]


# -- registration --------------------------------------------------------------


def test_init_app_pattern(make_app: t.Any) -> None:
    ext = SessionExt(store=MemoryStore())
    app = make_app()
    ext.init_app(app)
    assert app.extensions["towersess"] is ext
    assert isinstance(app.session_interface, ServerSessionInterface)
    assert ext.get_interface(app) is app.session_interface
    with app.app_context():
        assert ext.get_store() is app.session_interface.store
    assert "sessions" in app.cli.commands
    roundtrip(app)


def test_constructor_with_app(make_app: t.Any) -> None:
    app = make_app(SESSION_STORE="memory://")
    ext = SessionExt(app)
    assert app.extensions["towersess"] is ext
    roundtrip(app)


def test_second_registration_raises(make_app: t.Any) -> None:
    app = make_app(SESSION_STORE="memory://")
    ext = SessionExt(app)
    interface = app.session_interface
    with pytest.raises(ConfigurationError, match="already set up"):
        SessionExt(app)
    with pytest.raises(ConfigurationError, match="already set up"):
        ext.init_app(app)
    # The first registration stays in place.
    assert app.extensions["towersess"] is ext
    assert app.session_interface is interface


def test_extension_keeps_no_app(make_app: t.Any) -> None:
    app = make_app(SESSION_STORE="memory://")
    ext = SessionExt(app)
    assert not hasattr(ext, "app")
    assert all(not isinstance(value, Flask) for value in vars(ext).values())


def test_one_extension_two_apps_two_stores(make_app: t.Any, tmp_path: t.Any) -> None:
    ext = SessionExt()
    memory_app = make_app(SESSION_STORE="memory://")
    sqlite_app = make_app()  # the zero-config default
    ext.init_app(memory_app)
    ext.init_app(sqlite_app)
    assert isinstance(ext.get_store(memory_app), MemoryStore)
    assert isinstance(ext.get_store(sqlite_app), SQLAlchemyStore)
    with memory_app.app_context():
        assert ext.get_store() is ext.get_store(memory_app)
    with sqlite_app.app_context():
        assert ext.get_store() is ext.get_store(sqlite_app)

    client = memory_app.test_client()
    client.post("/set/user/ann")
    roundtrip(sqlite_app)
    # Same secret key, so the cookie verifies on both; the ID is only known
    # to the store of the app that issued it.
    cookie = client.get_cookie("session")
    assert cookie is not None
    other = sqlite_app.test_client()
    other.set_cookie("session", cookie.value)
    assert other.get("/get/user").text == ""
    assert client.get("/get/user").text == "ann"


def test_get_interface_of_unknown_app(make_app: t.Any) -> None:
    ext = SessionExt()
    with pytest.raises(ConfigurationError, match="init_app"):
        ext.get_interface(make_app())


# -- configuration ---------------------------------------------------------


def test_config_defaults_are_set(make_app: t.Any) -> None:
    app = make_app(SESSION_STORE="memory://")
    SessionExt(app)
    for key, value in CONFIG_DEFAULTS.items():
        if key == "SESSION_STORE":
            continue
        assert app.config[key] == value, key


def test_config_defaults_do_not_override_user_values(make_app: t.Any) -> None:
    app = make_app(
        SESSION_STORE="memory://",
        SESSION_SERIALIZER="json",
        SESSION_PERMANENT=True,
        SESSION_SAVE_RETRIES=2,
        SESSION_USE_SIGNER=False,
    )
    SessionExt(app)
    assert app.config["SESSION_STORE"] == "memory://"
    assert app.config["SESSION_SERIALIZER"] == "json"
    assert app.config["SESSION_PERMANENT"] is True
    assert app.config["SESSION_SAVE_RETRIES"] == 2
    assert app.config["SESSION_USE_SIGNER"] is False


def test_mutable_defaults_are_not_shared(make_app: t.Any) -> None:
    # An app that edits its options in place must not change the defaults
    # the next app gets.
    first = make_app(SESSION_STORE="memory://")
    SessionExt(first)
    first.config["SESSION_STORE_OPTIONS"]["table"] = "mine"
    assert CONFIG_DEFAULTS["SESSION_STORE_OPTIONS"] == {}
    second = make_app(SESSION_STORE="memory://")
    SessionExt(second)
    assert second.config["SESSION_STORE_OPTIONS"] == {}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("SESSION_TOUCH_INTERVAL", "60", "SESSION_TOUCH_INTERVAL must be a number"),
        ("SESSION_SAVE_TIMEOUT", None, "SESSION_SAVE_TIMEOUT must be a number"),
        ("SESSION_SAVE_RETRIES", -1, "SESSION_SAVE_RETRIES must be a whole number"),
        ("SESSION_SAVE_RETRIES", "5", "SESSION_SAVE_RETRIES must be a whole number"),
        ("SESSION_MAX_PAYLOAD_SIZE", 0, "SESSION_MAX_PAYLOAD_SIZE must be a number"),
        ("SESSION_CACHE_RETRY_AFTER", "2s", "SESSION_CACHE_RETRY_AFTER must be"),
    ],
)
def test_a_setting_of_the_wrong_type_fails_at_set_up(
    make_app: t.Any, key: str, value: object, message: str
) -> None:
    app = make_app(SESSION_STORE="memory://", **{key: value})
    with pytest.raises(ConfigurationError, match=message):
        SessionExt(app)
    assert "towersess" not in app.extensions


def test_durations_are_seconds_or_timedeltas_everywhere(make_app: t.Any) -> None:
    """Each duration setting takes either form and is read as a timedelta,
    whether it was set before set-up or changed on the live app."""
    from datetime import timedelta

    from flask_towersess import config

    app = make_app(SESSION_STORE="memory://", SESSION_TOUCH_INTERVAL=30)
    SessionExt(app)
    interface = app.session_interface
    assert interface.get_touch_interval(app) == timedelta(seconds=30)
    app.config["SESSION_SAVE_TIMEOUT"] = 2.5
    assert interface.get_save_timeout(app) == timedelta(seconds=2.5)
    app.config["SESSION_SAVE_TIMEOUT"] = timedelta(seconds=3)
    assert interface.get_save_timeout(app) == timedelta(seconds=3)
    # An app that never ran init_app reads the one default.
    bare = make_app()
    assert interface.get_touch_interval(bare) == config.DEFAULT_TOUCH_INTERVAL
    assert interface.get_save_retries(bare) is None
    assert interface.get_save_timeout(bare) == config.DEFAULT_SAVE_TIMEOUT


# -- SESSION_STORE forms -------------------------------------------------------


def test_store_memory_url(make_app: t.Any) -> None:
    app = make_app(SESSION_STORE="memory://")
    ext = SessionExt(app)
    assert isinstance(ext.get_store(app), MemoryStore)
    roundtrip(app)


def test_store_sqlite_url(make_app: t.Any, tmp_path: t.Any) -> None:
    path = str(tmp_path / "sessions.sqlite3")
    app = make_app(SESSION_STORE=f"sqlite:///{path}")
    ext = SessionExt(app)
    store = ext.get_store(app)
    assert isinstance(store, SQLAlchemyStore)
    assert store.engine.url.database == path
    # Only the zero-config default creates its table; a configured store
    # waits for `flask sessions migrate`.
    assert not os.path.exists(path) or not sa.inspect(store.engine).has_table(
        "sessions"
    )
    store.migrate()
    roundtrip(app)


def test_store_postgresql_url(
    make_app: t.Any, postgresql_store: SQLAlchemyStore
) -> None:
    # postgresql_store only makes the test skip (or fail in CI) when the
    # server is down; the app builds its own store from the URL.
    table = f"towersess_ext_{uuid.uuid4().hex[:8]}"
    app = make_app(SESSION_STORE=POSTGRESQL_URL, SESSION_STORE_OPTIONS={"table": table})
    ext = SessionExt(app)
    store = ext.get_store(app)
    assert isinstance(store, SQLAlchemyStore)
    assert store.engine.dialect.name == "postgresql"
    assert store.table.name == table
    try:
        store.migrate()
        roundtrip(app)
    finally:
        store.table.drop(store.engine, checkfirst=True)


def test_store_engine_object(make_app: t.Any, tmp_path: t.Any) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/engine.sqlite3")
    try:
        app = make_app(SESSION_STORE=engine, SESSION_STORE_OPTIONS={"table": "web"})
        ext = SessionExt(app)
        store = ext.get_store(app)
        assert isinstance(store, SQLAlchemyStore)
        assert store.engine is engine
        assert store.table.name == "web"
        store.migrate()
        roundtrip(app)
        # The app owns the engine: closing the store leaves it usable.
        store.close()
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(store.table))
    finally:
        engine.dispose()


def test_store_object(make_app: t.Any) -> None:
    store = MemoryStore()
    app = make_app(SESSION_STORE=store)
    ext = SessionExt(app)
    assert ext.get_store(app) is store
    roundtrip(app)
    assert len(store) == 1


def test_store_argument_overrides_config(make_app: t.Any) -> None:
    store = MemoryStore()
    app = make_app(SESSION_STORE="unknown://ignored")
    ext = SessionExt(app, store=store)
    assert ext.get_store(app) is store


def test_store_flask_sqlalchemy_db(make_app: t.Any, tmp_path: t.Any) -> None:
    db = SQLAlchemy()

    class Item(db.Model):  # type: ignore[name-defined,misc]
        id = db.Column(db.Integer, primary_key=True)

    app = make_app(
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/app.sqlite3",
        SESSION_STORE=db,
    )
    db.init_app(app)
    ext = SessionExt(app)

    @app.post("/login")
    def login() -> str:
        db.session.add(Item(id=1))
        session["user"] = "ann"
        # Saved now, through the store's own connection ...
        session.save()  # type: ignore[attr-defined]
        # ... so the app abandoning its unit of work cannot undo it, and the
        # save did not commit that unit of work either.
        db.session.rollback()
        return "ok"

    try:
        with app.app_context():
            store = ext.get_store()
            assert isinstance(store, SQLAlchemyStore)
            assert store.engine is db.engine
            db.create_all()
            store.migrate()

        client = app.test_client()
        assert client.post("/login").text == "ok"
        assert client.get("/get/user").text == "ann"
        with app.app_context():
            assert db.session.query(Item).count() == 0
    finally:
        with app.app_context():
            for engine in db.engines.values():
                engine.dispose()


def test_store_unknown_scheme(make_app: t.Any) -> None:
    app = make_app(SESSION_STORE="nosuchdb://localhost/x")
    with pytest.raises(ConfigurationError) as info:
        SessionExt(app)
    message = str(info.value)
    assert "'nosuchdb'" in message
    for scheme in ("memory://", "sqlite://", "postgresql://", "redis://", "mongodb://"):
        assert scheme in message
    # A failed set-up leaves the app unregistered: fix the config and retry.
    assert "towersess" not in app.extensions
    app.config["SESSION_STORE"] = "memory://"
    SessionExt(app)


def test_store_unsupported_object(make_app: t.Any) -> None:
    app = make_app(SESSION_STORE=object())
    with pytest.raises(ConfigurationError, match="SESSION_STORE must be"):
        SessionExt(app)
    assert "towersess" not in app.extensions


# -- serializer ----------------------------------------------------------------


def test_json_serializer(make_app: t.Any) -> None:
    store = MemoryStore()
    app = make_app(SESSION_SERIALIZER="json")
    ext = SessionExt(app, store=store)
    assert isinstance(ext.get_interface(app).serializer, JSONSerializer)
    client = app.test_client()
    client.post("/set/user/ann")
    assert client.get("/get/user").text == "ann"
    cookie = client.get_cookie("session")
    assert cookie is not None
    record = store.load(stored_key(cookie.value.rsplit(".", 1)[0]))
    assert record is not None
    assert b'"user"' in record.payload and b'"ann"' in record.payload


def test_unknown_serializer(make_app: t.Any) -> None:
    app = make_app(SESSION_STORE="memory://", SESSION_SERIALIZER="pickle")
    with pytest.raises(ConfigurationError, match="SESSION_SERIALIZER"):
        SessionExt(app)
    assert "towersess" not in app.extensions


# -- store calls per request ---------------------------------------------------


@pytest.fixture
def counted(
    make_app: t.Any, counting_store: CountingStore
) -> tuple[t.Any, CountingStore]:
    """A client whose session already exists, and the counting store."""
    app = make_app()
    SessionExt(app, store=counting_store)
    client = app.test_client()
    client.post("/set/user/ann")
    counting_store.reset()
    return client, counting_store


def test_new_session_is_one_create(
    make_app: t.Any, counting_store: CountingStore
) -> None:
    app = make_app()
    SessionExt(app, store=counting_store)
    app.test_client().post("/set/user/ann")
    assert counting_store.calls == Counter(create=1)


def test_untouched_session_costs_no_store_call(
    counted: tuple[t.Any, CountingStore],
) -> None:
    client, store = counted
    assert client.get_cookie("session") is not None
    assert client.get("/idle").text == "idle"
    assert store.total == 0


def test_read_only_request_is_one_load(counted: tuple[t.Any, CountingStore]) -> None:
    client, store = counted
    assert client.get("/get/user").text == "ann"
    assert store.calls == Counter(load=1)


def test_writing_request_is_one_load_one_save(
    counted: tuple[t.Any, CountingStore],
) -> None:
    client, store = counted
    client.post("/set/user/bob")
    assert store.calls == Counter(load=1, save=1)
    store.reset()
    assert client.get("/get/user").text == "bob"


def test_counting_store_is_the_interface_store(
    make_app: t.Any, counting_store: CountingStore
) -> None:
    app = make_app()
    ext = SessionExt(app, store=counting_store)
    store: SessionStore = ext.get_store(app)
    assert store is counting_store


# -- SESSION_CACHE -------------------------------------------------------------


def test_session_cache_puts_a_caching_store_in_front(
    make_app: t.Any, tmp_path: t.Any
) -> None:
    from datetime import timedelta

    from flask_towersess.stores.caching import CachingStore

    app = make_app(
        SESSION_STORE=f"sqlite:///{tmp_path}/durable.sqlite3",
        SESSION_STORE_OPTIONS={"auto_migrate": True},
        SESSION_CACHE="memory://",
        SESSION_CACHE_MAX_AGE=timedelta(seconds=30),
    )
    ext = SessionExt(app)
    store = ext.get_store(app)
    assert isinstance(store, CachingStore)
    assert isinstance(store.cache, MemoryStore)
    assert store.max_age == timedelta(seconds=30)
    client = app.test_client()
    roundtrip(app, client)
    # The durable store holds the session too: a cold cache still finds it.
    store.cache = MemoryStore()
    assert client.get("/get/user").text == "ann"
