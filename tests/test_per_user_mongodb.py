"""MongoDBStore's per-user index: the fields on the session document, the
partial index on ``(user_id, expires_at)``, revocation, trimming, keys 0.1
stored unhashed, and the upgrade of a collection 0.1 created.

Runs on mongomock unless ``TOWERSESS_MONGODB_URL`` names a real server (see
``tests/fixtures_mongodb.py``). Round trips are counted as collection calls:
each one is one command to the server.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import threading
import time
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest

from flask_towersess.stores.base import CountingPerUser
from flask_towersess.stores.base import LegacyKeys
from flask_towersess.stores.base import PerUserIndex
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import utcnow
from flask_towersess.stores.mongodb import USER_INDEX_NAME
from flask_towersess.stores.mongodb import MongoDBStore

from .helpers import at_once
from .helpers import unhashed_pages

#: The moment a retired key is saved with (see the session layer).
RETIRED = datetime(2000, 1, 1, tzinfo=timezone.utc)


def ms(moment: datetime) -> datetime:
    """``moment`` rounded to the millisecond a BSON date keeps."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def hashed_key() -> str:
    return hashlib.sha256(secrets.token_urlsafe(32).encode()).hexdigest()


def legacy_key() -> str:
    return secrets.token_urlsafe(32)  # 43 characters, as 0.1 made them


def user_record(
    user_id: str | None,
    *,
    key: str | None = None,
    seconds: float = 600,
    active: datetime | None = None,
    version: int = 1,
) -> Record:
    now = ms(utcnow())
    return Record(
        key or hashed_key(),
        b"payload",
        ms(now + timedelta(seconds=seconds)),
        version,
        user_id=user_id,
        created_at=now,
        last_active_at=active or now,
        user_agent="Mozilla/5.0 (X11; Linux x86_64)",
        ip="203.0.113.7",
    )


def keys_of(store: MongoDBStore, user_id: str) -> set[str]:
    return {record.key for record in store.sessions_of(user_id)}


class Counter:
    """Counts the collection calls (commands) the store makes."""

    METHODS = (
        "find_one",
        "find",
        "replace_one",
        "update_one",
        "delete_one",
        "delete_many",
        "count_documents",
        "aggregate",
    )

    def __init__(self, collection: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        self.depth = 0
        for name in self.METHODS:
            real = getattr(collection, name)

            def counted(
                *args: t.Any, _real: t.Any = real, _name: str = name, **kw: t.Any
            ) -> t.Any:
                # Outermost calls only: mongomock's find_one calls find.
                if self.depth == 0:
                    self.calls.append(_name)
                self.depth += 1
                try:
                    return _real(*args, **kw)
                finally:
                    self.depth -= 1

            monkeypatch.setattr(collection, name, counted)

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


@pytest.fixture
def unpurged_store(mongodb_collection: t.Any) -> MongoDBStore:
    """A store with the per-user index but no TTL index: expired documents
    stay, as on a real server until its TTL monitor runs."""
    store = MongoDBStore(mongodb_collection)
    store.migrate()
    mongodb_collection.drop_index("expires_at_1")
    return store


def test_capabilities(mongodb_store: MongoDBStore) -> None:
    assert isinstance(mongodb_store, (PerUserIndex, CountingPerUser, LegacyKeys))
    assert mongodb_store.as_per_user() is mongodb_store
    assert mongodb_store.as_counting_per_user() is mongodb_store


def test_fields_on_the_document(mongodb_store: MongoDBStore) -> None:
    anonymous = user_record(None)
    known = user_record("alice")
    mongodb_store.create(anonymous)
    mongodb_store.create(known)
    collection = mongodb_store.collection
    assert "user_id" not in collection.find_one({"_id": anonymous.key})
    document = collection.find_one({"_id": known.key})
    assert document["user_id"] == "alice"
    assert document["ip"] == "203.0.113.7"
    [listed] = mongodb_store.sessions_of("alice")
    assert listed.key == known.key and listed.payload == b""
    assert listed.created_at == known.created_at
    assert listed.last_active_at == known.last_active_at
    assert (listed.user_agent, listed.ip) == (known.user_agent, known.ip)
    assert listed.expires_at == known.expires_at
    # The load path is unchanged: the record, its payload.
    loaded = mongodb_store.load(known.key)
    assert loaded is not None and loaded.payload == b"payload"


def test_the_index_is_partial(mongodb_store: MongoDBStore) -> None:
    index = mongodb_store.collection.index_information()[USER_INDEX_NAME]
    assert [tuple(part) for part in index["key"]] == [
        ("user_id", 1),
        ("expires_at", 1),
    ]
    assert index["partialFilterExpression"] == {"user_id": {"$exists": True}}


def test_listing_is_exact_after_expiry_without_purge(
    unpurged_store: MongoDBStore,
) -> None:
    short = user_record("bob", seconds=0.3)
    long = user_record("bob")
    unpurged_store.create(short)
    unpurged_store.create(long)
    assert keys_of(unpurged_store, "bob") == {short.key, long.key}
    time.sleep(0.5)
    assert keys_of(unpurged_store, "bob") == {long.key}
    assert unpurged_store.collection.count_documents({"_id": short.key}) == 1
    assert unpurged_store.per_user_counts(5) == [("bob", 1)]
    assert unpurged_store.delete_sessions_of("bob") == [long.key]
    # The expired one was not live: not "deleted" by the revocation.
    assert unpurged_store.collection.count_documents({"_id": short.key}) == 1


def test_login_logout_cycles_leave_nothing(mongodb_store: MongoDBStore) -> None:
    for _ in range(1000):
        record = user_record("carol")
        mongodb_store.create(record)
        mongodb_store.delete(record.key)
    assert mongodb_store.sessions_of("carol") == []
    assert mongodb_store.collection.count_documents({}) == 0


def test_parallel_creates_are_all_listed(mongodb_store: MongoDBStore) -> None:
    def login(barrier: threading.Barrier) -> None:
        barrier.wait()
        mongodb_store.create(user_record("dave"))

    at_once(*[login] * 20)
    assert len(mongodb_store.sessions_of("dave")) == 20


def test_rotation_moves_the_entry(mongodb_store: MongoDBStore) -> None:
    old = user_record("erin")
    mongodb_store.create(old)
    new = user_record("erin")
    mongodb_store.create(new)
    mongodb_store.save(Record(old.key, b"", RETIRED, 2), 1)
    assert keys_of(mongodb_store, "erin") == {new.key}
    retired = mongodb_store.collection.find_one({"_id": old.key})
    assert retired is None or "user_id" not in retired


def test_save_changing_the_user_moves_the_entry(mongodb_store: MongoDBStore) -> None:
    record = user_record("frank")
    mongodb_store.create(record)
    moved = user_record("grace", key=record.key, version=2)
    mongodb_store.save(moved, 1)
    assert keys_of(mongodb_store, "frank") == set()
    assert keys_of(mongodb_store, "grace") == {record.key}
    mongodb_store.save(Record(record.key, b"x", moved.expires_at, 3), 2)
    assert keys_of(mongodb_store, "grace") == set()
    document = mongodb_store.collection.find_one({"_id": record.key})
    assert "user_id" not in document and "ip" not in document


def test_touch_sets_last_active_and_moves_the_deadline(
    unpurged_store: MongoDBStore,
) -> None:
    record = user_record("heidi", seconds=0.3, active=ms(utcnow()) - timedelta(hours=1))
    unpurged_store.create(record)
    before = utcnow()
    unpurged_store.touch(record.key, ms(utcnow() + timedelta(minutes=5)))
    time.sleep(0.5)
    [listed] = unpurged_store.sessions_of("heidi")
    assert listed.last_active_at is not None
    assert listed.last_active_at >= ms(before)


def test_delete_sessions_of(mongodb_store: MongoDBStore) -> None:
    mine = [user_record("ivan") for _ in range(4)]
    theirs = user_record("judy")
    for record in [*mine, theirs]:
        mongodb_store.create(record)
    # Some keys, one of another user (left alone), one unknown.
    ended = mongodb_store.delete_sessions_of(
        "ivan", [mine[0].key, theirs.key, hashed_key()]
    )
    assert ended == [mine[0].key]
    assert mongodb_store.load(theirs.key) is not None
    # All but keep.
    ended = mongodb_store.delete_sessions_of("ivan", keep=mine[1].key)
    assert set(ended) == {mine[2].key, mine[3].key}
    assert keys_of(mongodb_store, "ivan") == {mine[1].key}
    # All.
    assert mongodb_store.delete_sessions_of("ivan") == [mine[1].key]
    assert mongodb_store.delete_sessions_of("ivan") == []
    assert mongodb_store.delete_sessions_of("ivan", []) == []
    assert keys_of(mongodb_store, "judy") == {theirs.key}


def test_round_trips(
    mongodb_store: MongoDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = Counter(mongodb_store.collection, monkeypatch)
    record = user_record("mallory")
    mongodb_store.create(record)
    assert counter.take() == ["replace_one"]
    mongodb_store.save(user_record("mallory", key=record.key, version=2), 1)
    assert counter.take() == ["update_one"]
    mongodb_store.touch(record.key, record.expires_at)
    assert counter.take() == ["update_one"]
    assert mongodb_store.load(record.key) is not None
    assert counter.take() == ["find_one"]
    mongodb_store.delete(record.key)
    assert counter.take() == ["delete_one"]
    mongodb_store.delete_many([hashed_key() for _ in range(50)])
    assert counter.take() == ["delete_many"]

    for many in (10, 1000):
        user = f"user-{many}"
        mongodb_store.collection.insert_many(
            [
                {
                    "_id": hashed_key(),
                    "payload": b"",
                    "expires_at": ms(utcnow() + timedelta(minutes=5)),
                    "version": 1,
                    "user_id": user,
                }
                for _ in range(many)
            ]
        )
        counter.take()
        assert len(mongodb_store.delete_sessions_of(user)) == many
        assert counter.take() == ["find", "delete_many"]
        assert mongodb_store.collection.count_documents({"user_id": user}) == 0


def test_trim_keeps_the_most_recent(mongodb_store: MongoDBStore) -> None:
    now = ms(utcnow())
    old = [
        user_record("niaj", active=now - timedelta(minutes=10 - n)) for n in range(5)
    ]
    for record in old:
        mongodb_store.create(record)
    newest = user_record("niaj", active=now)
    mongodb_store.create(newest)
    ended = mongodb_store.trim_sessions_of("niaj", 2, keep=old[0].key)
    assert set(ended) == {old[1].key, old[2].key, old[3].key}
    assert keys_of(mongodb_store, "niaj") == {old[0].key, old[4].key, newest.key}
    with pytest.raises(ValueError):
        mongodb_store.trim_sessions_of("niaj", -1, keep=newest.key)


def test_trim_skips_a_session_active_since_it_read(
    mongodb_store: MongoDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = ms(utcnow())
    stale = user_record("olivia", active=now - timedelta(hours=1))
    fresh = user_record("olivia", active=now)
    mongodb_store.create(stale)
    mongodb_store.create(fresh)
    real_delete = mongodb_store.collection.delete_many

    def touched_first(query: t.Any) -> t.Any:
        # The stale session is used between the trim's read and its delete.
        mongodb_store.touch(stale.key, stale.expires_at)
        return real_delete(query)

    monkeypatch.setattr(mongodb_store.collection, "delete_many", touched_first)
    mongodb_store.trim_sessions_of("olivia", 1, keep=fresh.key)
    assert stale.key in keys_of(mongodb_store, "olivia")


@pytest.mark.parametrize("limit", [1, 3, 6])
def test_trim_under_two_racing_logins(mongodb_store: MongoDBStore, limit: int) -> None:
    for _ in range(10):
        user = f"peggy-{secrets.token_hex(4)}"
        now = ms(utcnow())
        old = [
            user_record(user, active=now - timedelta(minutes=n + 1)) for n in range(4)
        ]
        for record in old:
            mongodb_store.create(record)
        new = [
            user_record(user, active=now + timedelta(milliseconds=n)) for n in range(2)
        ]

        def login(barrier: threading.Barrier, record: Record, user: str = user) -> None:
            barrier.wait()
            mongodb_store.create(record)
            mongodb_store.trim_sessions_of(user, limit, keep=record.key)

        at_once(*(functools.partial(login, record=r) for r in new))
        left = keys_of(mongodb_store, user)
        # The most recent always survives; the limit holds unless each
        # trim kept its own; an old session survives only within the limit.
        assert new[1].key in left
        assert len(left) <= max(limit, 2)
        everything = sorted(
            [*old, *new], key=lambda r: (r.last_active_at, r.key), reverse=True
        )
        most_recent = {r.key for r in everything[:limit]} | {r.key for r in new}
        assert left <= most_recent
        if limit >= 2:
            assert {r.key for r in new} <= left
            assert len(left) == limit


def test_per_user_counts(mongodb_store: MongoDBStore) -> None:
    for user, many in (("rupert", 3), ("sybil", 1), ("trent", 2)):
        for _ in range(many):
            mongodb_store.create(user_record(user))
    mongodb_store.create(user_record(None))
    mongodb_store.create(user_record("victor", seconds=-1))
    assert mongodb_store.per_user_counts(2) == [("rupert", 3), ("trent", 2)]
    assert mongodb_store.per_user_counts(10) == [
        ("rupert", 3),
        ("trent", 2),
        ("sybil", 1),
    ]
    assert mongodb_store.per_user_counts(0) == []


def test_unhashed_keys(unpurged_store: MongoDBStore) -> None:
    legacy = sorted(legacy_key() for _ in range(7))
    for key in legacy:
        unpurged_store.create(Record(key, b"old", ms(utcnow() + timedelta(minutes=5))))
    for _ in range(5):
        unpurged_store.create(user_record("walter"))
    unpurged_store.create(Record(legacy_key(), b"old", ms(utcnow() - timedelta(1))))
    assert unpurged_store.count_unhashed() == 7
    pages = unhashed_pages(unpurged_store, 3)
    assert [key for page in pages for key in page] == legacy
    assert unpurged_store.unhashed_keys(None, 100) == (legacy, None)


def test_hostile_metadata_lists_as_none(mongodb_store: MongoDBStore) -> None:
    key = hashed_key()
    mongodb_store.collection.insert_one(
        {
            "_id": key,
            "payload": b"",
            "expires_at": ms(utcnow() + timedelta(minutes=5)),
            "version": 1,
            "user_id": "yvonne",
            "created_at": "yesterday",
            "last_active_at": 12,
            "user_agent": "x" * 10_000,
            "ip": {"$gt": ""},
        }
    )
    [listed] = mongodb_store.sessions_of("yvonne")
    assert listed.key == key and listed.user_id == "yvonne"
    assert (listed.created_at, listed.last_active_at) == (None, None)
    assert (listed.user_agent, listed.ip) == (None, None)
    # Trimming orders it as the least recent; it does not crash.
    assert mongodb_store.trim_sessions_of("yvonne", 0, keep=hashed_key()) == [key]


def test_bad_input_is_refused(mongodb_store: MongoDBStore) -> None:
    for user_id in ("", "a\nb", "x" * 256):
        with pytest.raises(ValueError):
            mongodb_store.sessions_of(user_id)
    with pytest.raises(TypeError):
        mongodb_store.sessions_of({"$ne": None})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mongodb_store.delete_sessions_of("zoe", [{"$ne": None}])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        mongodb_store.delete_sessions_of("zoe", keep="no good")
    with pytest.raises(TypeError):
        mongodb_store.create(user_record(42))  # type: ignore[arg-type]


# -- the upgrade of a collection 0.1 created -------------------------------------


def create_010_collection(collection: t.Any) -> list[Record]:
    """The collection as 0.1.0 left it: its TTL index, its documents
    (``_id``, ``payload``, ``expires_at``, ``version``; the cookie's key)."""
    collection.create_index(
        [("expires_at", 1)], name="expires_at_1", expireAfterSeconds=0
    )
    records = [
        Record(legacy_key(), b"v1 %d" % n, ms(utcnow() + timedelta(minutes=5)), 1)
        for n in range(3)
    ]
    for record in records:
        collection.insert_one(
            {
                "_id": record.key,
                "payload": record.payload,
                "expires_at": record.expires_at,
                "version": record.version,
            }
        )
    return records


def test_migrate_upgrades_a_010_collection(mongodb_collection: t.Any) -> None:
    records = create_010_collection(mongodb_collection)
    store = MongoDBStore(mongodb_collection)
    # Before the upgrade: 0.1 records load, save, and are listed once saved
    # with a user (the query works without the index, only slower).
    assert store.load(records[0].key) == records[0]
    assert store.pending_migrations() == [
        f"MongoDB collection {mongodb_collection.full_name}: create per-user"
        f" index {USER_INDEX_NAME!r} on (user_id, expires_at), partial on"
        " documents with a user_id"
    ]
    lines = store.migrate()
    assert len(lines) == 1 and "created per-user index" in lines[0]
    assert store.pending_migrations() == []
    before = mongodb_collection.index_information()
    again = store.migrate()
    assert len(again) == 1 and "nothing to do" in again[0]
    assert mongodb_collection.index_information() == before
    # After: the 0.1 records still load, list as unhashed, and join the
    # index when saved with a user.
    for record in records:
        assert store.load(record.key) == record
    assert store.count_unhashed() == 3
    saved = user_record("amy", key=records[1].key, version=2)
    store.save(saved, 1)
    assert keys_of(store, "amy") == {records[1].key}
    store.touch(records[2].key, ms(utcnow() + timedelta(minutes=9)))
    assert store.load(records[2].key) is not None


def test_migrate_replaces_a_non_partial_user_index(mongodb_store: MongoDBStore) -> None:
    collection = mongodb_store.collection
    collection.drop_index(USER_INDEX_NAME)
    collection.create_index([("user_id", 1), ("expires_at", 1)], name="theirs")
    assert len(mongodb_store.pending_migrations()) == 2
    lines = mongodb_store.migrate()
    assert "dropped index 'theirs'" in lines[0]
    assert "created per-user index" in lines[1]
    assert "theirs" not in collection.index_information()
    assert mongodb_store.pending_migrations() == []
