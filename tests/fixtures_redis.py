"""pytest plugin: Redis session stores, and the Redis servers behind them.

Store fixtures (each gives a fresh, empty :class:`RedisStore` with a key
prefix of its own, and deletes that prefix's keys afterwards):

- ``redis_store``: the server at ``$TOWERSESS_REDIS_URL``
  (default ``redis://127.0.0.1:6379/0``);
- ``redis_cluster_store``: a 3-master Redis Cluster started for the session;
- ``redis_sentinel_store``: a master, a replica and a Sentinel started for
  the session.

Topology fixtures, for tests that need the servers themselves:

- ``redis_url`` (session): the checked ``$TOWERSESS_REDIS_URL``;
- ``redis_cluster_topology`` (session), ``redis_sentinel_topology`` (session);
- ``redis_failover_topology``: a Sentinel topology of the test's own, which
  it may break (kill the master);
- ``redis_server_factory``: starts disposable ``redis-server`` processes.

Everything listens on free loopback ports and lives in pytest's tmp dirs;
every process is stopped afterwards. When ``redis-server``/``redis-cli``,
redis-py or the base Redis is missing the tests skip, unless
``$TOWERSESS_REQUIRE_SERVICES`` is set (CI), in which case they fail.

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import typing as t
import uuid
from pathlib import Path

import pytest

from flask_towersess.stores.redis import RedisStore

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from collections.abc import Iterator

REDIS_URL_ENV = "TOWERSESS_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REQUIRE_SERVICES_ENV = "TOWERSESS_REQUIRE_SERVICES"

#: The Sentinel service name of the topologies started here.
SENTINEL_SERVICE = "towersess"

#: Options of every store these fixtures build: short timeouts so a broken
#: topology fails a test in seconds instead of hanging it.
STORE_OPTIONS: dict[str, t.Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}


class ServiceError(RuntimeError):
    """A server these fixtures start did not come up."""


def skip_or_fail(reason: str) -> t.NoReturn:
    """Skip the test for a missing service, or fail it where one is required.

    CI sets ``$TOWERSESS_REQUIRE_SERVICES`` so that a missing server is a
    red build rather than a quietly skipped backend.
    """
    if os.environ.get(REQUIRE_SERVICES_ENV):
        pytest.fail(
            f"{reason} (required: ${REQUIRE_SERVICES_ENV} is set)", pytrace=False
        )
    pytest.skip(reason)


def require_redis_py() -> None:
    try:
        import redis  # noqa: F401
    except ImportError:
        skip_or_fail("redis-py is not installed (pip install 'flask-towersess[redis]')")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not on PATH")
    return path


def unique_prefix() -> str:
    """A key prefix no other test (or test run) uses."""
    return f"towersess-test:{uuid.uuid4().hex[:12]}:"


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``condition`` until it holds; :class:`ServiceError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise ServiceError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def freeze(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGSTOP ``proc``; return once every thread of it has stopped.

    ``kill()`` only queues a SIGSTOP: one thread of the process takes it,
    then stops the others, each the next time it runs. Until then another
    thread still serves: memcached's worker threads, woken by a request on
    a connection they own, answered it in about half the tries made right
    after ``kill()`` returned. A test of a hung server must not start
    before the server hangs.
    """
    proc.send_signal(signal.SIGSTOP)
    wait_until(
        lambda: proc.poll() is not None or _stopped(proc.pid),
        timeout,
        f"process {proc.pid} to stop",
        interval=0.001,
    )
    if proc.poll() is not None:
        raise ServiceError(f"process {proc.pid} exited instead of stopping")


def _stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():  # no procfs (macOS): ps shows the process's state
        state = subprocess.run(
            ["ps", "-o", "state=", "-p", str(pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return state.startswith("T")
    states = []
    for stat in tasks.glob("*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # a thread that has just exited
            continue
        # pid (comm) state ...: comm may hold spaces and parentheses.
        states.append(text.rpartition(")")[2].split()[0])
    return bool(states) and all(state in ("T", "t") for state in states)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, cluster_bus: bool = False) -> int:
    """A free loopback port (and, for a Cluster node, its bus port + 10000).

    Picked at random below the usual ephemeral range so the kernel is
    unlikely to hand the same port to an outgoing connection meanwhile.
    """
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(20000, 30000)
        if _port_is_free(port) and (not cluster_bus or _port_is_free(port + 10000)):
            return port
    raise ServiceError("no free loopback port found")


def ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis (or Sentinel) on ``port`` answers PING.

    A raw socket rather than a client: nothing to close, and a server still
    loading its data (``-LOADING``) counts as not ready. A server that wants
    a password (``-NOAUTH``) is up.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisProcess:
    """One ``redis-server`` (or Sentinel) process started by these fixtures."""

    def __init__(self, name: str, port: int, workdir: Path, argv: list[str]) -> None:
        self.name = name
        self.port = port
        self.workdir = workdir
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: t.IO[bytes] | None = None
        self.paused = False
        workdir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def server(
        cls, name: str, workdir: Path, *extra: str, port: int | None = None
    ) -> RedisProcess:
        """A plain server: loopback only, no persistence, logs in ``workdir``."""
        port = port or free_port()
        argv = [
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(workdir),
            "--logfile", "redis.log",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            *extra,
        ]  # fmt: skip
        return cls(name, port, workdir, argv)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        binary = require_binary("redis-server")
        self._stderr = (self.workdir / "stderr.log").open("ab")
        proc = self.proc = subprocess.Popen(
            [binary, *self.argv],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )
        try:
            wait_until(
                lambda: proc.poll() is not None or ping(self.port),
                timeout,
                f"{self.name} on port {self.port}",
            )
            if proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited at start-up:\n{self.log_tail()}"
                )
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 20) -> str:
        text = []
        for name in ("stderr.log", "redis.log", "sentinel.log"):
            path = self.workdir / name
            if path.exists():
                text += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text)

    def pause(self) -> None:
        """SIGSTOP: the server hangs, its sockets stay open (a stuck server).
        Returns once it has stopped (see :func:`freeze`)."""
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
        """Terminate (bounded), then kill; reap the process, close the log."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                if self.paused:
                    # A stopped process would not act on SIGTERM.
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
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def _info(port: int, section: str) -> dict[str, t.Any]:
    import redis

    with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as client:
        return dict(client.info(section))


@dataclasses.dataclass
class ClusterTopology:
    """Three Redis Cluster masters (no replicas) on loopback."""

    nodes: list[RedisProcess]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(workdir: Path) -> ClusterTopology:
    require_redis_py()
    cli = require_binary("redis-cli")
    require_binary("redis-server")
    topology = ClusterTopology([])
    try:
        for index in range(3):
            port = free_port(cluster_bus=True)
            topology.nodes.append(
                RedisProcess.server(
                    f"cluster node {index}",
                    workdir / f"node{index}",
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "2000",
                    port=port,
                ).start()
            )  # fmt: skip
        created = subprocess.run(
            [
                cli, "--cluster", "create",
                *(f"127.0.0.1:{node.port}" for node in topology.nodes),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )  # fmt: skip
        if created.returncode != 0:
            raise ServiceError(
                "redis-cli --cluster create failed:\n"
                + created.stdout.decode(errors="replace")
                + created.stderr.decode(errors="replace")
            )
        wait_until(
            lambda: all(
                _info(node.port, "cluster").get("cluster_enabled") == 1
                and _cluster_state_ok(node.port)
                for node in topology.nodes
            ),
            15,
            "the cluster to report cluster_state:ok on every node",
            interval=0.1,
        )
    except BaseException:
        topology.stop()
        raise
    return topology


def _cluster_state_ok(port: int) -> bool:
    import redis

    with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as client:
        info = client.execute_command("CLUSTER INFO")
    if isinstance(info, dict):
        return str(info.get("cluster_state")) == "ok"
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


@dataclasses.dataclass
class SentinelTopology:
    """A master, its replica, and one Sentinel watching them (quorum 1)."""

    master: RedisProcess
    replica: RedisProcess
    sentinel: RedisProcess
    service: str = SENTINEL_SERVICE

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.service}/0"

    def master_port(self) -> int | None:
        """The master's port as the Sentinel sees it now."""
        import redis

        with redis.Redis(
            port=self.sentinel.port, socket_timeout=1, socket_connect_timeout=1
        ) as client:
            address = client.sentinel_get_master_addr_by_name(self.service)
        return int(address[1]) if address else None

    def stop(self) -> None:
        for process in (self.sentinel, self.replica, self.master):
            process.stop()


def start_sentinel(workdir: Path) -> SentinelTopology:
    require_redis_py()
    require_binary("redis-server")
    started: list[RedisProcess] = []
    try:
        # Diskless sync without its default 5 s delay: the replica is in
        # sync within a fraction of a second.
        master = RedisProcess.server(
            "sentinel master", workdir / "master",
            "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
        ).start()  # fmt: skip
        started.append(master)
        replica = RedisProcess.server(
            "sentinel replica", workdir / "replica",
            "--replicaof", "127.0.0.1", str(master.port),
            "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
        ).start()  # fmt: skip
        started.append(replica)
        wait_until(
            lambda: (
                _info(replica.port, "replication").get("master_link_status") == "up"
            ),
            10,
            "the replica to sync with its master",
        )
        sentinel_port = free_port()
        sentinel_dir = workdir / "sentinel"
        sentinel_dir.mkdir(parents=True, exist_ok=True)
        config = sentinel_dir / "sentinel.conf"
        # The Sentinel rewrites its config file, so it lives in the tmp dir.
        # Short timeouts: the master counts as down after 1 s of silence,
        # and a failover that stalls is retried after 4 s.
        config.write_text(
            f"port {sentinel_port}\n"
            "bind 127.0.0.1\n"
            "daemonize no\n"
            f"dir {sentinel_dir}\n"
            "logfile sentinel.log\n"
            f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n"
            f"sentinel failover-timeout {SENTINEL_SERVICE} 4000\n"
            f"sentinel parallel-syncs {SENTINEL_SERVICE} 1\n"
        )
        sentinel = RedisProcess(
            "sentinel", sentinel_port, sentinel_dir, [str(config), "--sentinel"]
        ).start()
        started.append(sentinel)
        topology = SentinelTopology(master, replica, sentinel)
        # A failover needs the Sentinel to know a healthy replica.
        wait_until(
            lambda: _sentinel_knows_replica(topology),
            10,
            "the Sentinel to discover the replica",
            interval=0.1,
        )
    except BaseException:
        for process in reversed(started):
            process.stop()
        raise
    return topology


def _sentinel_knows_replica(topology: SentinelTopology) -> bool:
    import redis

    with redis.Redis(
        port=topology.sentinel.port, socket_timeout=1, socket_connect_timeout=1
    ) as client:
        replicas = client.sentinel_slaves(topology.service)
    return any(
        int(r.get("port", 0)) == topology.replica.port
        and not r.get("is_sdown")
        and not r.get("is_odown")
        for r in replicas
    )


class _Stoppable(t.Protocol):
    def stop(self) -> None: ...


_Topology = t.TypeVar("_Topology", bound=_Stoppable)


@contextlib.contextmanager
def running(start: Callable[[], _Topology], what: str) -> Iterator[_Topology]:
    """What ``start()`` starts, stopped after; the test is skipped (or fails,
    when services are required) if it does not start."""
    try:
        topology = start()
    except ServiceError as exc:
        skip_or_fail(f"could not start {what}: {exc}")
    try:
        yield topology
    finally:
        topology.stop()


@contextlib.contextmanager
def fresh_store(url: str, **options: t.Any) -> Iterator[RedisStore]:
    """A store on ``url`` with a prefix of its own, emptied and closed after."""
    store = RedisStore.from_url(
        url, key_prefix=unique_prefix(), **{**STORE_OPTIONS, **options}
    )
    try:
        yield store
    finally:
        try:
            client = store.client
            # The prefix is "towersess-test:<hex>:", free of glob characters.
            for key in list(client.scan_iter(match=store.key_prefix + "*", count=1000)):
                client.delete(key)
        finally:
            store.close()


# -- fixtures --------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    """``$TOWERSESS_REDIS_URL``, checked to answer."""
    require_redis_py()
    import redis

    url = os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)
    with redis.Redis.from_url(
        url, socket_timeout=2, socket_connect_timeout=2
    ) as client:
        try:
            client.ping()
        except redis.RedisError as exc:
            skip_or_fail(f"no Redis at {url} (${REDIS_URL_ENV}): {exc}")
    return url


@pytest.fixture(scope="session")
def redis_cluster_topology(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ClusterTopology]:
    with running(
        lambda: start_cluster(tmp_path_factory.mktemp("redis-cluster")),
        "a Redis Cluster",
    ) as topology:
        yield topology


@pytest.fixture(scope="session")
def redis_sentinel_topology(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SentinelTopology]:
    with running(
        lambda: start_sentinel(tmp_path_factory.mktemp("redis-sentinel")),
        "a Redis Sentinel topology",
    ) as topology:
        yield topology


@pytest.fixture
def redis_failover_topology(tmp_path: Path) -> Iterator[SentinelTopology]:
    """A Sentinel topology of this test's own: it may kill the master."""
    with running(
        lambda: start_sentinel(tmp_path / "sentinel"), "a Redis Sentinel topology"
    ) as topology:
        yield topology


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisProcess]]:
    """Start disposable servers: ``start(*extra_args) -> RedisProcess``.

    Each listens on a free loopback port and on ``<workdir>/redis.sock``.
    """
    require_redis_py()
    require_binary("redis-server")
    processes: list[RedisProcess] = []

    def start(*extra: str) -> RedisProcess:
        workdir = tmp_path / f"server{len(processes)}"
        workdir.mkdir()
        process = RedisProcess.server(
            f"redis-server {len(processes)}",
            workdir,
            "--unixsocket", str(workdir / "redis.sock"),
            "--unixsocketperm", "700",
            *extra,
        )  # fmt: skip
        processes.append(process)
        try:
            return process.start()
        except ServiceError as exc:
            skip_or_fail(f"could not start redis-server: {exc}")

    try:
        yield start
    finally:
        for process in processes:
            process.stop()


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisStore]:
    """A fresh, empty store on ``$TOWERSESS_REDIS_URL``."""
    with fresh_store(redis_url) as store:
        yield store


@pytest.fixture
def redis_cluster_store(
    redis_cluster_topology: ClusterTopology,
) -> Iterator[RedisStore]:
    """A fresh, empty store on the session's 3-master Redis Cluster."""
    with fresh_store(redis_cluster_topology.url) as store:
        yield store


@pytest.fixture
def redis_sentinel_store(
    redis_sentinel_topology: SentinelTopology,
) -> Iterator[RedisStore]:
    """A fresh, empty store on the session's Sentinel-managed master."""
    with fresh_store(redis_sentinel_topology.url) as store:
        yield store
