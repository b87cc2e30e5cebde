"""Requests per second under a real server, per store and kind of request,
as a share of bare Flask's: gunicorn driven by wrk.

What a session costs in a deployment, where the per-request benchmark
(``requests``) measures it in-process: each store is served by
``benchmarks/loadapp.py`` under gunicorn (sync workers, a free loopback
port), and ``wrk`` sends one kind of request at a time
(``benchmarks/load.lua``):

- idle: the session cookie is sent, the view never touches the session;
- read: the view reads the session (one per wrk slot, pre-created);
- write: the view adds one to a counter in its own session (no two requests
  in flight share a session);
- shared-write: every request adds one to a key of ONE session shared by
  all (a key per wrk slot, so no key has two writes in flight): the workers'
  saves collide, and the session must merge them, none lost or refused.

Targets: bare Flask (no session machinery; the baseline, always run), then
SQLite (a file in a temporary folder), PostgreSQL, MariaDB, Redis, and
``caching`` (a Redis cache in front of PostgreSQL, ``SESSION_CACHE``).

Every server runs for the whole benchmark; runs alternate. In each round,
for each kind of request, bare Flask runs first, then the stores, in an
order that rotates from round to round, so that a change in the machine's
load hits every store alike. Each run's requests/s is divided by bare
Flask's in the same round; the report gives the median of those ratios, and
the median requests/s and latencies over the rounds.

Requirements, checked after each run (as ``python -m benchmarks load``
does): no socket error, no response other than 2xx (shared-write included:
the target is zero), and every counter grown by the writes answered (plus
one where a write was in flight when wrk stopped). A run that misses one is
listed and the exit status is 1.

Needs ``wrk`` on the PATH and gunicorn in this Python environment
(``scripts/bench.sh http`` sets both up).
"""

from __future__ import annotations

import os
import sys
import tempfile
import typing as t
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from ._common import SERVER_URLS
from ._common import benchmark_parser
from ._common import emit
from ._common import machine as _machine
from ._common import names_from
from .load import RUN_ERRORS
from .load import LoadRun
from .load import Server
from .load import add_server_options
from .load import check_counters
from .load import clear_sessions
from .load import create_sessions
from .load import drive
from .load import drop_store
from .load import failure_text
from .load import medians
from .load import prepare_store
from .load import run_dicts
from .load import run_notes
from .load import server_options
from .load import server_settings
from .load import set_ratios
from .load import setup_lines

#: Store name -> (store URL, cache URL); None: SQLite, filled in at run time.
TARGETS: dict[str, tuple[str | None, str | None]] = {
    "bare": ("bare", None),
    "sqlite": (None, None),
    "postgresql": (SERVER_URLS["postgresql"], None),
    "mariadb": (SERVER_URLS["mariadb"], None),
    "redis": (SERVER_URLS["redis"], None),
    "caching": (SERVER_URLS["postgresql"], SERVER_URLS["redis"]),
}


@dataclass(frozen=True)
class Scenario:
    """One kind of request: the view every request of a run goes to."""

    path: str
    write: bool
    #: One session for every wrk slot (a key each) instead of one per slot.
    shared: bool = False

    @property
    def check_path(self) -> str:
        """The view that reads a slot's counter back."""
        return "/read-shared" if self.shared else "/read"

    def wrk_options(self) -> dict[str, t.Any]:
        # load.lua picks a read or a write per request by the share of
        # writes; a run here sends one kind only.
        if self.write:
            return {"write_share": 1.0, "write_path": self.path}
        return {"write_share": 0.0, "read_path": self.path}


SCENARIOS = {
    "idle": Scenario("/idle", write=False),
    "read": Scenario("/read", write=False),
    "write": Scenario("/write", write=True),
    "shared-write": Scenario("/write-shared", write=True, shared=True),
}


@dataclass
class HttpRun(LoadRun):
    scenario: str = ""


@dataclass
class Target:
    """One store's server, up for the whole benchmark, and its sessions."""

    name: str
    url: str
    cache_url: str | None
    table: str
    server: Server | None = None
    #: Slot -> Cookie header: a session per slot, and the one shared session.
    own: dict[int, str] = field(default_factory=dict)
    shared: dict[int, str] = field(default_factory=dict)
    #: Check path -> each slot's counter, as the last check read it: the
    #: sessions live across runs, so each run checks what it added.
    counters: dict[str, dict[int, int]] = field(default_factory=dict)
    errors_logged: int = 0
    failure: str | None = None

    @property
    def bare(self) -> bool:
        return self.name == "bare"

    def launch(self, tmp: Path, workers: int) -> None:
        """Start gunicorn; it gets ready while the other targets start."""
        try:
            prepare_store(self.name, self.url, self.table)
            self.server = Server(
                self.url,
                self.table,
                workers,
                tmp / f"gunicorn-{self.name}.log",
                cache_url=self.cache_url,
            )
        except Exception as exc:  # a store that is down: its runs fail, not all
            self.failure = failure_text(exc, None)

    def wait_ready(self, slots: int) -> None:
        if self.failure or self.server is None:
            return
        try:
            self.server.wait_ready()
            self.own = create_sessions(self.server.port, slots, self.bare)
            one = create_sessions(self.server.port, 1, self.bare)[0]
            self.shared = dict.fromkeys(range(slots), one)
        except RUN_ERRORS as exc:
            self.failure = failure_text(exc, self.server)

    def measure(
        self, scenario: str, round_number: int, tmp: Path, **wrk: t.Any
    ) -> HttpRun:
        """One run of ``scenario`` against this server, and its checks."""
        spec = SCENARIOS[scenario]
        cookies = self.shared if spec.shared else self.own
        sessions = 1 if spec.shared else len(cookies)
        run = HttpRun(self.name, sessions, round_number, scenario=scenario)
        if self.failure or self.server is None:
            run.failure = self.failure or "not started"
            return run
        port = self.server.port
        try:
            result = drive(run, port, cookies, tmp, **wrk, **spec.wrk_options())
            if not self.bare:
                run.counter_mismatches, counters = check_counters(
                    port,
                    cookies,
                    result["ok"],
                    result["in_flight"],
                    path=spec.check_path,
                    before=self.counters.get(spec.check_path),
                )
                # The next run starts from what was read, so that a
                # mismatch is reported once, not again in every later run.
                self.counters[spec.check_path] = counters
                run.sessions_checked = len(cookies)
        except RUN_ERRORS as exc:
            run.fail(exc, self.server)
        logged = self.server.errors_logged()
        run.server_errors_logged = logged - self.errors_logged
        self.errors_logged = logged
        return run

    def close(self) -> None:
        if self.server is not None:
            try:
                if not self.bare and self.failure is None:
                    clear_sessions(self.server.port, self.own)
                    clear_sessions(self.server.port, {0: self.shared[0]})
            except RUN_ERRORS as exc:  # cleanup must not hide the results
                print(f"{self.name}: could not clear: {exc}", file=sys.stderr)
            self.server.stop()
        try:
            drop_store(self.name, self.url, self.table)
        except Exception as exc:
            print(f"{self.name}: could not drop {self.table}: {exc}", file=sys.stderr)


def run(
    stores: list[str],
    scenarios: list[str],
    *,
    duration: int,
    connections: int,
    threads: int,
    workers: int,
    rounds: int,
) -> dict[str, t.Any]:
    # Twice the connections, as load.py requires: every wrk connection finds
    # an idle slot (one request in flight per slot, see load.lua).
    slots = 2 * connections
    others = [s for s in stores if s != "bare"]
    runs: list[HttpRun] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        targets: dict[str, Target] = {}
        for name in ["bare", *others]:
            url, cache_url = TARGETS[name]
            targets[name] = Target(
                name,
                url or f"sqlite:///{tmp}/http-bench.sqlite3",
                cache_url,
                # A table per store and process: postgresql and caching share
                # a database, and a test suite may be running.
                f"towersess_http_bench_{os.getpid()}_{name}",
            )
        try:
            for target in targets.values():
                target.launch(tmp, workers)
            for target in targets.values():
                target.wait_ready(slots)
            for round_number in range(1, rounds + 1):
                shift = (round_number - 1) % max(len(others), 1)
                order = ["bare", *others[shift:], *others[:shift]]
                for scenario in scenarios:
                    print(
                        f"round {round_number}: {scenario}: {', '.join(order)}"
                        f" ({duration} s each)...",
                        file=sys.stderr,
                        flush=True,
                    )
                    this_round = [
                        targets[name].measure(
                            scenario,
                            round_number,
                            tmp,
                            duration=duration,
                            connections=connections,
                            threads=threads,
                        )
                        for name in order
                    ]
                    set_ratios(this_round)
                    runs.extend(this_round)
        finally:
            for target in targets.values():
                target.close()
    return {
        "machine": _machine(),
        "settings": {
            **server_settings(
                workers=workers,
                threads=threads,
                connections=connections,
                duration=duration,
                rounds=rounds,
            ),
            "slots": slots,
            "stores": ["bare", *others],
            "scenarios": scenarios,
        },
        "runs": run_dicts(runs),
        "summary": {
            scenario: _summary([r for r in runs if r.scenario == scenario])
            for scenario in scenarios
        },
    }


def _summary(runs: list[HttpRun]) -> dict[str, dict[str, t.Any]]:
    """Per store, over the rounds of one scenario: the medians of the rates
    and latencies (load.py's), and the sums of the counts."""
    middle = medians(runs)
    summary: dict[str, dict[str, t.Any]] = {}
    for name in dict.fromkeys(r.store for r in runs):
        mine = [r for r in runs if r.store == name]
        done = [r for r in mine if r.failure is None]
        statuses = [(code, n) for r in done for code, n in r.statuses.items()]
        summary[name] = {
            **middle.get(name, {}),
            "runs": len(mine),
            "failed": len(mine) - len(done),
            "requests": sum(r.requests for r in done),
            "non_2xx": sum(r.non_2xx for r in done),
            "4xx": sum(n for code, n in statuses if 400 <= code < 500),
            "5xx": sum(n for code, n in statuses if 500 <= code < 600),
            # wrk's "status" errors are the non-2xx above, not the socket's.
            "socket_errors": sum(
                n for r in done for kind, n in r.errors.items() if kind != "status"
            ),
            "counter_mismatches": sum(len(r.counter_mismatches) for r in done),
            "checked": sum(r.sessions_checked for r in done),
            "ok": all(r.ok for r in mine),
        }
    return summary


def report(result: dict[str, t.Any]) -> tuple[str, bool]:
    s = result["settings"]
    lines = [
        *setup_lines(result),
        f"{s['rounds']} rounds; in each, per scenario, bare Flask first, then"
        " the stores in an order that rotates",
        f"{s['slots']} slots: a session each (idle, read, write), or a key each"
        " in one shared session (shared-write)",
        "req/s, x bare (the ratio to bare Flask in the same round), p50, p99:"
        " medians over the rounds; the counts: sums over the rounds",
        "",
        f"{'scenario':<13} {'store':<11} {'req/s':>7} {'x bare':>6} {'p50 ms':>7}"
        f" {'p99 ms':>7} {'requests':>9} {'non-2xx':>7} {'4xx':>5} {'5xx':>5}"
        f" {'socket':>6} {'checked':>10}",
    ]
    ok = True
    for scenario, per_store in result["summary"].items():
        for store, m in per_store.items():
            ok &= m["ok"]
            label = f"{scenario:<13} {store:<11}"
            if m["failed"] == m["runs"]:
                lines.append(f"{label} FAILED in every round")
                continue
            ratio = m["ratio_to_bare"]
            if store == "bare":
                checked = "n/a"
            elif m["counter_mismatches"]:
                checked = f"{m['counter_mismatches']} BAD"
            else:
                checked = f"{m['checked']} ok"
            lines.append(
                f"{label} {m['requests_per_s']:>7.0f}"
                f" {'' if ratio is None else f'{ratio:.2f}':>6}"
                f" {m['p50_ms']:>7.1f} {m['p99_ms']:>7.1f} {m['requests']:>9}"
                f" {m['non_2xx']:>7} {m['4xx']:>5} {m['5xx']:>5}"
                f" {m['socket_errors']:>6} {checked:>10}"
                + ("" if m["ok"] else "  <- MISSED")
                + (f" ({m['failed']} runs failed)" if m["failed"] else "")
            )
        lines.append("")
    lines.append(
        "required: no socket errors, no non-2xx responses (shared-write too:"
        " the target is zero), every counter grown by the writes answered"
        f" (+1 if one was in flight at stop) -> {'all met' if ok else 'MISSED'}"
    )
    for r in result["runs"]:
        label = f"{r['scenario']}/{r['store']} round {r['round']}"
        lines.extend(run_notes(r, label))
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    stores = [name for name in TARGETS if name != "bare"]
    parser = benchmark_parser(
        "python -m benchmarks http",
        __doc__,
        stores=TARGETS,
        default_stores=stores,
        stores_help=f"comma-separated: {', '.join(stores)}"
        " (bare Flask always runs, the baseline)",
    )
    parser.add_argument(
        "--scenarios",
        type=names_from(SCENARIOS, "scenarios"),
        default=",".join(SCENARIOS),
        help=f"comma-separated: {', '.join(SCENARIOS)}",
    )
    add_server_options(parser, duration=3, rounds=3)
    args = parser.parse_args(argv)
    if not args.scenarios:
        parser.error("no scenario to run")
    result = run(args.stores, args.scenarios, **server_options(parser, args))
    return emit(result, *report(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
