"""Per-request cost of flask-towersess, as ratios against baselines timed in
the same run.

Every scenario is a small Flask app driven in-process by the test client.
Scenarios are interleaved: each repeat times every target between two runs
of its baseline (A-B-A) and takes the ratio within that triple; the median of
the repeats' ratios is reported, so machine drift hits all alike.

Request kinds:

- idle: the session cookie is sent, the view never touches ``flask.session``;
- read: the view reads one key;
- write: the view changes two keys, one of them a small nested dict.

Baselines:

- bare Flask, with no session machinery at all;
- Flask's own cookie session (for reference);
- per store, the work a session store cannot avoid, done by hand in a bare
  Flask view: reading the session cookie, then the round trips: SQL, one
  primary-key ``SELECT`` on a pooled engine for a read, plus one ``UPDATE``
  (payload and a fresh expiry) in its own transaction for a write; Redis,
  ``GET`` for a read, ``GET`` + ``SET ... EX`` for a write; memory, a dict
  lookup and a dict store. Payloads are packed with msgpack. A write sends
  the session cookie back (a header built beforehand), as Flask's
  ``should_set_cookie`` has every session interface do for a modified
  session; until 0.2 the raw write sent none.

Targets: idle <= 1.10 x bare Flask; read <= 1.15 x the raw read; write <=
1.15 x the raw read + write.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import typing as t
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import msgpack
from flask import Flask
from flask import make_response
from flask import request
from flask import session
from flask.sessions import SessionInterface
from werkzeug.http import dump_cookie

from flask_towersess import SessionExt
from flask_towersess.stores import store_from_url
from flask_towersess.stores.base import SessionStore

from ._common import SERVER_URLS
from ._common import benchmark_parser
from ._common import emit
from ._common import machine as _machine

TARGETS = {"idle": 1.10, "read": 1.15, "write": 1.15}

DEFAULT_URLS = {
    "memory": "memory://",
    "sqlite": None,  # a file in a temporary folder, filled in at run time
    "postgresql": SERVER_URLS["postgresql"],
    "mariadb": SERVER_URLS["mariadb"],
    "redis": SERVER_URLS["redis"],
}

BENCH_TABLE = "towersess_bench"


class NoSessionInterface(SessionInterface):
    """Bare Flask: no session is opened or saved at all."""

    def open_session(self, app: Flask, request: t.Any) -> None:
        return None

    def is_null_session(self, obj: object) -> bool:
        return True

    def make_null_session(self, app: Flask) -> t.Any:
        return _NULL

    def save_session(self, app: Flask, session: t.Any, response: t.Any) -> None:
        pass


_NULL: t.Any = None


def _initial_data() -> dict[str, t.Any]:
    return {"user_id": 42, "name": "Ada", "counter": 0, "prefs": {"theme": "dark"}}


def _add_session_views(app: Flask) -> None:
    @app.get("/idle")
    def idle() -> str:
        return "ok"

    @app.get("/read")
    def read() -> str:
        return str(session.get("user_id"))

    @app.get("/write")
    def write() -> str:
        counter = session.get("counter", 0) + 1
        session["counter"] = counter
        session["prefs"] = {"theme": "dark", "seen": counter}
        return "ok"

    @app.get("/init")
    def init() -> str:
        session.update(_initial_data())
        return "ok"


class RawStore(t.Protocol):
    def read(self) -> bytes | None: ...

    def write(self, payload: bytes) -> None: ...


class RawMemory:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {"k": msgpack.packb(_initial_data())}

    def read(self) -> bytes | None:
        return self.data.get("k")

    def write(self, payload: bytes) -> None:
        self.expires = datetime.now(timezone.utc) + timedelta(days=1)
        self.data["k"] = payload


class RawSQL:
    def __init__(self, store: t.Any) -> None:
        import sqlalchemy as sa

        self.engine = store.engine
        table = store.table
        self.key = "raw-baseline-key-000000000000000000000"
        expires = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(days=1)
        with self.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.session_key == self.key))
            conn.execute(
                table.insert().values(
                    session_key=self.key,
                    payload=msgpack.packb(_initial_data()),
                    expires_at=expires,
                    version=1,
                )
            )
        self.select = sa.select(table.c.payload).where(
            table.c.session_key == sa.bindparam("key")
        )
        self.update = (
            table.update()
            .where(table.c.session_key == sa.bindparam("key"))
            .values(payload=sa.bindparam("p"), expires_at=sa.bindparam("e"))
        )
        self.expires = expires

    def read(self) -> bytes | None:
        with self.engine.connect() as conn:
            row = conn.execute(self.select, {"key": self.key}).first()
        return None if row is None else bytes(row[0])

    def write(self, payload: bytes) -> None:
        # A fresh expiry, as every session store writes one (Redis: SET EX):
        # an unchanged one would let PostgreSQL skip the expiry index.
        expires = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(days=1)
        with self.engine.begin() as conn:
            conn.execute(self.update, {"key": self.key, "p": payload, "e": expires})


class RawRedis:
    def __init__(self, store: t.Any) -> None:
        self.client = store.client
        self.key = "bench:raw-baseline"
        self.client.set(self.key, msgpack.packb(_initial_data()), ex=86400)

    def read(self) -> bytes | None:
        return self.client.get(self.key)  # type: ignore[no-any-return]

    def write(self, payload: bytes) -> None:
        self.client.set(self.key, payload, ex=86400)


def _raw_for(name: str, store: SessionStore) -> RawStore:
    factories: dict[str, t.Callable[[SessionStore], RawStore]] = {
        "memory": lambda s: RawMemory(),
        "sqlite": RawSQL,
        "postgresql": RawSQL,
        "mariadb": RawSQL,
        "redis": RawRedis,
    }
    return factories[name](store)


def _raw_app(raw: RawStore, set_cookie: str) -> Flask:
    app = Flask("raw")
    app.session_interface = NoSessionInterface()

    # Each view reads the session cookie first: finding out which session a
    # request belongs to is a cost no session store can avoid. Verifying the
    # cookie's signature is not counted here: that is the library's cost.
    # A write sends the cookie back, as Flask's rule (should_set_cookie)
    # has every session interface do for a modified session: the whole
    # header, built beforehand, so only adding it (and the test client
    # reading it, as a browser does) is counted.

    @app.get("/read")
    def read() -> str:
        request.cookies.get("session")
        data = msgpack.unpackb(raw.read())
        return str(data.get("user_id"))

    @app.get("/write")
    def write() -> str:
        request.cookies.get("session")
        data = msgpack.unpackb(raw.read())
        counter = data.get("counter", 0) + 1
        data["counter"] = counter
        data["prefs"] = {"theme": "dark", "seen": counter}
        raw.write(msgpack.packb(data))
        response = make_response("ok")
        response.headers.add("Set-Cookie", set_cookie)
        return response

    return app


@dataclass
class Scenario:
    name: str
    client: t.Any
    path: str
    timings: list[float] = field(default_factory=list)

    def run(self, requests: int) -> None:
        get = self.client.get
        path = self.path
        started = time.perf_counter()
        for _ in range(requests):
            get(path)
        self.timings.append((time.perf_counter() - started) / requests)

    @property
    def median(self) -> float:
        return statistics.median(self.timings)


def _bare_scenarios() -> list[Scenario]:
    bare = Flask("bare")
    bare.session_interface = NoSessionInterface()

    @bare.get("/idle")
    def idle() -> str:
        return "ok"

    cookie = Flask("cookie")
    cookie.secret_key = "bench"
    _add_session_views(cookie)
    cookie_client = cookie.test_client()
    cookie_client.get("/init")
    bare_client = bare.test_client()
    # The same cookie as the session apps get, so cookie handling in the test
    # client costs every scenario alike.
    bare_client.set_cookie("session", cookie_client.get_cookie("session").value)
    return [
        Scenario("bare flask/idle", bare_client, "/idle"),
        Scenario("flask cookie/idle", cookie_client, "/idle"),
        Scenario("flask cookie/read", cookie_client, "/read"),
        Scenario("flask cookie/write", cookie_client, "/write"),
    ]


def _store_scenarios(name: str, store: SessionStore) -> list[Scenario]:
    app = Flask(f"towersess-{name}")
    app.config.update(SECRET_KEY="bench", SESSION_STORE=store)
    SessionExt(app)
    _add_session_views(app)
    client = app.test_client()
    assert client.get("/init").status_code == 200
    cookie = client.get_cookie("session").value
    set_cookie = dump_cookie("session", cookie, httponly=True, path="/")
    raw_client = _raw_app(_raw_for(name, store), set_cookie).test_client()
    raw_client.set_cookie("session", cookie)
    for path in ("/read", "/write"):
        assert raw_client.get(path).status_code == 200
    return [
        Scenario(f"{name}/idle", client, "/idle"),
        Scenario(f"{name}/read", client, "/read"),
        Scenario(f"{name}/write", client, "/write"),
        Scenario(f"{name}/raw read", raw_client, "/read"),
        Scenario(f"{name}/raw write", raw_client, "/write"),
    ]


def _open_store(name: str, url: str | None, tmp: str) -> SessionStore:
    if url is None:
        url = f"sqlite:///{tmp}/bench.sqlite3"
    options: dict[str, t.Any] = {}
    if not url.startswith(("memory", "redis")):
        options["table"] = BENCH_TABLE
    store = store_from_url(url, **options)
    migrating = store.as_migrating()  # Redis and memory have nothing to create
    if migrating is not None:
        migrating.migrate()
    return store


def run(
    stores: list[str], *, repeats: int, requests: int, warmup: int
) -> dict[str, t.Any]:
    with tempfile.TemporaryDirectory() as tmp:
        opened = {name: _open_store(name, DEFAULT_URLS[name], tmp) for name in stores}
        try:
            scenarios = {s.name: s for s in _bare_scenarios()}
            for name, store in opened.items():
                scenarios.update((s.name, s) for s in _store_scenarios(name, store))
            for scenario in scenarios.values():
                scenario.run(warmup)
                scenario.timings.clear()
            # Each target is timed between two runs of its baseline (A-B-A),
            # and the ratio taken within that triple: this VM's speed drifts
            # over seconds, which would otherwise land on one side of a
            # ratio. Every repeat walks all triples, so drift hits all alike.
            pairs = [
                (store, kind, scenarios[f"{store}/{kind}"], scenarios[baseline])
                for store in stores
                for kind, baseline in (
                    ("idle", "bare flask/idle"),
                    ("read", f"{store}/raw read"),
                    ("write", f"{store}/raw write"),
                )
            ]
            samples: dict[tuple[str, str], list[float]] = {
                (store, kind): [] for store, kind, _, _ in pairs
            }
            for _ in range(repeats):
                for store, kind, target, baseline in pairs:
                    baseline.run(requests)
                    target.run(requests)
                    baseline.run(requests)
                    before, after = baseline.timings[-2:]
                    samples[store, kind].append(
                        target.timings[-1] / ((before + after) / 2)
                    )
                for scenario in ("flask cookie/idle", "flask cookie/read"):
                    scenarios[scenario].run(requests)
                scenarios["flask cookie/write"].run(requests)
        finally:
            for store in opened.values():
                _drop(store)
                store.close()
    ratios = {
        store: {kind: statistics.median(samples[store, kind]) for kind in TARGETS}
        for store in stores
    }
    return {
        "machine": _machine(),
        "repeats": repeats,
        "requests": requests,
        "medians_us": {k: s.median * 1e6 for k, s in scenarios.items()},
        "ratios": ratios,
        "targets": TARGETS,
    }


def _drop(store: SessionStore) -> None:
    table = getattr(store, "table", None)
    if table is not None:
        table.drop(store.engine, checkfirst=True)  # type: ignore[attr-defined]


def report(result: dict[str, t.Any]) -> tuple[str, bool]:
    lines = [f"machine: {result['machine']}"]
    lines.append(
        f"repeats: {result['repeats']} x {result['requests']} requests per scenario"
    )
    lines.append("")
    lines.append(f"{'scenario':<24} {'median us/request':>18}")
    for name, value in result["medians_us"].items():
        lines.append(f"{name:<24} {value:>18.1f}")
    lines.append("")
    lines.append(f"{'store':<12} {'idle/bare':>10} {'read/raw':>10} {'write/raw':>10}")
    ok = True
    for store, ratios in result["ratios"].items():
        cells = []
        for kind in ("idle", "read", "write"):
            value = ratios[kind]
            passed = value <= TARGETS[kind]
            ok &= passed
            cells.append(f"{value:>9.3f}{' ' if passed else '!'}")
        lines.append(f"{store:<12} " + " ".join(cells))
    lines.append("")
    lines.append(
        "targets: idle <= 1.10, read <= 1.15, write <= 1.15"
        f" -> {'all met' if ok else 'MISSED (marked !)'}"
    )
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("python -m benchmarks", __doc__, stores=DEFAULT_URLS)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args(argv)
    result = run(
        args.stores, repeats=args.repeats, requests=args.requests, warmup=args.warmup
    )
    return emit(result, *report(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
