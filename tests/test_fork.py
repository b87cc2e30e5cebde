"""A store used before a fork: the child opens connections of its own.

Pre-forking servers (gunicorn ``--preload``, uWSGI without ``lazy-apps``)
import the app once and fork the workers from it. A store that connected in
the parent (``migrate()`` at import, a start-up check) must not hand its
pooled sockets to the workers: two processes on one socket read each other's
replies, which is one user reading another user's session.

Each case runs ``tests/forkcheck.py`` in a subprocess (a fork, or a crash
from a shared socket, must not take pytest down), once forking with
``os.fork`` (Python's at-fork hooks run) and once with the C library's
``fork()`` (none run, as when a server written in C forks), and checks:

- the child's connection is not the parent's;
- the child writes and reads back its own session;
- the parent's connection is still open and serving after the child exits
  (the child dropped it without closing it).

tests/test_servers.py runs the same situation end to end under gunicorn and
uWSGI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t
import uuid
from pathlib import Path

import pytest

from .fixtures_sql import MYSQL_URL
from .fixtures_sql import POSTGRESQL_URL
from .fixtures_sql import _server_engine
from .test_startup import drop_table

if t.TYPE_CHECKING:
    from tests.fixtures_redis import ClusterTopology

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sessions.sqlite3'}"


@pytest.fixture
def postgresql_url() -> str:
    _server_engine(POSTGRESQL_URL).dispose()  # fails (CI) or skips when down
    return POSTGRESQL_URL


@pytest.fixture
def mariadb_url() -> str:
    _server_engine(MYSQL_URL).dispose()
    return MYSQL_URL


@pytest.fixture
def redis_cluster_url(redis_cluster_topology: ClusterTopology) -> str:
    return redis_cluster_topology.url


@pytest.fixture
def caching_url(redis_url: str, postgresql_url: str) -> str:
    return f"{redis_url}|{postgresql_url}"


STORES = ["sqlite", "postgresql", "mariadb", "redis", "redis_cluster", "caching"]


def run_forkcheck(url: str, mode: str) -> dict[str, t.Any]:
    prefix = f"towersess_fork_{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.forkcheck", url, prefix, mode],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=ROOT,
        )
    finally:
        if "|" not in url and not url.startswith("redis"):
            drop_table(url, prefix)
    assert done.returncode == 0, done.stderr[-3000:]
    return t.cast("dict[str, t.Any]", json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("mode", ["os", "libc"])
@pytest.mark.parametrize("name", STORES)
def test_child_opens_its_own_connections(
    name: str, mode: str, request: pytest.FixtureRequest
) -> None:
    url = t.cast(str, request.getfixturevalue(f"{name}_url"))
    report = run_forkcheck(url, mode)
    assert "child_error" not in report, report
    assert report["child_ok"] is True
    assert report["parent_ok"] is True
    # The child never talks on the parent's connection ...
    assert report["child"] != report["parent_before"]
    if isinstance(report["child"], list):  # a caching store: each side
        for child, parent in zip(report["child"], report["parent_before"]):
            assert child != parent
    # ... and never closed it: the parent carries on with the same one.
    assert report["parent_after"] == report["parent_before"]


#: A MemoryStore whose lock another thread holds at the moment of the fork.
MEMORY_FORK = """
import logging, os, sys, threading, time
from datetime import timedelta
from flask_towersess.stores import MemoryStore, Record
from flask_towersess.stores.base import utcnow

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
store = MemoryStore()
held, release = threading.Event(), threading.Event()

def hold():
    with store._lock:
        held.set()
        release.wait()

threading.Thread(target=hold, daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:
    record = Record("k" * 43, b"child", utcnow() + timedelta(minutes=1))
    store.create(record)
    os._exit(0 if store.load("k" * 43).payload == b"child" else 3)
release.set()
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_memory_store_usable_in_a_child_forked_while_its_lock_was_held() -> None:
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_FORK],
        capture_output=True,
        text=True,
        timeout=30,  # a child stuck on the inherited lock never exits
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    # Each worker process has its own sessions: the operator is told so.
    assert "MemoryStore is in use in forked worker process" in done.stderr


#: A MemoryStore as the cache of a SQLite store, used in a forked child.
MEMORY_CACHE_FORK = """
import logging, os, sys
from datetime import timedelta
from flask_towersess.stores import CachingStore, MemoryStore, Record, SQLAlchemyStore
from flask_towersess.stores.base import utcnow

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
durable = SQLAlchemyStore.from_url("sqlite:///" + sys.argv[1])
durable.migrate()
store = CachingStore(MemoryStore(), durable)
record = Record("k" * 43, b"parent", utcnow() + timedelta(minutes=1))
store.create(record)
store.load(record.key)
pid = os.fork()
if pid == 0:
    ok = all(store.load(record.key).payload == b"parent" for _ in range(3))
    store.delete(record.key)
    os._exit(0 if ok and store.load(record.key) is None else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_memory_cache_in_a_forked_worker_warns_once(tmp_path: Path) -> None:
    """Other workers never hear of a memory cache's invalidations: the
    first use in each child says so, once, and the parent says nothing."""
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_CACHE_FORK, str(tmp_path / "s.sqlite3")],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    warning = "MemoryStore is in use in forked worker process"
    assert done.stderr.count(warning) == 1, done.stderr
    assert "as SESSION_CACHE" in done.stderr
