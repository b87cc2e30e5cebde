"""Per-user sessions: what a log-in and "log out everywhere" cost.

For each store, in one run:

- **login / write**: a request that logs a user in (an identity change:
  the session moves to a fresh key and joins the user's index) against a
  plain write of the same session (the ``write`` scenario of the
  ``requests`` benchmark), both through the Flask test client, timed in
  alternating rounds; the ratio is per round, its median reported;
- **revoke all**: :meth:`SessionExt.revoke <flask_towersess.SessionExt.revoke>`
  of a user holding 10 and 1,000 live sessions, in milliseconds and as a
  multiple of one raw store round trip (``store.load`` of a missing key,
  timed in the same run). A fixed number of round trips shows as a cost
  that grows far slower than the number of sessions.

Stores: ``memory``, ``sqlite`` (a file in a temporary folder),
``postgresql``, ``mariadb``, ``redis``, ``caching`` (Redis in front of
PostgreSQL). There is no target: the numbers go on the performance page.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import typing as t
import uuid
from datetime import timedelta

from flask import Flask
from flask import session

from flask_towersess import SessionExt
from flask_towersess.session import new_session_key
from flask_towersess.session import stored_key
from flask_towersess.stores import CachingStore
from flask_towersess.stores import Record
from flask_towersess.stores import SessionStore
from flask_towersess.stores import store_from_url
from flask_towersess.stores.base import utcnow

from ._common import SERVER_URLS
from ._common import benchmark_parser
from ._common import emit
from ._common import machine
from ._common import positive_ints
from .requests import _add_session_views

STORES = ("memory", "sqlite", "postgresql", "mariadb", "redis", "caching")
DEFAULT_SESSIONS = (10, 1000)


def _open(name: str, tmp: str, tag: str) -> SessionStore:
    table = {"table": f"bench_per_user_{tag}"}
    store: SessionStore
    if name == "memory":
        store = store_from_url("memory://")
    elif name == "sqlite":
        store = store_from_url(f"sqlite:///{tmp}/per_user.sqlite3", **table)
    elif name == "redis":
        store = store_from_url(SERVER_URLS["redis"], key_prefix=f"bench-{tag}:")
    elif name == "caching":
        durable = store_from_url(SERVER_URLS["postgresql"], **table)
        cache = store_from_url(
            SERVER_URLS["redis"], as_cache=True, key_prefix=f"bench-{tag}:"
        )
        store = CachingStore(cache, durable)
    else:
        store = store_from_url(SERVER_URLS[name], **table)
    migrating = store.as_migrating()
    if migrating is not None:
        migrating.migrate()
    return store


def _app(store: SessionStore) -> tuple[Flask, SessionExt]:
    app = Flask("per-user-bench")
    app.config.update(SECRET_KEY="bench", SESSION_STORE=store)
    ext = SessionExt(app)
    logins = iter(range(10**9))
    # /write: the requests benchmark's write scenario.
    _add_session_views(app)

    @app.get("/login")
    def login() -> str:
        # Another user each time: every request is an identity change.
        session["_user_id"] = f"bench-user-{next(logins)}"
        session["counter"] = session.get("counter", 0) + 1
        return "ok"

    return app, ext


def _per_request(client: t.Any, path: str, requests: int) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        client.get(path)
    return (time.perf_counter() - started) / requests


def _raw_round_trip(store: SessionStore, repeats: int = 200) -> float:
    missing = stored_key(new_session_key())
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        store.load(missing)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def _fill(store: SessionStore, user: str, count: int) -> None:
    now = utcnow()
    for _ in range(count):
        store.create(
            Record(
                stored_key(new_session_key()),
                b"\x01\x81\xa4data\x80",
                now + timedelta(hours=1),
                user_id=user,
                created_at=now,
                last_active_at=now,
                user_agent="bench",
            )
        )


def run(
    stores: list[str], *, rounds: int, requests: int, sessions: list[int]
) -> dict[str, t.Any]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in stores:
            tag = uuid.uuid4().hex[:8]
            store = _open(name, tmp, tag)
            try:
                app, ext = _app(store)
                writer, login = app.test_client(), app.test_client()
                writer.get("/write")
                _per_request(login, "/login", 20)  # warm up
                _per_request(writer, "/write", 20)
                ratios = []
                login_s: list[float] = []
                write_s: list[float] = []
                for _ in range(rounds):
                    write_s.append(_per_request(writer, "/write", requests))
                    login_s.append(_per_request(login, "/login", requests))
                    ratios.append(login_s[-1] / write_s[-1])
                raw = _raw_round_trip(store)
                revokes = {}
                for count in sessions:
                    user = f"bench-revoke-{tag}-{count}"
                    _fill(store, user, count)
                    started = time.perf_counter()
                    ended = ext.revoke(user, app=app)
                    elapsed = time.perf_counter() - started
                    assert ended == count, (ended, count)
                    revokes[str(count)] = {
                        "ms": elapsed * 1e3,
                        "x_raw": elapsed / raw,
                    }
                results.append(
                    {
                        "store": name,
                        "write_us": statistics.median(write_s) * 1e6,
                        "login_us": statistics.median(login_s) * 1e6,
                        "login_over_write": statistics.median(ratios),
                        "raw_ms": raw * 1e3,
                        "revoke_all": revokes,
                    }
                )
            finally:
                table = getattr(getattr(store, "store", store), "table", None)
                if table is not None:
                    engine = getattr(store, "store", store).engine  # type: ignore[attr-defined]
                    table.drop(engine, checkfirst=True)
                store.close()
    return {"machine": machine(), "results": results}


def report(result: dict[str, t.Any], sessions: list[int]) -> tuple[str, bool]:
    lines = [f"machine: {result['machine']}", ""]
    head = f"{'store':<11} {'write us':>9} {'login us':>9} {'login/write':>12}"
    head += f" {'raw ms':>7}"
    for count in sessions:
        head += f" {f'revoke {count} ms (x raw)':>24}"
    lines.append(head)
    for row in result["results"]:
        line = (
            f"{row['store']:<11} {row['write_us']:>9.1f} {row['login_us']:>9.1f}"
            f" {row['login_over_write']:>12.2f} {row['raw_ms']:>7.3f}"
        )
        for count in sessions:
            cell = row["revoke_all"][str(count)]
            line += f" {cell['ms']:>12.2f} ({cell['x_raw']:>8.1f})"
        lines.append(line)
    return "\n".join(lines), True


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("python -m benchmarks per-user", __doc__, stores=STORES)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument(
        "--sessions",
        type=positive_ints,
        default=",".join(map(str, DEFAULT_SESSIONS)),
        help="sessions of the user revoked at once (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    result = run(
        args.stores, rounds=args.rounds, requests=args.requests, sessions=args.sessions
    )
    return emit(result, *report(result, args.sessions), args.json)
