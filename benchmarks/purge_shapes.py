"""Purge statement shapes compared, on the table ``benchmarks/purge.py`` fills.

A diagnostic companion of the purge benchmark: for each store, the purge
is run to the end once per statement shape, each time on a freshly filled
table, one batch per autocommit statement as ``purge_expired`` does:

- ``current``: the statement ``SQLAlchemyStore`` builds today;
- PostgreSQL: ``ctid = ANY(ARRAY(SELECT ctid ... LIMIT n FOR UPDATE SKIP
  LOCKED))`` and ``session_key = ANY(ARRAY(SELECT session_key ...))``;
- SQLite: ``rowid IN (SELECT rowid ... LIMIT n)``, alone and with a larger
  page cache and WAL auto-checkpoint interval on the purging connection
  (the final checkpoint is timed too).

Run: ``python -m benchmarks.purge_shapes [--stores postgresql,sqlite]``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import typing as t
from dataclasses import dataclass

import sqlalchemy as sa

from flask_towersess.stores.sqlalchemy import SQLAlchemyStore
from flask_towersess.stores.sqlalchemy import create_engine

from ._common import benchmark_parser
from .purge import DEFAULT_URLS
from .purge import EXPIRY_ORDERS
from .purge import _machine
from .purge import _naive_utc_now
from .purge import census
from .purge import fill

TABLE = f"towersess_purge_shapes_{os.getpid()}"


@dataclass
class Shape:
    name: str
    #: Raw SQL with {table} and {n}, or None for the store's own statement.
    sql: str | None = None
    #: PRAGMAs run on the purging connection first (SQLite).
    pragmas: tuple[str, ...] = ()


SHAPES: dict[str, list[Shape]] = {
    "postgresql": [
        Shape("current"),
        Shape(
            "ctid = ANY(ARRAY(...))",
            "DELETE FROM {table} WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM {table} WHERE expires_at <= %(now)s"
            " LIMIT {n} FOR UPDATE SKIP LOCKED)) AND expires_at <= %(now)s",
        ),
        Shape(
            "session_key = ANY(ARRAY(...))",
            "DELETE FROM {table} WHERE session_key = ANY(ARRAY("
            "SELECT session_key FROM {table} WHERE expires_at <= %(now)s"
            " LIMIT {n} FOR UPDATE SKIP LOCKED))",
        ),
    ],
    "sqlite": [
        Shape("current"),
        Shape(
            "rowid IN (...)",
            "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table}"
            " WHERE expires_at <= ? LIMIT {n})",
        ),
        Shape(
            "rowid IN + cache 256 MB + wal_autocheckpoint 100000",
            "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table}"
            " WHERE expires_at <= ? LIMIT {n})",
            ("PRAGMA cache_size=-262144", "PRAGMA wal_autocheckpoint=100000"),
        ),
    ],
}


def run_shape(
    store: SQLAlchemyStore,
    shape: Shape,
    *,
    expired: int,
    live: int,
    batch_size: int,
    order: str,
    time_limit: float,
) -> dict[str, t.Any]:
    engine = store.engine
    store.table.drop(engine, checkfirst=True)
    store.migrate()
    fill(store, expired, live, order)
    now = _naive_utc_now()
    sqlite = engine.dialect.name == "sqlite"
    statement: t.Any
    if shape.sql is None:
        statement = store._purge_statement(batch_size).core
        params: t.Any = {"now": now}
    else:
        statement = shape.sql.format(table=TABLE, n=batch_size)
        params = (now.strftime("%Y-%m-%d %H:%M:%S.%f"),) if sqlite else {"now": now}
    durations: list[float] = []
    purged = 0
    stopped = False
    with engine.connect() as conn:
        for pragma in shape.pragmas:
            conn.exec_driver_sql(pragma)
        started = time.perf_counter()
        for _ in range(expired + 1):  # each batch deletes at least one row
            begun = time.perf_counter()
            if shape.sql is None:
                deleted = conn.execute(statement, params).rowcount
            else:
                deleted = conn.exec_driver_sql(statement, params).rowcount
            conn.commit()  # a no-op on the store's autocommit engines
            durations.append(time.perf_counter() - begun)
            if deleted <= 0:
                break
            purged += deleted
            if time.perf_counter() - started > time_limit:
                stopped = True
                break
        if sqlite:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        elapsed = time.perf_counter() - started
    if shape.pragmas:
        engine.dispose()  # the PRAGMAs must not outlive this shape's run
    remaining, remaining_live = census(store)
    store.table.drop(engine, checkfirst=True)
    return {
        "store": engine.dialect.name,
        "shape": shape.name,
        "batch_size": batch_size,
        "purged": purged,
        "seconds": elapsed,
        "rows_per_s": purged / elapsed if elapsed else 0.0,
        "median_batch_ms": statistics.median(durations) * 1000,
        "max_batch_ms": max(durations) * 1000,
        "stopped_by_time_limit": stopped,
        "verified": not stopped
        and purged == expired
        and remaining == live
        and remaining_live == live,
    }


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(
        "python -m benchmarks.purge_shapes", __doc__, stores=SHAPES
    )
    parser.add_argument("--expired", type=int, default=1_000_000, metavar="N")
    parser.add_argument("--live", type=int, default=100_000, metavar="N")
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--expiry-order", choices=EXPIRY_ORDERS, default="insertion")
    parser.add_argument("--time-limit", type=float, default=120.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.expired < 1 or args.live < 0:
        parser.error("--batch-size and --expired must be at least 1")
    results: list[dict[str, t.Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.stores:
            url = DEFAULT_URLS[name] or f"sqlite:///{tmp}/purge-shapes.sqlite3"
            engine: sa.engine.Engine = create_engine(url)
            store = SQLAlchemyStore(engine, table=TABLE)
            try:
                for shape in SHAPES[name]:
                    print(f"{name}: {shape.name}...", file=sys.stderr, flush=True)
                    results.append(
                        run_shape(
                            store,
                            shape,
                            expired=args.expired,
                            live=args.live,
                            batch_size=args.batch_size,
                            order=args.expiry_order,
                            time_limit=args.time_limit,
                        )
                    )
            finally:
                store.table.drop(engine, checkfirst=True)
                engine.dispose()
    print(f"machine: {_machine()}; load average {os.getloadavg()[0]:.2f}")
    print(
        f"{args.expired} expired + {args.live} live rows, batches of"
        f" {args.batch_size}, expiry order {args.expiry_order}"
    )
    print()
    print(
        f"{'store':<11} {'shape':<52} {'rows/s':>9} {'s':>7} {'median ms':>9}"
        f" {'max ms':>7} {'ok':>3}"
    )
    for r in results:
        print(
            f"{r['store']:<11} {r['shape']:<52} {r['rows_per_s']:>9.0f}"
            f" {r['seconds']:>7.2f} {r['median_batch_ms']:>9.1f}"
            f" {r['max_batch_ms']:>7.1f} {'yes' if r['verified'] else 'NO':>3}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": _machine(), "results": results}, f, indent=2)
    return 0 if all(r["verified"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
