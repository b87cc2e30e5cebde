"""Saves of one session by many writers at once: latency and retries.

For each store and each number of writers (``--writers``, default 1, 4, 8
and 16), that many processes (spawned once, as a server's workers are) take
the same session and each makes ``--saves`` saves of a key of its own: load
the session, change the key, wait ``--view-ms`` (the work of a view, which
widens the window in which another writer saves first), and save. Every
save runs with the default settings (retries with jittered backoff for up
to ``SESSION_SAVE_TIMEOUT``, 1 s), so a save that loses a compare-and-set
merges and tries again. The benchmark reports, per store and writer count:

- the p50 and p99 time of ``ServerSession.save()``, the part of a request
  that contention makes slower, in milliseconds and as a multiple of the
  raw store round trip (one uncontended ``store.save()`` measured in the
  same run: the baseline);
- retries per save (compare-and-set conflicts the session met, counted at
  the store) and the most one save needed;
- saves that failed (``SessionInterrupted``, which a request answers with a
  400): the target is none;
- whether every write was kept: each writer's key ends at ``--saves``.

Stores: ``sqlite`` (a file in a temporary folder), ``postgresql``,
``mariadb``, ``redis``, and ``caching`` (Redis in front of PostgreSQL).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import typing as t
import uuid
from datetime import datetime
from datetime import timedelta
from datetime import timezone

from ._common import SERVER_URLS
from ._common import benchmark_parser
from ._common import emit
from ._common import machine
from ._common import positive_ints

if t.TYPE_CHECKING:
    from flask_towersess.stores.base import SessionStore

STORES = ("sqlite", "postgresql", "mariadb", "redis", "caching")
DEFAULT_WRITERS = (1, 4, 8, 16)
#: Uncontended store round trips timed for the baseline.
BASELINE_SAVES = 300
#: Bound on the wait for one run of the writers.
RUN_TIMEOUT = 120.0


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the sessions live: pickled to every writer process."""

    url: str
    options: dict[str, t.Any]
    cache_url: str | None = None
    cache_options: dict[str, t.Any] = dataclasses.field(default_factory=dict)

    def open(self) -> SessionStore:
        from flask_towersess.stores import CachingStore
        from flask_towersess.stores import store_from_url

        store = store_from_url(self.url, **self.options)
        if self.cache_url is None:
            return store
        cache = store_from_url(self.cache_url, as_cache=True, **self.cache_options)
        return CachingStore(cache, store)


@dataclasses.dataclass(frozen=True)
class Task:
    index: int
    target: Target
    key: str
    saves: int
    view_delay: float
    start_at: float  # time.time() at which every writer starts


@dataclasses.dataclass
class Outcome:
    """What one writer saw (returned from its process)."""

    latencies: list[float]
    retries: list[int]
    failed: int


def _count_conflicts(store: SessionStore) -> list[int]:
    """Count the compare-and-set conflicts ``store.save()`` raises.

    The counter is a one-item list, read and reset around each save; the
    store's own ``save`` is wrapped on the instance, so the session under
    test runs unchanged.
    """
    from flask_towersess.errors import VersionConflict

    conflicts = [0]
    save = store.save

    def counting_save(record: t.Any, expected_version: int) -> None:
        try:
            save(record, expected_version)
        except VersionConflict:
            conflicts[0] += 1
            raise

    store.save = counting_save  # type: ignore[method-assign]
    return conflicts


def write(task: Task) -> Outcome:
    """Run in a writer process: ``task.saves`` load-change-save cycles."""
    from flask_towersess import ServerSession
    from flask_towersess.errors import SessionInterrupted

    store = task.target.open()
    conflicts = _count_conflicts(store)
    outcome = Outcome([], [], 0)
    name = f"w{task.index}"
    try:
        time.sleep(min(max(0.0, task.start_at - time.time()), 5.0))
        for _ in range(task.saves):
            session = ServerSession(store, task.key)
            session[name] = session.get(name, 0) + 1
            time.sleep(task.view_delay)
            conflicts[0] = 0
            started = time.perf_counter()
            try:
                session.save()
            except SessionInterrupted:
                outcome.failed += 1
            outcome.latencies.append(time.perf_counter() - started)
            outcome.retries.append(conflicts[0])
    finally:
        store.close()
    return outcome


def warm_up() -> int:
    """Import what the writers need, so the first run does not pay for it."""
    import psycopg2  # noqa: F401
    import pymysql  # noqa: F401
    import redis  # noqa: F401
    import sqlalchemy  # noqa: F401

    import flask_towersess.stores.caching  # noqa: F401
    import flask_towersess.stores.redis  # noqa: F401
    import flask_towersess.stores.sqlalchemy  # noqa: F401

    time.sleep(0.2)  # hold this process, so each warm-up lands on another
    return os.getpid()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def baseline(store: SessionStore) -> float:
    """The median uncontended ``store.save()`` round trip, in seconds."""
    from flask_towersess.serializers import MsgPackSerializer
    from flask_towersess.session import new_session_key
    from flask_towersess.stores.base import Record

    payload = MsgPackSerializer().dumps({"data": {"w0": 1}})
    expires = datetime.now(timezone.utc) + timedelta(hours=1)
    key = new_session_key()
    store.create(Record(key, payload, expires, 1))
    times = []
    for version in range(1, BASELINE_SAVES + 1):
        started = time.perf_counter()
        store.save(Record(key, payload, expires, version + 1), version)
        times.append(time.perf_counter() - started)
    store.delete(key)
    return statistics.median(times)


def run_writers(
    pool: concurrent.futures.ProcessPoolExecutor,
    target: Target,
    writers: int,
    saves: int,
    view_delay: float,
) -> dict[str, t.Any]:
    from flask_towersess import ServerSession

    store = target.open()
    try:
        session = ServerSession(store)
        session["started"] = True
        session.save()
        key = session.session_key
        assert key is not None
        start_at = time.time() + 0.3
        futures = [
            pool.submit(write, Task(i, target, key, saves, view_delay, start_at))
            for i in range(writers)
        ]
        outcomes = [future.result(timeout=RUN_TIMEOUT) for future in futures]
        kept = dict(ServerSession(store, key))
        store.delete(key)
    finally:
        store.close()
    latencies = [value for o in outcomes for value in o.latencies]
    retries = [value for o in outcomes for value in o.retries]
    return {
        "writers": writers,
        "saves": len(latencies),
        "p50_ms": _percentile(latencies, 0.5) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "retries_per_save": sum(retries) / len(retries),
        "max_retries": max(retries),
        "failed": sum(o.failed for o in outcomes),
        "all_kept": all(kept.get(f"w{i}") == saves for i in range(writers)),
    }


def _targets(names: list[str], folder: str) -> t.Iterator[tuple[str, Target]]:
    """Each store's target, with a table or key prefix of this run's own."""
    suffix = uuid.uuid4().hex[:8]
    table = f"towersess_contention_{suffix}"
    prefix = f"towersess-contention:{suffix}:"
    for name in names:
        if name == "sqlite":
            yield (
                name,
                Target(f"sqlite:///{folder}/contention.sqlite3", {"table": table}),
            )
        elif name == "redis":
            yield name, Target(SERVER_URLS["redis"], {"key_prefix": prefix})
        elif name == "caching":
            yield (
                name,
                Target(
                    SERVER_URLS["postgresql"],
                    {"table": table},
                    SERVER_URLS["redis"],
                    {"key_prefix": prefix},
                ),
            )
        else:
            yield name, Target(SERVER_URLS[name], {"table": table})


def run(
    names: list[str], writer_counts: list[int], saves: int, view_delay: float
) -> dict[str, t.Any]:
    context = multiprocessing.get_context("spawn")
    size = max(writer_counts)
    results: list[dict[str, t.Any]] = []
    with (
        tempfile.TemporaryDirectory() as folder,
        concurrent.futures.ProcessPoolExecutor(size, mp_context=context) as pool,
    ):
        for future in [pool.submit(warm_up) for _ in range(size)]:
            future.result(timeout=RUN_TIMEOUT)
        for name, target in _targets(names, folder):
            store = target.open()
            try:
                migrating = (
                    store.as_migrating()
                )  # Redis and memory have nothing to create
                if migrating is not None:
                    migrating.migrate()
                raw = baseline(store)
                for writers in writer_counts:
                    print(
                        f"{name}: {writers} writers x {saves} saves...",
                        file=sys.stderr,
                        flush=True,
                    )
                    row = run_writers(pool, target, writers, saves, view_delay)
                    row.update(store=name, raw_ms=raw * 1000)
                    results.append(row)
            finally:
                _drop(store)
                store.close()
    return {
        "machine": machine(),
        "load_average": os.getloadavg(),
        "saves_per_writer": saves,
        "view_ms": view_delay * 1000,
        "results": results,
    }


def _drop(store: SessionStore) -> None:
    """Drop the run's table. (Redis keeps nothing: each run deletes its
    session, and the records ``cycle_key()`` would retire are not made.)"""
    from flask_towersess.stores import CachingStore
    from flask_towersess.stores import SQLAlchemyStore

    durable = store.store if isinstance(store, CachingStore) else store
    if isinstance(durable, SQLAlchemyStore):
        durable.table.drop(durable.engine, checkfirst=True)


def report(result: dict[str, t.Any]) -> tuple[str, bool]:
    lines = [
        result["machine"],
        "load average at the end: "
        + ", ".join(f"{x:.2f}" for x in result["load_average"]),
        f"{result['saves_per_writer']} saves per writer,"
        f" {result['view_ms']:g} ms of view work between load and save",
        "",
        f"{'store':<11}{'writers':>8}{'raw ms':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'p50 x raw':>10}{'p99 x raw':>10}{'retries/save':>13}{'max':>5}"
        f"{'failed':>7}  kept",
    ]
    ok = True
    for row in result["results"]:
        good = row["failed"] == 0 and row["all_kept"]
        ok = ok and good
        lines.append(
            f"{row['store']:<11}{row['writers']:>8}{row['raw_ms']:>8.2f}"
            f"{row['p50_ms']:>8.2f}{row['p99_ms']:>8.2f}"
            f"{row['p50_ms'] / row['raw_ms']:>9.1f}x"
            f"{row['p99_ms'] / row['raw_ms']:>9.1f}x"
            f"{row['retries_per_save']:>13.2f}{row['max_retries']:>5}"
            f"{row['failed']:>7}  {'yes' if row['all_kept'] else 'NO'}"
        )
    lines.append("")
    lines.append(
        "target: no failed save and every write kept, at every writer count"
        f" ({'met' if ok else 'MISSED'})"
    )
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("python -m benchmarks contention", __doc__, stores=STORES)
    parser.add_argument(
        "--writers",
        type=positive_ints,
        default=",".join(map(str, DEFAULT_WRITERS)),
        help="comma-separated writer counts (default: %(default)s)",
    )
    parser.add_argument(
        "--saves",
        type=int,
        default=25,
        metavar="N",
        help="saves per writer (default: %(default)s)",
    )
    parser.add_argument(
        "--view-ms",
        type=float,
        default=4.0,
        metavar="MS",
        help="view work between load and save (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.saves < 1:
        parser.error("--saves must be positive")
    result = run(args.stores, args.writers, args.saves, args.view_ms / 1000)
    text, ok = report(result)
    return emit(result, text, ok, args.json)
