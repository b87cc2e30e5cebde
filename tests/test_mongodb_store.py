"""MongoDBStore beyond the shared store contract: documents, its TTL index,
URLs and faults.

The shared contract (the ``store`` fixture) runs on MongoDBStore too; the
tests here are about what only MongoDB does.

Runs on mongomock unless ``TOWERSESS_MONGODB_URL`` names a real server (see
``tests/fixtures_mongodb.py``). Tests that need expired documents to stay
in the collection use a store without the TTL index (``plain_store``):
mongomock applies a TTL index at once on every read, where a real server's
TTL monitor runs about once a minute.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import mongomock
import pymongo
import pytest
from pymongo.errors import DuplicateKeyError
from pymongo.errors import ServerSelectionTimeoutError

from flask_towersess.errors import ConfigurationError
from flask_towersess.errors import CreateError
from flask_towersess.errors import StoreUnavailable
from flask_towersess.errors import UpdateError
from flask_towersess.errors import VersionConflict
from flask_towersess.stores import store_for
from flask_towersess.stores import store_from_url
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import utcnow
from flask_towersess.stores.mongodb import MongoDBStore


def in_ms(seconds: float) -> datetime:
    """``now + seconds``, rounded to the millisecond a BSON date keeps."""
    moment = utcnow() + timedelta(seconds=seconds)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def make_record(
    payload: bytes = b"data", *, seconds: float = 600, version: int = 1
) -> Record:
    return Record(secrets.token_urlsafe(24), payload, in_ms(seconds), version)


def insert_raw(collection: t.Any, record: Record) -> None:
    """Put a document in the collection behind the store's back."""
    collection.insert_one(
        {
            "_id": record.key,
            "payload": record.payload,
            "expires_at": record.expires_at,
            "version": record.version,
        }
    )


@pytest.fixture
def plain_store(mongodb_collection: t.Any) -> MongoDBStore:
    """A store on a collection without the TTL index: expired documents stay
    until purged, as they do on a real server until the TTL monitor runs."""
    return MongoDBStore(mongodb_collection)


@pytest.fixture
def closed_port() -> int:
    # Bind and close: nothing listens there for the test's short life.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- documents, and records the TTL monitor has not removed yet ----------------


def test_create_then_load_round_trips(mongodb_store: MongoDBStore) -> None:
    record = make_record(b"\x00\xff binary \x00")
    mongodb_store.create(record)
    loaded = mongodb_store.load(record.key)
    assert loaded == record
    assert type(loaded.payload) is bytes
    assert loaded.expires_at.tzinfo is not None
    assert loaded.expires_at.utcoffset() == timedelta(0)


def test_document_layout(mongodb_store: MongoDBStore) -> None:
    record = make_record(b"bytes", version=3)
    mongodb_store.create(record)
    document = mongodb_store.collection.find_one({"_id": record.key})
    assert document == {
        "_id": record.key,
        "payload": b"bytes",
        "expires_at": record.expires_at.replace(tzinfo=None),
        "version": 3,
    }


def test_expiry_is_kept_to_the_millisecond(mongodb_store: MongoDBStore) -> None:
    moment = datetime(2999, 1, 2, 3, 4, 5, 678999, tzinfo=timezone.utc)
    record = Record(secrets.token_urlsafe(24), b"x", moment)
    mongodb_store.create(record)
    loaded = mongodb_store.load(record.key)
    assert loaded is not None
    assert loaded.expires_at == moment.replace(microsecond=678000)


def test_aware_expiry_in_another_zone(mongodb_store: MongoDBStore) -> None:
    zone = timezone(timedelta(hours=5))
    moment = in_ms(600).astimezone(zone)
    record = Record(secrets.token_urlsafe(24), b"x", moment)
    mongodb_store.create(record)
    loaded = mongodb_store.load(record.key)
    assert loaded is not None and loaded.expires_at == moment


def test_tz_aware_client_returns_utc() -> None:
    collection: t.Any = mongomock.MongoClient(tz_aware=True).db.sessions
    store = MongoDBStore(collection)
    record = make_record()
    store.create(record)
    loaded = store.load(record.key)
    assert loaded == record
    assert loaded.expires_at.utcoffset() == timedelta(0)


def test_create_existing_key_fails(mongodb_store: MongoDBStore) -> None:
    record = make_record(b"first")
    mongodb_store.create(record)
    with pytest.raises(CreateError) as info:
        mongodb_store.create(Record(record.key, b"second", record.expires_at))
    assert isinstance(info.value.__cause__, DuplicateKeyError)
    assert record.key not in str(info.value)  # keys are secrets
    assert mongodb_store.load(record.key) == record


def test_create_replaces_expired_document_not_yet_removed(
    plain_store: MongoDBStore,
) -> None:
    old = make_record(b"old", seconds=-30, version=7)
    insert_raw(plain_store.collection, old)
    new = Record(old.key, b"new", in_ms(600))
    plain_store.create(new)
    assert plain_store.load(old.key) == new
    assert plain_store.collection.count_documents({}) == 1


def test_save_is_compare_and_set(mongodb_store: MongoDBStore) -> None:
    record = make_record(b"v1")
    mongodb_store.create(record)
    v2 = Record(record.key, b"v2", in_ms(1200), 2)
    mongodb_store.save(v2, expected_version=1)
    assert mongodb_store.load(record.key) == v2
    with pytest.raises(VersionConflict, match="expected version 1, found 2"):
        mongodb_store.save(Record(record.key, b"stale", in_ms(60), 2), 1)
    assert mongodb_store.load(record.key) == v2


def test_save_of_expired_record_is_not_recreated(plain_store: MongoDBStore) -> None:
    record = make_record(b"old", seconds=-5)
    insert_raw(plain_store.collection, record)
    with pytest.raises(UpdateError):
        plain_store.save(Record(record.key, b"again", in_ms(600), 2), 1)
    document = plain_store.collection.find_one({"_id": record.key})
    assert document is not None
    assert (document["payload"], document["version"]) == (b"old", 1)
    assert plain_store.load(record.key) is None


def test_expired_document_is_never_returned(plain_store: MongoDBStore) -> None:
    record = make_record(seconds=-1)
    insert_raw(plain_store.collection, record)
    assert plain_store.collection.count_documents({}) == 1  # not purged yet
    assert plain_store.load(record.key) is None
    assert not plain_store.exists(record.key)


def test_touch_does_not_revive_expired(plain_store: MongoDBStore) -> None:
    record = make_record(seconds=-1)
    insert_raw(plain_store.collection, record)
    plain_store.touch(record.key, in_ms(3600))
    assert plain_store.load(record.key) is None


def test_purge_expired_in_batches(plain_store: MongoDBStore) -> None:
    expired = [make_record(seconds=-60) for _ in range(7)]
    live = [make_record(seconds=600) for _ in range(2)]
    for record in expired:
        insert_raw(plain_store.collection, record)
    for record in live:
        plain_store.create(record)
    assert plain_store.count_expired() == 7
    batches: list[int] = []
    assert plain_store.purge_expired(3, on_batch=batches.append) == 7
    assert batches == [3, 3, 1]
    assert plain_store.count_expired() == 0
    assert plain_store.collection.count_documents({}) == 2
    for record in live:
        assert plain_store.load(record.key) == record
    assert plain_store.purge_expired(3, on_batch=batches.append) == 0
    assert batches == [3, 3, 1]  # no callback for an empty run


def test_purge_rejects_a_batch_size_below_one(plain_store: MongoDBStore) -> None:
    # MongoDB reads limit(0) as "no limit": refuse it rather than purge all
    # in one go.
    with pytest.raises(ValueError):
        plain_store.purge_expired(0)


def test_expires_natively() -> None:
    assert MongoDBStore.expires_natively is True


# -- migrate --------------------------------------------------------------------


def test_migrate_creates_the_ttl_index(plain_store: MongoDBStore) -> None:
    lines = plain_store.migrate()
    assert len(lines) == 2 and "created TTL index" in lines[0]
    assert "created per-user index" in lines[1]
    index = plain_store.collection.index_information()["expires_at_1"]
    assert list(index["key"]) == [("expires_at", 1)]
    assert index["expireAfterSeconds"] == 0


def test_migrate_is_idempotent(plain_store: MongoDBStore) -> None:
    plain_store.migrate()
    before = plain_store.collection.index_information()
    lines = plain_store.migrate()
    assert len(lines) == 1 and "already exist; nothing to do" in lines[0]
    assert plain_store.pending_migrations() == []
    assert plain_store.collection.index_information() == before


@pytest.mark.parametrize("options", [{}, {"expireAfterSeconds": 3600}])
def test_migrate_replaces_another_index_on_expires_at(
    plain_store: MongoDBStore, options: dict[str, t.Any]
) -> None:
    plain_store.collection.create_index("expires_at", name="mine", **options)
    lines = plain_store.migrate()
    assert "dropped index 'mine'" in lines[0]
    assert "created TTL index" in lines[1]
    indexes = plain_store.collection.index_information()
    assert "mine" not in indexes
    assert indexes["expires_at_1"]["expireAfterSeconds"] == 0


def test_ttl_index_removes_expired_documents(mongodb_store: MongoDBStore) -> None:
    # Only meaningful on mongomock, which applies a TTL index at once; a real
    # server's TTL monitor would take up to a minute.
    if not isinstance(mongodb_store.collection, mongomock.Collection):
        pytest.skip("a real server's TTL monitor runs once a minute")
    insert_raw(mongodb_store.collection, make_record(seconds=-1))
    assert mongodb_store.collection.count_documents({}) == 0


# -- an unreachable server -----------------------------------------------------


def test_unreachable_server_is_store_unavailable(closed_port: int) -> None:
    store = MongoDBStore.from_url(
        f"mongodb://127.0.0.1:{closed_port}/db", serverSelectionTimeoutMS=200
    )
    record = make_record()
    calls: list[t.Callable[[], object]] = [
        lambda: store.load(record.key),
        lambda: store.create(record),
        lambda: store.save(record, 1),
        lambda: store.touch(record.key, record.expires_at),
        lambda: store.delete(record.key),
        lambda: store.exists(record.key),
        lambda: store.count_expired(),
        lambda: store.purge_expired(),
        lambda: store.migrate(),
    ]
    try:
        for call in calls:
            with pytest.raises(StoreUnavailable) as info:
                call()
            assert isinstance(info.value.__cause__, ServerSelectionTimeoutError)
            assert info.value.code == 503
    finally:
        store.close()


def test_unreachable_server_with_a_collection(closed_port: int) -> None:
    client: pymongo.MongoClient[t.Any] = pymongo.MongoClient(
        f"mongodb://127.0.0.1:{closed_port}/", serverSelectionTimeoutMS=200
    )
    try:
        store = MongoDBStore(client.db.sessions)
        with pytest.raises(StoreUnavailable):
            store.load("abcdefghij")
    finally:
        client.close()


def test_other_driver_errors_are_not_hidden(mongodb_store: MongoDBStore) -> None:
    # Only an unreachable or timed-out server is StoreUnavailable; a bad
    # query is a bug and keeps its own exception.
    guard = mongodb_store._translated_errors
    with pytest.raises(pymongo.errors.OperationFailure), guard:
        raise pymongo.errors.OperationFailure("bad query", code=2)


# -- from_url, accepts, describe -------------------------------------------------


def test_from_url_database_collection_and_defaults(closed_port: int) -> None:
    store = MongoDBStore.from_url(f"mongodb://127.0.0.1:{closed_port}/app_db")
    try:
        assert store.collection.full_name == "app_db.sessions"
        options = store.collection.database.client.options
        assert options.server_selection_timeout == 5
        assert options.pool_options.connect_timeout == 5
        assert options.pool_options.socket_timeout == 10
    finally:
        store.close()


def test_from_url_options_win_over_defaults(closed_port: int) -> None:
    store = MongoDBStore.from_url(
        f"mongodb://127.0.0.1:{closed_port}/db?serverSelectionTimeoutMS=1500",
        collection="web_sessions",
        connectTimeoutMS=2500,
    )
    try:
        assert store.collection.full_name == "db.web_sessions"
        options = store.collection.database.client.options
        assert options.server_selection_timeout == 1.5
        assert options.pool_options.connect_timeout == 2.5
    finally:
        store.close()


@pytest.mark.parametrize(
    "url",
    ["mongodb://127.0.0.1", "mongodb://127.0.0.1/", "mongodb+srv://example.invalid/"],
)
def test_from_url_needs_a_database(url: str) -> None:
    with pytest.raises(ConfigurationError, match="must name the database"):
        MongoDBStore.from_url(url)


def test_from_url_rejects_bad_options(closed_port: int) -> None:
    with pytest.raises(ConfigurationError, match="pymongo rejected"):
        MongoDBStore.from_url(
            f"mongodb://127.0.0.1:{closed_port}/db", serverSelectionTimeoutMS="soon"
        )


def test_from_url_error_hides_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        MongoDBStore.from_url("mongodb://user:s3cret@127.0.0.1/")
    assert "s3cret" not in str(info.value)


def test_describe_hides_the_password(closed_port: int) -> None:
    store = MongoDBStore.from_url(f"mongodb://user:s3cret@127.0.0.1:{closed_port}/db")
    try:
        assert (
            store.describe()
            == f"MongoDBStore(mongodb://127.0.0.1:{closed_port}/db.sessions)"
        )
    finally:
        store.close()
    assert MongoDBStore(mongomock.MongoClient().db.s).describe() == "MongoDBStore(db.s)"


def test_close_closes_only_its_own_client(
    closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []
    borrowed: t.Any = mongomock.MongoClient()
    monkeypatch.setattr(borrowed, "close", lambda: closed.append("borrowed"))
    MongoDBStore(borrowed.db.sessions).close()
    assert closed == []

    store = MongoDBStore.from_url(f"mongodb://127.0.0.1:{closed_port}/db")
    client = store.collection.database.client
    real_close = client.close
    monkeypatch.setattr(client, "close", lambda: closed.append("own"))
    store.close()
    real_close()
    assert closed == ["own"]


def test_url_schemes_reach_the_store(closed_port: int) -> None:
    assert MongoDBStore.url_schemes == ("mongodb", "mongodb+srv")
    store = store_from_url(f"mongodb://127.0.0.1:{closed_port}/db")
    try:
        assert isinstance(store, MongoDBStore)
    finally:
        store.close()


def test_accepts_collections_only() -> None:
    client: pymongo.MongoClient[t.Any] = pymongo.MongoClient(
        "mongodb://127.0.0.1:1/", connect=False
    )
    try:
        assert MongoDBStore.accepts(client.db.sessions)
        assert not MongoDBStore.accepts(client.db)
        assert not MongoDBStore.accepts(client)
    finally:
        client.close()
    mock: t.Any = mongomock.MongoClient()
    assert MongoDBStore.accepts(mock.db.sessions)
    assert not MongoDBStore.accepts(mock.db)
    assert not MongoDBStore.accepts(object())
    assert not MongoDBStore.accepts("mongodb://127.0.0.1/db")

    class Collection:  # same name, another module
        pass

    assert not MongoDBStore.accepts(Collection())


def test_store_for_wraps_a_collection() -> None:
    collection: t.Any = mongomock.MongoClient().db.sessions
    store = store_for(collection)
    assert isinstance(store, MongoDBStore)
    assert store.collection is collection


def test_works_without_pymongo_installed() -> None:
    # Importing the module, and asking it about other clients, must not need
    # pymongo; building a store from a URL says how to install it.
    code = """
import sys
sys.modules["pymongo"] = None
from flask_towersess.errors import ConfigurationError
from flask_towersess.stores.mongodb import MongoDBStore
assert not MongoDBStore.accepts(object())
try:
    MongoDBStore.from_url("mongodb://127.0.0.1/db")
except ConfigurationError as exc:
    assert "flask-towersess[mongodb]" in str(exc), exc
else:
    raise AssertionError("no ConfigurationError")
assert "pymongo" not in [m for m in sys.modules if sys.modules[m] is not None]
"""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
