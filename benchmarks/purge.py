"""Speed and footprint of ``flask sessions purge-expired`` on a large table.

For each SQL store, a dedicated table is filled in SQL (no rows travel
through Python) with ``--expired`` records whose expiry has passed and
``--live`` records that must survive, with random-looking distinct 43-character
keys and a small real payload. Then the benchmark times
``store.purge_expired(batch_size, on_batch=...)``, the code path of the CLI
command, and reports:

- rows per second and total time;
- the number of batches and the longest single batch (each batch is a
  transaction of its own, one statement or on MySQL a read and a delete, so
  this is the longest time the purge holds its locks);
- the process's peak RSS (``ru_maxrss``) before filling, before and after the
  purge: the purge must not load rows into Python, so it must not grow;
- whether exactly the live records remain afterwards.

It also runs the real CLI command once per store on a small table, through
Flask's CLI test runner, to show its summary line. Every table is dropped at
the end.

Target: at least 100,000 rows/s on PostgreSQL and SQLite.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import time
import typing as t
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import sqlalchemy as sa

from flask_towersess.serializers import MsgPackSerializer
from flask_towersess.stores.sqlalchemy import SQLAlchemyStore
from flask_towersess.stores.sqlalchemy import create_engine

from ._common import SERVER_URLS
from ._common import benchmark_parser
from ._common import emit
from ._common import machine as _machine
from ._common import positive_ints

#: Rows per second the purge must reach, per store (None: no target).
TARGETS: dict[str, int | None] = {
    "postgresql": 100_000,
    "sqlite": 100_000,
    "mariadb": None,
}

DEFAULT_URLS = {
    "postgresql": SERVER_URLS["postgresql"],
    "mariadb": SERVER_URLS["mariadb"],
    "sqlite": None,  # a file in a temporary folder, filled in at run time
}

# Per process, so two runs at once (or a test suite) cannot collide.
BENCH_TABLE = f"towersess_purge_bench_{os.getpid()}"
CLI_TABLE = f"towersess_purge_cli_{os.getpid()}"

#: Rows inserted per INSERT ... SELECT statement while filling, so that no
#: fill transaction grows without bound.
FILL_CHUNK = 250_000

#: The purge batch size of ``flask sessions purge-expired`` when none is given.
CLI_DEFAULT_BATCH_SIZE = 1000


class PurgeTimeLimit(Exception):
    """Raised from the batch callback to stop a purge that takes too long."""


# -- filling -----------------------------------------------------------------


def _payload() -> bytes:
    """A small, real session payload, as the session layer would store it."""
    data = {
        "_user_id": "42",
        "_fresh": True,
        "csrf_token": "c1f0e3a9d2b84d6f9a7e5c3b1d0f2e4a6c8b0d2e",
        "cart": [3, 14, 15],
    }
    return MsgPackSerializer().dumps({"data": data})


#: How expiry moments relate to insertion order (see ``--expiry-order``).
EXPIRY_ORDERS = ("insertion", "scattered")


def _offset_seconds(var: str, count: int, order: str, dialect: str) -> str:
    """SQL for the seconds between row ``var`` (1 to ``count``)'s expiry and
    the base moment, spread over one day.

    ``insertion``: rows inserted earlier expire earlier, as sessions created
    earlier do; for expired rows the offset counts down to the base, for
    live ones up from it. ``scattered``: the expiry cycles through the day
    every 86,400 rows, so rows next to each other in the table expire hours
    apart (sessions kept alive by use, in no order).
    """
    if order == "scattered":
        # "%" must be doubled for the drivers with pyformat parameters.
        mod = {"sqlite": "%", "postgresql": "%%"}.get(dialect, "MOD")
        return f"({var} {mod} 86400)"
    divide = "DIV" if dialect in ("mysql", "mariadb") else "/"
    if dialect == "postgresql":
        var = f"{var}::bigint"
    return f"(({count} - {var}) * 86400 {divide} {count})"


def _fill_sql(
    dialect: str,
    table: str,
    start: int,
    stop: int,
    *,
    count: int,
    live: bool,
    order: str,
) -> str:
    """An ``INSERT ... SELECT`` generating rows ``start`` to ``stop`` of ``count``.

    Keys: 43 characters of the session-key alphabet, distinct and in random
    order (as ``secrets.token_urlsafe(32)`` keys are). Expiry moments spread
    over a day before (expired rows) or after (live rows) the ``base``
    moment the caller passes, in whole seconds.
    """
    sign = "+" if live else "-"
    seed = "live" if live else "gone"
    columns = f"INSERT INTO {table} (session_key, payload, expires_at, version)"
    if dialect == "postgresql":
        offset = _offset_seconds("i", count, order, dialect)
        if live and order == "insertion":
            offset = f"(i::bigint * 86400 / {count})"
        return (
            f"{columns} SELECT"
            f" substr(md5('{seed}' || i::text) || md5(i::text || '{seed}'), 1, 43),"
            f" %(payload)s,"
            f" %(base)s::timestamp {sign} make_interval(secs => {offset}),"
            f" 1 FROM generate_series({start}, {stop}) AS i"
        )
    if dialect in ("mysql", "mariadb"):
        offset = _offset_seconds("seq", count, order, dialect)
        if live and order == "insertion":
            offset = f"(seq * 86400 DIV {count})"
        # MariaDB's Sequence engine: seq_A_to_B is a virtual table of integers.
        return (
            f"{columns} SELECT"
            f" LEFT(CONCAT(MD5(CONCAT('{seed}', seq)), MD5(CONCAT(seq, '{seed}'))),"
            f" 43), %(payload)s,"
            f" %(base)s {sign} INTERVAL {offset} SECOND,"
            f" 1 FROM seq_{start}_to_{stop}"
        )
    if dialect == "sqlite":
        offset = _offset_seconds("i", count, order, dialect)
        if live and order == "insertion":
            offset = f"(i * 86400 / {count})"
        # No md5 in SQLite: a multiplicative hash (a bijection modulo 2**32)
        # makes the first 8 characters distinct and scattered, random hex
        # the other 35. Live rows hash i + 2**31, so no prefix is shared
        # between the kinds. Datetimes in the text format SQLAlchemy writes.
        shift = 2**31 if live else 0
        return (
            f"{columns} WITH RECURSIVE s(i) AS"
            f" (SELECT {start} UNION ALL SELECT i + 1 FROM s WHERE i < {stop})"
            f" SELECT printf('%08x', ((i + {shift}) * 2654435761) % 4294967296)"
            f" || substr(lower(hex(randomblob(18))), 1, 35),"
            f" ?, strftime('%Y-%m-%d %H:%M:%S', ?, '{sign}' || {offset} || ' seconds')"
            f" || '.000000', 1 FROM s"
        )
    raise ValueError(f"no fill statement for dialect {dialect}")


def _naive_utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def fill(
    store: SQLAlchemyStore, expired: int, live: int, order: str = "insertion"
) -> None:
    """Insert the expired, then the live records, in chunks of SQL."""
    dialect = store.engine.dialect.name
    payload = _payload()
    now = _naive_utc_now()
    plans = [
        (expired, False, now - timedelta(minutes=1)),
        (live, True, now + timedelta(hours=1)),
    ]
    with store.engine.connect() as conn:
        for count, is_live, base in plans:
            for start in range(1, count + 1, FILL_CHUNK):
                stop = min(start + FILL_CHUNK - 1, count)
                sql = _fill_sql(
                    dialect,
                    store.table.name,
                    start,
                    stop,
                    count=count,
                    live=is_live,
                    order=order,
                )
                params: t.Any
                if dialect == "sqlite":
                    params = (payload, base.strftime("%Y-%m-%d %H:%M:%S"))
                else:
                    params = {"payload": payload, "base": base}
                conn.exec_driver_sql(sql, params)
                conn.commit()  # a no-op on the store's autocommit engines
        # Fresh statistics, as autovacuum / auto-analyze would have by the
        # time a cron purge runs on a real table.
        if dialect == "postgresql":
            conn.exec_driver_sql(f"VACUUM ANALYZE {store.table.name}")
        elif dialect in ("mysql", "mariadb"):
            conn.exec_driver_sql(f"ANALYZE TABLE {store.table.name}").all()
        else:
            conn.exec_driver_sql("ANALYZE")
        conn.commit()


def census(store: SQLAlchemyStore) -> tuple[int, int]:
    """(all rows, rows not yet expired) in the table."""
    c = store.table.c
    now = _naive_utc_now()
    query = sa.select(
        sa.func.count(), sa.func.sum(sa.case((c.expires_at > now, 1), else_=0))
    ).select_from(store.table)
    with store.engine.connect() as conn:
        total, alive = conn.execute(query).one()
    return int(total), int(alive or 0)


# -- measuring ---------------------------------------------------------------


def max_rss_kib() -> int:
    """The process's peak resident set size so far, in KiB (Linux units)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # macOS reports bytes, Linux KiB.
    return int(peak // 1024 if sys.platform == "darwin" else peak)


def current_rss_kib() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class PurgeRun:
    store: str
    batch_size: int
    expired: int
    live: int
    expiry_order: str = "insertion"
    fill_s: float = 0.0
    count_expired: int = 0
    count_expired_s: float = 0.0
    purged: int = 0
    purge_s: float = 0.0
    rows_per_s: float = 0.0
    batches: int = 0
    longest_batch_s: float = 0.0
    median_batch_s: float = 0.0
    final_statement_s: float = 0.0
    max_rss_kib: dict[str, int] = field(default_factory=dict)
    rss_kib: dict[str, int | None] = field(default_factory=dict)
    rss_growth_during_purge_kib: int = 0
    remaining: int = 0
    remaining_live: int = 0
    verified: bool = False
    stopped_by_time_limit: bool = False
    target_rows_per_s: int | None = None
    target_met: bool | None = None


def _snapshot(run: PurgeRun, label: str) -> None:
    run.max_rss_kib[label] = max_rss_kib()
    run.rss_kib[label] = current_rss_kib()


def purge_run(
    name: str,
    store: SQLAlchemyStore,
    *,
    expired: int,
    live: int,
    batch_size: int,
    time_limit: float,
    order: str,
) -> PurgeRun:
    run = PurgeRun(name, batch_size, expired, live, order)
    run.target_rows_per_s = TARGETS.get(name)
    store.table.drop(store.engine, checkfirst=True)
    store.migrate()
    _snapshot(run, "before_fill")
    started = time.perf_counter()
    fill(store, expired, live, order)
    run.fill_s = time.perf_counter() - started

    started = time.perf_counter()
    run.count_expired = store.count_expired()
    run.count_expired_s = time.perf_counter() - started
    if run.count_expired != expired:
        raise AssertionError(
            f"{name}: filled {expired} expired rows, count_expired() says"
            f" {run.count_expired}"
        )

    # Every batch reported deletes at least one row: more batches than rows
    # means the loop is not converging (the time limit also stops it).
    max_batches = expired + 1
    marks: list[float] = []

    def on_batch(deleted: int) -> None:
        now = time.perf_counter()
        marks.append(now)
        run.purged += deleted
        if now - started > time_limit or len(marks) > max_batches:
            raise PurgeTimeLimit

    _snapshot(run, "before_purge")
    started = time.perf_counter()
    try:
        returned = store.purge_expired(batch_size, on_batch=on_batch)
    except PurgeTimeLimit:
        run.stopped_by_time_limit = True
        ended = marks[-1]
    else:
        ended = time.perf_counter()
        if returned != run.purged:
            raise AssertionError(
                f"{name}: purge_expired returned {returned}, batches said {run.purged}"
            )
    _snapshot(run, "after_purge")

    run.purge_s = ended - started
    run.rows_per_s = run.purged / run.purge_s if run.purge_s > 0 else 0.0
    durations = [b - a for a, b in zip([started, *marks], marks)]
    run.batches = len(durations)
    if durations:
        run.longest_batch_s = max(durations)
        run.median_batch_s = statistics.median(durations)
    if marks and not run.stopped_by_time_limit:
        # The last statement finds nothing to delete and ends the loop.
        run.final_statement_s = ended - marks[-1]
    run.rss_growth_during_purge_kib = (
        run.max_rss_kib["after_purge"] - run.max_rss_kib["before_purge"]
    )

    run.remaining, run.remaining_live = census(store)
    run.verified = (
        not run.stopped_by_time_limit
        and run.purged == expired
        and run.remaining == live
        and run.remaining_live == live
    )
    if run.target_rows_per_s is not None:
        run.target_met = (
            run.verified
            and not run.stopped_by_time_limit
            and run.rows_per_s >= run.target_rows_per_s
        )
    store.table.drop(store.engine, checkfirst=True)
    return run


def cli_run(
    name: str, engine: sa.engine.Engine, *, expired: int, live: int
) -> dict[str, t.Any]:
    """Run the real ``flask sessions purge-expired`` on a small table."""
    from flask import Flask

    from flask_towersess import SessionExt

    store = SQLAlchemyStore(engine, table=CLI_TABLE)
    store.table.drop(engine, checkfirst=True)
    store.migrate()
    try:
        fill(store, expired, live)
        app = Flask(f"purge-bench-{name}")
        app.config.update(SECRET_KEY="bench", SESSION_STORE=store)
        SessionExt(app)
        result = app.test_cli_runner().invoke(args=["sessions", "purge-expired"])
        remaining, remaining_live = census(store)
    finally:
        store.table.drop(engine, checkfirst=True)
    return {
        "store": name,
        "expired": expired,
        "live": live,
        "exit_code": result.exit_code,
        "output": result.output.strip(),
        "verified": (
            result.exit_code == 0 and remaining == live and remaining_live == live
        ),
    }


# -- running and reporting ---------------------------------------------------


def _open_engine(name: str, tmp: str) -> sa.engine.Engine:
    url = DEFAULT_URLS[name] or f"sqlite:///{tmp}/purge-bench.sqlite3"
    return create_engine(url)


def run(
    stores: list[str],
    *,
    expired: int,
    live: int,
    batch_sizes: list[int],
    time_limit: float,
    cli: bool,
    order: str,
) -> dict[str, t.Any]:
    runs: list[PurgeRun] = []
    cli_runs: list[dict[str, t.Any]] = []
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in stores:
            engine = _open_engine(name, tmp)
            try:
                versions[name] = _server_version(engine)
                store = SQLAlchemyStore(engine, table=BENCH_TABLE)
                try:
                    for batch_size in batch_sizes:
                        print(
                            f"{name}: purging {expired} of {expired + live} rows"
                            f" in batches of {batch_size}...",
                            file=sys.stderr,
                            flush=True,
                        )
                        runs.append(
                            purge_run(
                                name,
                                store,
                                expired=expired,
                                live=live,
                                batch_size=batch_size,
                                time_limit=time_limit,
                                order=order,
                            )
                        )
                    if cli:
                        cli_runs.append(cli_run(name, engine, expired=5000, live=500))
                finally:
                    store.table.drop(engine, checkfirst=True)
            finally:
                engine.dispose()
    return {
        "machine": _machine(),
        "load_average": os.getloadavg(),
        "expiry_order": order,
        "servers": versions,
        "runs": [asdict(r) for r in runs],
        "cli": cli_runs,
    }


def _server_version(engine: sa.engine.Engine) -> str:
    if engine.dialect.name == "sqlite":
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version}"
    with engine.connect() as conn:
        return str(conn.exec_driver_sql("SELECT version()").scalar())


def _mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f}"


def report(result: dict[str, t.Any]) -> tuple[str, bool]:
    load = ", ".join(f"{x:.2f}" for x in result["load_average"])
    lines = [
        f"machine: {result['machine']}",
        f"load average at the end: {load}",
        f"expiry order of the filled rows: {result['expiry_order']}",
    ]
    for name, version in result["servers"].items():
        lines.append(f"{name}: {version}")
    lines.append("")
    header = (
        f"{'store':<11} {'batch':>6} {'purged':>8} {'fill s':>7} {'purge s':>8}"
        f" {'rows/s':>9} {'batches':>7} {'max batch ms':>12} {'median ms':>9}"
        f" {'left (live)':>16} {'ok':>3}"
    )
    lines.append(header)
    ok = True
    for r in result["runs"]:
        target = r["target_rows_per_s"]
        mark = "" if target is None else ("*" if r["target_met"] else "!")
        ok &= r["verified"] and r["target_met"] is not False
        left = f"{r['remaining']} ({r['remaining_live']})"
        lines.append(
            f"{r['store']:<11} {r['batch_size']:>6} {r['purged']:>8}"
            f" {r['fill_s']:>7.1f} {r['purge_s']:>8.2f}"
            f" {r['rows_per_s']:>8.0f}{mark or ' '} {r['batches']:>7}"
            f" {r['longest_batch_s'] * 1000:>12.1f} {r['median_batch_s'] * 1000:>9.1f}"
            f" {left:>16} {'yes' if r['verified'] else 'NO':>3}"
            + ("  (stopped: time limit)" if r["stopped_by_time_limit"] else "")
        )
    lines.append("")
    lines.append(
        f"{'store':<11} {'batch':>6} {'count_expired s':>15}"
        f" {'peak RSS MiB: before fill':>26} {'before purge':>12}"
        f" {'after purge':>11} {'growth in purge':>15}"
    )
    for r in result["runs"]:
        peak = r["max_rss_kib"]
        lines.append(
            f"{r['store']:<11} {r['batch_size']:>6} {r['count_expired_s']:>15.2f}"
            f" {_mib(peak['before_fill']):>26} {_mib(peak['before_purge']):>12}"
            f" {_mib(peak['after_purge']):>11}"
            f" {r['rss_growth_during_purge_kib']:>12} KiB"
        )
    if result["cli"]:
        lines.append("")
        lines.append("flask sessions purge-expired (default batch size, small table):")
        for c in result["cli"]:
            verdict = "live rows intact" if c["verified"] else "FAILED"
            lines.append(
                f"  {c['store']:<11} exit {c['exit_code']}: {c['output']!r}"
                f" ({c['expired']} expired, {c['live']} live; {verdict})"
            )
            ok &= c["verified"]
    lines.append("")
    lines.append(
        "target: >= 100,000 rows/s on postgresql and sqlite (* met, ! missed);"
        " every run must leave exactly the live rows"
        f" -> {'all met' if ok else 'MISSED'}"
    )
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(
        "python -m benchmarks purge", __doc__, stores=DEFAULT_URLS
    )
    parser.add_argument("--expired", type=int, default=1_000_000, metavar="N")
    parser.add_argument("--live", type=int, default=100_000, metavar="N")
    parser.add_argument(
        "--batch-size",
        type=positive_ints,
        default=f"10000,{CLI_DEFAULT_BATCH_SIZE}",
        help="comma-separated batch sizes, one full run each"
        f" (default: 10000 and the CLI default {CLI_DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="stop a purge that runs longer than this (default: 300)",
    )
    parser.add_argument(
        "--expiry-order",
        choices=EXPIRY_ORDERS,
        default="insertion",
        help="insertion: rows inserted earlier expire earlier (default);"
        " scattered: neighbouring rows expire hours apart",
    )
    parser.add_argument(
        "--no-cli", action="store_true", help="skip the small CLI command run"
    )
    args = parser.parse_args(argv)
    if args.expired < 1 or args.live < 0:
        parser.error("--expired must be at least 1 and --live at least 0")
    result = run(
        args.stores,
        expired=args.expired,
        live=args.live,
        batch_sizes=args.batch_size,
        time_limit=args.time_limit,
        cli=not args.no_cli,
        order=args.expiry_order,
    )
    return emit(result, *report(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
