"""Run by tests/test_fork.py in a subprocess: use a store, fork, use it again.

``python -m tests.forkcheck URL PREFIX MODE`` builds a store from ``URL``
(``CACHE_URL|STORE_URL`` for a caching store; ``PREFIX`` is its table name
or key prefix, so that runs do not meet),
makes it open a connection in this process, then forks: with ``os.fork``
(MODE ``os``, which runs Python's at-fork hooks) or by calling the C
library's ``fork()`` directly (MODE ``libc``, which runs none, like a server
written in C). Child and parent each write and read their own session and
say which connection served them. Prints one JSON object:

- ``parent_before``/``parent_after``: the parent's connection before the fork
  and after the child has exited (the child must not have closed it);
- ``child``: the child's connection (it must not be the parent's);
- ``child_ok``/``parent_ok``: each read back exactly what it wrote.

A connection is named by the server's own id for it (PostgreSQL's backend
pid, MariaDB's connection id, Redis's client id) or, for SQLite, by the
identity of the driver's connection object: a child that kept using the
inherited object shows the parent's id.

Runs in its own process because a fork inside pytest, or a crash from a
shared socket, must not take pytest down.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import typing as t
from datetime import timedelta

from flask_towersess.stores import Record
from flask_towersess.stores import store_from_url
from flask_towersess.stores.base import utcnow

_SEEN: list[object] = []


def connection_id(store: t.Any) -> object:
    """The connection the store's next operation would use, by a stable name."""
    # A store call first, as a request would make: whatever the store does
    # on its first use in a process happens before the connection is named.
    store.exists("n" * 43)
    if hasattr(store, "cache"):  # a CachingStore: both of its sides
        return [connection_id(store.cache), connection_id(store.store)]
    if hasattr(store, "engine"):
        engine = store.engine
        with engine.connect() as conn:
            dialect = engine.dialect.name
            if dialect == "postgresql":
                return conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            if dialect in ("mysql", "mariadb"):
                return conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
            dbapi_connection = conn.connection.dbapi_connection
            # Kept alive, so that no later object can reuse its id.
            _SEEN.append(dbapi_connection)
            return id(dbapi_connection)
    return store.client.client_id()


def build_store(url: str, prefix: str) -> t.Any:
    """The store named by ``url``; ``CACHE|STORE`` for a caching store."""
    if "|" in url:
        from flask_towersess.stores.caching import CachingStore

        cache_url, store_url = url.split("|")
        return CachingStore(
            build_store(cache_url, prefix), build_store(store_url, prefix)
        )
    option = "key_prefix" if url.startswith("redis") else "table"
    return store_from_url(url, **{option: prefix})


def roundtrip(store: t.Any, key: str) -> bool:
    payload = os.urandom(32)
    record = Record(key, payload, utcnow() + timedelta(minutes=5))
    store.create(record)
    loaded = store.load(key)
    return loaded is not None and loaded.payload == payload


def fork(mode: str) -> int:
    if mode == "os":
        return os.fork()
    # The C library's fork(): no os.register_at_fork hook runs.
    libc = ctypes.CDLL(None, use_errno=True)
    pid = int(libc.fork())
    if pid < 0:
        raise OSError(ctypes.get_errno(), "fork failed")
    return pid


def main() -> None:
    url, prefix, mode = sys.argv[1:4]
    store = build_store(url, prefix)
    migrating = store.as_migrating()  # Redis and memory have nothing to create
    if migrating is not None:
        migrating.migrate()
    parent_before = connection_id(store)
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    pid = fork(mode)
    if pid == 0:  # the child
        os.close(read_end)
        try:
            report = {
                "child": connection_id(store),
                "child_ok": roundtrip(store, "c" * 43),
            }
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            report = {"child_error": repr(exc)}
        os.write(write_end, json.dumps(report).encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.waitpid(pid, 0)
    report = json.loads(b"".join(chunks) or b"{}")
    report["parent_before"] = parent_before
    report["parent_after"] = connection_id(store)
    report["parent_ok"] = roundtrip(store, "p" * 43)
    for key in ("c" * 43, "p" * 43):
        store.delete(key)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
