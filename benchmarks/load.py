"""Throughput and tail latency under a real server: gunicorn driven by wrk.

For each store, ``benchmarks/loadapp.py`` runs under gunicorn (sync
workers, on a free loopback port) and ``wrk`` sends mixed traffic for a fixed
time over many pre-created sessions (``benchmarks/load.lua``): a share of
writes (each adds one to a per-session counter) and reads for the rest.
``bare`` is the same app and traffic with no session machinery, the
baseline.

Requirements, checked after each run: no socket error and no non-2xx
response, and every session's counter equal to the writes sent to it and
answered (plus one where a write was still in flight when wrk stopped: its
outcome is unknown; no session ever has two requests in flight).
Reported: requests/s, latency percentiles, and requests/s as a share of bare
Flask's.

Needs ``wrk`` on the PATH and gunicorn in this Python environment.

``benchmarks/http.py`` builds on the pieces here (the server, the wrk run,
its results, the counter check, the ratios to bare Flask).
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from flask_towersess.stores import store_from_url

from ._common import SERVER_URLS
from ._common import benchmark_parser
from ._common import emit
from ._common import machine as _machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LUA_SCRIPT = HERE / "load.lua"
APP = "benchmarks.loadapp:create_app()"
COOKIE_NAME = "session"  # Flask's default SESSION_COOKIE_NAME

DEFAULT_URLS = {
    "bare": "bare",
    "sqlite": None,  # a file in a temporary folder, filled in at run time
    "postgresql": SERVER_URLS["postgresql"],
    "mariadb": SERVER_URLS["mariadb"],
    "redis": SERVER_URLS["redis"],
}

# Per process, so two runs at once (or a test suite) cannot collide.
LOAD_TABLE = f"towersess_load_bench_{os.getpid()}"

#: Seconds to wait for gunicorn to answer /ping, and to stop.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
#: Seconds one plain HTTP request (set-up, checks) may take.
HTTP_TIMEOUT = 10.0


class LoadError(Exception):
    """A run that could not be carried out (server would not start, ...)."""


@dataclass
class LoadRun:
    store: str
    sessions: int
    round: int = 1
    duration_s: float = 0.0
    requests: int = 0
    requests_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    #: Every status answered -> responses (wrk's errors count only >= 400).
    statuses: dict[int, int] = field(default_factory=dict)
    writes_sent: int = 0
    writes_ok: int = 0
    writes_in_flight_at_stop: int = 0
    reads_ok: int = 0
    no_idle_session: int = 0
    sessions_checked: int = 0
    counter_mismatches: list[dict[str, int]] = field(default_factory=list)
    server_errors_logged: int = 0
    load_average_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_average_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    failure: str | None = None
    ratio_to_bare: float | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def non_2xx(self) -> int:
        return sum(n for code, n in self.statuses.items() if not 200 <= code < 300)

    @property
    def ok(self) -> bool:
        return (
            self.failure is None
            and self.error_count == 0
            and self.non_2xx == 0
            and not self.counter_mismatches
            and self.no_idle_session == 0
        )

    def record(self, result: dict[str, t.Any]) -> None:
        """Take what wrk measured (``parse_wrk()``'s result)."""
        values = result["values"]
        self.duration_s = values["duration_us"] / 1e6
        self.requests = int(values["requests"])
        self.requests_per_s = (
            self.requests / self.duration_s if self.duration_s else 0.0
        )
        self.latency_ms = {
            key[len("latency_") : -len("_us")]: value / 1000
            for key, value in values.items()
            if key.startswith("latency_")
        }
        self.errors = {
            key[len("errors_") :]: int(value)
            for key, value in values.items()
            if key.startswith("errors_")
        }
        self.statuses = dict(sorted(result["statuses"].items()))
        self.writes_sent = sum(result["sent"].values())
        self.writes_ok = sum(result["ok"].values())
        self.writes_in_flight_at_stop = sum(result["in_flight"].values())
        self.reads_ok = int(values.get("ok_reads", 0))
        self.no_idle_session = int(values.get("no_idle", 0))

    def fail(self, exc: BaseException, server: Server | None) -> None:
        """Record a run that could not be carried out."""
        self.failure = failure_text(exc, server)


#: What a run that could not be carried out raises.
RUN_ERRORS = (LoadError, OSError, subprocess.SubprocessError)


def failure_text(exc: BaseException, server: Server | None) -> str:
    """Why a run failed, with the end of the server's log."""
    text = f"{type(exc).__name__}: {exc}"
    return text if server is None else f"{text}\n{server.log_tail()}"


# -- the server --------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(
    port: int, path: str, cookie: str | None = None
) -> tuple[int, dict[str, str], str]:
    """One GET on a fresh loopback connection: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        headers = {"Cookie": cookie} if cookie else {}
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace")
        return response.status, dict(response.getheaders()), body
    finally:
        conn.close()


class Server:
    """gunicorn serving the load app, started and stopped by this process."""

    def __init__(
        self,
        store_url: str,
        table: str,
        workers: int,
        log: Path,
        cache_url: str | None = None,
    ) -> None:
        self.port = free_port()
        self.log = log
        env = dict(os.environ)
        env["TOWERSESS_LOAD_STORE"] = store_url
        env["TOWERSESS_LOAD_TABLE"] = table
        env.pop("TOWERSESS_LOAD_CACHE", None)
        if cache_url:
            env["TOWERSESS_LOAD_CACHE"] = cache_url
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), env.get("PYTHONPATH")) if p
        )
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            str(workers),
            "--worker-class",
            "sync",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--graceful-timeout",
            "5",
            "--log-level",
            "warning",
            "--chdir",
            str(ROOT),
            APP,
        ]
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LoadError(f"gunicorn exited at start-up: {self.log_tail()}")
            try:
                if http_get(self.port, "/ping")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise LoadError(f"gunicorn did not answer within {START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        self._log_file.close()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def errors_logged(self) -> int:
        text = self.log_text()
        return text.count("Traceback") + len(re.findall(r"\[ERROR\]", text))


# -- one run -----------------------------------------------------------------


def create_sessions(port: int, count: int, bare: bool) -> dict[int, str]:
    """Create the sessions through the app; returns index -> Cookie header."""
    cookies: dict[int, str] = {}
    for index in range(count):
        status, headers, _ = http_get(port, f"/init?i={index}")
        if status != 200:
            raise LoadError(f"/init answered {status}")
        if bare:
            cookies[index] = f"{COOKIE_NAME}=bare-{index}"
            continue
        header = next((v for k, v in headers.items() if k.lower() == "set-cookie"), "")
        pair = header.split(";", 1)[0]
        if not pair.startswith(f"{COOKIE_NAME}="):
            raise LoadError(f"/init set no session cookie (Set-Cookie: {header!r})")
        cookies[index] = pair
    return cookies


def run_wrk(
    port: int,
    cookie_file: Path,
    *,
    duration: int,
    connections: int,
    threads: int,
    write_share: float,
    read_path: str = "/read",
    write_path: str = "/write",
) -> dict[str, t.Any]:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        f"http://127.0.0.1:{port}",
        "--",
        str(cookie_file),
        str(write_share),
        str(threads),
        read_path,
        write_path,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    if done.returncode != 0:
        raise LoadError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout)


def parse_wrk(output: str) -> dict[str, t.Any]:
    values: dict[str, float] = {}
    per_session: dict[str, dict[int, int]] = {
        "sent_write": {},
        "ok_write": {},
        "pending_write": {},
        "pending_read": {},
        "status": {},  # status code -> responses
    }
    for line in output.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[0] != "TS":
            continue
        if parts[1] in per_session:
            counts = per_session[parts[1]]
            counts[int(parts[2])] = counts.get(int(parts[2]), 0) + int(parts[3])
        else:
            # Per-thread lines (ok_reads, bad, no_idle) add up.
            values[parts[1]] = values.get(parts[1], 0.0) + float(parts[2])
    if "requests" not in values:
        raise LoadError(f"no results in the wrk output: {output[-500:]!r}")
    return {
        "values": values,
        "sent": per_session["sent_write"],
        "ok": per_session["ok_write"],
        "in_flight": per_session["pending_write"],
        "statuses": per_session["status"],
    }


def check_counters(
    port: int,
    cookies: dict[int, str],
    ok: dict[int, int],
    in_flight: dict[int, int],
    *,
    path: str = "/read",
    before: dict[int, int] | None = None,
) -> tuple[list[dict[str, int]], dict[int, int]]:
    """Compare each session's counter with the writes it was sent.

    The counter must have grown from ``before`` (default 0: fresh sessions)
    by the writes answered 200, or one more when a write of the session was
    in flight when wrk stopped. Requests in flight are finished by the
    workers after wrk exits, so a session that disagrees is read again a
    few times, a second apart, before it counts as a mismatch.

    Returns the mismatches and the counters read (-status where the read
    failed), the ``before`` of the session's next run.
    """
    before = before or {}
    pending = dict(cookies)
    counters: dict[int, int] = {}
    for attempt in range(4):
        if attempt:
            time.sleep(1.0)
        for index, cookie in list(pending.items()):
            status, _, body = http_get(port, f"{path}?i={index}", cookie)
            counters[index] = int(body) if status == 200 else -status
            low = before.get(index, 0) + ok.get(index, 0)
            if low <= counters[index] <= low + in_flight.get(index, 0):
                del pending[index]
        if not pending:
            break
    mismatches = [
        {
            "session": i,
            "counter": counters[i],
            "before": before.get(i, 0),
            "writes_ok": ok.get(i, 0),
            "write_in_flight": in_flight.get(i, 0),
        }
        for i in sorted(pending)
    ]
    return mismatches, counters


def clear_sessions(port: int, cookies: dict[int, str]) -> None:
    for index, cookie in cookies.items():
        http_get(port, f"/clear?i={index}", cookie)


def prepare_store(name: str, url: str, table: str = LOAD_TABLE) -> None:
    """Create the SQL table (the deploy step the app expects to be done)."""
    if name in ("bare", "redis"):
        return
    store = store_from_url(url, table=table)
    try:
        store.migrate()
    finally:
        store.close()


def drop_store(name: str, url: str, table: str = LOAD_TABLE) -> None:
    if name in ("bare", "redis"):
        return
    store = store_from_url(url, table=table)
    try:
        sql_table = store.table  # type: ignore[attr-defined]
        sql_table.drop(store.engine, checkfirst=True)  # type: ignore[attr-defined]
    finally:
        store.close()


def drive(
    run: LoadRun,
    port: int,
    cookies: dict[int, str],
    tmp: Path,
    **wrk_options: t.Any,
) -> dict[str, t.Any]:
    """Send wrk's load (``run_wrk()``'s options) over ``cookies`` to the
    server on ``port``; record what it measured in ``run``. Returns wrk's
    results, whose per-session counts the counter check needs."""
    cookie_file = tmp / f"cookies-{run.store}.tsv"
    cookie_file.write_text("".join(f"{i}\t{cookie}\n" for i, cookie in cookies.items()))
    run.load_average_before = os.getloadavg()
    result = run_wrk(port, cookie_file, **wrk_options)
    run.load_average_after = os.getloadavg()
    run.record(result)
    return result


def load_run(
    name: str,
    url: str,
    tmp: Path,
    *,
    sessions: int,
    duration: int,
    connections: int,
    threads: int,
    workers: int,
    write_share: float,
    round_number: int = 1,
) -> LoadRun:
    run = LoadRun(name, sessions, round_number)
    bare = name == "bare"
    server: Server | None = None
    try:
        prepare_store(name, url)
        server = Server(url, LOAD_TABLE, workers, tmp / f"gunicorn-{name}.log")
        server.wait_ready()
        cookies = create_sessions(server.port, sessions, bare)
        result = drive(
            run,
            server.port,
            cookies,
            tmp,
            duration=duration,
            connections=connections,
            threads=threads,
            write_share=write_share,
        )
        if not bare:
            run.counter_mismatches, _ = check_counters(
                server.port, cookies, result["ok"], result["in_flight"]
            )
            run.sessions_checked = len(cookies)
            clear_sessions(server.port, cookies)
    except RUN_ERRORS as exc:
        run.fail(exc, server)
    finally:
        if server is not None:
            server.stop()
            run.server_errors_logged = server.errors_logged()
        try:
            drop_store(name, url)
        except Exception as exc:  # cleanup must not hide the run's result
            print(f"{name}: could not drop {LOAD_TABLE}: {exc}", file=sys.stderr)
    return run


def run(
    stores: list[str],
    *,
    sessions: int,
    duration: int,
    connections: int,
    threads: int,
    workers: int,
    write_share: float,
    rounds: int = 1,
) -> dict[str, t.Any]:
    runs: list[LoadRun] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # Rounds interleave the stores, so that a change in the machine's
        # load hits every store alike.
        for round_number in range(1, rounds + 1):
            this_round: list[LoadRun] = []
            for name in stores:
                url = DEFAULT_URLS[name] or f"sqlite:///{tmp}/load-bench.sqlite3"
                print(
                    f"round {round_number}: {name}: {duration} s of load...",
                    file=sys.stderr,
                    flush=True,
                )
                this_round.append(
                    load_run(
                        name,
                        url,
                        tmp,
                        sessions=sessions,
                        duration=duration,
                        connections=connections,
                        threads=threads,
                        workers=workers,
                        write_share=write_share,
                        round_number=round_number,
                    )
                )
            set_ratios(this_round)
            runs.extend(this_round)
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
            "sessions": sessions,
            "write_share": write_share,
        },
        "runs": run_dicts(runs),
        "medians": medians(runs),
    }


def non_2xx_detail(statuses: dict[int, int]) -> str:
    """The responses other than 2xx, by status: ``"400 x12, 500 x1"``."""
    return ", ".join(
        f"{code} x{n}" for code, n in sorted(statuses.items()) if not 200 <= code < 300
    )


def server_settings(
    *, workers: int, threads: int, connections: int, duration: int, rounds: int
) -> dict[str, t.Any]:
    """The results' settings that ``setup_lines()`` reports."""
    return {
        "workers": workers,
        "worker_class": "sync",
        "wrk": f"-t{threads} -c{connections} -d{duration}s",
        "rounds": rounds,
    }


def run_dicts(runs: t.Sequence[LoadRun]) -> list[dict[str, t.Any]]:
    """The runs as the results hold them, with what their properties say."""
    return [dict(asdict(r), ok=r.ok, non_2xx=r.non_2xx) for r in runs]


def set_ratios(runs: t.Sequence[LoadRun]) -> None:
    """Each run's requests/s as a share of bare Flask's, among ``runs``: the
    runs of one round (and one kind of traffic), so that both saw the same
    machine."""
    bare = next((r for r in runs if r.store == "bare" and r.failure is None), None)
    if bare is not None and bare.requests_per_s:
        for r in runs:
            if r.failure is None:
                r.ratio_to_bare = r.requests_per_s / bare.requests_per_s


def medians(runs: t.Sequence[LoadRun]) -> dict[str, dict[str, float | None]]:
    """Per store, the median over the rounds that completed."""
    medians: dict[str, dict[str, float | None]] = {}
    for name in dict.fromkeys(r.store for r in runs):
        done = [r for r in runs if r.store == name and r.failure is None]
        if not done:
            continue
        ratios = [r.ratio_to_bare for r in done if r.ratio_to_bare is not None]
        medians[name] = {
            "requests_per_s": statistics.median(r.requests_per_s for r in done),
            "p50_ms": statistics.median(r.latency_ms.get("p50", 0) for r in done),
            "p99_ms": statistics.median(r.latency_ms.get("p99", 0) for r in done),
            "ratio_to_bare": statistics.median(ratios) if ratios else None,
        }
    return medians


def setup_lines(result: dict[str, t.Any]) -> list[str]:
    """The report's first lines: the machine, the server and wrk."""
    s = result["settings"]
    return [
        f"machine: {result['machine']}",
        f"gunicorn: {s['workers']} {s['worker_class']} workers on 127.0.0.1;"
        f" wrk {s['wrk']} per run",
    ]


def run_notes(r: dict[str, t.Any], label: str) -> list[str]:
    """What one run (as in the results) missed, one line per problem, so
    that none goes unseen behind a summary."""
    if r["failure"]:
        return [f"{label}: FAILED: {r['failure']}"]
    notes = []
    socket = {k: v for k, v in r["errors"].items() if k != "status" and v}
    if socket:
        notes.append(f"{label}: socket errors: {socket}")
    if r["non_2xx"]:
        notes.append(
            f"{label}: {r['non_2xx']} of {r['requests']} responses not 2xx"
            f" ({non_2xx_detail(r['statuses'])})"
        )
    for m in r["counter_mismatches"][:5]:
        notes.append(
            f"{label}: session {m['session']} counter {m['counter']}, expected"
            f" {m['before']} + {m['writes_ok']} writes answered"
            + (" (+1 in flight at stop)" if m["write_in_flight"] else "")
        )
    if r["no_idle_session"]:
        notes.append(
            f"{label}: {r['no_idle_session']} requests found no idle session"
            " (more sessions than connections are needed)"
        )
    if r["server_errors_logged"]:
        notes.append(f"{label}: {r['server_errors_logged']} errors in the gunicorn log")
    return notes


def report(result: dict[str, t.Any]) -> tuple[str, bool]:
    s = result["settings"]
    lines = [
        *setup_lines(result),
        f"{s['sessions']} sessions, {s['write_share']:.0%} writes",
        "",
        f"{'round/store':<13} {'req/s':>8} {'x bare':>7} {'p50 ms':>7} {'p90 ms':>7}"
        f" {'p99 ms':>7} {'max ms':>7} {'requests':>9} {'writes':>7}"
        f" {'errors':>6} {'counters':>10} {'load avg':>9}",
    ]
    ok = True
    notes: list[str] = []
    for r in result["runs"]:
        ok &= r["ok"]
        label = f"{r['round']}/{r['store']}"
        notes.extend(run_notes(r, f"{r['store']} round {r['round']}"))
        if r["failure"]:
            lines.append(f"{label:<13} FAILED: {r['failure'].splitlines()[0]}")
            continue
        lat = r["latency_ms"]
        ratio = "" if r["ratio_to_bare"] is None else f"{r['ratio_to_bare']:.2f}"
        if r["store"] == "bare":
            counters = "n/a"
        elif r["counter_mismatches"]:
            counters = f"{len(r['counter_mismatches'])} BAD"
        else:
            counters = f"{r['sessions_checked']} ok"
        errors = sum(r["errors"].values())
        lines.append(
            f"{label:<13} {r['requests_per_s']:>8.0f} {ratio:>7}"
            f" {lat.get('p50', 0):>7.1f} {lat.get('p90', 0):>7.1f}"
            f" {lat.get('p99', 0):>7.1f} {lat.get('max', 0):>7.1f}"
            f" {r['requests']:>9} {r['writes_sent']:>7}"
            f" {errors:>6}{' ' if errors == 0 else '!'}{counters:>10}"
            f" {r['load_average_after'][0]:>9.2f}"
        )
    if s["rounds"] > 1:
        lines.append("")
        lines.append(f"median of {s['rounds']} rounds:")
        lines.append(f"{'store':<13} {'req/s':>8} {'x bare':>7} {'p99 ms':>7}")
        for name, m in result["medians"].items():
            ratio = "" if m["ratio_to_bare"] is None else f"{m['ratio_to_bare']:.2f}"
            lines.append(
                f"{name:<13} {m['requests_per_s']:>8.0f} {ratio:>7} {m['p99_ms']:>7.1f}"
            )
    lines.append("")
    lines.append(
        "required: no socket errors, no non-2xx responses, every counter equal to"
        " the writes answered (+1 if one was in flight at stop)"
        f" -> {'all met' if ok else 'MISSED'}"
    )
    lines.extend(notes)
    return "\n".join(lines), ok


def add_server_options(
    parser: argparse.ArgumentParser, *, duration: int, rounds: int
) -> None:
    """The options of a benchmark that drives gunicorn with wrk (this one and
    http.py): ``server_options()`` reads them back."""
    parser.add_argument(
        "--duration", type=int, default=duration, help="seconds of load per run"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=rounds,
        help="run everything this many times, interleaved; report medians",
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")


def server_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> dict[str, int]:
    """``add_server_options()``'s values, checked, as ``run()``'s keywords."""
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be 1 to 20")
    if not 1 <= args.duration <= 600:
        parser.error("--duration must be 1 to 600 seconds")
    if args.threads < 1 or args.connections < args.threads or args.workers < 1:
        parser.error("need threads >= 1, connections >= threads, workers >= 1")
    if shutil.which("wrk") is None:
        parser.error("wrk is not on the PATH (scripts/bench.sh installs it)")
    keys = ("duration", "rounds", "connections", "threads", "workers")
    return {key: getattr(args, key) for key in keys}


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("python -m benchmarks load", __doc__, stores=DEFAULT_URLS)
    parser.add_argument(
        "--sessions", type=int, default=256, help="sessions created before the load"
    )
    parser.add_argument(
        "--write-share", type=float, default=0.2, help="share of writes (0 to 1)"
    )
    add_server_options(parser, duration=10, rounds=1)
    args = parser.parse_args(argv)
    options = server_options(parser, args)
    if not 0 <= args.write_share <= 1:
        parser.error("--write-share must be between 0 and 1")
    if args.sessions < 2 * args.connections:
        parser.error("--sessions must be at least twice --connections")
    result = run(
        args.stores, sessions=args.sessions, write_share=args.write_share, **options
    )
    return emit(result, *report(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
