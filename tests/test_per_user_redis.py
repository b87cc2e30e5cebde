"""RedisStore's per-user index (issue 17) on standalone, Sentinel and
Cluster Redis, with keyspace notifications off.

Needs the plugin ``tests.fixtures_redis`` (conftest loads it; or ``-p``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import threading
import time
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest

from flask_towersess.errors import UpdateError
from flask_towersess.session import new_session_key
from flask_towersess.stores import _header
from flask_towersess.stores.base import CountingPerUser
from flask_towersess.stores.base import LegacyKeys
from flask_towersess.stores.base import PerUserIndex
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import utcnow
from flask_towersess.stores.redis import RedisStore

from .helpers import at_once
from .helpers import unhashed_pages

try:
    import redis
    import redis.connection
except ImportError:  # pragma: no cover - the test extra installs redis-py
    if os.environ.get("TOWERSESS_REQUIRE_SERVICES"):
        raise
    pytest.skip("redis-py is not installed", allow_module_level=True)

STORE_FIXTURES = ["redis_store", "redis_cluster_store", "redis_sentinel_store"]
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
RETIRED = datetime(2000, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(params=STORE_FIXTURES)
def rstore(request: pytest.FixtureRequest) -> RedisStore:
    """Each Redis deployment in turn, fresh and empty; keyspace
    notifications checked to be off on every node it writes to."""
    store = t.cast(RedisStore, request.getfixturevalue(request.param))
    for node in nodes(store):
        # redis-py decodes CONFIG GET's reply whatever the client's setting.
        (events,) = node.config_get("notify-keyspace-events").values()
        assert events in ("", b"")
    return store


def nodes(store: RedisStore) -> list[t.Any]:
    client = t.cast(t.Any, store.client)
    if isinstance(client, redis.RedisCluster):
        return [client.get_redis_connection(n) for n in client.get_primaries()]
    return [client]


def stored_key(cookie_key: str) -> str:
    return hashlib.sha256(cookie_key.encode()).hexdigest()


def key_for(user_id: str | None, *, apart: bool = False) -> str:
    """A stored key for a session of ``user_id`` as the session layer picks
    it on a Cluster (in the slot of the user's index), or, ``apart``, one
    outside it (a key chosen before the log-in, or by 0.1)."""
    if user_id is None:
        return stored_key(new_session_key())
    prefix = _header.index_tag(user_id)[:2]
    if not apart:
        return stored_key(new_session_key(prefix))
    while True:
        key = stored_key(new_session_key())
        if not key.startswith(prefix):
            return key


def record(
    user_id: str | None = "alice",
    *,
    seconds: float = 600,
    version: int = 1,
    key: str | None = None,
    active: datetime | None = None,
    apart: bool = False,
) -> Record:
    now = utcnow()
    return Record(
        key or key_for(user_id, apart=apart),
        b"payload",
        now + timedelta(seconds=seconds),
        version,
        user_id=user_id,
        created_at=now,
        last_active_at=active or now,
        user_agent="Mozilla/5.0",
        ip="203.0.113.7",
    )


def index_name(store: RedisStore, user_id: str) -> str:
    return store._index_key(_header.index_tag(user_id))


def index_members(store: RedisStore, user_id: str) -> set[str]:
    members = store.client.zrange(index_name(store, user_id), 0, -1)
    return {store._key_of(m).decode() for m in t.cast(list[bytes], members)}


def all_keys(store: RedisStore) -> list[bytes]:
    found = []
    for node in nodes(store):
        found += list(node.scan_iter(match=store.key_prefix + "*", count=1000))
    return found


def keys_of(records: t.Iterable[Record]) -> set[str]:
    return {r.key for r in records}


@contextlib.contextmanager
def counting(monkeypatch: pytest.MonkeyPatch) -> t.Iterator[list[int]]:
    """Count the requests sent to Redis: one per command, one per pipeline
    and node (what a round trip costs)."""
    sent = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def send(self: t.Any, command: t.Any, check_health: bool = True) -> None:
        sent[0] += 1
        original(self, command, check_health)

    with monkeypatch.context() as patch:
        patch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)
        yield sent


def is_cluster(store: RedisStore) -> bool:
    return isinstance(store.client, redis.RedisCluster)


# -- the index is exact on its own ----------------------------------------


def test_capabilities(rstore: RedisStore) -> None:
    assert isinstance(rstore.as_per_user(), PerUserIndex)
    assert isinstance(rstore.as_counting_per_user(), CountingPerUser)
    assert isinstance(rstore, LegacyKeys)
    # Nothing to create or upgrade: 0.1's records are read as they are.
    assert rstore.as_migrating() is None


def test_listing_carries_the_per_user_fields(rstore: RedisStore) -> None:
    mine = record()
    rstore.create(mine)
    rstore.create(record("bob"))
    rstore.create(record(None))
    (listed,) = rstore.sessions_of("alice")
    assert listed == Record(
        mine.key,
        b"",
        mine.expires_at,
        1,
        user_id="alice",
        created_at=mine.created_at,
        last_active_at=mine.last_active_at,
        user_agent="Mozilla/5.0",
        ip="203.0.113.7",
    )
    # load's answer is as before: the payload, no per-user fields needed.
    assert rstore.load(mine.key) == Record(mine.key, b"payload", mine.expires_at, 1)


def test_listing_is_exact_after_records_expire_without_purge(
    rstore: RedisStore,
) -> None:
    short = [record(seconds=1) for _ in range(3)]
    long = record()
    for r in [*short, long]:
        rstore.create(r)
    assert keys_of(rstore.sessions_of("alice")) == keys_of([*short, long])
    time.sleep(1.2)
    # Nothing purged, no notification: the entries carried their deadline.
    assert keys_of(rstore.sessions_of("alice")) == {long.key}
    assert index_members(rstore, "alice") == {long.key}


def test_the_index_ends_with_its_last_entry(rstore: RedisStore) -> None:
    entries = [record(seconds=1), record(seconds=2)]
    for r in entries:
        rstore.create(r)
    # The index's own expiry is its greatest score: the last record's.
    ttl = rstore.client.pttl(index_name(rstore, "alice"))
    assert 1000 < t.cast(int, ttl) <= 2000
    time.sleep(2.2)
    assert rstore.client.exists(index_name(rstore, "alice")) == 0
    assert rstore.sessions_of("alice") == []


def test_login_logout_cycles_leave_nothing_behind(rstore: RedisStore) -> None:
    for _ in range(1000):
        r = record()
        rstore.create(r)
        rstore.delete(r.key)
    assert rstore.client.exists(index_name(rstore, "alice")) == 0
    assert all_keys(rstore) == []


def test_parallel_creates_for_one_user(rstore: RedisStore) -> None:
    def login(barrier: threading.Barrier) -> str:
        r = record()
        barrier.wait()
        rstore.create(r)
        return r.key

    created = at_once(*[login] * 20)
    assert keys_of(rstore.sessions_of("alice")) == set(created)


def test_rotation_moves_the_entry(rstore: RedisStore) -> None:
    old = record()
    rstore.create(old)
    new = record(key=stored_key(new_session_key()))
    rstore.create(new)
    # The session layer retires the old key by compare-and-set.
    rstore.save(Record(old.key, b"", RETIRED, 2), 1)
    assert keys_of(rstore.sessions_of("alice")) == {new.key}
    assert index_members(rstore, "alice") == {new.key}
    assert rstore.load(old.key) is None


def test_login_from_an_anonymous_session(rstore: RedisStore) -> None:
    anonymous = record(None)
    rstore.create(anonymous)
    new = record()
    rstore.create(new)
    rstore.save(Record(anonymous.key, b"", RETIRED, 2), 1)
    assert keys_of(rstore.sessions_of("alice")) == {new.key}


def test_save_changing_the_user_moves_the_entry(rstore: RedisStore) -> None:
    r = record()
    rstore.create(r)
    rstore.save(Record(r.key, b"v2", r.expires_at, 2, user_id="bob"), 1)
    assert rstore.sessions_of("alice") == []
    assert keys_of(rstore.sessions_of("bob")) == {r.key}
    assert index_members(rstore, "alice") == set()
    rstore.save(Record(r.key, b"v3", r.expires_at, 3), 2)
    assert rstore.sessions_of("bob") == []
    assert index_members(rstore, "bob") == set()
    assert rstore.load(r.key) == Record(r.key, b"v3", r.expires_at, 3)


def test_touch_sets_last_active_and_keeps_the_deadline(rstore: RedisStore) -> None:
    r = record(seconds=60, active=utcnow() - timedelta(hours=1))
    rstore.create(r)
    later = utcnow() + timedelta(hours=2)
    before = utcnow()
    rstore.touch(r.key, later)
    (listed,) = rstore.sessions_of("alice")
    assert listed.expires_at == later
    assert listed.last_active_at is not None
    assert before <= listed.last_active_at <= utcnow()
    score = rstore.client.zscore(index_name(rstore, "alice"), rstore.redis_key(r.key))
    expiry_ms = (later - EPOCH) // timedelta(milliseconds=1)
    assert score is not None and score >= expiry_ms
    # A touch into the past ends the record and its entry.
    rstore.touch(r.key, utcnow() - timedelta(seconds=1))
    assert rstore.sessions_of("alice") == []
    assert index_members(rstore, "alice") == set()


def test_delete_many(rstore: RedisStore) -> None:
    records = [record(), record("bob"), record(None)]
    for r in records:
        rstore.create(r)
    rstore.delete_many([r.key for r in records] + [stored_key(new_session_key())])
    assert all(rstore.load(r.key) is None for r in records)
    assert all_keys(rstore) == []


# -- revoking ---------------------------------------------------------------


def test_delete_sessions_of(rstore: RedisStore) -> None:
    mine = [record() for _ in range(5)]
    theirs = record("bob")
    for r in [*mine, theirs]:
        rstore.create(r)
    ended = rstore.delete_sessions_of("alice", keep=mine[0].key)
    assert set(ended) == keys_of(mine[1:])
    assert keys_of(rstore.sessions_of("alice")) == {mine[0].key}
    assert rstore.load(theirs.key) is not None
    assert rstore.delete_sessions_of("alice") == [mine[0].key]
    assert rstore.client.exists(index_name(rstore, "alice")) == 0


def test_delete_some_sessions_of(rstore: RedisStore) -> None:
    mine = [record() for _ in range(3)]
    theirs = record("bob")
    for r in [*mine, theirs]:
        rstore.create(r)
    ended = rstore.delete_sessions_of(
        "alice", [mine[0].key, mine[1].key, theirs.key], keep=mine[1].key
    )
    assert ended == [mine[0].key]
    assert keys_of(rstore.sessions_of("alice")) == keys_of(mine[1:])
    # Another user's key is left alone.
    assert keys_of(rstore.sessions_of("bob")) == {theirs.key}
    assert rstore.delete_sessions_of("alice", []) == []


@pytest.mark.parametrize("apart", [False, True], ids=["together", "apart"])
def test_round_trips_of_the_request_path(
    rstore: RedisStore, monkeypatch: pytest.MonkeyPatch, apart: bool
) -> None:
    # Each once first: redis-py loads a script on its first NOSCRIPT.
    def requests(anon: Record, mine: Record) -> dict[str, int]:
        counts = {}
        steps: dict[str, t.Callable[[], object]] = {
            "create anonymous": lambda: rstore.create(anon),
            "create": lambda: rstore.create(mine),
            "load": lambda: rstore.load(mine.key),
            "save": lambda: rstore.save(
                Record(mine.key, b"v2", mine.expires_at, 2, user_id="alice"), 1
            ),
            "save anonymous": lambda: rstore.save(
                Record(anon.key, b"v2", anon.expires_at, 2), 1
            ),
            "touch": lambda: rstore.touch(mine.key, mine.expires_at),
            "touch anonymous": lambda: rstore.touch(anon.key, anon.expires_at),
            "delete": lambda: rstore.delete(mine.key),
            "delete anonymous": lambda: rstore.delete(anon.key),
        }
        for name, step in steps.items():
            with counting(monkeypatch) as sent:
                step()
            counts[name] = sent[0]
        return counts

    requests(record(None), record(apart=apart))
    counts = requests(record(None), record(apart=apart))
    if not is_cluster(rstore) or not apart:
        # One command each, as before the index: on a Cluster the record is
        # in the slot of its user's index.
        assert set(counts.values()) == {1}, counts
    else:
        # A record outside its user's slot: create and save of it send one
        # pipeline (one request to each of the two masters, sent together,
        # or one if a master holds both); touch and delete one follow-up;
        # anonymous records cost as before.
        assert counts.pop("create") in (1, 2)
        assert counts.pop("save") in (1, 2)
        assert counts == {
            "create anonymous": 1,
            "load": 1,
            "save anonymous": 1,
            "touch": 2,
            "touch anonymous": 1,
            "delete": 2,
            "delete anonymous": 1,
        }


def revoke_costs(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch, *, apart: bool
) -> list[int]:
    """Requests sent to end all but one, then the last, of 10 and of 1,000
    sessions of a user."""
    costs = []
    for n in (10, 1000):
        user = f"user-{n}"
        keep = record(user, apart=apart)
        store.create(keep)
        for _ in range(n - 1):
            store.create(record(user, apart=apart))
        store.delete_sessions_of("nobody")  # the script loaded
        with counting(monkeypatch) as sent:
            ended = store.delete_sessions_of(user, keep=keep.key)
        assert len(ended) == n - 1
        costs.append(sent[0])
        with counting(monkeypatch) as sent:
            assert len(store.delete_sessions_of(user)) == 1
        costs.append(sent[0])
        assert store.sessions_of(user) == []
    return costs


def test_revoking_costs_the_same_for_10_and_1000_sessions(
    rstore: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One script, on a Cluster too: the records are in the index's slot.
    assert revoke_costs(rstore, monkeypatch, apart=False) == [1, 1, 1, 1]


def test_revoking_records_outside_their_slot_on_a_cluster(
    redis_cluster_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Records written before their user logged in (or by 0.1): the index,
    # one request per master holding records (3), the index.
    costs = revoke_costs(redis_cluster_store, monkeypatch, apart=True)
    assert costs[0] == costs[2] == 5, costs
    assert costs[1] == costs[3] == 3, costs


def test_trim_keeps_the_most_recent(rstore: RedisStore) -> None:
    now = utcnow()
    old = [record(active=now - timedelta(minutes=10 - i)) for i in range(5)]
    for r in old:
        rstore.create(r)
    current = record(active=now - timedelta(hours=1))
    rstore.create(current)
    ended = rstore.trim_sessions_of("alice", 2, keep=current.key)
    assert set(ended) == keys_of(old[:3])
    assert keys_of(rstore.sessions_of("alice")) == {old[3].key, old[4].key, current.key}
    assert index_members(rstore, "alice") == {old[3].key, old[4].key, current.key}


def race_two_logins(rstore: RedisStore, user: str, limit: int) -> list[Record]:
    """Two logins of ``user`` at once, each creating its session and
    trimming to ``limit``; returns the two new records."""

    def login(barrier: threading.Barrier) -> Record:
        r = record(user, active=utcnow() + timedelta(seconds=1))
        barrier.wait()
        rstore.create(r)
        rstore.trim_sessions_of(user, limit, keep=r.key)
        return r

    return at_once(login, login)


def test_trim_under_two_racing_logins(rstore: RedisStore) -> None:
    now = utcnow()
    for round_ in range(5):
        user = f"racer-{round_}"
        old = [record(user, active=now - timedelta(minutes=10 - i)) for i in range(5)]
        for r in old:
            rstore.create(r)
        new = race_two_logins(rstore, user, 3)
        # Both new sessions survive, with the most recent old one.
        assert keys_of(rstore.sessions_of(user)) == keys_of([*new, old[4]])


def test_per_user_counts(rstore: RedisStore) -> None:
    for user, n in (("alice", 3), ("bob", 5), ("carol", 1)):
        for _ in range(n):
            rstore.create(record(user))
    rstore.create(record(None))
    rstore.create(record("dave", seconds=1))
    expired = record("erin", seconds=1)
    rstore.create(expired)
    time.sleep(1.1)
    assert rstore.per_user_counts(2) == [("bob", 5), ("alice", 3)]
    assert rstore.per_user_counts(10) == [("bob", 5), ("alice", 3), ("carol", 1)]


def test_per_user_counts_of_many_users(
    rstore: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = [f"user-{i:03}" for i in range(60)]
    for i, user in enumerate(users):
        for _ in range(1 + i % 3):
            rstore.create(record(user))
    rstore.per_user_counts(1)  # the scripts loaded
    with counting(monkeypatch) as sent:
        counts = rstore.per_user_counts(100)
    assert counts == sorted(
        [(user, 1 + i % 3) for i, user in enumerate(users)],
        key=lambda pair: (-pair[1], pair[0]),
    )
    if not is_cluster(rstore):
        # SCAN, then one pipeline for all the indexes.
        assert sent[0] <= 3


# -- keys and records of 0.1 ----------------------------------------------------


def write_0_1_record(store: RedisStore, key: str, version: int = 1) -> datetime:
    """A record as 0.1.0 wrote it: the cookie's key itself, format 1."""
    expires_at = utcnow() + timedelta(minutes=5)
    micros = (expires_at - EPOCH) // timedelta(microseconds=1)
    value = struct.pack(">Bqq", 0xF1, version, micros) + b"0.1"
    store.client.set(store.redis_key(key), value, pxat=micros // 1000)
    return expires_at


def test_unhashed_keys_pagination_and_count(rstore: RedisStore) -> None:
    legacy = {new_session_key() for _ in range(25)}
    for key in legacy:
        write_0_1_record(rstore, key)
    for _ in range(10):
        rstore.create(record())
    pages = unhashed_pages(rstore, 4)
    assert {key for page in pages for key in page} == legacy
    assert len(pages) > 2
    assert rstore.count_unhashed() == 25
    with pytest.raises(ValueError):
        rstore.unhashed_keys("nonsense", 4)


def test_records_of_0_1_keep_working_and_are_upgraded_on_save(
    rstore: RedisStore,
) -> None:
    key = new_session_key()
    expires_at = write_0_1_record(rstore, key, version=4)
    assert rstore.load(key) == Record(key, b"0.1", expires_at, 4)
    rstore.touch(key, expires_at)
    assert rstore.load(key) == Record(key, b"0.1", expires_at, 4)
    # The session layer rewrites it under the hash, with its user...
    new = record(key=stored_key(key))
    rstore.create(new)
    rstore.save(Record(key, b"", RETIRED, 5), 4)
    assert keys_of(rstore.sessions_of("alice")) == {new.key}
    assert rstore.count_unhashed() == 0
    # ...and a save of a format-1 record with a user indexes it.
    other = new_session_key()
    write_0_1_record(rstore, other)
    rstore.save(Record(other, b"x", expires_at, 2, user_id="alice"), 1)
    assert keys_of(rstore.sessions_of("alice")) == {new.key, other}


# -- hostile values ---------------------------------------------------------------


def test_hostile_stored_metadata_is_none_in_the_listing(rstore: RedisStore) -> None:
    r = record(active=utcnow() - timedelta(hours=1))
    tag = _header.index_tag("alice")
    micros = (r.expires_at - EPOCH) // timedelta(microseconds=1)
    active = (r.last_active_at - EPOCH) // timedelta(microseconds=1)  # type: ignore[operator]

    def text(data: bytes) -> bytes:
        return struct.pack(">H", len(data)) + data

    # Written by hand, as an attacker with access to Redis could: a
    # created_at out of any datetime's range, a User-Agent longer than any
    # the store writes, an ip of invalid UTF-8.
    meta = (
        bytes([len(tag)])
        + tag.encode()
        + struct.pack(">q", 2**62)
        + text(b"alice")
        + text(b"A" * 5000)
        + text(b"\xff\xfe")
    )
    value = struct.pack(">BqqqH", 0xF2, 1, micros, active, len(meta)) + meta + b"x"
    rstore.create(r)
    rstore.client.set(rstore.redis_key(r.key), value, pxat=micros // 1000)
    (listed,) = rstore.sessions_of("alice")
    assert listed.user_agent is None
    assert listed.created_at is None
    assert listed.ip is None
    assert listed.user_id == "alice"
    assert listed.last_active_at == r.last_active_at
    # A value of another app in the index is dropped, not a crash.
    other = record()
    rstore.create(other)
    rstore.client.set(rstore.redis_key(other.key), b"\xf2garbage")
    assert keys_of(rstore.sessions_of("alice")) == {r.key}


def test_bad_user_ids_are_refused(rstore: RedisStore) -> None:
    for bad in ("", "a\nb", "x" * 256):
        with pytest.raises(ValueError):
            rstore.sessions_of(bad)
        with pytest.raises(ValueError):
            rstore.create(record(bad))
    with pytest.raises(TypeError):
        rstore.delete_sessions_of(t.cast(str, 42))
    with pytest.raises(ValueError):
        rstore.delete_sessions_of("alice", ["not a key!"])


def test_a_key_of_another_type_is_no_record(rstore: RedisStore) -> None:
    key = stored_key(new_session_key())
    rstore.client.hset(rstore.redis_key(key), "field", "value")
    rstore.touch(key, utcnow() + timedelta(minutes=5))
    with pytest.raises(UpdateError):
        rstore.save(Record(key, b"x", utcnow() + timedelta(minutes=5), 2), 1)
    rstore.delete(key)
    assert rstore.client.exists(rstore.redis_key(key)) == 0


def test_cluster_trim_spares_a_session_touched_after_it_read(
    redis_cluster_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a Cluster a trim reads, then ends: a session touched in between
    # (now the most recent) is not ended on the strength of the old read.
    # (Only records outside their user's slot are ranked that way.)
    store = redis_cluster_store
    now = utcnow()
    old = [record(active=now - timedelta(minutes=10 - i), apart=True) for i in range(4)]
    for r in old:
        store.create(r)
    current = record()
    store.create(current)
    read = store._live_records

    def read_then_touch(*args: t.Any) -> list[Record]:
        records = read(*args)
        store.touch(old[0].key, old[0].expires_at)
        return records

    monkeypatch.setattr(store, "_live_records", read_then_touch)
    ended = store.trim_sessions_of("alice", 1, keep=current.key)
    assert set(ended) == keys_of(old[1:])
    assert keys_of(store.sessions_of("alice")) == {old[0].key, current.key}


# -- a user's records in the slot of the user's index ---------------------------


def test_the_cluster_asks_for_keys_in_the_users_slot(rstore: RedisStore) -> None:
    prefix = rstore.colocation_prefix("alice")
    if not is_cluster(rstore):
        assert prefix == ""  # one script reaches every key
        return
    assert prefix == _header.index_tag("alice")[:2]
    key = key_for("alice")
    client = rstore._client
    assert client.keyslot(rstore.redis_key(key)) == client.keyslot(
        index_name(rstore, "alice")
    )
    # A 0.1 key (unhashed) has no hash tag: it is kept as it was.
    legacy = new_session_key()
    assert rstore.redis_key(legacy) == rstore.key_prefix + legacy


def test_records_in_and_outside_the_users_slot_together(rstore: RedisStore) -> None:
    # A user whose sessions began before the layout (or were moved from
    # 0.1 keys) has records outside the index's slot next to new ones:
    # listing, trimming and ending treat them alike.
    now = utcnow()
    together = [record(active=now - timedelta(minutes=10 - 2 * i)) for i in range(3)]
    apart = [
        record(active=now - timedelta(minutes=9 - 2 * i), apart=True) for i in range(3)
    ]
    for r in [*together, *apart]:
        rstore.create(r)
    everyone = keys_of([*together, *apart])
    assert keys_of(rstore.sessions_of("alice")) == everyone
    # Most recent first: apart[2], together[2], apart[1], together[1], ...
    ended = rstore.trim_sessions_of("alice", 2, keep=together[0].key)
    assert set(ended) == keys_of([together[1], apart[0], apart[1]])
    left = {together[0].key, together[2].key, apart[2].key}
    assert keys_of(rstore.sessions_of("alice")) == left
    assert index_members(rstore, "alice") == left
    rstore.touch(apart[2].key, now + timedelta(minutes=30))
    (touched,) = [r for r in rstore.sessions_of("alice") if r.key == apart[2].key]
    assert touched.expires_at == now + timedelta(minutes=30)
    ended = rstore.delete_sessions_of("alice", keep=together[2].key)
    assert set(ended) == {together[0].key, apart[2].key}
    assert keys_of(rstore.sessions_of("alice")) == {together[2].key}
    rstore.delete(together[2].key)
    assert rstore.sessions_of("alice") == []
    assert index_members(rstore, "alice") == set()


def test_a_cluster_trim_is_atomic_when_the_records_are_together(
    redis_cluster_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One script in the index's slot reads, ranks and ends: nothing is read
    # first by the client and ended later on the strength of that read.
    store = redis_cluster_store
    now = utcnow()
    old = [record(active=now - timedelta(minutes=10 - i)) for i in range(4)]
    for r in old:
        store.create(r)
    current = record()
    store.create(current)
    store.trim_sessions_of("nobody", 1, keep=current.key)  # the script loaded

    def no_reading(*args: t.Any) -> t.NoReturn:
        raise AssertionError("the trim read the records first")

    monkeypatch.setattr(store, "_live_records", no_reading)
    with counting(monkeypatch) as sent:
        ended = store.trim_sessions_of("alice", 2, keep=current.key)
    assert sent[0] == 1
    assert set(ended) == keys_of(old[:3])
    monkeypatch.undo()
    assert keys_of(store.sessions_of("alice")) == {old[3].key, current.key}


def test_a_login_on_a_cluster_gets_a_key_in_the_users_slot(
    redis_cluster_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flask import Flask
    from flask import session

    from flask_towersess import SessionExt

    app = Flask(__name__)
    app.config.update(SECRET_KEY="test secret", SESSION_TOUCH_INTERVAL=0)
    SessionExt(app, store=redis_cluster_store)

    @app.post("/login/<name>")
    def login(name: str) -> str:
        session["_user_id"] = name
        return "in"

    @app.post("/cycle-then-login/<name>")
    def cycle_then_login(name: str) -> str:
        # The key is chosen before the user is known: the save picks again.
        session.cycle_key()  # type: ignore[attr-defined]
        session["_user_id"] = name
        return "in"

    @app.get("/read")
    def read() -> str:
        return f"{session.get('_user_id')} {session.stored_key}"  # type: ignore[attr-defined]

    prefix = redis_cluster_store.colocation_prefix("alice")
    for path in ("/login/alice", "/cycle-then-login/alice"):
        client = app.test_client()
        client.get("/read")
        assert client.post(path).status_code == 200
        user, key = client.get("/read").text.split()
        assert user == "alice"
        assert key.startswith(prefix)
        assert key in keys_of(redis_cluster_store.sessions_of("alice"))
        with counting(monkeypatch) as sent:
            assert client.get("/read").text == f"alice {key}"
        # The load and the touch, one request each: no follow-up to the
        # index, which is in the record's slot.
        assert sent[0] == 2
        redis_cluster_store.delete_sessions_of("alice")


def test_new_session_key_with_a_prefix() -> None:
    from flask_towersess.session import stored_key as session_stored_key

    for prefix in ("00", "ab", "ff", "0a1b"):
        key = new_session_key(prefix)
        assert len(key) == 43
        assert session_stored_key(key).startswith(prefix)
    assert len({new_session_key("ab") for _ in range(50)}) == 50
    for bad in ("a", "abc", "abcdef", "zz"):
        with pytest.raises(ValueError):
            new_session_key(bad)


def test_a_cluster_prefix_that_would_break_the_hash_tags_is_refused(
    redis_cluster_store: RedisStore,
) -> None:
    from flask_towersess.errors import ConfigurationError

    client = redis_cluster_store.client
    for bad in ("session{", "a{b:", "{}session:"):
        with pytest.raises(ConfigurationError, match="hash tag"):
            RedisStore(client, key_prefix=bad)
    # A whole tag puts every key in one slot: it works, listing included.
    store = RedisStore(client, key_prefix="{towersess-test-one-slot}:")
    try:
        r = record()
        store.create(r)
        store.touch(r.key, r.expires_at)
        assert keys_of(store.sessions_of("alice")) == {r.key}
        assert store.delete_sessions_of("alice") == [r.key]
    finally:
        for node in nodes(store):
            for name in node.scan_iter(match="{towersess-test-one-slot}:*"):
                node.delete(name)


@pytest.mark.parametrize("first", ["index", "record"])
def test_a_slot_being_migrated_loses_nothing(
    redis_cluster_store: RedisStore, first: str
) -> None:
    # Resharding moves a slot's keys in batches: for a while a user's index
    # and their session's record are on two masters. The scripts never
    # write an index they did not declare on a node that does not hold it
    # (a second index there would stop the migration with BUSYKEY), nor
    # drop an entry whose record they cannot see; the caller then reads and
    # writes those keys declared, which follows the Cluster's redirections.
    store = redis_cluster_store
    client = store._client
    user = f"resharded-{first}"
    r = record(user)
    other = record(user)
    store.create(r)
    store.create(other)
    index, name = index_name(store, user), store.redis_key(r.key)
    other_name = store.redis_key(other.key)
    slot = client.keyslot(index)
    assert client.keyslot(name) == slot == client.keyslot(other_name)
    source = client.get_node_from_key(index)
    target = next(n for n in client.get_primaries() if n.name != source.name)
    source_conn = client.get_redis_connection(source)
    target_conn = client.get_redis_connection(target)
    source_id = source_conn.execute_command("CLUSTER", "MYID").decode()
    target_id = target_conn.execute_command("CLUSTER", "MYID").decode()
    target_conn.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source_conn.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)

    def migrate(*keys: str) -> None:
        source_conn.execute_command(
            "MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys
        )

    later = r.expires_at + timedelta(minutes=5)
    try:
        migrate(index if first == "index" else name)
        store.touch(r.key, later)
        assert keys_of(store.sessions_of(user)) == {r.key, other.key}
        assert store.delete_sessions_of(user, keep=r.key) == [other.key]
        migrate(name if first == "index" else index)  # no BUSYKEY
    finally:
        for node in client.get_primaries():
            client.get_redis_connection(node).execute_command(
                "CLUSTER", "SETSLOT", slot, "NODE", target_id
            )
        client.nodes_manager.initialize()
    (listed,) = store.sessions_of(user)
    assert listed.key == r.key
    assert listed.expires_at == later
    assert store.load(other.key) is None
    assert index_members(store, user) == {r.key}
    store.delete(r.key)
    assert index_members(store, user) == set()
