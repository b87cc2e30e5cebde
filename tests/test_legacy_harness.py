"""The 0.1.0 harness (tests/legacy.py, tests/legacy_writer.py) on every
durable store, and what the current code makes of what 0.1.0 stored.

Each test asserts what is true now. Where the current code cannot use what
0.1.0 wrote, the test says so in a comment starting with INCOMPATIBLE and
asserts the current behaviour, so that the upgrade (``flask sessions
migrate`` for 0.2.0) changes these assertions on purpose.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import os
import struct
import typing as t
import uuid
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import msgpack
import pytest
import sqlalchemy as sa
from flask import Flask
from flask import session
from itsdangerous import Signer
from sqlalchemy.dialects import mysql

from flask_towersess import SessionExt
from flask_towersess.errors import ConfigurationError
from flask_towersess.stores.base import utcnow

from .fixtures_mongodb import apply_atomically
from .fixtures_redis import DEFAULT_REDIS_URL
from .fixtures_redis import REDIS_URL_ENV
from .fixtures_sql import MYSQL_URL
from .fixtures_sql import POSTGRESQL_URL
from .legacy import LegacyPython
from .legacy import LegacySession
from .legacy import LegacyWrite
from .legacy import encode_value
from .services import service_unavailable

SECRET_KEY = "legacy harness secret"
#: Two of each kind legacy_writer.py writes by default.
COUNT = 14
KEY_ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclasses.dataclass
class Target:
    """One store, as both versions are pointed at it."""

    name: str
    #: SESSION_STORE for 0.1.0 (``mongomock://``: the writer's own collection).
    url: str
    options: dict[str, t.Any]
    #: For MongoDB: the test's mongomock collection.
    collection: t.Any = None

    def current_app(self, **config: t.Any) -> tuple[Flask, list[dict[str, t.Any]]]:
        """An app on the current code, on this store; what its views saw."""
        app = Flask(__name__)
        app.config.update(SECRET_KEY=SECRET_KEY, TESTING=True, **config)
        if self.collection is not None:
            from flask_towersess.stores.mongodb import MongoDBStore

            SessionExt(app, store=MongoDBStore(self.collection, **self.options))
        else:
            app.config.update(
                SESSION_STORE=self.url, SESSION_STORE_OPTIONS=dict(self.options)
            )
            SessionExt(app)
        seen: list[dict[str, t.Any]] = []

        @app.get("/read")
        def read() -> str:
            seen.append(
                {
                    "data": dict(session),
                    "key": session.session_key,  # type: ignore[attr-defined]
                    "new": session.new,
                    "expiry_date": session.get_expiry_date(),  # type: ignore[attr-defined]
                    "permanent": session.permanent,
                }
            )
            return "ok"

        @app.post("/touch")
        def touch() -> str:
            session["seen_by"] = "current"
            return "ok"

        return app, seen

    def load_documents(self, written: LegacyWrite) -> None:
        """MongoDB: put 0.1.0's documents into the test's collection."""
        if self.collection is None:
            return
        from bson import json_util

        assert written.documents_json is not None
        documents = json_util.loads(written.documents_json)
        self.collection.insert_many(documents)

    def documents_json(self) -> str | None:
        if self.collection is None:
            return None
        from bson import json_util

        return json_util.dumps(
            list(self.collection.find()), json_options=json_util.CANONICAL_JSON_OPTIONS
        )


def _sql_engine(url: str) -> sa.engine.Engine:
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        engine.dispose()
        service_unavailable(f"database at {url} is unreachable: {exc.orig}")
    return engine


@pytest.fixture(params=["sqlite", "postgresql", "mariadb", "redis", "mongodb"])
def target(request: pytest.FixtureRequest, tmp_path: t.Any) -> t.Iterator[Target]:
    """Each durable store, empty, with a table or key prefix of its own."""
    name = request.param
    unique = uuid.uuid4().hex[:12]
    if name == "sqlite":
        yield Target(name, f"sqlite:///{tmp_path}/legacy.sqlite3", {"table": "legacy"})
    elif name in ("postgresql", "mariadb"):
        url = POSTGRESQL_URL if name == "postgresql" else MYSQL_URL
        table = f"towersess_legacy_{unique}"
        engine = _sql_engine(url)
        try:
            yield Target(name, url, {"table": table})
        finally:
            sa.Table(table, sa.MetaData()).drop(engine, checkfirst=True)
            engine.dispose()
    elif name == "redis":
        redis = pytest.importorskip("redis")
        url = os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)
        client = redis.Redis.from_url(url, socket_timeout=3)
        try:
            client.ping()
        except redis.RedisError as exc:
            service_unavailable(f"no Redis at {url}: {exc}")
        prefix = f"towersess-legacy-{unique}:"
        try:
            yield Target(name, url, {"key_prefix": prefix})
        finally:
            for key in list(client.scan_iter(match=prefix + "*", count=1000)):
                client.delete(key)
            client.close()
    else:
        mongomock = pytest.importorskip("mongomock")
        collection = mongomock.MongoClient().towersess_legacy[f"sessions_{unique}"]
        # Requests and the upgrade run in threads at once, as on a server.
        apply_atomically(collection)
        yield Target(name, "mongomock://", {}, collection=collection)
        collection.drop()


def _write(legacy_python: LegacyPython, target: Target, **kwargs: t.Any) -> LegacyWrite:
    written = legacy_python.write_sessions(
        target.url, secret_key=SECRET_KEY, options=target.options, **kwargs
    )
    target.load_documents(written)
    return written


def _read_with_current(
    app: Flask, seen: list[dict[str, t.Any]], sessions: list[LegacySession]
) -> list[dict[str, t.Any]]:
    for legacy in sessions:
        client = app.test_client()
        client.set_cookie(legacy.cookie_name, legacy.cookie)
        assert client.get("/read").status_code == 200
    assert len(seen) == len(sessions)
    return seen


# -- the harness itself ------------------------------------------------------------


def test_the_legacy_python_is_0_1_0(legacy_python: LegacyPython) -> None:
    """The fixture's Python imports 0.1.0 from its own virtualenv, never
    this checkout (PYTHONPATH points here while the tests run)."""
    import flask_towersess

    assert flask_towersess.__version__ != "0.1.0"
    assert legacy_python.package_dir.is_dir()
    assert (legacy_python.package_dir / "__init__.py").read_text().count(
        '__version__ = "0.1.0"'
    ) == 1
    assert not legacy_python.package_dir.is_relative_to(
        os.path.dirname(os.path.dirname(flask_towersess.__file__))
    )


def test_the_writer_writes_every_kind(
    legacy_python: LegacyPython, target: Target
) -> None:
    written = _write(legacy_python, target, count=COUNT)
    kinds = [s.kind for s in written.sessions]
    assert kinds[:7] == [
        "anonymous",
        "logged_in",
        "expiry_seconds",
        "expiry_datetime",
        "browser_close",
        "permanent",
        "rich",
    ]
    assert len({s.key for s in written.sessions}) == COUNT
    logged_in = written.sessions[1]
    assert logged_in.data["_user_id"] == "u1" and logged_in.data["_fresh"] is True
    if target.name in ("sqlite", "postgresql", "mariadb"):
        assert "created table" in written.migrate_output
    elif target.name == "redis":
        assert "needs no migration" in written.migrate_output
    else:
        assert "created TTL index" in written.migrate_output
    # 0.1.0 reads back what it wrote: checked by the writer, shown here.
    assert written.sessions[0].data == {"cart": ["sku-1", "sku-0", 0]}


# -- what 0.1.0 stores ---------------------------------------------------------------


def test_0_1_0_cookie_and_key(legacy_python: LegacyPython, target: Target) -> None:
    """The cookie: the raw key, a dot, and an itsdangerous HMAC-SHA256
    signature (salt "flask-towersess", django-concat key derivation); the
    key: secrets.token_urlsafe(32), 43 URL-safe base64 characters."""
    written = _write(legacy_python, target, count=3)
    signer = Signer(SECRET_KEY, salt="flask-towersess", digest_method=hashlib.sha256)
    for legacy in written.sessions:
        assert legacy.cookie_name == "session"
        assert len(legacy.key) == 43 and set(legacy.key) <= KEY_ALPHABET
        assert legacy.cookie == signer.sign(legacy.key).decode("ascii")
        assert legacy.set_cookie.startswith(f"session={legacy.cookie};")


def _state(payload: bytes) -> dict[str, t.Any]:
    """A 0.1.0 payload: b"\\x01" then a MessagePack map."""
    assert payload[:1] == b"\x01"
    state = msgpack.unpackb(payload[1:], raw=False, ext_hook=lambda c, d: (c, d))
    assert isinstance(state, dict)
    return state


def test_0_1_0_payload_layout(legacy_python: LegacyPython, target: Target) -> None:
    """The payload is the same on every store: MSGPACK_FORMAT (0x01) and a
    map {"data": {...}} with "expiry" only after set_expiry(): int seconds
    (0 for browser close, the lifetime for permanent = True) or a datetime
    (extension type 4)."""
    written = _write(legacy_python, target, count=7)
    by_kind = {s.kind: _state(s.payload) for s in written.sessions}
    assert by_kind["anonymous"] == {"data": {"cart": ["sku-1", "sku-0", 0]}}
    assert set(by_kind["logged_in"]) == {"data"}
    assert by_kind["expiry_seconds"]["expiry"] == 3600
    assert by_kind["expiry_datetime"]["expiry"][0] == 4
    assert by_kind["browser_close"]["expiry"] == 0
    assert by_kind["permanent"]["expiry"] == 31 * 86400
    rich = by_kind["rich"]["data"]
    codes = {
        "pair": 1,
        "tags": 2,
        "frozen": 3,
        "when": 4,
        "day": 5,
        "at": 6,
        "span": 7,
        "id": 8,
        "price": 9,
        "big": 11,
    }
    for name, code in codes.items():
        assert rich[name][0] == code, name
    assert rich["flashes"][0][0] == 1  # a tuple holding a Markup (code 10)
    assert rich["blob"] == b"\x00\xffbytes"  # bytes are MessagePack bin


def test_0_1_0_storage_layout(legacy_python: LegacyPython, target: Target) -> None:
    written = _write(legacy_python, target, count=7)
    if target.name in ("sqlite", "postgresql", "mariadb"):
        _check_sql_layout(target, written)
    elif target.name == "redis":
        _check_redis_layout(target, written)
    else:
        _check_mongodb_layout(target, written)


def _check_sql_layout(target: Target, written: LegacyWrite) -> None:
    """Table (default name "sessions"): session_key VARCHAR(64) primary key
    (MySQL: ascii/ascii_bin), payload BLOB/BYTEA/MEDIUMBLOB, expires_at a
    timezone-less DATETIME/TIMESTAMP holding UTC (MySQL: DATETIME(6)),
    version INTEGER; one index, ix_<table>_expires_at. No other column, no
    user column; the key stored as is (not hashed)."""
    table = target.options["table"]
    engine = sa.create_engine(target.url)
    try:
        inspector = sa.inspect(engine)
        columns = {c["name"]: c for c in inspector.get_columns(table)}
        assert list(columns) == ["session_key", "payload", "expires_at", "version"]
        assert inspector.get_pk_constraint(table)["constrained_columns"] == [
            "session_key"
        ]
        assert all(not c["nullable"] for c in columns.values())
        key_type = columns["session_key"]["type"]
        assert isinstance(key_type, sa.String) and key_type.length == 64
        payload_type = columns["payload"]["type"]
        assert isinstance(payload_type, (sa.LargeBinary, mysql.MEDIUMBLOB))
        time_type = columns["expires_at"]["type"]
        assert isinstance(time_type, sa.DateTime)
        assert not getattr(time_type, "timezone", False)
        assert isinstance(columns["version"]["type"], sa.Integer)
        indexes = inspector.get_indexes(table)
        assert [(ix["name"], ix["column_names"]) for ix in indexes] == [
            (f"ix_{table}_expires_at", ["expires_at"])
        ]
        if target.name == "mariadb":
            with engine.connect() as conn:
                row = conn.exec_driver_sql(
                    "SELECT CHARACTER_SET_NAME, COLLATION_NAME, DATETIME_PRECISION"
                    " FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
                    f" AND TABLE_NAME = '{table}' AND COLUMN_NAME IN"
                    " ('session_key', 'expires_at') ORDER BY COLUMN_NAME DESC"
                ).all()
            assert [tuple(r) for r in row] == [
                ("ascii", "ascii_bin", None),
                (None, None, 6),
            ]
            assert isinstance(payload_type, mysql.MEDIUMBLOB)
        rows = _sql_rows(engine, table)
    finally:
        engine.dispose()
    for legacy in written.sessions:
        payload, expires_at, version = rows[legacy.key]
        assert payload == legacy.payload and version == legacy.version == 1
        assert expires_at.tzinfo is None
        assert expires_at.replace(tzinfo=timezone.utc) == legacy.expires_at


def _sql_rows(engine: sa.engine.Engine, table: str) -> dict[str, t.Any]:
    # Reflected, so that SQLite's DATETIME text comes back as a datetime.
    reflected = sa.Table(table, sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        result = conn.execute(sa.select(reflected))
        return {
            r.session_key: (bytes(r.payload), r.expires_at, r.version) for r in result
        }


def _check_redis_layout(target: Target, written: LegacyWrite) -> None:
    """Key: key_prefix + raw key (default "session:"). Value: 0xF1, version
    (int64 big-endian), expiry (int64 big-endian, microseconds since the
    epoch), then the payload; TTL by PXAT at the expiry, rounded down to the
    millisecond. Redis holds one string per session, nothing per user."""
    import redis

    client = redis.Redis.from_url(target.url)
    try:
        prefix = target.options["key_prefix"]
        names = {n.decode() for n in client.scan_iter(match=prefix + "*")}
        assert names == {prefix + s.key for s in written.sessions}
        for legacy in written.sessions:
            value = client.get(prefix + legacy.key)
            assert value is not None
            tag, version, micros = struct.unpack_from(">Bqq", value)
            assert (tag, version) == (0xF1, 1)
            epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
            assert epoch + timedelta(microseconds=micros) == legacy.expires_at
            assert value[17:] == legacy.payload
            pexpiretime = client.execute_command("PEXPIRETIME", prefix + legacy.key)
            assert pexpiretime == micros // 1000
    finally:
        client.close()


def _check_mongodb_layout(target: Target, written: LegacyWrite) -> None:
    """Document: {_id: raw key, payload: BinData (subtype 0), expires_at:
    BSON date (UTC milliseconds), version: int}; a TTL index "expires_at_1"
    (expireAfterSeconds=0) after migrate."""
    from bson import json_util

    assert written.documents_json is not None
    canonical = json_util.loads(
        written.documents_json, json_options=json_util.CANONICAL_JSON_OPTIONS
    )
    assert written.documents_json.count('"$binary"') == len(written.sessions)
    assert '"subType": "00"' in written.documents_json
    by_key = {d["_id"]: d for d in canonical}
    for legacy in written.sessions:
        document = by_key[legacy.key]
        assert set(document) == {"_id", "payload", "expires_at", "version"}
        assert bytes(document["payload"]) == legacy.payload
        assert document["version"] == 1
        expires_at = document["expires_at"].replace(tzinfo=timezone.utc)
        # BSON dates hold milliseconds.
        assert abs(expires_at - legacy.expires_at) < timedelta(milliseconds=1)


# -- what the current code makes of it -------------------------------------------------


def test_current_reads_what_0_1_0_wrote(
    legacy_python: LegacyPython, target: Target
) -> None:
    """Every kind of 0.1.0 session, read through a request of the current
    code with the 0.1.0 cookie: same key, same data (types included), same
    expiry. Nothing in today's format differs from 0.1.0's; the coming
    0.2.0 storage (hashed keys, per-user fields) is what migrate must bridge."""
    written = _write(legacy_python, target, count=COUNT)
    app, seen = target.current_app()
    _read_with_current(app, seen, written.sessions)
    now = utcnow()
    for legacy, got in zip(written.sessions, seen):
        assert got["key"] == legacy.key, legacy.kind
        assert got["new"] is False, legacy.kind
        assert encode_value(got["data"]) == encode_value(legacy.data), legacy.kind
        assert got["permanent"] == legacy.permanent, legacy.kind
        if legacy.kind == "expiry_datetime":
            assert got["expiry_date"] == legacy.expiry_date
        elif legacy.kind == "expiry_seconds":
            assert abs(got["expiry_date"] - (now + timedelta(hours=1))) < timedelta(
                minutes=1
            )
        else:  # the app's lifetime (31 days) from now
            assert abs(got["expiry_date"] - (now + timedelta(days=31))) < timedelta(
                minutes=1
            )


def test_0_1_0_cannot_read_what_current_moved(
    legacy_python: LegacyPython, target: Target
) -> None:
    """No mixed fleet: once the current code has used a session 0.1.0
    created, it is stored under its key's hash, where 0.1.0 does not look:
    0.1.0 finds no session for the cookie (and starts an empty one). Hence
    the upgrade's rule: stop every 0.1 process before 0.2 serves
    (docs/migrating.rst)."""
    written = _write(legacy_python, target, count=7)
    app, _ = target.current_app()
    for legacy in written.sessions:
        client = app.test_client()
        client.set_cookie(legacy.cookie_name, legacy.cookie)
        response = client.post("/touch")
        assert response.status_code == 200
    reads = legacy_python.read_sessions(
        target.url,
        [s.cookie for s in written.sessions],
        secret_key=SECRET_KEY,
        options=target.options,
        documents_json=target.documents_json(),
    )
    for legacy, got in zip(written.sessions, reads):
        # INCOMPATIBLE (by design): the key 0.1.0 looks up is gone.
        assert got["key"] is None, legacy.kind
        assert got["data"] == {} or encode_value(got["data"]) == encode_value({})


# -- incompatibilities ------------------------------------------------------------------


@pytest.fixture
def sqlite_target(tmp_path: t.Any) -> Target:
    return Target("sqlite", f"sqlite:///{tmp_path}/legacy.sqlite3", {"table": "legacy"})


def test_encrypted_0_1_0_payloads_open_with_a_32_byte_key(
    legacy_python: LegacyPython, sqlite_target: Target
) -> None:
    """0.1.0 seals with AES-GCM: 0xE1, a 12-byte nonce, the ciphertext and
    its 16-byte tag; the associated data is the raw session key (ASCII). The
    current code opens it with the same key."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = base64.urlsafe_b64encode(bytes(range(32))).decode()
    config = {"SESSION_ENCRYPTION_KEY": key}
    written = _write(legacy_python, sqlite_target, count=7, config=config)
    for legacy in written.sessions:
        sealed = legacy.payload
        assert sealed[:1] == b"\xe1"
        opened = AESGCM(bytes(range(32))).decrypt(
            sealed[1:13], sealed[13:], legacy.key.encode("ascii")
        )
        assert opened[:1] == b"\x01"
    app, seen = sqlite_target.current_app(**config)
    _read_with_current(app, seen, written.sessions)
    for legacy, got in zip(written.sessions, seen):
        assert encode_value(got["data"]) == encode_value(legacy.data), legacy.kind


@pytest.mark.parametrize("size", [16, 24])
def test_0_1_0_short_encryption_keys_are_refused(
    legacy_python: LegacyPython, sqlite_target: Target, size: int
) -> None:
    # INCOMPATIBLE: 0.1.0 took 16-, 24- and 32-byte SESSION_ENCRYPTION_KEYs
    # (AES-128/192/256); the current code takes 32 bytes only, so an app that
    # sealed its sessions with a shorter key does not start, and those
    # sessions cannot be opened by any key it accepts.
    key = base64.urlsafe_b64encode(bytes(range(size))).decode()
    config = {"SESSION_ENCRYPTION_KEY": key}
    written = _write(legacy_python, sqlite_target, count=1, config=config)
    assert written.sessions[0].payload[:1] == b"\xe1"
    with pytest.raises(ConfigurationError, match="exactly 32 bytes"):
        sqlite_target.current_app(**config)


def test_0_1_0_mixed_alphabet_encryption_key_is_refused(
    legacy_python: LegacyPython, sqlite_target: Target
) -> None:
    # INCOMPATIBLE: 0.1.0 decoded the key with base64.urlsafe_b64decode,
    # which also takes "+" and "/" (and drops characters outside both
    # alphabets); the current code refuses a key mixing the two alphabets.
    raw = bytes([0xFB, 0xEF, 0xBE]) + bytes(range(29))  # "----" in URL-safe
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    assert urlsafe.startswith("----")
    key = "+" + urlsafe[1:]  # the same key to 0.1.0
    config = {"SESSION_ENCRYPTION_KEY": key}
    written = _write(legacy_python, sqlite_target, count=1, config=config)
    assert written.sessions[0].payload[:1] == b"\xe1"
    with pytest.raises(ConfigurationError):
        sqlite_target.current_app(**config)


def test_0_1_0_deeply_nested_values_read_as_an_empty_session(
    legacy_python: LegacyPython,
    sqlite_target: Target,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # INCOMPATIBLE: 0.1.0 wrote extension values (tuples, sets, ...) nested
    # without limit; the current serializer refuses payloads with more than
    # MAX_NESTING (32) extension levels. Such a 0.1.0 session reads as
    # empty (a warning on flask_towersess.security) and is a new session.
    written = _write(legacy_python, sqlite_target, count=1, kinds=["deep_tuples"])
    (legacy,) = written.sessions
    assert "deep" in legacy.data
    app, seen = sqlite_target.current_app()
    with caplog.at_level(logging.WARNING, logger="flask_towersess.security"):
        _read_with_current(app, seen, written.sessions)
    assert seen[0]["data"] == {}
    assert "undecodable payload" in caplog.text
