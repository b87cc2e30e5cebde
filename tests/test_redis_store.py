"""RedisStore: the store contract on standalone, Sentinel and Cluster Redis,
plus what is particular to Redis (TTL, key prefix, URLs, clients, outages,
failover).

Needs the plugin ``tests.fixtures_redis`` (conftest loads it; or ``-p``).
"""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import time
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest

from flask_towersess.errors import ConfigurationError
from flask_towersess.errors import CreateError
from flask_towersess.errors import StoreUnavailable
from flask_towersess.errors import UpdateError
from flask_towersess.errors import VersionConflict
from flask_towersess.session import new_session_key
from flask_towersess.stores.base import Migrating
from flask_towersess.stores.base import Purging
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import utcnow
from flask_towersess.stores.redis import RedisStore

from .fixtures_redis import RedisProcess
from .fixtures_redis import SentinelTopology
from .fixtures_redis import fresh_store
from .fixtures_redis import unique_prefix
from .fixtures_redis import wait_until

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from .fixtures_redis import ClusterTopology

try:
    import redis
    import redis.asyncio
    import redis.sentinel
except ImportError:  # pragma: no cover - the test extra installs redis-py
    if os.environ.get("TOWERSESS_REQUIRE_SERVICES"):
        raise
    pytest.skip("redis-py is not installed", allow_module_level=True)

STORE_FIXTURES = ["redis_store", "redis_cluster_store", "redis_sentinel_store"]


@pytest.fixture(params=STORE_FIXTURES)
def rstore(request: pytest.FixtureRequest) -> RedisStore:
    """Each of the three Redis deployments in turn, fresh and empty."""
    return t.cast(RedisStore, request.getfixturevalue(request.param))


def make_record(
    payload: bytes = b"data", *, seconds: float = 600, version: int = 1
) -> Record:
    return Record(
        new_session_key(), payload, utcnow() + timedelta(seconds=seconds), version
    )


def pttl(store: RedisStore, key: str) -> int:
    return int(store.client.pttl(store.redis_key(key)))


def pool(store: RedisStore) -> t.Any:
    """The connection pool of a store on a plain or Sentinel-managed client."""
    return t.cast(t.Any, store.client).connection_pool


def raw(store: RedisStore, key: str) -> bytes | None:
    value = store.client.get(store.redis_key(key))
    return None if value is None else bytes(value)


# -- the store contract, on all three deployments ----------------------------


def test_create_then_load_roundtrips_exactly(rstore: RedisStore) -> None:
    record = make_record(bytes(range(256)) * 3)
    rstore.create(record)
    # Microseconds survive: the header keeps the expiry in µs.
    assert rstore.load(record.key) == record


def test_empty_and_large_payloads(rstore: RedisStore) -> None:
    empty, large = make_record(b""), make_record(os.urandom(1 << 20))
    rstore.create(empty)
    rstore.create(large)
    assert rstore.load(empty.key) == empty
    assert rstore.load(large.key) == large


def test_load_of_unknown_key_is_none(rstore: RedisStore) -> None:
    assert rstore.load(new_session_key()) is None
    assert not rstore.exists(new_session_key())


def test_create_on_existing_key_is_create_error(rstore: RedisStore) -> None:
    record = make_record(b"first")
    rstore.create(record)
    with pytest.raises(CreateError):
        rstore.create(Record(record.key, b"second", record.expires_at))
    assert rstore.load(record.key) == record


def test_save_with_the_expected_version(rstore: RedisStore) -> None:
    record = make_record(b"v1")
    rstore.create(record)
    saved = Record(record.key, b"v2", utcnow() + timedelta(minutes=30), 2)
    rstore.save(saved, expected_version=1)
    assert rstore.load(record.key) == saved


def test_save_with_a_stale_version_is_a_conflict(rstore: RedisStore) -> None:
    record = make_record(b"v1")
    rstore.create(record)
    current = Record(record.key, b"v2", record.expires_at, 2)
    rstore.save(current, expected_version=1)
    with pytest.raises(VersionConflict):
        rstore.save(Record(record.key, b"late", record.expires_at, 2), 1)
    assert rstore.load(record.key) == current


def test_save_of_a_deleted_record_is_update_error_and_not_recreated(
    rstore: RedisStore,
) -> None:
    record = make_record()
    rstore.create(record)
    rstore.delete(record.key)
    with pytest.raises(UpdateError):
        rstore.save(Record(record.key, b"again", record.expires_at, 2), 1)
    assert rstore.load(record.key) is None
    assert not rstore.exists(record.key)
    assert raw(rstore, record.key) is None


def test_scripts_are_loaded_again_after_a_script_flush(rstore: RedisStore) -> None:
    # A restarted server (or a promoted replica, or a new cluster node)
    # knows no scripts: EVALSHA answers NOSCRIPT and the store loads them.
    record = make_record(b"v1")
    rstore.create(record)
    rstore.save(Record(record.key, b"v2", record.expires_at, 2), 1)
    t.cast(t.Any, rstore.client).script_flush()
    saved = Record(record.key, b"v3", record.expires_at, 3)
    rstore.save(saved, 2)
    assert rstore.load(record.key) == saved
    t.cast(t.Any, rstore.client).script_flush()
    later = utcnow() + timedelta(hours=2)
    rstore.touch(record.key, later)
    assert rstore.load(record.key) == Record(record.key, b"v3", later, 3)


def test_touch_moves_expiry_only(rstore: RedisStore) -> None:
    record = make_record(b"payload", seconds=60)
    rstore.create(record)
    later = utcnow() + timedelta(hours=2)
    rstore.touch(record.key, later)
    assert rstore.load(record.key) == Record(record.key, b"payload", later, 1)


def test_touch_of_a_missing_key_creates_nothing(rstore: RedisStore) -> None:
    key = new_session_key()
    rstore.touch(key, utcnow() + timedelta(hours=1))
    assert rstore.load(key) is None
    assert raw(rstore, key) is None


def test_delete(rstore: RedisStore) -> None:
    record = make_record()
    rstore.create(record)
    rstore.delete(record.key)
    assert rstore.load(record.key) is None
    rstore.delete(record.key)  # deleting what is gone is fine
    rstore.delete(new_session_key())


def test_exists(rstore: RedisStore) -> None:
    record = make_record()
    assert not rstore.exists(record.key)
    rstore.create(record)
    assert rstore.exists(record.key)


def test_expired_records_are_never_returned(rstore: RedisStore) -> None:
    record = make_record(seconds=0.15)
    rstore.create(record)
    assert rstore.load(record.key) == record
    time.sleep(0.2)
    assert rstore.load(record.key) is None
    assert not rstore.exists(record.key)
    with pytest.raises(UpdateError):
        rstore.save(Record(record.key, b"late", utcnow() + timedelta(hours=1), 2), 1)
    rstore.touch(record.key, utcnow() + timedelta(hours=1))
    assert rstore.load(record.key) is None
    # An expired key is free again.
    renewed = Record(record.key, b"new", utcnow() + timedelta(hours=1))
    rstore.create(renewed)
    assert rstore.load(record.key) == renewed


def test_an_expiry_in_the_past_stores_nothing_live(rstore: RedisStore) -> None:
    past = utcnow() - timedelta(seconds=10)
    created = Record(new_session_key(), b"x", past)
    rstore.create(created)
    assert rstore.load(created.key) is None
    assert raw(rstore, created.key) is None

    saved = make_record()
    rstore.create(saved)
    rstore.save(Record(saved.key, b"y", past, 2), 1)
    assert rstore.load(saved.key) is None
    assert raw(rstore, saved.key) is None

    touched = make_record()
    rstore.create(touched)
    rstore.touch(touched.key, past)
    assert rstore.load(touched.key) is None
    assert raw(rstore, touched.key) is None


def test_expiry_is_native(rstore: RedisStore) -> None:
    rstore.create(make_record(seconds=-5))
    assert RedisStore.expires_natively
    # Nothing to purge and nothing to create: neither capability.
    assert rstore.as_purging() is None and not isinstance(rstore, Purging)
    assert rstore.as_migrating() is None and not isinstance(rstore, Migrating)
    rstore.ping()


# -- Redis specifics ---------------------------------------------------------


def test_ttl_is_set_and_follows_touch_and_save(rstore: RedisStore) -> None:
    record = make_record(seconds=60)
    rstore.create(record)
    assert 55_000 < pttl(rstore, record.key) <= 60_000
    rstore.touch(record.key, utcnow() + timedelta(seconds=600))
    assert 595_000 < pttl(rstore, record.key) <= 600_000
    rstore.save(Record(record.key, b"v2", utcnow() + timedelta(seconds=30), 2), 1)
    assert 25_000 < pttl(rstore, record.key) <= 30_000


def test_stored_value_format(rstore: RedisStore) -> None:
    expires_at = datetime(2100, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    record = Record(new_session_key(), b"payload", expires_at, 7)
    rstore.create(record)
    value = raw(rstore, record.key)
    assert value is not None
    # Format 2 (0.2): tag, version, expiry, last_active_at, metadata length.
    tag, version, micros, active, meta = struct.unpack(">BQqqH", value[:27])
    assert (tag, version, value[27 + meta :]) == (0xF2, 7, b"payload")
    assert active == -(2**63)  # no last_active_at
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert epoch + timedelta(microseconds=micros) == expires_at
    # Redis's expiry is the record's, rounded down to the millisecond.
    full_key = rstore.redis_key(record.key)
    try:
        pexpiretime = int(rstore.client.execute_command("PEXPIRETIME", full_key))
    except redis.ResponseError:  # Redis < 7.0: no PEXPIRETIME
        now_ms = int(time.time() * 1000)
        assert abs(now_ms + pttl(rstore, record.key) - micros // 1000) < 1000
    else:
        assert pexpiretime == micros // 1000


def test_format_1_records_of_0_1_still_load_save_and_touch(rstore: RedisStore) -> None:
    # What 0.1.0 wrote: tag 0xF1, version, expiry (microseconds), payload.
    key = new_session_key()
    expires_at = utcnow() + timedelta(minutes=5)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    micros = (expires_at - epoch) // timedelta(microseconds=1)
    value = struct.pack(">Bqq", 0xF1, 3, micros) + b"old"
    rstore.client.set(rstore.redis_key(key), value, pxat=micros // 1000)
    assert rstore.load(key) == Record(key, b"old", expires_at, 3)
    later = expires_at + timedelta(minutes=5)
    rstore.touch(key, later)
    assert rstore.load(key) == Record(key, b"old", later, 3)
    rstore.save(Record(key, b"new", later, 4), 3)
    assert rstore.load(key) == Record(key, b"new", later, 4)


def test_keys_outside_the_prefix_are_untouched(rstore: RedisStore) -> None:
    client = rstore.client
    record = make_record(b"mine")
    # The same session key under another prefix: a neighbour store and a
    # key some other app wrote.
    neighbour = RedisStore(client, key_prefix=unique_prefix())
    other = Record(record.key, b"neighbour's", record.expires_at)
    neighbour.create(other)
    foreign_key = "other-app:" + record.key
    client.set(foreign_key, b"someone else's", px=600_000)
    try:
        rstore.create(record)
        rstore.load(record.key)
        rstore.exists(record.key)
        rstore.touch(record.key, utcnow() + timedelta(hours=3))
        rstore.save(Record(record.key, b"mine 2", record.expires_at, 2), 1)
        rstore.delete(record.key)
        rstore.touch(record.key, utcnow() + timedelta(hours=3))
        assert neighbour.load(record.key) == other
        assert client.get(foreign_key) == b"someone else's"
        assert 590_000 < client.pttl(foreign_key) <= 600_000
    finally:
        neighbour.delete(record.key)
        client.delete(foreign_key)


def test_a_value_this_store_did_not_write_is_ignored(
    rstore: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    key = new_session_key()
    full_key = rstore.redis_key(key)
    rstore.client.set(full_key, b"\x80\x04pickled flask-session data")
    with caplog.at_level(logging.WARNING, "flask_towersess.stores.redis"):
        assert rstore.load(key) is None
    assert "not a flask-towersess session record" in caplog.text
    with pytest.raises(CreateError):
        rstore.create(Record(key, b"x", utcnow() + timedelta(hours=1)))
    with pytest.raises(VersionConflict):
        rstore.save(Record(key, b"x", utcnow() + timedelta(hours=1), 2), 1)
    rstore.touch(key, utcnow() + timedelta(hours=1))
    assert rstore.client.get(full_key) == b"\x80\x04pickled flask-session data"
    assert rstore.client.pttl(full_key) == -1


def test_cluster_spreads_sessions_over_all_masters(
    redis_cluster_store: RedisStore,
) -> None:
    records = [make_record(str(i).encode()) for i in range(30)]
    for record in records:
        redis_cluster_store.create(record)
    for record in records:
        assert redis_cluster_store.load(record.key) == record
    client = redis_cluster_store.client
    assert isinstance(client, redis.RedisCluster)
    nodes = {
        client.get_node_from_key(redis_cluster_store.redis_key(record.key))
        for record in records
    }
    assert len(nodes) == 3


# -- building from URLs --------------------------------------------------------


def test_from_url_redis(redis_url: str) -> None:
    with fresh_store(redis_url) as store:
        record = make_record()
        store.create(record)
        assert store.load(record.key) == record
        assert isinstance(store.client, redis.Redis)
        assert RedisStore.url_schemes[:3] == ("redis", "rediss", "unix")


def test_from_url_options_and_defaults() -> None:
    # Building a plain client does not connect, so no server is needed.
    store = RedisStore.from_url(
        "redis://user:s3cret@127.0.0.1:1/3?socket_timeout=0.25&password=s3cret",
        key_prefix="app:",
        max_connections=7,
    )
    try:
        kwargs = pool(store).connection_kwargs
        assert kwargs["socket_timeout"] == 0.25  # from the query string
        assert kwargs["socket_connect_timeout"] == 5.0  # the store's default
        assert kwargs["db"] == 3
        assert pool(store).max_connections == 7
        assert store.key_prefix == "app:"
        assert "s3cret" not in store.describe()
        assert "s3cret" not in repr(store)
        assert "127.0.0.1:1" in store.describe()
    finally:
        store.close()


def test_from_url_rediss_uses_tls() -> None:
    store = RedisStore.from_url(
        "rediss://:pw@127.0.0.1:6380/0",
        ssl_cert_reqs="required",
        ssl_ca_certs="/ca.pem",
    )
    try:
        connection_pool = pool(store)
        assert issubclass(connection_pool.connection_class, redis.SSLConnection)
        assert connection_pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"
        assert store.describe().startswith("RedisStore(rediss://:***@127.0.0.1:6380/0")
    finally:
        store.close()


def test_from_url_unix_socket(
    redis_server_factory: Callable[..., RedisProcess],
) -> None:
    server = redis_server_factory()
    socket_path = server.workdir / "redis.sock"
    with fresh_store(f"unix://{socket_path}?db=2") as store:
        record = make_record()
        store.create(record)
        assert store.load(record.key) == record
        kwargs = pool(store).connection_kwargs
        assert (kwargs["path"], kwargs["db"]) == (str(socket_path), 2)


def test_from_url_sentinel(redis_sentinel_topology: SentinelTopology) -> None:
    topology = redis_sentinel_topology
    url = (
        f"redis+sentinel://127.0.0.1:{topology.sentinel.port},127.0.0.1:1"
        f"/{topology.service}/1?socket_timeout=1.5"
    )
    with fresh_store(url) as store:
        record = make_record()
        store.create(record)
        assert store.load(record.key) == record
        connection_pool = pool(store)
        assert connection_pool.service_name == topology.service
        assert connection_pool.connection_kwargs["db"] == 1
        assert connection_pool.connection_kwargs["socket_timeout"] == 1.5
        assert connection_pool.get_master_address()[1] == topology.master.port
        # The record is in db 1 of the master, under the store's prefix.
        with redis.Redis(port=topology.master.port, db=1) as direct:
            assert direct.exists(store.redis_key(record.key))
        assert "sentinel" in store.describe()


def test_from_url_cluster(redis_cluster_topology: ClusterTopology) -> None:
    # One reachable startup node is enough: the client learns the rest.
    first = redis_cluster_topology.nodes[0].port
    with fresh_store(f"redis+cluster://127.0.0.1:{first},127.0.0.1:1") as store:
        record = make_record()
        store.create(record)
        assert store.load(record.key) == record
        assert isinstance(store.client, redis.RedisCluster)
        assert len(store.client.get_primaries()) == 3
        assert store.describe().startswith("RedisStore(redis+cluster://")


def test_from_url_cluster_unreachable_is_store_unavailable() -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        RedisStore.from_url("redis+cluster://127.0.0.1:1", socket_connect_timeout=0.5)
    assert info.value.__cause__ is not None
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/0",
        "127.0.0.1:6379",
        "redis+sentinel://127.0.0.1:26379",
        "redis+sentinel://127.0.0.1:26379/",
        "redis+sentinel://127.0.0.1:26379/svc/notanumber",
        "redis+sentinel://127.0.0.1:26379/svc/0/extra",
        "redis+sentinel://127.0.0.1:port/svc",
        "redis+sentinel://127.0.0.1:26379/svc/1?db=2",
        "redis+sentinel:///svc",
        "redis+cluster://",
        "redis+cluster://127.0.0.1:70000",
        "redis+cluster://127.0.0.1:7000/2",
        "redis+cluster://[::1:7000",
        "redis://127.0.0.1:6379/0?socket_timeout=soon",
    ],
)
def test_bad_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        RedisStore.from_url(url)


def test_the_store_factory_finds_redis_store(redis_url: str) -> None:
    from flask_towersess.stores import store_for
    from flask_towersess.stores import store_from_url

    for url in (redis_url, "rediss://127.0.0.1:6380/0", "unix:///tmp/redis.sock"):
        store = store_from_url(url, key_prefix="factory:")
        try:
            assert isinstance(store, RedisStore)
            assert store.key_prefix == "factory:"
            assert url.split("?")[0] in store.describe()
        finally:
            store.close()
    with redis.Redis.from_url(redis_url) as client:
        store = store_for(client, key_prefix="factory:")
        assert isinstance(store, RedisStore) and store.client is client


def test_module_imports_without_redis_installed() -> None:
    code = (
        "import sys\n"
        "sys.modules['redis'] = None\n"  # makes `import redis` fail
        "from flask_towersess.errors import ConfigurationError\n"
        "from flask_towersess.stores.redis import RedisStore\n"
        "assert not RedisStore.accepts(object())\n"
        "try:\n"
        "    RedisStore.from_url('redis://127.0.0.1')\n"
        "except ConfigurationError as exc:\n"
        "    assert 'flask-towersess[redis]' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('no ConfigurationError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- clients -------------------------------------------------------------------


def connected_names(url: str) -> set[str]:
    """The names of the connections the server at ``url`` has open."""
    with redis.Redis.from_url(url, socket_timeout=2) as observer:
        return {str(c.get("name")) for c in observer.client_list()}


def wait_disconnected(url: str, name: str) -> bool:
    # The server notices a closed socket on its next event loop turn.
    deadline = time.monotonic() + 2
    while name in connected_names(url):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_user_client_is_used_as_is_and_left_open(redis_url: str) -> None:
    name = "towersess-test-" + unique_prefix().split(":")[1]
    with redis.Redis.from_url(redis_url, client_name=name) as client:
        store = RedisStore(client, key_prefix=unique_prefix())
        assert store.client is client
        record = make_record()
        store.create(record)
        assert store.load(record.key) == record
        store.delete(record.key)
        store.close()
        assert name in connected_names(redis_url)  # not closed by the store
        assert client.ping()  # still the user's, still working
    assert wait_disconnected(redis_url, name)


def test_close_closes_what_from_url_built(redis_url: str) -> None:
    name = "towersess-test-" + unique_prefix().split(":")[1]
    store = RedisStore.from_url(redis_url, client_name=name)
    store.exists(new_session_key())
    assert name in connected_names(redis_url)
    store.close()
    store.close()  # idempotent
    assert wait_disconnected(redis_url, name)


def test_accepts_recognises_redis_clients(
    redis_cluster_store: RedisStore, redis_sentinel_store: RedisStore
) -> None:
    with redis.Redis() as client:
        assert RedisStore.accepts(client)
    assert RedisStore.accepts(redis_cluster_store.client)
    assert RedisStore.accepts(redis_sentinel_store.client)
    assert not RedisStore.accepts("redis://127.0.0.1")
    assert not RedisStore.accepts(object())
    assert not RedisStore.accepts(redis.asyncio.Redis())


def test_wrong_clients_are_configuration_errors(redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="from_url"):
        RedisStore(t.cast(t.Any, redis_url))
    sentinel = redis.sentinel.Sentinel([("127.0.0.1", 1)])
    try:
        with pytest.raises(ConfigurationError, match="master_for"):
            RedisStore(t.cast(t.Any, sentinel))
    finally:
        for client in sentinel.sentinels:
            client.close()
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ConfigurationError, match="decode_responses"):
            RedisStore(decoding)
    finally:
        decoding.close()
    with pytest.raises(ConfigurationError):
        RedisStore(t.cast(t.Any, redis.asyncio.Redis()))
    with redis.Redis() as client, pytest.raises(ConfigurationError):
        RedisStore(client, key_prefix=t.cast(t.Any, b"bytes:"))


# -- faults --------------------------------------------------------------------


def test_refused_credentials_are_a_configuration_error(
    redis_server_factory: Callable[..., RedisProcess],
) -> None:
    server = redis_server_factory("--requirepass", "right")
    for url in (server.url, server.url.replace("//", "//:wrong@")):
        store = RedisStore.from_url(url)
        try:
            with pytest.raises(ConfigurationError) as info:
                store.load(new_session_key())
            assert isinstance(info.value.__cause__, redis.AuthenticationError)
            assert "wrong" not in str(info.value)
        finally:
            store.close()


def test_a_hung_or_dead_server_is_store_unavailable_and_recovers(
    redis_server_factory: Callable[..., RedisProcess],
) -> None:
    server = redis_server_factory()
    timeouts = {"socket_timeout": 0.3, "socket_connect_timeout": 0.3}
    with fresh_store(server.url, **timeouts) as store:
        record = make_record(b"kept")
        store.create(record)

        # A hung server (SIGSTOP): connections open, no replies. Only reads
        # here: a write that times out may still be applied once the server
        # resumes, which is what a timeout means.
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                store.load(record.key)
            assert isinstance(info.value.__cause__, redis.TimeoutError)
            with pytest.raises(StoreUnavailable):
                store.exists(record.key)
            # Two operations, each one retry of 0.3 s plus a short backoff.
            assert time.monotonic() - started < 3
            # The public 503 text names no host.
            assert "127.0.0.1" not in str(info.value)
        finally:
            server.resume()
        assert store.load(record.key) == record

        # A dead server: connection refused.
        server.stop()
        started = time.monotonic()
        for operation in (
            lambda: store.load(record.key),
            lambda: store.create(make_record()),
            lambda: store.save(Record(record.key, b"x", record.expires_at, 2), 1),
            lambda: store.touch(record.key, utcnow() + timedelta(hours=1)),
            lambda: store.delete(record.key),
        ):
            with pytest.raises(StoreUnavailable) as info:
                operation()
            assert isinstance(info.value.__cause__, redis.ConnectionError)
        assert time.monotonic() - started < 5

        # Back (empty: the test server keeps no data on disk): works again.
        server.start()
        fresh = make_record()
        store.create(fresh)
        assert store.load(fresh.key) == fresh


def test_a_sentinel_failover_keeps_the_session(
    redis_failover_topology: SentinelTopology,
) -> None:
    topology = redis_failover_topology
    with fresh_store(topology.url, socket_timeout=1, socket_connect_timeout=1) as store:
        record = make_record(b"before the failover")
        store.create(record)
        # The replica has the record before the master dies.
        assert store.client.execute_command("WAIT", 1, 1000) >= 1

        topology.master.kill()
        started = time.monotonic()
        wait_until(
            lambda: topology.master_port() == topology.replica.port,
            20,
            "the Sentinel to promote the replica",
            interval=0.1,
        )
        promoted_after = time.monotonic() - started

        # redis-py asks the Sentinel for the new master on reconnect; allow
        # a moment of StoreUnavailable while connections move over.
        loaded: list[Record | None] = []

        def reload() -> bool:
            try:
                loaded.append(store.load(record.key))
            except StoreUnavailable:
                return False
            return True

        wait_until(reload, 5, "the store to reach the new master", interval=0.1)
        assert loaded[-1] == record
        assert pool(store).get_master_address()[1] == (topology.replica.port)
        saved = Record(record.key, b"after", record.expires_at, 2)
        store.save(saved, 1)
        assert store.load(record.key) == saved
        assert promoted_after < 20


def test_purge_and_dry_run_fail_when_redis_is_unreachable() -> None:
    """Nothing to purge, but cron must still learn Redis is down."""
    from flask import Flask

    from flask_towersess import SessionExt

    store = RedisStore.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable):
            store.ping()
        app = Flask(__name__)
        app.config.update(SECRET_KEY="s", SESSION_STORE=store)
        SessionExt(app)
        for args in (["purge-expired"], ["purge-expired", "--dry-run"]):
            result = app.test_cli_runner().invoke(args=["sessions", *args])
            assert result.exit_code != 0
            assert "cannot reach the session store" in result.output
    finally:
        store.close()
