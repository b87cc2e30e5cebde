"""MemcachedStore: what is particular to memcached (the contract itself runs
in tests/test_store_contract.py): long lifetimes as absolute times, the
compare-and-set against touches, outages, several servers, URLs, item and
key limits, a missing driver.

Every server is a ``memcached`` process the fixtures start on a loopback
port (tests/fixtures_memcached.py).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest
from flask import Flask
from flask import session

from flask_towersess import SessionExt
from flask_towersess.errors import ConfigurationError
from flask_towersess.errors import CreateError
from flask_towersess.errors import SerializationError
from flask_towersess.errors import StoreUnavailable
from flask_towersess.errors import UpdateError
from flask_towersess.errors import VersionConflict
from flask_towersess.session import new_session_key
from flask_towersess.stores import store_for
from flask_towersess.stores import store_from_url
from flask_towersess.stores.base import LegacyKeys
from flask_towersess.stores.base import Migrating
from flask_towersess.stores.base import PerUserIndex
from flask_towersess.stores.base import Purging
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import utcnow

from .fixtures_memcached import STORE_OPTIONS
from .fixtures_memcached import MemcachedProcess
from .fixtures_redis import unique_prefix

if t.TYPE_CHECKING:
    from collections.abc import Callable

try:
    import pymemcache  # noqa: F401
    from pymemcache.client.base import Client
    from pymemcache.client.base import PooledClient
    from pymemcache.client.hash import HashClient

    from flask_towersess.stores.memcached import MAX_RELATIVE_EXPIRY
    from flask_towersess.stores.memcached import MemcachedStore
    from flask_towersess.stores.memcached import _expire
    from flask_towersess.stores.memcached import parse_url
except ImportError:  # pragma: no cover - the test extra installs pymemcache
    if os.environ.get("TOWERSESS_REQUIRE_SERVICES"):
        raise
    pytest.skip("pymemcache is not installed", allow_module_level=True)


def record(payload: bytes = b"data", **delta: float) -> Record:
    return Record(
        new_session_key(), payload, utcnow() + timedelta(**(delta or {"minutes": 5}))
    )


def item_ttl(port: int, name: str) -> int:
    """The seconds memcached will keep ``name``, asked with the meta command
    ``mg <key> t`` (``-1``: no expiry)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(f"mg {name} t\r\n".encode())
        reply = sock.recv(128).decode()
    assert reply.startswith("HD "), reply
    return int(reply.split()[1][1:])


# -- expiry ------------------------------------------------------------------


def test_expire_is_relative_up_to_30_days_then_absolute() -> None:
    now = 1_800_000_000 * 1_000_000
    assert _expire(now - 1, now) == -1
    assert _expire(now, now) == -1
    # Rounded up, plus one second for memcached's clock tick.
    assert _expire(now + 1, now) == 2
    assert _expire(now + 60 * 1_000_000, now) == 61
    days_30 = MAX_RELATIVE_EXPIRY * 1_000_000
    assert _expire(now + days_30 - 2_000_000, now) == MAX_RELATIVE_EXPIRY - 1
    # Beyond 30 days memcached reads the number as a Unix time.
    days_40 = now + 40 * 86400 * 1_000_000
    assert _expire(days_40, now) == days_40 // 1_000_000 + 1
    # memcached counts in 32 bits: after January 2038, no item expiry (the
    # header still ends the record).
    assert _expire(2**31 * 1_000_000 - 2_000_000, now) == 2**31 - 1
    assert _expire(2**31 * 1_000_000, now) == 0


def test_a_40_day_record_is_kept_for_40_days(
    memcached_store: MemcachedStore, memcached_server: MemcachedProcess
) -> None:
    rec = record(b"remember me", days=40)
    memcached_store.create(rec)
    loaded = memcached_store.load(rec.key)
    assert loaded is not None and loaded.payload == b"remember me"
    # Read by memcached as an absolute time, not as 40 days of seconds
    # (which it would read as a moment in 1970: gone at once).
    ttl = item_ttl(memcached_server.port, memcached_store.key_prefix + rec.key)
    # memcached counts absolute times from a start moment it sets a minute
    # or so before its real start: allow that much either way.
    assert 40 * 86400 - 90 < ttl <= 40 * 86400 + 90
    memcached_store.touch(rec.key, utcnow() + timedelta(days=60))
    ttl = item_ttl(memcached_server.port, memcached_store.key_prefix + rec.key)
    assert 60 * 86400 - 90 < ttl <= 60 * 86400 + 90
    memcached_store.touch(rec.key, utcnow() + timedelta(hours=1))
    ttl = item_ttl(memcached_server.port, memcached_store.key_prefix + rec.key)
    assert 3600 - 60 < ttl <= 3602


def test_memcached_drops_the_item_once_expired(
    memcached_store: MemcachedStore,
) -> None:
    rec = record(seconds=1)
    memcached_store.create(rec)
    name = memcached_store.key_prefix + rec.key
    assert memcached_store.client.get(name) is not None
    time.sleep(3.2)
    assert memcached_store.load(rec.key) is None
    assert memcached_store.client.get(name) is None


def test_no_purging_no_migrating(memcached_store: MemcachedStore) -> None:
    assert memcached_store.expires_natively
    assert memcached_store.as_purging() is None
    assert memcached_store.as_migrating() is None
    assert not isinstance(memcached_store, (Purging, Migrating))


def test_no_per_user_index(memcached_store: MemcachedStore) -> None:
    # memcached can neither list nor index its items.
    assert memcached_store.as_per_user() is None
    assert memcached_store.as_counting_per_user() is None
    assert not isinstance(memcached_store, (PerUserIndex, LegacyKeys))


# -- compare-and-set ---------------------------------------------------------


def test_touch_never_undoes_a_save(memcached_store: MemcachedStore) -> None:
    """Touches (same version, new token) race with saves: every save that
    reports success is kept, and the versions count them exactly."""
    rec = record(b"0")
    memcached_store.create(rec)
    stop = threading.Event()
    errors: list[BaseException] = []
    saved = [0]
    lock = threading.Lock()

    def toucher() -> None:
        try:
            while not stop.is_set():
                memcached_store.touch(rec.key, utcnow() + timedelta(minutes=10))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def saver() -> None:
        try:
            for _ in range(30):
                while True:
                    current = memcached_store.load(rec.key)
                    assert current is not None
                    payload = b"%d" % (int(current.payload) + 1)
                    new = Record(
                        rec.key, payload, current.expires_at, current.version + 1
                    )
                    try:
                        memcached_store.save(new, current.version)
                    except VersionConflict:
                        continue
                    with lock:
                        saved[0] += 1
                    break
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    touchers = [threading.Thread(target=toucher) for _ in range(2)]
    savers = [threading.Thread(target=saver) for _ in range(4)]
    for thread in touchers + savers:
        thread.start()
    for thread in savers:
        thread.join(60)
    stop.set()
    for thread in touchers:
        thread.join(60)
    assert not errors, errors
    final = memcached_store.load(rec.key)
    assert final is not None
    assert saved[0] == 120
    assert (final.version, final.payload) == (121, b"120")


def test_save_after_a_delete_is_an_update_error(
    memcached_store: MemcachedStore,
) -> None:
    rec = record()
    memcached_store.create(rec)
    memcached_store.delete(rec.key)
    with pytest.raises(UpdateError):
        memcached_store.save(Record(rec.key, b"x", rec.expires_at, 2), 1)
    assert memcached_store.client.get(memcached_store.key_prefix + rec.key) is None


# -- foreign values, limits ----------------------------------------------------


def test_a_foreign_value_is_refused_and_logged(
    memcached_store: MemcachedStore, caplog: pytest.LogCaptureFixture
) -> None:
    key = new_session_key()
    name = memcached_store.key_prefix + key
    memcached_store.client.set(name, b"(dp0\nS'pickle'", noreply=False)
    with caplog.at_level(logging.WARNING, "flask_towersess.security"):
        assert memcached_store.load(key) is None
    assert "not a flask-towersess session record" in caplog.text
    assert key not in caplog.text
    with pytest.raises(UpdateError):
        memcached_store.save(Record(key, b"x", utcnow() + timedelta(hours=1), 2), 1)
    memcached_store.touch(key, utcnow() + timedelta(hours=1))
    with pytest.raises(CreateError):  # a collision: another key is drawn
        memcached_store.create(Record(key, b"x", utcnow() + timedelta(hours=1)))
    assert memcached_store.client.get(name) == b"(dp0\nS'pickle'"


def test_a_session_beyond_2038(memcached_store: MemcachedStore) -> None:
    far = datetime(2100, 1, 1, tzinfo=timezone.utc)
    rec = Record(new_session_key(), b"far", far)
    memcached_store.create(rec)
    loaded = memcached_store.load(rec.key)
    assert loaded is not None and loaded.expires_at == far


def test_a_session_too_large_for_an_item_fails_clearly(
    memcached_factory: Callable[..., MemcachedProcess],
) -> None:
    server = memcached_factory()  # memcached's default item size: 1 MB
    memcached_store = MemcachedStore.from_url(server.url, **STORE_OPTIONS)
    big = record(b"x" * (2 * 1024 * 1024))
    with pytest.raises(SerializationError, match="1 MB"):
        memcached_store.create(big)
    small = record(b"small")
    memcached_store.create(small)
    with pytest.raises(SerializationError):
        memcached_store.save(Record(small.key, big.payload, small.expires_at, 2), 1)
    # Nothing written, and the connections still work.
    loaded = memcached_store.load(small.key)
    assert loaded is not None and loaded.payload == b"small"
    assert memcached_store.load(big.key) is None
    memcached_store.close()


def test_key_prefix_is_checked() -> None:
    client = PooledClient(("127.0.0.1", 1))
    MemcachedStore(client, key_prefix="p" * 122)
    with pytest.raises(ConfigurationError, match="at most 122"):
        MemcachedStore(client, key_prefix="p" * 123)
    with pytest.raises(ConfigurationError, match="printable ASCII"):
        MemcachedStore(client, key_prefix="a b:")
    with pytest.raises(ConfigurationError, match="at most 112"):
        MemcachedStore(
            PooledClient(("127.0.0.1", 1), key_prefix=b"0123456789"),
            key_prefix="p" * 113,
        )


def test_the_longest_key_fits(memcached_store: MemcachedStore) -> None:
    store = MemcachedStore(memcached_store.client, key_prefix="p" * 122)
    key = "k" * 128
    store.create(Record(key, b"long", utcnow() + timedelta(minutes=1)))
    loaded = store.load(key)
    assert loaded is not None and loaded.payload == b"long"
    store.delete(key)


# -- clients and URLs ----------------------------------------------------------


def test_url_parsing() -> None:
    assert parse_url("memcached://cache") == ([("cache", 11211)], {})
    assert parse_url("memcached://h1:11211,h2:11212") == (
        [("h1", 11211), ("h2", 11212)],
        {},
    )
    assert parse_url(
        "memcached://[::1]:11300,h2/?timeout=0.5&connect_timeout=1&max_pool_size=8"
    ) == (
        [("::1", 11300), ("h2", 11211)],
        {"timeout": 0.5, "connect_timeout": 1.0, "max_pool_size": 8},
    )
    for bad, message in [
        ("memcached://", "No server"),
        ("memcached://h:port", "must be a number"),
        ("memcached://h:70000", "Bad port"),
        ("memcached://user:secret@h", "no user names"),
        ("memcached://h/0", "no path"),
        ("memcached://h?timeout=-1", "positive"),
        ("memcached://h?noreply=1", "Unknown option"),
        ("redis://h", "memcached:// URL"),
    ]:
        with pytest.raises(ConfigurationError, match=message) as info:
            parse_url(bad)
        assert "secret" not in str(info.value)


def test_from_url_builds_a_pool_or_a_hashed_client() -> None:
    one = MemcachedStore.from_url("memcached://127.0.0.1:11300")
    assert isinstance(one.client, PooledClient)
    assert one.client.server == ("127.0.0.1", 11300)
    assert one.describe() == (
        "MemcachedStore(memcached://127.0.0.1:11300, key_prefix='session:')"
    )
    one.close()
    several = store_from_url("memcached://127.0.0.1:11300,127.0.0.1:11301")
    assert isinstance(several, MemcachedStore)
    assert isinstance(several.client, HashClient)
    assert sorted(several.client.clients) == ["127.0.0.1:11300", "127.0.0.1:11301"]
    assert all(isinstance(c, PooledClient) for c in several.client.clients.values())
    several.close()


def test_timeouts_of_a_store_and_of_a_cache() -> None:
    store = MemcachedStore.from_url("memcached://127.0.0.1:11300")
    assert (store.client.connect_timeout, store.client.timeout) == (5.0, 5.0)
    cache = store_from_url("memcached://127.0.0.1:11300", as_cache=True)
    assert isinstance(cache, MemcachedStore)
    assert (cache.client.connect_timeout, cache.client.timeout) == (0.25, 0.25)
    given = MemcachedStore.from_url("memcached://127.0.0.1:11300?timeout=1", timeout=9)
    assert given.client.timeout == 1.0  # the URL wins, as with redis-py


def test_clients_accepted(memcached_server: MemcachedProcess) -> None:
    server = ("127.0.0.1", memcached_server.port)
    assert not MemcachedStore.accepts(object())
    for client in (
        Client(server),
        PooledClient(server),
        HashClient([server], use_pooling=True),
    ):
        assert MemcachedStore.accepts(client)
        store = store_for(client, key_prefix=unique_prefix())
        assert isinstance(store, MemcachedStore)
        rec = record(b"via %s" % type(client).__name__.encode())
        store.create(rec)
        loaded = store.load(rec.key)
        assert loaded is not None and loaded.payload == rec.payload
        store.close()  # not ours: left open
        assert store.load(rec.key) is not None
        client.close()
    with pytest.raises(ConfigurationError, match="ignore_exc=False"):
        MemcachedStore(PooledClient(server, ignore_exc=True))
    with pytest.raises(ConfigurationError, match="from_url"):
        MemcachedStore("memcached://127.0.0.1")


def test_a_plain_client_is_shared_safely_by_threads(
    memcached_server: MemcachedProcess,
) -> None:
    client = Client(("127.0.0.1", memcached_server.port), timeout=2)
    store = MemcachedStore(client, key_prefix=unique_prefix())
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                rec = record(os.urandom(64))
                store.create(rec)
                loaded = store.load(rec.key)
                assert loaded is not None and loaded.payload == rec.payload
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    client.close()


def test_an_app_on_a_memcached_url(memcached_server: MemcachedProcess) -> None:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="test",
        TESTING=True,
        SESSION_STORE=memcached_server.url,
        SESSION_STORE_OPTIONS={"key_prefix": unique_prefix()},
    )
    ext = SessionExt(app)

    @app.post("/set")
    def set_value() -> str:
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    with app.test_client() as client:
        assert client.post("/set").text == "1"
        assert client.post("/set").text == "2"
    store = ext.get_store(app)
    assert isinstance(store, MemcachedStore)
    store.close()


# -- several servers, outages --------------------------------------------------


def test_several_servers_share_the_keys(
    memcached_factory: Callable[..., MemcachedProcess],
) -> None:
    servers = [memcached_factory() for _ in range(2)]
    url = "memcached://" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
    store = MemcachedStore.from_url(url, key_prefix=unique_prefix(), **STORE_OPTIONS)
    records = [record(b"%d" % n) for n in range(40)]
    for rec in records:
        store.create(rec)
    per_server = [
        sum(
            item_ttl_or_none(s.port, store.key_prefix + rec.key) is not None
            for rec in records
        )
        for s in servers
    ]
    assert sum(per_server) == 40 and min(per_server) > 0
    # One server dies: its sessions are unavailable, never silently moved
    # to the other one; the other's still work.
    servers[0].kill()
    down = up = 0
    for rec in records:
        try:
            loaded = store.load(rec.key)
        except StoreUnavailable:
            down += 1
            with pytest.raises(StoreUnavailable):
                store.save(Record(rec.key, b"x", rec.expires_at, 2), 1)
        else:
            assert loaded is not None and loaded.payload == rec.payload
            up += 1
    assert (down, up) == tuple(per_server)
    # Again, after HashClient would have declared the server dead.
    time.sleep(1.1)
    with pytest.raises(StoreUnavailable):
        for rec in records:
            store.load(rec.key)
    store.close()


def test_delete_many_is_one_round_trip_per_server(
    memcached_factory: Callable[..., MemcachedProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    servers = [memcached_factory() for _ in range(2)]
    url = "memcached://" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
    store = MemcachedStore.from_url(url, key_prefix=unique_prefix(), **STORE_OPTIONS)
    records = [record(b"%d" % n) for n in range(40)]
    for rec in records:
        store.create(rec)
    calls: list[int] = []
    for node in store._nodes.values():
        client = node.client
        real = client.delete_many

        def counted(
            names: t.Any, *args: t.Any, _real: t.Any = real, **kw: t.Any
        ) -> t.Any:
            calls.append(len(names))
            return _real(names, *args, **kw)

        monkeypatch.setattr(client, "delete", None)  # never one by one
        monkeypatch.setattr(client, "delete_many", counted)
    store.delete_many([rec.key for rec in records[:30]] + [new_session_key()])
    assert len(calls) == 2 and sum(calls) == 31
    assert [store.load(rec.key) for rec in records[:30]] == [None] * 30
    assert all(store.load(rec.key) is not None for rec in records[30:])
    store.delete_many([])
    with pytest.raises(ValueError):
        store.delete_many([records[30].key, "no good"])
    assert store.load(records[30].key) is not None  # checked before sending
    store.close()


def item_ttl_or_none(port: int, name: str) -> int | None:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(f"mg {name} t\r\n".encode())
        reply = sock.recv(128).decode()
    return None if reply.startswith("EN") else int(reply.split()[1][1:])


def test_a_killed_server_is_unavailable_at_once_and_recovers(
    memcached_factory: Callable[..., MemcachedProcess],
) -> None:
    server = memcached_factory()
    store = MemcachedStore.from_url(server.url, key_prefix=unique_prefix())
    rec = record()
    store.create(rec)
    server.kill()
    for call in (
        lambda: store.load(rec.key),
        lambda: store.create(record()),
        lambda: store.save(Record(rec.key, b"x", rec.expires_at, 2), 1),
        lambda: store.touch(rec.key, rec.expires_at),
        lambda: store.delete(rec.key),
        lambda: store.exists(rec.key),
        store.ping,
    ):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            call()
        assert time.monotonic() - started < 1.0
        assert info.value.__cause__ is not None
    # A new server on the same port: the store works again (memcached kept
    # nothing, so the session is gone: a documented limit).
    restarted = MemcachedProcess(server.workdir)
    restarted.port = server.port
    try:
        restarted.start()
        assert store.load(rec.key) is None
        fresh = record()
        store.create(fresh)
        assert store.load(fresh.key) is not None
    finally:
        restarted.stop()
        store.close()


def test_a_restart_costs_no_request_an_error(
    memcached_factory: Callable[..., MemcachedProcess],
) -> None:
    """The pooled connections to a server that restarted fail on their next
    use: a read tries again on a new connection instead of answering 503."""
    server = memcached_factory()
    store = MemcachedStore.from_url(server.url, key_prefix=unique_prefix())
    rec = record()
    store.create(rec)
    server.kill()
    restarted = MemcachedProcess(server.workdir)
    restarted.port = server.port
    try:
        restarted.start()
        assert store.load(rec.key) is None  # memcached kept nothing
        store.create(rec)
        assert store.load(rec.key) is not None
    finally:
        restarted.stop()
        store.close()


def test_a_paused_server_answers_nothing(
    memcached_factory: Callable[..., MemcachedProcess],
) -> None:
    # What the tests of a hung server rest on: pause() returns once the
    # server has stopped, not once the SIGSTOP is sent. Until every thread
    # has stopped, the worker thread that owns a connection still answers
    # on it (the connection a pooled client reuses).
    server = memcached_factory()
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        sock.sendall(b"version\r\n")
        assert sock.recv(64).startswith(b"VERSION ")
        server.pause()
        sock.settimeout(0.2)
        sock.sendall(b"version\r\n")
        with pytest.raises(socket.timeout):
            sock.recv(64)
        server.resume()
        sock.settimeout(2)
        assert sock.recv(64).startswith(b"VERSION ")  # answered once thawed


def test_a_hung_cache_fails_fast(
    memcached_factory: Callable[..., MemcachedProcess],
) -> None:
    server = memcached_factory()
    cache = MemcachedStore.cache_from_url(server.url, key_prefix=unique_prefix())
    rec = record()
    cache.create(rec)  # the pooled connection the load below reuses
    server.pause()  # returns once memcached has stopped
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        cache.load(rec.key)
    assert time.monotonic() - started < 1.0
    cache.close()


# -- the driver ----------------------------------------------------------------


def test_missing_driver_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['pymemcache'] = None\n"  # makes `import pymemcache` fail
        "from flask_towersess.errors import ConfigurationError\n"
        "from flask_towersess.stores import store_from_url\n"
        "from flask_towersess.stores.memcached import MemcachedStore\n"
        "assert not MemcachedStore.accepts(object())\n"
        "try:\n"
        "    store_from_url('memcached://127.0.0.1')\n"
        "except ConfigurationError as exc:\n"
        "    assert 'flask-towersess[memcached]' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('no ConfigurationError')\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
