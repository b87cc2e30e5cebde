"""Concurrency: worker processes on one session, and two browsers of one user.

Several worker processes hammer one session on a real, shared store.

Each worker process builds its own Flask app and its own store from a URL
(as a WSGI server's workers do), with the same ``SECRET_KEY``, and sends
requests with the same session cookie. Every request increments the
worker's own key ``p<i>`` and sets the shared key ``same`` to a whole dict
unique to the worker and the request. The view waits a little between
reading the session and returning, so that saves really do overlap.

- With enough save retries, every change to a worker's own key survives:
  ``p<i>`` ends at exactly the number of requests.
- With no retries at all, a save that meets a concurrent one fails with
  ``SessionInterrupted`` (400) instead of losing data: ``p<i>`` ends at
  exactly the number of 200 responses worker ``i`` got.
- Either way the shared key holds one of the values a successful request
  wrote, whole: never a mix of two writers.

The workers are a pool of spawned processes, started once for the module
(spawning costs more than a run), and each run starts them at the same
moment.

Two browsers (or tabs) of one user share the session: when one logs out
while a request of the other is writing, the write ends with
``SessionInterrupted`` (400) and the session stays gone. These run on every
store, deterministically: the writing view loads the session, the other
browser logs out from inside it, then the view writes and returns.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import time
import typing as t
import uuid

import pytest

from .fixtures_sql import MYSQL_URL
from .fixtures_sql import POSTGRESQL_URL
from .fixtures_sql import _server_engine
from .helpers import CountingStore

if t.TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from flask_towersess.stores.base import SessionStore


WORKERS = 3
REQUESTS = 12
#: The contention target: this many processes at once, each writing its own
#: key of one session this many times, every request answered 200.
CONTENTION_WORKERS = (8, 16)
CONTENTION_REQUESTS = 25
SECRET_KEY = "multiprocess secret"
#: Seconds a request waits between reading the session and saving it.
VIEW_DELAY = 0.004
#: Bound on every wait for the workers.
RUN_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True)
class Task:
    """What one worker process does in one run (pickled to the worker)."""

    index: int
    store_url: str
    store_options: dict[str, t.Any]
    cookie: str
    retries: int | None
    requests: int
    start_at: float  # time.time() at which every worker starts
    cache_url: str | None = None
    cache_options: dict[str, t.Any] = dataclasses.field(default_factory=dict)


def make_app(
    url: str,
    options: dict[str, t.Any],
    retries: int | None,
    cache_url: str | None = None,
    cache_options: dict[str, t.Any] | None = None,
) -> t.Any:
    """The app every worker (and the test itself) runs; ``retries=None``
    keeps the default (retries bounded by SESSION_SAVE_TIMEOUT alone)."""
    from flask import Flask
    from flask import request
    from flask import session

    from flask_towersess import SessionExt

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=SECRET_KEY,
        SESSION_STORE=url,
        SESSION_STORE_OPTIONS=options,
        SESSION_SAVE_RETRIES=retries,
        SESSION_CACHE=cache_url,
        SESSION_CACHE_OPTIONS=cache_options or {},
    )
    SessionExt(app)

    @app.post("/write/<int:index>")
    def write(index: int) -> str:
        count = session.get(f"p{index}", 0)
        time.sleep(VIEW_DELAY)  # widen the window between load and save
        session[f"p{index}"] = count + 1
        session["same"] = request.get_json()
        return "ok"

    @app.post("/start")
    def start() -> str:
        session["started"] = True
        return "ok"

    return app


def shared_value(index: int, iteration: int) -> dict[str, t.Any]:
    """A whole value, unique to one request; its parts tell a mix apart."""
    return {
        "writer": index,
        "iteration": iteration,
        "parts": [f"{index}-{iteration}-{part}" for part in range(1 + iteration % 4)],
        "nested": {"writer": index, "iteration": iteration},
    }


def run_task(task: Task) -> list[int]:
    """Run in a worker process: send the requests, return their statuses."""
    app = make_app(
        task.store_url,
        task.store_options,
        task.retries,
        task.cache_url,
        task.cache_options,
    )
    try:
        client = app.test_client()
        client.set_cookie("session", task.cookie)
        # Start together (bounded: a late task starts at once).
        time.sleep(min(max(0.0, task.start_at - time.time()), 5.0))
        statuses = []
        for iteration in range(task.requests):
            response = client.post(
                f"/write/{task.index}", json=shared_value(task.index, iteration)
            )
            statuses.append(response.status_code)
            response.close()
        return statuses
    finally:
        app.session_interface.store.close()


def warm_up() -> int:
    """Import what the runs need, so the first run does not pay for it."""
    import flask  # noqa: F401
    import psycopg2  # noqa: F401
    import pymysql  # noqa: F401
    import redis  # noqa: F401
    import sqlalchemy  # noqa: F401

    import flask_towersess.stores.redis  # noqa: F401
    import flask_towersess.stores.sqlalchemy  # noqa: F401

    time.sleep(0.2)  # hold this worker, so each warm-up lands on another one
    return os.getpid()


@pytest.fixture(scope="module")
def pool() -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    context = multiprocessing.get_context("spawn")
    size = max(WORKERS, *CONTENTION_WORKERS)
    executor = concurrent.futures.ProcessPoolExecutor(size, mp_context=context)
    try:
        futures = [executor.submit(warm_up) for _ in range(size)]
        for future in futures:
            future.result(timeout=RUN_TIMEOUT)
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


@dataclasses.dataclass
class Backend:
    url: str
    options: dict[str, t.Any]
    cleanup: t.Callable[[], None]
    cache_url: str | None = None
    cache_options: dict[str, t.Any] = dataclasses.field(default_factory=dict)


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A store URL for the workers, with a table or key prefix of its own."""
    name = request.param
    if name in ("redis", "caching"):
        url = redis_url = request.getfixturevalue("redis_url")
        prefix = f"towersess-mp:{uuid.uuid4().hex[:12]}:"

        def cleanup() -> None:
            import redis

            with redis.Redis.from_url(redis_url, socket_timeout=2) as client:
                for key in list(client.scan_iter(match=prefix + "*", count=1000)):
                    client.delete(key)

        if name == "redis":
            yield Backend(url, {"key_prefix": prefix}, cleanup)
            cleanup()
            return
    from flask_towersess.stores.sqlalchemy import SQLAlchemyStore

    if name == "caching":
        # Redis in front of PostgreSQL, the production pairing.
        url = POSTGRESQL_URL
        _server_engine(url).dispose()
    elif name == "sqlite":
        url = f"sqlite:///{tmp_path}/shared.sqlite3"
    else:
        url = POSTGRESQL_URL if name == "postgresql" else MYSQL_URL
        _server_engine(url).dispose()  # skips (or fails, in CI) when it is down
    table = f"towersess_mp_{os.getpid()}"
    store = SQLAlchemyStore.from_url(url, table=table)
    store.migrate()
    try:
        if name == "caching":
            yield Backend(
                url, {"table": table}, cleanup, redis_url, {"key_prefix": prefix}
            )
            cleanup()
        else:
            yield Backend(url, {"table": table}, lambda: None)
    finally:
        store.table.drop(store.engine, checkfirst=True)
        store.close()


def hammer(
    pool: concurrent.futures.ProcessPoolExecutor,
    backend: Backend,
    retries: int | None,
    workers: int = WORKERS,
    requests: int = REQUESTS,
) -> tuple[dict[str, t.Any], list[list[int]]]:
    """Start a session, let the workers hammer it; return it and the statuses."""
    from flask_towersess import ServerSession

    app = make_app(
        backend.url, backend.options, retries, backend.cache_url, backend.cache_options
    )
    store = app.session_interface.store
    try:
        client = app.test_client()
        assert client.post("/start").status_code == 200
        cookie = client.get_cookie("session").value
        start_at = time.time() + 0.3
        tasks = [
            Task(
                i,
                backend.url,
                backend.options,
                cookie,
                retries,
                requests,
                start_at,
                backend.cache_url,
                backend.cache_options,
            )
            for i in range(workers)
        ]
        futures = [pool.submit(run_task, task) for task in tasks]
        statuses = [future.result(timeout=RUN_TIMEOUT) for future in futures]
        data = dict(ServerSession(store, cookie.partition(".")[0]))
    finally:
        store.close()
    return data, statuses


def written_values(statuses: list[list[int]]) -> list[dict[str, t.Any]]:
    """The shared values that requests answered with 200 had written."""
    return [
        shared_value(index, iteration)
        for index, per_worker in enumerate(statuses)
        for iteration, status in enumerate(per_worker)
        if status == 200
    ]


BACKENDS = ["sqlite", "postgresql", "mariadb", "redis"]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_every_change_to_own_keys_survives(
    pool: concurrent.futures.ProcessPoolExecutor, backend: Backend
) -> None:
    data, statuses = hammer(pool, backend, retries=50)
    assert statuses == [[200] * REQUESTS] * WORKERS
    assert {key: data[key] for key in data if key.startswith("p")} == {
        f"p{i}": REQUESTS for i in range(WORKERS)
    }
    assert data["started"] is True
    # The shared key holds one whole value that some request wrote.
    assert data["same"] in written_values(statuses)


@pytest.mark.parametrize(
    ("backend", "workers"),
    [
        (name, workers)
        for name in (*BACKENDS, "caching")
        for workers in CONTENTION_WORKERS
    ],
    indirect=["backend"],
)
def test_contention_ends_in_success_with_the_defaults(
    pool: concurrent.futures.ProcessPoolExecutor, backend: Backend, workers: int
) -> None:
    """Many processes writing different keys of one session at once, with
    the default retry settings: every request 200, every write kept. With
    retries that followed each other at once, 8 processes livelocked into
    400s on every store."""
    data, statuses = hammer(
        pool, backend, retries=None, workers=workers, requests=CONTENTION_REQUESTS
    )
    refused = sum(status != 200 for per_worker in statuses for status in per_worker)
    assert refused == 0, statuses
    assert {key: data[key] for key in data if key.startswith("p")} == {
        f"p{i}": CONTENTION_REQUESTS for i in range(workers)
    }
    assert data["same"] in written_values(statuses)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_retries_run_out_with_400_never_a_silent_loss(
    pool: concurrent.futures.ProcessPoolExecutor, backend: Backend
) -> None:
    data, statuses = hammer(pool, backend, retries=0)
    # A request either saved (200) or said it did not (400).
    assert {status for per_worker in statuses for status in per_worker} <= {200, 400}
    # The overlapping saves did collide: the 400 path was taken.
    assert any(400 in per_worker for per_worker in statuses), statuses
    for index, per_worker in enumerate(statuses):
        # Every 200 is in the store, and nothing else is.
        assert data.get(f"p{index}", 0) == per_worker.count(200), (index, statuses)
    assert data["same"] in written_values(statuses)


# -- two browsers of one user --------------------------------------------------------


def two_browsers(
    store: SessionStore, logout_during_write: t.Callable[[t.Any], None]
) -> tuple[t.Any, t.Any, CountingStore]:
    """An app where ``/write`` lets the other browser log out mid-request."""
    from flask import Flask
    from flask import session

    from flask_towersess import SessionExt

    counting = CountingStore(store)
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET_KEY)
    SessionExt(app, store=counting)

    @app.post("/login")
    def login() -> str:
        session["user"] = "alice"
        return "ok"

    @app.post("/logout")
    def logout() -> str:
        session.flush()  # type: ignore[attr-defined]
        return "ok"

    @app.post("/logout-by-clearing")
    def logout_by_clearing() -> str:
        session.clear()
        return "ok"

    @app.get("/me")
    def me() -> str:
        return str(session.get("user"))

    @app.post("/write")
    def write() -> str:
        assert session["user"] == "alice"  # loaded, logged in
        logout_during_write(session)
        session["note"] = "written after the other browser logged out"
        return "ok"

    @app.post("/rotate")
    def rotate() -> str:
        assert session["user"] == "alice"
        logout_during_write(session)
        session.cycle_key()  # e.g. a periodic ID rotation, or a re-login check
        return "ok"

    first = app.test_client()
    assert first.post("/login").status_code == 200
    second = app.test_client()
    second.set_cookie("session", first.get_cookie("session").value)
    return first, second, counting


LOGOUTS = {
    "flush in the other browser": lambda other, session, store: other.post("/logout"),
    "clear in the other browser": lambda other, session, store: other.post(
        "/logout-by-clearing"
    ),
    "deleted in the store": lambda other, session, store: store.delete(
        session.stored_key
    ),
}


@pytest.mark.parametrize("logout", sorted(LOGOUTS))
def test_logout_in_one_browser_interrupts_a_write_in_the_other(
    store: SessionStore, logout: str
) -> None:
    from flask_towersess.session import stored_key

    browsers: list[t.Any] = []

    def other_browser_logs_out(current: t.Any) -> None:
        response = LOGOUTS[logout](browsers[1], current, store)
        if response is not None:
            assert response.status_code == 200

    first, second, counting = two_browsers(store, other_browser_logs_out)
    browsers[:] = [first, second]
    key = first.get_cookie("session").value.partition(".")[0]
    assert store.load(stored_key(key)) is not None
    counting.reset()
    response = first.post("/write")
    assert response.status_code == 400  # SessionInterrupted
    assert "Set-Cookie" not in response.headers  # no new session handed out
    assert counting.calls["create"] == 0  # nor written under another key
    assert store.load(stored_key(key)) is None  # the old one was not brought back
    assert first.get("/me").data == b"None"
    assert second.get("/me").data == b"None"


def test_logout_in_one_browser_is_not_undone_by_a_key_rotation_in_the_other() -> None:
    from flask_towersess.stores.memory import MemoryStore

    store = MemoryStore()  # the session layer's doing, on every store
    browsers: list[t.Any] = []

    def other_browser_logs_out(current: t.Any) -> None:
        assert browsers[1].post("/logout").status_code == 200

    first, second, counting = two_browsers(store, other_browser_logs_out)
    browsers[:] = [first, second]
    counting.reset()
    response = first.post("/rotate")
    assert response.status_code == 400
    # Nothing left anywhere: the logout removed the old record, and the copy
    # written under the new key was taken back.
    assert len(store) == 0
    assert first.get("/me").data == b"None"
