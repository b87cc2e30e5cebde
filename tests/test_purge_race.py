"""``purge-expired`` racing live traffic on short-lived sessions.

Sessions live one second. While client threads create sessions, write to
them and keep some alive, two purges (as from two cron hosts, one in
batches of 5, one in batches of 1,000) delete expired sessions over and
over. On SQLite, PostgreSQL and MariaDB:

- no request fails: every response is a ``200``, but for a session that
  expired during its own request (a ``400``, see ``keep_alive``);
- no purge is aborted: ``purge_expired`` never raises;
- no live session is deleted: a session is live until at least one lifetime
  after the start of the last request that wrote it (the store sets its
  expiry from a moment later than that), and every request that ends before
  then finds all of the session's writes.

On MariaDB the purge used to delete by an expiry range under REPEATABLE
READ (``DELETE ... WHERE expires_at <= now LIMIT n``), which locks the
expiry index with next-key locks, and every row it scans when MariaDB
prefers a table scan (a large batch): the two purges deadlocked (1213)
several times a run, and purges were aborted.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
import typing as t
from datetime import timedelta

import pytest
from flask import Flask
from flask import jsonify
from flask import session

from flask_towersess.session import new_session_key
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import utcnow

from .apps import session_app

if t.TYPE_CHECKING:
    from flask_towersess.stores.sqlalchemy import SQLAlchemyStore

#: Seconds a session lives without use.
LIFETIME = 1.0
#: Seconds the traffic runs on each backend.
DURATION = 3.0
#: Client threads keeping a session alive, writing to it with a pause drawn
#: from their range (seconds) between requests; the last one pauses close to
#: the lifetime, so its session often expires just as it comes back.
KEEPER_PAUSES = [(0.0, 0.3), (0.0, 0.5), (0.1, 0.6), (0.7, 1.1)]
#: Client threads creating sessions and abandoning them, for the purge to find.
CHURNERS = 2
#: Two purges at once, as from two cron hosts: one in small batches, one
#: with the command's default.
PURGE_BATCH_SIZES = (5, 1000)
#: Records inserted before the traffic starts, expiring during it, so the
#: purge has work from the first moment.
SEEDED = 200
#: An upper bound on each client thread's requests, whatever the speed.
MAX_REQUESTS = 1500


def make_app(store: SQLAlchemyStore) -> Flask:
    app = session_app(
        store,
        SECRET_KEY="test secret",
        TESTING=True,
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=LIFETIME),
        # Every read refreshes the expiry too: more writes next to the purge.
        SESSION_TOUCH_INTERVAL=0,
    )

    @app.post("/write/<name>/<int:value>")
    def write(name: str, value: int) -> t.Any:
        session[name] = value
        return jsonify(dict(session))

    @app.get("/read")
    def read() -> t.Any:
        return jsonify(dict(session))

    return app


@dataclasses.dataclass
class Outcome:
    """What the threads saw; lists are appended to from several threads."""

    failures: list[str] = dataclasses.field(default_factory=list)
    lost_live: list[str] = dataclasses.field(default_factory=list)
    purge_errors: list[str] = dataclasses.field(default_factory=list)
    purged: list[int] = dataclasses.field(default_factory=list)
    kept_writes: list[int] = dataclasses.field(default_factory=list)
    expired_chains: list[int] = dataclasses.field(default_factory=list)


def keep_alive(
    app: Flask, pauses: tuple[float, float], stop: threading.Event, out: Outcome
) -> None:
    """Write to one session again and again; check every write is still there.

    ``live_until`` is a lower bound on the stored expiry (client and store
    share the clock): a request that ends before it and misses a write, or
    is interrupted (the record vanished mid-request), lost a live session.
    A request past it may find the session expired, and starts a new one.
    Every third request only reads (and touches).
    """
    client = app.test_client()
    expected: dict[str, int] = {}
    live_until = 0.0
    kept = expired = 0

    def lost(what: str, ended: float) -> None:
        if ended < live_until:
            out.lost_live.append(f"{what} {live_until - ended:.3f} s before expiry")

    for n in range(MAX_REQUESTS):
        if stop.is_set():
            break
        read_only = bool(expected) and n % 3 == 0
        started = time.time()
        try:
            if read_only:
                response = client.get("/read")
            else:
                response = client.post(f"/write/k{n}/{n}")
        except Exception as exc:  # a driver error that escaped the store
            out.failures.append(f"keeper: {exc!r:.300}")
            continue
        ended = time.time()
        if response.status_code == 200:
            data = response.get_json()
            wanted = expected if read_only else {**expected, f"k{n}": n}
            if data != wanted:
                lost(f"had {sorted(expected)}, got {sorted(data)},", ended)
                expired += 1
                wanted = data  # a new session, holding this request's write
            expected = wanted
            if not read_only:
                kept += 1
                # Not moved by a read: a touch that met an expired record
                # changes nothing, silently.
                live_until = started + LIFETIME
        elif response.status_code == 400:  # the record vanished mid-request
            lost("interrupted", ended)
            expired += 1
            expected, live_until = {}, 0.0
        else:
            out.failures.append(
                f"keeper: {response.status_code} {response.data!r:.200}"
            )
        time.sleep(random.uniform(*pauses))
    # The last look, while the purges still run.
    if expected and live_until - time.time() > 0.1:
        response = client.get("/read")
        if response.status_code != 200 or response.get_json() != expected:
            lost(
                f"at the end: {response.status_code}, {response.data!r:.100},",
                time.time(),
            )
    out.kept_writes.append(kept)
    out.expired_chains.append(expired)


def churn(app: Flask, stop: threading.Event, out: Outcome) -> None:
    """Create sessions, write a key or two, abandon them."""
    requests = 0
    while not stop.is_set() and requests < MAX_REQUESTS:
        client = app.test_client()
        for i in range(random.randint(1, 3)):
            requests += 1
            try:
                response = client.post(f"/write/c{i}/{i}")
            except Exception as exc:
                out.failures.append(f"churn: {exc!r:.300}")
                continue
            if response.status_code != 200:
                out.failures.append(
                    f"churn: {response.status_code} {response.data!r:.200}"
                )


def purge(
    store: SQLAlchemyStore, batch_size: int, stop: threading.Event, out: Outcome
) -> None:
    while not stop.is_set():
        try:
            out.purged.append(store.purge_expired(batch_size))
        except Exception as exc:
            out.purge_errors.append(f"{exc!r:.300} from {exc.__cause__!r:.300}")
        time.sleep(random.uniform(0, 0.005))


def seed(store: SQLAlchemyStore) -> None:
    now = utcnow()
    for i in range(SEEDED):
        expires_at = now + timedelta(seconds=DURATION * 0.6 * i / SEEDED)
        store.create(Record(new_session_key(), b"\x80", expires_at))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])
def test_purge_racing_traffic_fails_nothing_and_deletes_no_live_session(
    backend: str, request: pytest.FixtureRequest
) -> None:
    store: SQLAlchemyStore = request.getfixturevalue(f"{backend}_store")
    app = make_app(store)
    seed(store)
    out = Outcome()
    stop_clients = threading.Event()
    stop_purgers = threading.Event()
    clients = [
        threading.Thread(target=keep_alive, args=(app, pauses, stop_clients, out))
        for pauses in KEEPER_PAUSES
    ] + [
        threading.Thread(target=churn, args=(app, stop_clients, out))
        for _ in range(CHURNERS)
    ]
    purgers = [
        threading.Thread(target=purge, args=(store, size, stop_purgers, out))
        for size in PURGE_BATCH_SIZES
    ]
    for thread in purgers + clients:
        thread.start()
    time.sleep(DURATION)
    stop_clients.set()
    # The purgers keep going until the last request has been checked.
    for thread in clients:
        thread.join(timeout=60)
    stop_purgers.set()
    for thread in purgers:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in clients + purgers)

    assert out.failures == []
    assert out.purge_errors == []
    assert out.lost_live == []
    # Not vacuous: the purge deleted the seeded records and abandoned
    # sessions while the keepers kept theirs going.
    assert sum(out.purged) >= SEEDED
    assert min(out.kept_writes[:-1]) >= 3, (out.kept_writes, out.expired_chains)
