"""The table of bad input and faults (docs/faults.rst), row by row."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask
from flask import session

from flask_towersess.errors import ConfigurationError
from flask_towersess.errors import SerializationError
from flask_towersess.errors import StoreUnavailable
from flask_towersess.session import new_session_key
from flask_towersess.session import stored_key
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.base import utcnow
from flask_towersess.stores.sqlalchemy import SQLAlchemyStore

from .apps import session_app


def make_app(store: SessionStore, **config: object) -> Flask:
    app = session_app(store, SECRET_KEY="s", **config)

    @app.get("/get")
    def get() -> str:
        return repr(dict(session))

    @app.get("/set/<value>")
    def set_(value: str) -> str:
        session["value"] = value
        return "ok"

    @app.get("/bad")
    def bad() -> str:
        session["ok"] = 1
        session["bad"] = object()
        return "ok"

    @app.get("/big")
    def big() -> str:
        session["big"] = "x" * 5000
        return "ok"

    return app


def test_undecodable_payload_gives_empty_session_and_a_warning(
    store: SessionStore, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(store)
    client = app.test_client()
    client.get("/set/1")
    key = client.get_cookie("session").value.partition(".")[0]
    record = store.load(stored_key(key))
    assert record is not None
    store.save(
        dataclasses.replace(record, payload=b"\x01\xde\xad\xbe\xef", version=2),
        expected_version=1,
    )
    with caplog.at_level("WARNING", logger="flask_towersess.security"):
        response = client.get("/get")
    assert response.status_code == 200
    assert response.data == b"{}"
    assert [r.name for r in caplog.records] == ["flask_towersess.security"]


def test_unserializable_value_names_key_and_type_and_writes_nothing(
    store: SessionStore,
) -> None:
    app = make_app(store)
    app.testing = True
    client = app.test_client()
    client.get("/set/1")
    with pytest.raises(SerializationError, match=r"session\['bad'\].*builtins.object"):
        client.get("/bad")
    assert client.get("/get").data == b"{'value': '1'}"


def test_payload_size_limit(store: SessionStore) -> None:
    app = make_app(store, SESSION_MAX_PAYLOAD_SIZE=1000)
    app.testing = True
    client = app.test_client()
    client.get("/set/1")
    with pytest.raises(SerializationError, match="SESSION_MAX_PAYLOAD_SIZE"):
        client.get("/big")
    assert client.get("/get").data == b"{'value': '1'}"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg2://postgres@127.0.0.1:1/test",
        "mysql+pymysql://root@127.0.0.1:1/test",
    ],
)
def test_unreachable_database_gives_store_unavailable_quickly(url: str) -> None:
    store = SQLAlchemyStore.from_url(url, connect_args={"connect_timeout": 2})
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            store.load(new_session_key())
        assert time.monotonic() - started < 5
        assert info.value.__cause__ is not None
        app = make_app(store)
        client = app.test_client()
        client.set_cookie("session", "x")  # not even a valid cookie: no store call
        assert client.get("/get").status_code == 200
        with app.test_request_context():
            signed = app.session_interface._cookie_value(app, new_session_key())  # type: ignore[attr-defined]
        client.set_cookie("session", signed)
        response = client.get("/get")
        assert response.status_code == 503
    finally:
        store.close()


def test_database_recovers_after_outage(sql_store: SQLAlchemyStore) -> None:
    """A store that fails (bad credentials stand in for an outage) and then
    comes back serves the same session again."""
    app = make_app(sql_store)
    client = app.test_client()
    client.get("/set/kept")
    real_engine = sql_store._engine
    broken = sa.create_engine(
        "postgresql+psycopg2://postgres@127.0.0.1:1/test",
        connect_args={"connect_timeout": 1},
    )
    sql_store._engine = broken
    try:
        assert client.get("/get").status_code == 503
        assert client.get("/set/lost").status_code == 503
    finally:
        sql_store._engine = real_engine
        broken.dispose()
    assert client.get("/get").data == b"{'value': 'kept'}"


def test_missing_table_says_run_migrate(sql_store: SQLAlchemyStore) -> None:
    missing = SQLAlchemyStore(sql_store.engine, table="towersess_no_such_table")
    with pytest.raises(ConfigurationError, match="flask sessions migrate"):
        missing.load(new_session_key())
    with pytest.raises(ConfigurationError, match="towersess_no_such_table"):
        missing.create(Record(new_session_key(), b"x", utcnow() + timedelta(minutes=1)))


def test_record_expired_between_requests_gives_fresh_session(
    store: SessionStore,
) -> None:
    app = make_app(store)
    client = app.test_client()
    client.get("/set/1")
    key = client.get_cookie("session").value.partition(".")[0]
    assert store.load(stored_key(key)) is not None
    store.touch(stored_key(key), utcnow() - timedelta(seconds=1))
    assert client.get("/get").data == b"{}"
    assert store.load(stored_key(key)) is None


def test_foreign_table_under_our_name_says_so(sql_store: SQLAlchemyStore) -> None:
    """Flask-Session's table has the same default name and other columns."""
    name = "towersess_foreign_table"
    metadata = sa.MetaData()
    foreign = sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("session_id", sa.String(255)),
        sa.Column("data", sa.LargeBinary),
    )
    metadata.drop_all(sql_store.engine)
    metadata.create_all(sql_store.engine)
    try:
        store = SQLAlchemyStore(sql_store.engine, table=name)
        with pytest.raises(
            ConfigurationError, match="not a flask-towersess session table"
        ):
            store.load(new_session_key())
        with pytest.raises(ConfigurationError, match="SESSION_STORE_OPTIONS"):
            store.migrate()
    finally:
        foreign.drop(sql_store.engine)


def test_503_page_does_not_show_database_details() -> None:
    store = SQLAlchemyStore.from_url(
        "postgresql+psycopg2://secretuser@127.0.0.1:1/test",
        connect_args={"connect_timeout": 2},
    )
    try:
        app = make_app(store)
        client = app.test_client()
        with app.test_request_context():
            signed = app.session_interface._cookie_value(app, new_session_key())  # type: ignore[attr-defined]
        client.set_cookie("session", signed)
        response = client.get("/get")
        assert response.status_code == 503
        body = response.get_data(as_text=True)
        assert (
            "127.0.0.1" not in body and "secretuser" not in body and "port" not in body
        )
    finally:
        store.close()


def test_an_unreadable_session_is_never_saved_even_if_the_app_carries_on(
    sql_store: SQLAlchemyStore,
) -> None:
    # The app catches the StoreUnavailable and answers 200 anyway: what it
    # wrote into the session it could not read must not replace the stored
    # session, and the cookie stays as it was.
    app = make_app(sql_store)
    calls: list[str] = []

    @app.get("/carry-on")
    def carry_on() -> str:
        try:
            session.get("value")
        except StoreUnavailable:
            calls.append("failed")
        session["value"] = "partial"  # an empty session, not saved
        assert dict(session) == {"value": "partial"}
        return "ok"

    client = app.test_client()
    client.get("/set/kept")
    key = client.get_cookie("session").value.partition(".")[0]  # type: ignore[union-attr]
    record = sql_store.load(stored_key(key))
    assert record is not None
    load = sql_store.load

    def unavailable(key: str) -> Record | None:
        calls.append("load")
        raise StoreUnavailable()

    sql_store.load = unavailable  # type: ignore[method-assign]
    response = client.get("/carry-on")
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers
    assert calls == ["load", "failed"]
    sql_store.load = load  # type: ignore[method-assign]
    assert sql_store.load(record.key) == record
    assert client.get("/get").text == "{'value': 'kept'}"
