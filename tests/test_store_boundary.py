"""Stores as a trust boundary, in both directions.

- Keys: every store refuses, in every method, anything that is not a
  session key (a ``str`` of 8 to 128 characters of ``[A-Za-z0-9_-]``):
  ``TypeError`` for a non-``str``, ``ValueError`` for a malformed ``str``;
  nothing is read, written or deleted.
- Records: whatever the backend holds under a key (planted there directly,
  not through the store), ``load()`` returns a valid live record or
  ``None`` with a warning on the ``flask_towersess.security`` logger; it
  never raises, and an app never answers with a 500.
- URLs: no password, from the user information or the query string, in a
  store's ``describe()`` or in the errors a bad URL gives.
"""

from __future__ import annotations

import logging
import struct
import time
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_towersess import SessionExt
from flask_towersess.errors import ConfigurationError
from flask_towersess.serializers import MsgPackSerializer
from flask_towersess.session import ServerSession
from flask_towersess.session import new_session_key
from flask_towersess.session import stored_key
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.base import utcnow
from flask_towersess.stores.caching import CachingStore
from flask_towersess.stores.memory import MemoryStore
from flask_towersess.stores.mongodb import MongoDBStore
from flask_towersess.stores.redis import RedisStore
from flask_towersess.stores.sqlalchemy import SQLAlchemyStore

from .test_faults import make_app

SECURITY = "flask_towersess.security"
UTC = timezone.utc
#: The latest moment a datetime holds, as each backend stores it.
YEAR_9999 = datetime(9999, 12, 31, 23, 59, 59, 999999)


def make_record(key: str | None = None, payload: bytes = b"data") -> Record:
    return Record(key or new_session_key(), payload, utcnow() + timedelta(hours=1))


def stored_count(store: SessionStore) -> int:
    """How many records the backend holds, counted behind the store's back."""
    if isinstance(store, CachingStore):
        return stored_count(store.store) + stored_count(store.cache)
    if isinstance(store, MemoryStore):
        return len(store)
    if isinstance(store, SQLAlchemyStore):
        with store.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(store.table)
            return int(conn.execute(query).scalar_one())
    if isinstance(store, RedisStore):
        return sum(1 for _ in store.client.scan_iter(match=store.key_prefix + "*"))
    if isinstance(store, MongoDBStore):
        return int(store.collection.count_documents({}))
    if type(store).__name__ == "MemcachedStore":
        from .fixtures_memcached import stored_keys

        return len(stored_keys(t.cast(t.Any, store)))
    raise AssertionError(f"no count for {store!r}")


# -- A. keys -------------------------------------------------------------------

NOT_STR = [
    pytest.param({"$ne": None}, id="mongo-operator"),
    pytest.param({"_id": "a" * 43}, id="dict"),
    pytest.param(["a" * 43], id="list"),
    pytest.param(None, id="None"),
    pytest.param(12345678, id="int"),
    pytest.param(b"a" * 43, id="bytes"),
    pytest.param(bytearray(b"a" * 43), id="bytearray"),
]
MALFORMED = [
    pytest.param("", id="empty"),
    pytest.param("*", id="glob"),
    pytest.param("session:*", id="prefix-glob"),
    pytest.param("a" * 7, id="7-chars"),
    pytest.param("a" * 129, id="129-chars"),
    pytest.param("abcdefgh:ijkl", id="colon"),
    pytest.param("abcd/efgh/ijkl", id="slash"),
    pytest.param("../../../etc/passwd", id="traversal"),
    pytest.param("abcd efgh ijkl", id="space"),
    pytest.param("abcdefghijkl\n", id="newline"),
    pytest.param("ключключключ", id="unicode"),
    pytest.param("abcdefghijkl\x00", id="NUL"),
    pytest.param("abcdefgh' OR '1'='1", id="sql-quote"),
]


def _every_method(store: SessionStore, key: t.Any) -> dict[str, t.Callable[[], t.Any]]:
    later = utcnow() + timedelta(hours=2)
    record = Record(key, b"planted", later, 2)
    return {
        "load": lambda: store.load(key),
        "exists": lambda: store.exists(key),
        "delete": lambda: store.delete(key),
        "touch": lambda: store.touch(key, later),
        "create": lambda: store.create(record),
        "save": lambda: store.save(record, expected_version=1),
    }


def _check_refused(store: SessionStore, key: t.Any, error: type[Exception]) -> None:
    others = [make_record(payload=b"first"), make_record(payload=b"second")]
    for record in others:
        store.create(record)
    before = stored_count(store)
    for name, call in _every_method(store, key).items():
        with pytest.raises(error, match="session key") as raised:
            call()
        assert type(raised.value) is error, name
    # Nothing was written or deleted, and every other session is intact.
    assert stored_count(store) == before
    for record in others:
        assert_same(store.load(record.key), record)


def assert_same(loaded: Record | None, record: Record) -> None:
    """As stored: backends keep an expiry to the millisecond or better."""
    assert loaded is not None
    assert (loaded.key, loaded.payload, loaded.version) == (
        record.key,
        record.payload,
        record.version,
    )
    assert abs(loaded.expires_at - record.expires_at) < timedelta(seconds=1)


@pytest.mark.parametrize("key", NOT_STR)
def test_a_key_that_is_not_a_str_is_a_type_error(
    store: SessionStore, key: t.Any
) -> None:
    _check_refused(store, key, TypeError)


@pytest.mark.parametrize("key", MALFORMED)
def test_a_malformed_key_is_a_value_error(store: SessionStore, key: str) -> None:
    _check_refused(store, key, ValueError)


def test_the_message_does_not_repeat_the_key(memory_store: MemoryStore) -> None:
    # It may be a real key with a typo, or text meant to forge log lines.
    bad = "almost-a-real-session-key!"
    with pytest.raises(ValueError) as raised:
        memory_store.load(bad)
    assert bad not in str(raised.value)
    assert "26 characters" in str(raised.value)


def test_mongodb_operator_key_deletes_nothing(mongodb_store: MongoDBStore) -> None:
    """The reported case: ``delete({"$ne": None})`` deleted a session."""
    victim = make_record()
    mongodb_store.create(victim)
    calls: list[str] = []
    collection = mongodb_store.collection
    for name in ("find_one", "delete_one", "update_one", "replace_one"):
        method = getattr(collection, name)

        def spy(
            *args: t.Any, _name: str = name, _m: t.Any = method, **kw: t.Any
        ) -> t.Any:
            calls.append(_name)
            return _m(*args, **kw)

        setattr(collection, name, spy)
    for method in ("delete", "load", "exists", "touch"):
        call = _every_method(mongodb_store, {"$ne": None})[method]
        with pytest.raises(TypeError):
            call()
    assert calls == []  # refused before the collection was asked anything
    assert collection.count_documents({"_id": victim.key}) == 1


def test_a_caching_store_checks_at_its_own_boundary() -> None:
    class Untouchable(MemoryStore):
        def load(self, key: str) -> Record | None:
            raise AssertionError("reached the inner store")

        delete = touch = exists = create = save = load  # type: ignore[assignment]

    store = CachingStore(Untouchable(), Untouchable())
    for key, error in ((b"k" * 43, TypeError), ("k" * 7, ValueError)):
        for call in _every_method(store, key).values():
            with pytest.raises(error):
                call()


def test_server_session_delete_of_a_malformed_key_raises() -> None:
    store = MemoryStore()
    kept = make_record()
    store.create(kept)
    with pytest.raises(ValueError):
        ServerSession(store).delete("*")
    assert not ServerSession(store).exists("*")  # exists() answers, as before
    assert_same(store.load(kept.key), kept)


def test_key_check_boundaries() -> None:
    from flask_towersess.stores.base import check_key

    for key in ("a" * 8, "Z" * 128, "A-z_0-9-", new_session_key()):
        assert check_key(key) is key
    for bad in ("a" * 7, "a" * 129, "a" * 8 + "=", "ä" * 8):
        with pytest.raises(ValueError):
            check_key(bad)


# -- B. hostile records: helpers -------------------------------------------------


# make_app: tests/test_faults.py's app, with /get and /set/<value>.


def start_session(client: t.Any) -> str:
    """Start a session; return the key the store holds it under (the hash of
    the cookie's key), where the tests below plant hostile values."""
    assert client.get("/set/1").status_code == 200
    return stored_key(str(client.get_cookie("session").value.partition(".")[0]))


def security_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == SECURITY and r.levelno == logging.WARNING
    ]


def load_refused(
    store: SessionStore, key: str, caplog: pytest.LogCaptureFixture
) -> list[str]:
    """Load ``key``: it must give ``None`` and a security warning; return it."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=SECURITY):
        started = time.monotonic()
        assert store.load(key) is None
        assert time.monotonic() - started < 2
    warnings = security_warnings(caplog)
    assert warnings, "no warning on the security logger"
    assert key not in " ".join(warnings)  # never the whole key
    return warnings


def app_gives_empty_session(
    client: t.Any, caplog: pytest.LogCaptureFixture, *, warned: bool = True
) -> None:
    """The next request sees an empty session, not a 500; the one after
    that can store data again."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=SECURITY):
        response = client.get("/get")
    assert response.status_code == 200
    assert response.data == b"{}"
    if warned:
        assert security_warnings(caplog)
    assert client.get("/set/2").status_code == 200
    assert client.get("/get").data == b"{'value': '2'}"


def app_keeps_session(client: t.Any) -> None:
    response = client.get("/get")
    assert response.status_code == 200
    assert response.data == b"{'value': '1'}"
    assert client.get("/set/2").status_code == 200
    assert client.get("/get").data == b"{'value': '2'}"


# -- B. the session layer: what every store passes through -------------------------


def _plant_payload(store: SessionStore, key: str, payload: bytes) -> None:
    record = store.load(key)
    assert record is not None
    store.save(
        Record(key, payload, record.expires_at, record.version + 1), record.version
    )


@pytest.mark.parametrize(
    "expiry",
    [
        pytest.param(
            datetime(9999, 12, 31, 20, tzinfo=timezone(timedelta(hours=-5))),
            id="year-10000-in-utc",
        ),
        pytest.param(
            datetime(1, 1, 1, 2, tzinfo=timezone(timedelta(hours=5))),
            id="year-0-in-utc",
        ),
        pytest.param(1000 * 365 * 86400 + 1, id="seconds-too-many"),
        pytest.param(1.5, id="float"),
        pytest.param(True, id="bool"),
        pytest.param("2030-01-01", id="str"),
    ],
)
def test_a_payload_expiry_out_of_range_gives_an_empty_session(
    store: SessionStore, expiry: object, caplog: pytest.LogCaptureFixture
) -> None:
    """What gave a 500 on every request: a fixed expiry that is in range in
    its own time zone but not in UTC (the cookie's Expires, and the stores,
    convert it)."""
    client = make_app(store).test_client()
    key = start_session(client)
    payload = MsgPackSerializer().dumps({"data": {"value": "1"}, "expiry": expiry})
    _plant_payload(store, key, payload)
    app_gives_empty_session(client, caplog)


def test_a_payload_expiry_at_the_end_of_time_is_kept(store: SessionStore) -> None:
    client = make_app(store).test_client()
    key = start_session(client)
    expiry = YEAR_9999.replace(tzinfo=UTC)
    payload = MsgPackSerializer().dumps({"data": {"value": "1"}, "expiry": expiry})
    _plant_payload(store, key, payload)
    response = client.get("/get")
    assert (response.status_code, response.data) == (200, b"{'value': '1'}")
    assert "9999" in response.headers["Set-Cookie"]


def test_a_payload_over_the_size_limit_is_not_decoded(
    memory_store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_app(memory_store, SESSION_MAX_PAYLOAD_SIZE=1000).test_client()
    key = start_session(client)
    state = {"data": {"value": "x" * 2000}}
    _plant_payload(memory_store, key, MsgPackSerializer().dumps(state))
    app_gives_empty_session(client, caplog)
    assert any("SESSION_MAX_PAYLOAD_SIZE" in w for w in security_warnings(caplog))


def test_a_huge_payload_is_refused_at_once(
    store: SessionStore, caplog: pytest.LogCaptureFixture
) -> None:
    # 4 MiB of nested arrays: over the default 256 KiB limit.
    client = make_app(store).test_client()
    key = start_session(client)
    started = time.monotonic()
    _plant_payload(store, key, b"\x01" + b"\x91" * (4 * 1024 * 1024))
    app_gives_empty_session(client, caplog)
    assert time.monotonic() - started < 10


def _value_of_payload_size(size: int) -> str:
    """A value for /set/<value> whose session payload is ``size`` bytes."""
    serializer = MsgPackSerializer()
    now = int(time.time() * 1000)  # the session's start (ms), stored with its data
    for n in range(size, 0, -1):
        state = {"data": {"value": "x" * n}, "created": now}
        if len(serializer.dumps(state)) == size:
            return "x" * n
    raise AssertionError(size)


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_payload_at_the_size_limit_is_read(encrypted: bool) -> None:
    config: dict[str, t.Any] = {"SESSION_MAX_PAYLOAD_SIZE": 1000}
    if encrypted:
        from flask_towersess.crypto import generate_key

        config["SESSION_ENCRYPTION_KEY"] = generate_key()
    client = make_app(MemoryStore(), **config).test_client()
    value = _value_of_payload_size(1000)
    assert client.get(f"/set/{value}").status_code == 200
    assert client.get("/get").data == repr({"value": value}).encode()


# -- B. SQL ------------------------------------------------------------------------


def sql_update(store: SQLAlchemyStore, key: str, column: str, value: object) -> None:
    """Write ``value`` as the driver sends it, with no type processing."""
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                f"UPDATE {store.table.fullname} SET {column} = :value"
                " WHERE session_key = :key"
            ),
            {"value": value, "key": key},
        )


def test_sql_expiry_at_the_end_of_time_is_a_live_record(
    sql_store: SQLAlchemyStore, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_app(sql_store).test_client()
    key = start_session(client)
    sql_update(sql_store, key, "expires_at", YEAR_9999)
    with caplog.at_level(logging.WARNING, logger=SECURITY):
        record = sql_store.load(key)
    assert record is not None
    assert record.expires_at == YEAR_9999.replace(tzinfo=UTC)
    assert not security_warnings(caplog)
    app_keeps_session(client)


def test_sql_expiry_in_year_1_is_expired(sql_store: SQLAlchemyStore) -> None:
    client = make_app(sql_store).test_client()
    key = start_session(client)
    sql_update(sql_store, key, "expires_at", datetime(1, 1, 1))
    assert sql_store.load(key) is None
    assert client.get("/get").data == b"{}"


@pytest.mark.parametrize(
    ("column", "value"),
    [
        pytest.param("version", 2**31 - 1, id="version-int32-max"),
        pytest.param("version", -(2**31), id="version-int32-min"),
    ],
)
def test_sql_version_that_cannot_be_saved_again(
    sql_store: SQLAlchemyStore,
    column: str,
    value: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A record whose next version would overflow the column: every save
    of it would fail, so it is not returned."""
    client = make_app(sql_store).test_client()
    key = start_session(client)
    sql_update(sql_store, key, column, value)
    load_refused(sql_store, key, caplog)
    app_gives_empty_session(client, caplog)


def test_sql_negative_version_is_still_a_record(sql_store: SQLAlchemyStore) -> None:
    # Negative versions are how a CachingStore marks its fill leases in a
    # cache store; a durable record with one is read and saved as usual.
    client = make_app(sql_store).test_client()
    key = start_session(client)
    sql_update(sql_store, key, "version", -5)
    app_keeps_session(client)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        pytest.param("expires_at", "garbage", id="expires_at-text"),
        pytest.param("expires_at", "10000-01-01 00:00:00", id="expires_at-year-10000"),
        pytest.param("expires_at", 253402300800, id="expires_at-int"),
        pytest.param("expires_at", 1.5, id="expires_at-real"),
        pytest.param("payload", "text, not bytes", id="payload-text"),
        pytest.param("payload", 10**15, id="payload-int"),
        pytest.param("payload", 2.5, id="payload-real"),
        pytest.param("version", "abc", id="version-text"),
        pytest.param("version", 1.5, id="version-real"),
        pytest.param("version", b"\x01", id="version-blob"),
        pytest.param("version", 2**62, id="version-huge"),
    ],
)
@pytest.mark.parametrize("backend", ["sqlite", "sqlite_core"])
def test_sqlite_values_of_the_wrong_type(
    request: pytest.FixtureRequest,
    backend: str,
    column: str,
    value: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SQLite stores any value in any column. (``payload-int`` made the
    store call ``bytes(10**15)``.)"""
    store: SQLAlchemyStore = request.getfixturevalue(f"{backend}_store")
    client = make_app(store).test_client()
    key = start_session(client)
    sql_update(store, key, column, value)
    load_refused(store, key, caplog)
    app_gives_empty_session(client, caplog)


@pytest.mark.parametrize("column", ["payload", "expires_at", "version"])
def test_sql_null_in_a_table_made_without_not_null(
    sqlite_store: SQLAlchemyStore, column: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = "hand_made_sessions"
    with sqlite_store.engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {name} (session_key VARCHAR(64) PRIMARY KEY,"
            " payload BLOB, expires_at DATETIME, version INTEGER)"
        )
    store = SQLAlchemyStore(sqlite_store.engine, table=name)
    client = make_app(store).test_client()
    key = start_session(client)
    sql_update(store, key, column, None)
    load_refused(store, key, caplog)
    app_gives_empty_session(client, caplog)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("10000-01-01 00:00:00", id="year-10000"),
        pytest.param("294276-12-31 23:59:59", id="year-294276"),
        pytest.param("4713-01-01 00:00:00 BC", id="year-4713-BC"),
    ],
)
def test_postgresql_timestamps_python_cannot_hold(
    postgresql_store: SQLAlchemyStore, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_app(postgresql_store).test_client()
    key = start_session(client)
    sql_update(postgresql_store, key, "expires_at", value)
    load_refused(postgresql_store, key, caplog)
    app_gives_empty_session(client, caplog)
    # The connection that met the value is still good.
    record = make_record()
    postgresql_store.create(record)
    assert_same(postgresql_store.load(record.key), record)


def test_postgresql_infinity(postgresql_store: SQLAlchemyStore) -> None:
    # psycopg2 reads 'infinity' as datetime.max, '-infinity' as datetime.min.
    client = make_app(postgresql_store).test_client()
    key = start_session(client)
    sql_update(postgresql_store, key, "expires_at", "infinity")
    record = postgresql_store.load(key)
    assert record is not None and record.expires_at.year == 9999
    app_keeps_session(client)
    key = start_session(client)
    sql_update(postgresql_store, key, "expires_at", "-infinity")
    assert postgresql_store.load(key) is None
    assert client.get("/get").data == b"{}"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("0000-00-00 00:00:00", id="zero-date"),
        pytest.param("2024-02-30 00:00:00", id="invalid-date"),
    ],
)
def test_mariadb_dates_python_cannot_hold(
    mariadb_store: SQLAlchemyStore, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    # PyMySQL returns such a date as a str. Only a lenient sql_mode lets
    # them in; the connection's own mode is put back afterwards.
    client = make_app(mariadb_store).test_client()
    key = start_session(client)
    with mariadb_store.engine.begin() as conn:
        conn.exec_driver_sql("SET SESSION sql_mode = 'ALLOW_INVALID_DATES'")
        try:
            conn.execute(
                sa.text(
                    f"UPDATE {mariadb_store.table.fullname} SET expires_at = :value"
                    " WHERE session_key = :key"
                ),
                {"value": value, "key": key},
            )
        finally:
            conn.exec_driver_sql("SET SESSION sql_mode = @@GLOBAL.sql_mode")
    load_refused(mariadb_store, key, caplog)
    app_gives_empty_session(client, caplog)


# -- B. Redis --------------------------------------------------------------------

_HEADER = struct.Struct(">Bqq")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def in_an_hour() -> int:
    return micros(utcnow() + timedelta(hours=1))


def redis_set(store: RedisStore, key: str, value: bytes) -> None:
    store.client.set(store.redis_key(key), value, px=600_000)


def a_payload(value: str = "1") -> bytes:
    return MsgPackSerializer().dumps({"data": {"value": value}})


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(lambda: b"", id="empty"),
        pytest.param(lambda: b"\xf1\x00\x00", id="truncated-header"),
        pytest.param(lambda: b"\xf1" + b"\x00" * 15, id="header-1-byte-short"),
        pytest.param(
            lambda: _HEADER.pack(0xF2, 1, in_an_hour()) + a_payload(), id="wrong-tag"
        ),
        pytest.param(lambda: b"\x80\x04pickled flask-session data", id="another-app"),
        pytest.param(
            lambda: _HEADER.pack(0xF1, 1, INT64_MAX) + a_payload(),
            id="expiry-int64-max",
        ),
        pytest.param(
            lambda: _HEADER.pack(0xF1, 1, INT64_MIN) + a_payload(),
            id="expiry-int64-min",
        ),
        pytest.param(
            lambda: (
                _HEADER.pack(0xF1, 1, micros(YEAR_9999.replace(tzinfo=UTC)) + 1)
                + a_payload()
            ),
            id="expiry-year-10000",
        ),
        pytest.param(
            lambda: _HEADER.pack(0xF1, INT64_MAX, in_an_hour()) + a_payload(),
            id="version-int64-max",
        ),
        pytest.param(
            lambda: _HEADER.pack(0xF1, 2**31 - 1, in_an_hour()) + a_payload(),
            id="version-int32-max",
        ),
        pytest.param(
            lambda: _HEADER.pack(0xF1, INT64_MIN, in_an_hour()) + a_payload(),
            id="version-int64-min",
        ),
    ],
)
def test_redis_values_this_store_cannot_use(
    redis_store: RedisStore,
    value: t.Callable[[], bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_app(redis_store).test_client()
    key = start_session(client)
    redis_set(redis_store, key, value())
    load_refused(redis_store, key, caplog)
    app_gives_empty_session(client, caplog)


def test_redis_key_of_another_type(
    redis_store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_app(redis_store).test_client()
    key = start_session(client)
    full_key = redis_store.redis_key(key)
    redis_store.client.delete(full_key)
    redis_store.client.hset(full_key, "payload", b"x")
    load_refused(redis_store, key, caplog)
    app_gives_empty_session(client, caplog)


def test_redis_expiry_at_the_end_of_time_is_a_live_record(
    redis_store: RedisStore,
) -> None:
    client = make_app(redis_store).test_client()
    key = start_session(client)
    end = micros(YEAR_9999.replace(tzinfo=UTC))
    redis_set(redis_store, key, _HEADER.pack(0xF1, 1, end) + a_payload())
    record = redis_store.load(key)
    assert record is not None and record.expires_at == YEAR_9999.replace(tzinfo=UTC)
    app_keeps_session(client)


def test_redis_huge_value_is_refused_by_the_session(
    redis_store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    # The store keeps payloads opaque; the session refuses one over
    # SESSION_MAX_PAYLOAD_SIZE before decoding it.
    client = make_app(redis_store).test_client()
    key = start_session(client)
    huge = MsgPackSerializer().dumps({"data": {"value": "x" * (8 * 1024 * 1024)}})
    redis_set(redis_store, key, _HEADER.pack(0xF1, 2, in_an_hour()) + huge)
    record = redis_store.load(key)
    assert record is not None and len(record.payload) == len(huge)
    app_gives_empty_session(client, caplog)


# -- B. MongoDB ------------------------------------------------------------------

_LATER = datetime(2100, 1, 1)


def mongo_replace(store: MongoDBStore, key: str, **fields: t.Any) -> None:
    document = {
        "_id": key,
        "payload": a_payload(),
        "expires_at": _LATER,
        "version": 1,
        **fields,
    }
    for name, value in fields.items():
        if value is _MISSING:
            del document[name]
    store.collection.replace_one({"_id": key}, document)


_MISSING = object()


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"version": "1"}, id="version-str"),
        pytest.param({"version": None}, id="version-None"),
        pytest.param({"version": 1.0}, id="version-float"),
        pytest.param({"version": True}, id="version-bool"),
        pytest.param({"version": 2**40}, id="version-huge"),
        pytest.param({"version": _MISSING}, id="version-missing"),
        pytest.param({"payload": "str"}, id="payload-str"),
        pytest.param({"payload": 10**15}, id="payload-int"),
        pytest.param({"payload": {"data": {}}}, id="payload-dict"),
        pytest.param({"payload": None}, id="payload-None"),
        pytest.param({"payload": _MISSING}, id="payload-missing"),
    ],
)
def test_mongodb_fields_of_the_wrong_type(
    mongodb_store: MongoDBStore,
    fields: dict[str, t.Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_app(mongodb_store).test_client()
    key = start_session(client)
    mongo_replace(mongodb_store, key, **fields)
    load_refused(mongodb_store, key, caplog)
    app_gives_empty_session(client, caplog)


@pytest.mark.parametrize(
    "expires_at",
    [
        pytest.param("9999-12-31", id="str"),
        pytest.param(253402300800000, id="int"),
        pytest.param(None, id="None"),
        pytest.param(_MISSING, id="missing"),
    ],
)
def test_mongodb_expiry_that_is_not_a_date(
    mongodb_store: MongoDBStore, expires_at: object, caplog: pytest.LogCaptureFixture
) -> None:
    # MongoDB compares values of one BSON type only ("type bracketing"), so
    # the live-record query never matches such a document: it is missing,
    # without a warning (telling why would cost a second query per miss).
    client = make_app(mongodb_store).test_client()
    key = start_session(client)
    mongo_replace(mongodb_store, key, expires_at=expires_at)
    assert mongodb_store.load(key) is None
    assert not mongodb_store.exists(key)
    app_gives_empty_session(client, caplog, warned=False)


def test_mongodb_expiry_at_the_end_of_time_is_a_live_record(
    mongodb_store: MongoDBStore,
) -> None:
    client = make_app(mongodb_store).test_client()
    key = start_session(client)
    end = datetime(9999, 12, 31, 23, 59, 59, 999000)  # BSON keeps milliseconds
    mongo_replace(mongodb_store, key, expires_at=end)
    record = mongodb_store.load(key)
    assert record is not None and record.expires_at == end.replace(tzinfo=UTC)
    app_keeps_session(client)


def test_mongodb_date_the_driver_cannot_decode(
    mongodb_store: MongoDBStore, caplog: pytest.LogCaptureFixture
) -> None:
    """pymongo raises InvalidBSON for a date past year 9999 (as a server
    returns one); mongomock cannot hold such a date, so its reply is
    replaced by the driver's error."""
    bson_errors = pytest.importorskip("bson.errors")
    pytest.importorskip("pymongo")
    with pytest.raises(bson_errors.InvalidBSON) as real:
        import bson

        bson.decode(bson.encode({"d": bson.DatetimeMS(2**62)}))
    client = make_app(mongodb_store).test_client()
    key = start_session(client)

    def undecodable(*args: t.Any, **kwargs: t.Any) -> t.Any:
        raise real.value

    mongodb_store.collection.find_one = undecodable  # type: ignore[method-assign]
    load_refused(mongodb_store, key, caplog)
    assert client.get("/get").data == b"{}"


# -- B. CachingStore -------------------------------------------------------------

_CACHE_HEADER = struct.Struct(">cq")


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(lambda: b"", id="empty"),
        pytest.param(lambda: b"\x01\x00\x00", id="truncated-header"),
        pytest.param(lambda: b"\x02" + b"\x00" * 8 + a_payload(), id="wrong-tag"),
        pytest.param(
            lambda: _CACHE_HEADER.pack(b"\x01", INT64_MAX) + a_payload(),
            id="true-expiry-int64-max",
        ),
        pytest.param(
            lambda: _CACHE_HEADER.pack(b"\x01", INT64_MIN) + a_payload(),
            id="true-expiry-int64-min",
        ),
    ],
)
@pytest.mark.parametrize("backend", ["caching", "caching_redis_postgresql"])
def test_caching_hostile_cache_entry(
    request: pytest.FixtureRequest,
    backend: str,
    entry: t.Callable[[], bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    store: CachingStore = request.getfixturevalue(f"{backend}_store")
    client = make_app(store).test_client()
    key = start_session(client)
    durable = store.store.load(key)
    assert durable is not None
    hostile = Record(key, entry(), utcnow() + timedelta(minutes=5), durable.version)
    store.cache.delete(key)
    store.cache.create(hostile)
    # The durable store answers, the entry is dropped, a warning is logged.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=SECURITY):
        assert store.load(key) == durable
    assert security_warnings(caplog)
    assert store.cache.load(key) is None
    app_keeps_session(client)
    # With nothing durable behind it, the entry gives no session at all.
    key = start_session(client)
    store.store.delete(key)
    store.cache.delete(key)
    store.cache.create(Record(key, entry(), utcnow() + timedelta(minutes=5), 1))
    load_refused(store, key, caplog)
    store.cache.delete(key)
    store.cache.create(Record(key, entry(), utcnow() + timedelta(minutes=5), 1))
    app_gives_empty_session(client, caplog)


# -- C. passwords in URLs ----------------------------------------------------------

USER_PASSWORD = "s3cretpw1"
QUERY_PASSWORD = "s3cretqs2"


def assert_no_secret(text: str) -> None:
    assert USER_PASSWORD not in text
    assert QUERY_PASSWORD not in text


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{USER_PASSWORD}@127.0.0.1:1/db?password={QUERY_PASSWORD}",
        f"postgresql+psycopg2://u:{USER_PASSWORD}@127.0.0.1:1/db"
        f"?sslmode=prefer&PASSWORD={QUERY_PASSWORD}",
        f"mysql+pymysql://u:{USER_PASSWORD}@127.0.0.1:1/db?password={QUERY_PASSWORD}",
        f"mysql://u:{USER_PASSWORD}@127.0.0.1:1/db?charset=utf8mb4&passwd={QUERY_PASSWORD}",
    ],
)
def test_sql_describe_hides_passwords(url: str) -> None:
    store = SQLAlchemyStore.from_url(url)
    try:
        assert_no_secret(store.describe())
        assert_no_secret(repr(store))
        assert "127.0.0.1:1/db" in store.describe()
        assert "***" in store.describe()
    finally:
        store.close()


def test_sql_missing_table_message_hides_passwords(
    postgresql_store: SQLAlchemyStore,
) -> None:
    url = postgresql_store.engine.url.update_query_dict({"sslpassword": QUERY_PASSWORD})
    engine = sa.create_engine(url)
    try:
        store = SQLAlchemyStore(engine, table="towersess_no_such_table")
        with pytest.raises(ConfigurationError, match="flask sessions migrate") as info:
            store.load(new_session_key())
        assert_no_secret(str(info.value))
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql//u:{USER_PASSWORD}@h/db?password={QUERY_PASSWORD}",
        f"postgresql://u:{USER_PASSWORD}@h:port/db?password={QUERY_PASSWORD}",
        f"postgresql+nosuchdriver://u:{USER_PASSWORD}@h/db?password={QUERY_PASSWORD}",
    ],
)
def test_sql_bad_url_error_hides_passwords(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        SQLAlchemyStore.from_url(url)
    assert_no_secret(str(info.value))
    assert info.value.__suppress_context__


def test_sql_bad_option_error_hides_passwords() -> None:
    url = f"postgresql://u:{USER_PASSWORD}@h/db?password={QUERY_PASSWORD}"
    with pytest.raises(ConfigurationError, match="SESSION_STORE_OPTIONS") as info:
        SQLAlchemyStore.from_url(url, no_such_option=1)
    assert_no_secret(str(info.value))


@pytest.mark.parametrize(
    "url",
    [
        f"redis://u:{USER_PASSWORD}@127.0.0.1:1/0?password={QUERY_PASSWORD}",
        f"redis://:{USER_PASSWORD}@127.0.0.1:1/0?socket_timeout=1&password={QUERY_PASSWORD}",
        f"unix://u:{USER_PASSWORD}@/tmp/redis.sock?db=1&password={QUERY_PASSWORD}",
        f"redis+sentinel://u:{USER_PASSWORD}@127.0.0.1:1/svc/0?password={QUERY_PASSWORD}",
    ],
)
def test_redis_describe_hides_passwords(url: str) -> None:
    store = RedisStore.from_url(url)
    try:
        assert_no_secret(store.describe())
        assert_no_secret(repr(store))
    finally:
        store.close()


@pytest.mark.parametrize(
    "url",
    [
        f"redis+sentinel://u:{USER_PASSWORD}@127.0.0.1:1/?password={QUERY_PASSWORD}",
        f"redis+sentinel://u:{USER_PASSWORD}@127.0.0.1:port/svc?password={QUERY_PASSWORD}",
        f"redis+cluster://u:{USER_PASSWORD}@127.0.0.1:1/2?password={QUERY_PASSWORD}",
        f"redis://u:{USER_PASSWORD}@127.0.0.1:1/0?socket_timeout=soon&password={QUERY_PASSWORD}",
    ],
)
def test_redis_bad_url_error_hides_passwords(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisStore.from_url(url)
    assert_no_secret(str(info.value))


def test_mongodb_describe_hides_passwords() -> None:
    pytest.importorskip("pymongo")
    url = (
        f"mongodb://u:{USER_PASSWORD}@127.0.0.1:1/db"
        f"?authSource=admin&authMechanismProperties=AWS_SESSION_TOKEN:{QUERY_PASSWORD}"
    )
    store = MongoDBStore.from_url(url, serverSelectionTimeoutMS=100)
    try:
        assert_no_secret(store.describe())
        assert_no_secret(repr(store))
    finally:
        store.close()


@pytest.mark.parametrize(
    "url",
    [
        f"mongodb://u:{USER_PASSWORD}@127.0.0.1:1/?password={QUERY_PASSWORD}",
        f"mongodb://u:{USER_PASSWORD}@127.0.0.1:1,127.0.0.1:2/db"
        f"?directConnection=true&password={QUERY_PASSWORD}",
        f"mongodb://u:{USER_PASSWORD}@x@127.0.0.1:1/db?password={QUERY_PASSWORD}",
        f"mongodb+srv://u:{USER_PASSWORD}@h.example:1/db?password={QUERY_PASSWORD}",
    ],
)
# pymongo warns of the unknown "password" option (by name only).
@pytest.mark.filterwarnings("ignore:Unknown option:UserWarning")
def test_mongodb_bad_url_error_hides_passwords(url: str) -> None:
    pytest.importorskip("pymongo")
    with pytest.raises(ConfigurationError) as info:
        MongoDBStore.from_url(url)
    assert_no_secret(str(info.value))


def test_cli_error_hides_passwords(tmp_path: t.Any) -> None:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="s",
        SESSION_STORE=(
            f"postgresql://u:{USER_PASSWORD}@127.0.0.1:1/db"
            f"?connect_timeout=2&password={QUERY_PASSWORD}"
        ),
    )
    SessionExt(app)
    result = app.test_cli_runner().invoke(args=["sessions", "purge-expired"])
    assert result.exit_code != 0
    assert "127.0.0.1" in result.output
    assert_no_secret(result.output)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://u@h/0", "redis://u@h/0"),
        ("sqlite:///tmp/s.db", "sqlite:///tmp/s.db"),
        ("memory://", "memory://"),
        ("mysql://u:p@ss/w#rd@h/db", "mysql://u:***@h/db"),
        (
            "mongodb://u:pw@h1:1,h2:2/db?replicaSet=rs",
            "mongodb://u:***@h1:1,h2:2/db?replicaSet=rs",
        ),
        (
            "postgresql://h/db?sslmode=require&Password=x&sslpassword=y",
            "postgresql://h/db?sslmode=require&Password=***&sslpassword=***",
        ),
        (
            "mongodb://h/db?tls=true;tlsCertificateKeyFilePassword=x",
            "mongodb://h/db?tls=true;tlsCertificateKeyFilePassword=***",
        ),
        ("redis://h/0?PASS%57ORD=x&db=1", "redis://h/0?PASS%57ORD=***&db=1"),
        (
            "x://h/?pwd=1&passwd=2&secret=3&token=4&auth=5&a=6",
            "x://h/?pwd=***&passwd=***&secret=***&token=***&auth=***&a=6",
        ),
        # An "@" in the query string: what precedes it is all masked.
        ("redis://h/0?token=x&user=a@b", "redis://***@b"),
        ("not a url", "<not a URL>"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    from flask_towersess.stores._urls import redact_url

    assert redact_url(url) == shown
