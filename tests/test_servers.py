"""Under real servers (gunicorn, uWSGI), no user ever gets another user's session.

The unit tests run the app in one process; production runs it in several,
forked from one master. Two things only show there:

- A store built *and used* in the master before the fork (``gunicorn
  --preload``, uWSGI's default pre-fork mode, an app that touches its store
  at import) leaves pooled connections that every forked worker inherits.
  Two workers then talk over one socket: on PostgreSQL and MariaDB a client
  reads another client's session, or gets a 500 ("no results to fetch").
- The zero-configuration store (SQLite in the instance folder, migrated on
  first use) is migrated by several workers at once when the first requests
  arrive together: ``table sessions already exists``, ``database is locked``.

So each test here starts a real server on a free loopback port, serving
``tests/serverapp.py``, and drives it from client threads in this process.
Every client has its own session cookie and sends its requests one after
another; each request reads the session's owner and counter and writes the
counter back. A client counts:

- *crossed*: the session it got belongs to another client (or it got a
  session it never had a cookie for);
- *lost*: its counter is not the number of its earlier successful requests
  (a write went missing, or its session vanished);
- non-2xx answers and connection errors.

All of them must be zero. The matrix is store x server; each configuration
sends 8 x 150 = 1,200 requests, a few seconds' worth. Services that are not
running skip the test, or fail it in CI (``TOWERSESS_REQUIRE_SERVICES``);
gunicorn and uWSGI (the pyuwsgi wheel) are test dependencies.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import http.client
import http.cookies
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import typing as t
import uuid
from pathlib import Path

import pytest

from .fixtures_sql import MYSQL_URL
from .fixtures_sql import POSTGRESQL_URL
from .fixtures_sql import _server_engine
from .services import service_unavailable

if t.TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent
COOKIE_NAME = "session"  # Flask's default SESSION_COOKIE_NAME

CLIENTS = 8
REQUESTS_PER_CLIENT = 150
#: Zero-config start: rounds per worker count, and requests per client in
#: each (the first one is the race; the others check that it settled).
START_ROUNDS = 5
START_REQUESTS = 3

#: Seconds: a server must answer /health within START_TIMEOUT, stop within
#: STOP_TIMEOUT (then it is killed); one request may take HTTP_TIMEOUT; the
#: clients of one run stop sending after LOAD_TIMEOUT. Bounds, not
#: expectations: a healthy run is far below each.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
HTTP_TIMEOUT = 10.0
LOAD_TIMEOUT = 90.0
#: Crossed sessions, lost writes, errors and non-2xx answers (together) after
#: which the clients of a run stop sending: the run has failed by then.
MAX_PROBLEMS = 100
LOG_TAIL_LINES = 40


# -- the server ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gunicorn_has_control_socket() -> bool:
    # Recent gunicorn (27 here; older ones lack the option) opens a control
    # socket, by default at one path per user (~/.gunicorn/gunicorn.ctl):
    # two servers at once would fight over it.
    from gunicorn.config import KNOWN_SETTINGS

    return any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS)


def gunicorn_argv(port: int, *options: str) -> list[str]:
    # The venv's gunicorn, through this interpreter.
    argv = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"127.0.0.1:{port}",
        "--chdir", str(ROOT),
        "--graceful-timeout", "3",
        "--timeout", "60",
        "--log-level", "warning",
        *options,
    ]  # fmt: skip
    if _gunicorn_has_control_socket():
        argv.append("--no-control-socket")
    return [*argv, "tests.serverapp:create_app()"]


def uwsgi_binary() -> str:
    # uWSGI embeds the Python it was built against: only the venv's own
    # build loads this venv's packages.
    path = shutil.which("uwsgi", path=str(Path(sys.executable).parent))
    if path is None:
        service_unavailable(
            "uwsgi is not installed in this environment: it comes with the"
            " test extra (pip install -e '.[test]', the pyuwsgi wheel)"
        )
    assert path is not None
    return path


def uwsgi_argv(port: int, *options: str) -> list[str]:
    return [
        uwsgi_binary(),
        "--http-socket", f"127.0.0.1:{port}",
        "--home", sys.prefix,
        "--chdir", str(ROOT),
        "--module", "tests.serverapp:application",
        "--need-app",
        "--enable-threads",
        # uWSGI 2.0 reloads on SIGTERM unless told otherwise.
        "--die-on-term",
        "--disable-logging",
        *options,
    ]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ServerKind:
    """How to start one kind of server; ``open_in_parent``: the app builds
    and uses its store before the workers are forked."""

    argv: t.Callable[[int], list[str]]
    open_in_parent: bool
    workers: int = 2


SERVERS = {
    "gunicorn-sync": ServerKind(
        lambda port: gunicorn_argv(port, "-k", "sync", "-w", "2"), False
    ),
    "gunicorn-sync-preload": ServerKind(
        lambda port: gunicorn_argv(port, "-k", "sync", "-w", "2", "--preload"), True
    ),
    "gunicorn-gthread-preload": ServerKind(
        lambda port: gunicorn_argv(
            port, "-k", "gthread", "-w", "2", "--threads", "4", "--preload"
        ),
        True,
    ),
    # The default pre-fork mode: the app is loaded in the master (no
    # --lazy-apps), then the workers are forked.
    "uwsgi-prefork": ServerKind(
        lambda port: uwsgi_argv(port, "--master", "--processes", "2"), True
    ),
}


class Server:
    """A server process group on a loopback port, with its stderr in a file;
    started once every one of its ``workers`` has answered /health."""

    def __init__(
        self,
        argv: t.Callable[[int], list[str]],
        workers: int,
        env: dict[str, str],
        log: Path,
    ) -> None:
        self.log = log
        self._stopped = False
        for attempt in range(3):
            self.port = free_port()
            command = argv(self.port)
            self._log_file = log.open("ab")
            # A session (and process group) of its own: stop() reaches the
            # workers too, whatever the master does with the signal.
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                self._wait_ready(workers)
                return
            except _PortTaken:
                # Someone took the free port between our probe and the bind.
                self.stop()
                if attempt == 2:
                    raise
                self._stopped = False
            except BaseException:
                self.stop()
                raise

    def _wait_ready(self, workers: int) -> None:
        # Every worker, not just the first one up: a worker still booting
        # when the clients start would leave the first requests (the race
        # the zero-config test is about) all to the other one.
        deadline = time.monotonic() + START_TIMEOUT
        seen: set[int] = set()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "in use" in self.log_text():
                    raise _PortTaken()
                pytest.fail(
                    f"the server exited at start-up ({self.process.returncode}):\n"
                    f"{self.log_tail()}",
                    pytrace=False,
                )
            seen |= self._health_pids(2 * workers)
            if len(seen) >= workers:
                return
            time.sleep(0.1)
        pytest.fail(
            f"{len(seen)} of {workers} workers answered /health within"
            f" {START_TIMEOUT:.0f} s:\n{self.log_tail()}",
            pytrace=False,
        )

    def _health_pids(self, count: int) -> set[int]:
        """The workers that answered ``count`` concurrent /health requests.

        Each is held a moment by the app, so that a worker busy with one
        leaves the next to another worker.
        """
        pids: list[int] = []

        def ask() -> None:
            try:
                status, _, body = request(self.port, "GET", "/health?hold=0.2")
                if status == 200:
                    pids.append(int(body))
            except (OSError, http.client.HTTPException, ValueError):
                pass  # not up yet

        threads = [threading.Thread(target=ask) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(HTTP_TIMEOUT + 1)
        return set(pids)

    def stop(self) -> None:
        """SIGTERM to the group, bounded wait, then SIGKILL to the group:
        no worker outlives the test. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # Not an assertion (shutdown is not what this module tests),
                # but worth seeing in the captured output of a test.
                print(
                    f"the server did not stop within {STOP_TIMEOUT:.0f} s of"
                    " SIGTERM: killed",
                    file=sys.stderr,
                )
        # Workers the master left behind (or a master that would not stop).
        _signal_group(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT)
        self._log_file.close()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- server log ({self.log}), last {lines} lines ---\n{tail}"


class _PortTaken(Exception):
    pass


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[t.Callable[..., Server]]:
    """``start_server(argv, workers, **app_env) -> Server``, every worker
    answering /health; every server started is stopped at the end of the
    test."""
    servers: list[Server] = []

    def start(
        argv: t.Callable[[int], list[str]], workers: int, **app_env: str
    ) -> Server:
        env = dict(os.environ)
        # This checkout first, so the servers import its tests.serverapp and
        # flask_towersess (not whatever else is installed).
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), env.get("PYTHONPATH")) if p
        )
        env.update(app_env)
        server = Server(argv, workers, env, tmp_path / f"server{len(servers)}.log")
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


# -- the clients ---------------------------------------------------------------


def request(
    port: int, method: str, path: str, cookie: str | None = None
) -> tuple[int, list[str], bytes]:
    """One request on a fresh connection: (status, Set-Cookie headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        headers = {"Content-Length": "0"}
        if cookie is not None:
            headers["Cookie"] = f"{COOKIE_NAME}={cookie}"
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return response.status, response.headers.get_all("Set-Cookie") or [], body
    finally:
        conn.close()


def session_cookie(set_cookies: list[str]) -> str | None:
    """The session cookie's value from Set-Cookie headers ("" if deleted)."""
    for header in set_cookies:
        jar = http.cookies.SimpleCookie()
        jar.load(header)
        if COOKIE_NAME in jar:
            morsel = jar[COOKIE_NAME]
            if morsel["max-age"] == "0" or "1970" in morsel["expires"]:
                return ""
            return morsel.value
    return None


@dataclasses.dataclass
class Tally:
    """What the clients of one run saw."""

    expected: int = 0
    answered: int = 0
    statuses: collections.Counter[int] = dataclasses.field(
        default_factory=collections.Counter
    )
    crossed: int = 0
    lost: int = 0
    errors: int = 0
    not_sent: int = 0
    pids: set[int] = dataclasses.field(default_factory=set)
    examples: list[str] = dataclasses.field(default_factory=list)
    max_examples: int = 3
    stopped_early: bool = False

    def note(self, text: str) -> None:
        if len(self.examples) < self.max_examples:
            self.examples.append(text)

    def add(self, other: Tally) -> None:
        self.expected += other.expected
        self.answered += other.answered
        self.statuses.update(other.statuses)
        self.crossed += other.crossed
        self.lost += other.lost
        self.errors += other.errors
        self.not_sent += other.not_sent
        self.pids |= other.pids
        self.stopped_early |= other.stopped_early
        for example in other.examples:
            self.note(example)

    @property
    def non_2xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)

    @property
    def ok(self) -> bool:
        return (
            self.answered == self.expected
            and self.crossed == self.lost == self.errors == self.non_2xx == 0
        )

    def summary(self) -> str:
        lines = [
            f"requests expected {self.expected}, answered {self.answered},"
            f" not sent {self.not_sent}; statuses {dict(sorted(self.statuses.items()))};"
            f" crossed sessions {self.crossed}; lost writes {self.lost};"
            f" connection errors {self.errors}; worker pids {sorted(self.pids)}",
        ]
        if self.stopped_early:
            lines.append(f"  (the clients stopped after {MAX_PROBLEMS} problems)")
        lines += [f"  e.g. {example}" for example in self.examples]
        return "\n".join(lines)


def _gist(body: bytes) -> str:
    """An error page in a few words (its title); the server log has the rest."""
    text = body.decode("utf-8", "replace")
    start, end = text.find("<title>"), text.find("</title>")
    if 0 <= start < end:
        return text[start + len("<title>") : end]
    return " ".join(text.split())[:200]


class Problems:
    """Problems counted across the clients of one run: past ``MAX_PROBLEMS``
    the run has failed anyway, so the clients stop instead of spending
    minutes on requests to a server whose workers hang."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self.enough = threading.Event()

    def add(self) -> None:
        with self._lock:
            self._count += 1
            if self._count >= MAX_PROBLEMS:
                self.enough.set()


def run_client(
    port: int,
    client: str,
    requests: int,
    barrier: threading.Barrier,
    deadline: float,
    problems: Problems,
) -> Tally:
    """One user: its own cookie, ``requests`` requests one after another."""
    tally = Tally(expected=requests)
    cookie: str | None = None
    # The counter the next answer must show: the client's earlier successes.
    # Unknown after a failed request (the write may or may not have landed).
    expected_n: int | None = 0
    # Start together: the first requests of all clients race.
    barrier.wait()
    for index in range(requests):
        if problems.enough.is_set() or time.monotonic() > deadline:
            tally.not_sent = requests - index
            tally.stopped_early = problems.enough.is_set()
            break
        try:
            status, set_cookies, body = request(
                port, "POST", f"/rw?client={client}", cookie
            )
        except (OSError, http.client.HTTPException) as exc:
            tally.errors += 1
            problems.add()
            tally.note(f"{client} request {index}: {type(exc).__name__}: {exc}")
            expected_n = None
            continue
        tally.answered += 1
        tally.statuses[status] += 1
        if not 200 <= status < 300:
            problems.add()
            tally.note(f"{client} request {index}: {status} {_gist(body)}")
            expected_n = None
            continue
        try:
            data = json.loads(body)
            owner, n, pid = data["owner"], data["n"], data["pid"]
        except (ValueError, KeyError, TypeError) as exc:
            tally.errors += 1
            problems.add()
            tally.note(f"{client} request {index}: bad body {body[:200]!r}: {exc}")
            expected_n = None
            continue
        tally.pids.add(pid)
        if owner is not None and owner != client:
            tally.crossed += 1
            problems.add()
            tally.note(f"{client} request {index}: got {owner}'s session (pid {pid})")
        elif owner is None and cookie:
            tally.lost += 1
            problems.add()
            tally.note(f"{client} request {index}: its session was gone (pid {pid})")
        elif expected_n is not None and n != expected_n:
            tally.lost += 1
            problems.add()
            tally.note(
                f"{client} request {index}: counter {n}, expected {expected_n}"
                f" (pid {pid})"
            )
        new_cookie = session_cookie(set_cookies)
        if new_cookie is not None:
            cookie = new_cookie or None
        expected_n = n + 1
    return tally


def run_clients(port: int, clients: int, requests: int) -> Tally:
    """``clients`` users at once, in threads; their tallies added up."""
    barrier = threading.Barrier(clients, timeout=LOAD_TIMEOUT)
    deadline = time.monotonic() + LOAD_TIMEOUT
    # A unique ID per client and run: an owner from another run would show.
    run_id = uuid.uuid4().hex[:6]
    problems = Problems()
    total = Tally(max_examples=24)
    executor = concurrent.futures.ThreadPoolExecutor(clients)
    try:
        futures = [
            executor.submit(
                run_client,
                port,
                f"c{i}-{run_id}",
                requests,
                barrier,
                deadline,
                problems,
            )
            for i in range(clients)
        ]
        # Bounded: each client stops sending at the deadline, and each of
        # its requests is bounded by HTTP_TIMEOUT.
        for future in futures:
            total.add(future.result(timeout=LOAD_TIMEOUT + 2 * HTTP_TIMEOUT))
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
    return total


# -- the stores ----------------------------------------------------------------


@dataclasses.dataclass
class Backend:
    """The app's environment for one store, and how to clean up after it."""

    env: dict[str, str]
    cleanups: list[t.Callable[[], None]] = dataclasses.field(default_factory=list)


def _sql_backend(url: str, backend: Backend) -> None:
    """A table of the test's own, created (the deploy step) and dropped after."""
    from flask_towersess.stores.sqlalchemy import SQLAlchemyStore

    table = f"towersess_srv_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    store = SQLAlchemyStore.from_url(url, table=table)
    store.migrate()

    def drop() -> None:
        try:
            store.table.drop(store.engine, checkfirst=True)
        finally:
            store.close()

    backend.cleanups.append(drop)
    backend.env.update(TOWERSESS_SERVER_STORE=url, TOWERSESS_SERVER_TABLE=table)


def _redis_prefix(url: str, backend: Backend) -> str:
    """A key prefix of the test's own, its keys deleted after."""
    prefix = f"towersess-srv:{uuid.uuid4().hex[:12]}:"

    def delete_keys() -> None:
        import redis

        with redis.Redis.from_url(url, socket_timeout=2) as client:
            # The prefix is free of glob characters.
            for key in list(client.scan_iter(match=prefix + "*", count=1000)):
                client.delete(key)

    backend.cleanups.append(delete_keys)
    backend.env["TOWERSESS_SERVER_KEY_PREFIX"] = prefix
    return prefix


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    name = request.param
    result = Backend({})
    try:
        if name == "sqlite":
            _sql_backend(f"sqlite:///{tmp_path}/sessions.sqlite3", result)
        elif name in ("postgresql", "mariadb"):
            url = POSTGRESQL_URL if name == "postgresql" else MYSQL_URL
            _server_engine(url).dispose()  # skips (fails in CI) when it is down
            _sql_backend(url, result)
        elif name == "redis":
            url = request.getfixturevalue("redis_url")
            _redis_prefix(url, result)
            result.env["TOWERSESS_SERVER_STORE"] = url
        elif name == "caching":
            # Redis in front of PostgreSQL: the production pairing, and one
            # with pooled connections on both sides.
            redis_url = request.getfixturevalue("redis_url")
            _server_engine(POSTGRESQL_URL).dispose()
            _sql_backend(POSTGRESQL_URL, result)
            _redis_prefix(redis_url, result)
            result.env["TOWERSESS_SERVER_CACHE"] = redis_url
        else:
            raise AssertionError(f"unknown store {name!r}")
        yield result
    finally:
        for cleanup in reversed(result.cleanups):
            cleanup()


STORES = ["sqlite", "postgresql", "mariadb", "redis", "caching"]


# -- the tests -----------------------------------------------------------------


def check(tally: Tally, server: Server) -> None:
    assert tally.ok, f"{tally.summary()}\n{server.log_tail()}"


@pytest.mark.parametrize("backend", STORES, indirect=True)
@pytest.mark.parametrize("server_name", sorted(SERVERS))
def test_no_user_gets_another_users_session(
    server_name: str, backend: Backend, start_server: t.Callable[..., Server]
) -> None:
    kind = SERVERS[server_name]
    env = dict(backend.env)
    if kind.open_in_parent:
        env["TOWERSESS_SERVER_OPEN_IN_PARENT"] = "1"
    server = start_server(kind.argv, kind.workers, **env)
    tally = run_clients(server.port, CLIENTS, REQUESTS_PER_CLIENT)
    check(tally, server)
    # Both workers served: the fork was really exercised.
    assert len(tally.pids) >= 2, f"{tally.summary()}\n{server.log_tail()}"


@pytest.mark.parametrize("workers", [2, 4])
def test_zero_config_survives_a_first_burst(
    workers: int, tmp_path: Path, start_server: t.Callable[..., Server]
) -> None:
    """A fresh instance folder, and 8 users whose first requests arrive at
    once: the workers all migrate the SQLite file on first use."""
    failures = []
    for round_number in range(START_ROUNDS):
        instance = tmp_path / f"instance{round_number}"  # does not exist yet
        server = start_server(
            lambda port: gunicorn_argv(port, "-k", "sync", "-w", str(workers)),
            workers,
            TOWERSESS_SERVER_STORE="default",
            TOWERSESS_SERVER_INSTANCE=str(instance),
        )
        # /health answered without touching the store, so nothing is
        # migrated yet: the burst below is the first use.
        assert not (instance / "flask_towersess.sqlite3").exists(), server.log_tail()
        tally = run_clients(server.port, CLIENTS, START_REQUESTS)
        server.stop()
        if not tally.ok:
            failures.append(
                f"round {round_number + 1}: {tally.summary()}\n{server.log_tail()}"
            )
    assert not failures, (
        f"{len(failures)} of {START_ROUNDS} rounds failed:\n" + "\n".join(failures)
    )
