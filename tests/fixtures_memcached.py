"""pytest plugin: memcached session stores, and the memcached servers behind them.

- ``memcached_store``: a fresh :class:`MemcachedStore` with a key prefix of
  its own, on a memcached started for the test session;
- ``memcached_server`` (session): that server;
- ``memcached_factory``: starts disposable memcached processes a test may
  kill or pause.

Every server listens on a free loopback port, started from the installed
``memcached`` binary (Debian's package; ``scripts/services.sh`` installs
it), and is stopped afterwards. Without the binary or pymemcache the tests
skip, unless ``$TOWERSESS_REQUIRE_SERVICES`` is set (CI): then they fail.

.. versionadded:: 0.2
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import typing as t
import warnings
from pathlib import Path
from urllib.parse import unquote

import pytest

from .fixtures_redis import ServiceError
from .fixtures_redis import free_port
from .fixtures_redis import freeze
from .fixtures_redis import require_binary
from .fixtures_redis import skip_or_fail
from .fixtures_redis import unique_prefix
from .fixtures_redis import wait_until

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from collections.abc import Iterator

    from flask_towersess.stores.memcached import MemcachedStore

#: Options of every store these fixtures build: short timeouts so a broken
#: server fails a test in seconds instead of hanging it.
STORE_OPTIONS: dict[str, t.Any] = {"connect_timeout": 2.0, "timeout": 2.0}


def require_pymemcache() -> None:
    try:
        import pymemcache  # noqa: F401
    except ImportError:
        skip_or_fail(
            "pymemcache is not installed (pip install 'flask-towersess[memcached]')"
        )


def answers(port: int, timeout: float = 0.5) -> bool:
    """Whether a memcached on ``port`` answers ``version``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"version\r\n")
            return sock.recv(64).startswith(b"VERSION ")
    except OSError:
        return False


def stored_keys(store: MemcachedStore) -> list[str]:
    """The keys under ``store``'s prefix, listed behind the store's back
    (``lru_crawler metadump all``, memcached 1.4.31 and later)."""
    names: list[str] = []
    for client in (
        store.client.clients.values()
        if hasattr(store.client, "clients")
        else [store.client]
    ):
        host, port = client.server
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"lru_crawler metadump all\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ServiceError("memcached closed the metadump")
                data += chunk
        for line in data.decode().splitlines():
            if line.startswith("key="):
                name = unquote(line.split()[0][4:])
                if name.startswith(store.key_prefix):
                    names.append(name[len(store.key_prefix) :])
    return names


class MemcachedProcess:
    """One ``memcached`` process: loopback only, TCP only, 64 MB."""

    #: Items up to 8 MB on the session's server, so tests can plant payloads
    #: larger than the 1 MB default (a test of its own checks that limit).
    shared_options = ("-I", "8m")

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"memcached://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> MemcachedProcess:
        binary = require_binary("memcached")
        argv = [binary, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0"]
        argv += ["-m", "64", "-c", "256", *self.extra]
        if os.geteuid() == 0:
            argv += ["-u", "root"]  # memcached refuses to run as root otherwise
        with (self.workdir / "stderr.log").open("ab") as log:
            proc = self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        try:
            wait_until(
                lambda: proc.poll() is not None or answers(self.port),
                timeout,
                f"memcached on port {self.port}",
            )
            if proc.poll() is not None:
                log_text = (self.workdir / "stderr.log").read_text(errors="replace")
                raise ServiceError(f"memcached exited at start-up:\n{log_text}")
        except BaseException:
            self.stop()
            raise
        return self

    def pause(self) -> None:
        """SIGSTOP: the server hangs, its sockets stay open. Returns once
        every thread has stopped: until then memcached's worker threads
        still answer (see :func:`~.fixtures_redis.freeze`)."""
        assert self.proc is not None
        self.paused = True
        freeze(self.proc)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.stop()

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            if self.paused:
                proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        else:
            proc.wait()
        self.paused = False


@pytest.fixture
def memcached_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., MemcachedProcess]]:
    """Start memcached processes of the test's own; all stopped afterwards."""
    require_pymemcache()
    started: list[MemcachedProcess] = []

    def start(*extra: str) -> MemcachedProcess:
        server = MemcachedProcess(tmp_path_factory.mktemp("memcached"), *extra)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
    _reclaim_dropped_connections()


def _reclaim_dropped_connections() -> None:
    """Collect, here, the connections pymemcache's pools dropped.

    When a server a test killed or restarted fails a call, pymemcache's
    pool drops that connection (``destroy_on_fail``) without always closing
    its socket; the garbage collector closes it later, with a
    ResourceWarning that pytest then pins on whichever test runs at that
    moment. Collected at the end of the test that killed the server, it is
    reported nowhere: the sockets are to servers that are gone.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="session")
def memcached_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[MemcachedProcess]:
    require_pymemcache()
    server = MemcachedProcess(
        tmp_path_factory.mktemp("memcached"), *MemcachedProcess.shared_options
    )
    try:
        server.start()
    except ServiceError as exc:
        skip_or_fail(str(exc))
    yield server
    server.stop()


@pytest.fixture
def memcached_store(memcached_server: MemcachedProcess) -> Iterator[MemcachedStore]:
    """A fresh, empty store: a key prefix no other test uses."""
    from flask_towersess.stores.memcached import MemcachedStore

    store = MemcachedStore.from_url(
        memcached_server.url, key_prefix=unique_prefix(), **STORE_OPTIONS
    )
    yield store
    store.close()
    _reclaim_dropped_connections()
