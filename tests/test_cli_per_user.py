"""``flask sessions list --user`` and ``flask sessions revoke``.

Every store of the shared fixture runs every test: one with a per-user
index (``store.as_per_user()``) gets the commands' work checked, one
without gets the one-line refusal. A store that gains the index joins the
first group by itself.
"""

from __future__ import annotations

import json
import re
import typing as t

import pytest
from flask import Flask
from flask import session

from flask_towersess import ServerSessionInterface
from flask_towersess import SessionExt
from flask_towersess.cli import sessions_command
from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.memory import MemoryStore

from .conftest import STORE_NAMES

HANDLE = re.compile(r"^[A-Za-z0-9_-]{22}$")
TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


def make_app(store: SessionStore, *, extension: bool = True) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="cli per-user secret", TESTING=True)
    if extension:
        SessionExt(app, store=store)
    else:
        app.session_interface = ServerSessionInterface(store)
        app.cli.add_command(sessions_command)

    @app.post("/login/<user>")
    def login(user: str) -> str:
        session["_user_id"] = user
        return "ok"

    @app.post("/anonymous")
    def anonymous() -> str:
        session["cart"] = ["sku-1"]
        return "ok"

    @app.get("/whoami")
    def whoami() -> str:
        return str(session.get("_user_id"))

    return app


def invoke(app: Flask, *args: str, input: str | None = None) -> t.Any:
    return app.test_cli_runner().invoke(args=["sessions", *args], input=input)


def log_in(app: Flask, user: str, agent: str = "TestBrowser/1.0") -> t.Any:
    client = app.test_client()
    response = client.post(f"/login/{user}", headers={"User-Agent": agent})
    assert response.status_code == 200
    assert client.get("/whoami").text == user
    return client


def one_line_error(result: t.Any, *fragments: str) -> None:
    """Exit status 1, one line on standard error holding ``fragments``."""
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(params=STORE_NAMES)
def store(request: pytest.FixtureRequest) -> SessionStore:
    return t.cast(SessionStore, request.getfixturevalue(f"{request.param}_store"))


def test_list_and_revoke(store: SessionStore) -> None:
    app = make_app(store)
    if store.as_per_user() is None:
        for args in (
            ("list", "--user", "alice"),
            ("revoke", "--user", "alice"),
            ("revoke", "--all", "--yes"),
        ):
            one_line_error(
                invoke(app, *args), "keeps no per-user index", "use a store that does"
            )
        return

    phone = log_in(app, "alice", "Phone/1.0")
    laptop = log_in(app, "alice", "Laptop/2.0 " + "x" * 100)
    tablet = log_in(app, "alice", "Tablet/3.0")
    bob = log_in(app, "bob")
    anonymous = app.test_client()
    anonymous.post("/anonymous")

    listed = invoke(app, "list", "--user", "alice")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == [
        "HANDLE",
        "CREATED",
        "LAST",
        "ACTIVE",
        "EXPIRES",
        "USER",
        "AGENT",
        "IP",
    ]
    assert lines[-1] == "3 sessions of user alice"
    rows = lines[1:-1]
    assert len(rows) == 3
    agents = set()
    for row in rows:
        handle, c_date, c_time, a_date, a_time, e_date, e_time, agent, *rest = (
            row.split()
        )
        assert HANDLE.match(handle)
        for date, time in ((c_date, c_time), (a_date, a_time), (e_date, e_time)):
            assert TIME.match(f"{date} {time}")
        agents.add(agent)
        assert rest[-1] == "-"  # no IP: SESSION_RECORD_IP is off
    assert agents == {"Phone/1.0", "Laptop/2.0", "Tablet/3.0"}
    # A long User-Agent is cut in the table.
    assert any(row.rstrip(" -").endswith("...") for row in rows)

    as_json = invoke(app, "list", "--user", "alice", "--json")
    assert as_json.exit_code == 0, as_json.output
    figures = json.loads(as_json.stdout)
    assert figures["user_id"] == "alice"
    sessions = figures["sessions"]
    assert {s["user_agent"] for s in sessions} == {
        "Phone/1.0",
        "Laptop/2.0 " + "x" * 100,
        "Tablet/3.0",
    }
    assert all(s["ip"] is None and s["expires_at"] for s in sessions)
    handles = {s["user_agent"]: s["id"] for s in sessions}
    assert {row.split()[0] for row in rows} == set(handles.values())

    one = invoke(app, "revoke", "--user", "alice", "--session", handles["Phone/1.0"])
    assert one.exit_code == 0, one.output
    assert one.stdout == "revoked 1 session of user alice\n"
    assert phone.get("/whoami").text == "None"
    assert laptop.get("/whoami").text == "alice"
    assert invoke(app, "list", "--user", "alice").stdout.endswith(
        "\n2 sessions of user alice\n"
    )

    every = invoke(app, "revoke", "--user", "alice")
    assert every.exit_code == 0, every.output
    assert every.stdout == "revoked 2 sessions of user alice\n"
    assert laptop.get("/whoami").text == "None"
    assert tablet.get("/whoami").text == "None"
    assert bob.get("/whoami").text == "bob"
    assert anonymous.get("/whoami").text == "None"
    assert invoke(app, "list", "--user", "alice").stdout == "0 sessions of user alice\n"
    assert invoke(app, "list", "--user", "bob").stdout.endswith(
        "\n1 session of user bob\n"
    )


def test_unknown_user_has_no_sessions(store: SessionStore) -> None:
    app = make_app(store)
    if store.as_per_user() is None:
        one_line_error(invoke(app, "list", "--user", "nobody"), "per-user index")
        return
    listed = invoke(app, "list", "--user", "nobody")
    assert listed.exit_code == 0, listed.output
    assert listed.stdout == "0 sessions of user nobody\n"
    revoked = invoke(app, "revoke", "--user", "nobody")
    assert revoked.exit_code == 0, revoked.output
    assert revoked.stdout == "revoked 0 sessions of user nobody\n"
    assert json.loads(invoke(app, "list", "--user", "nobody", "--json").stdout) == {
        "user_id": "nobody",
        "sessions": [],
    }


def test_bad_input_is_one_line(store: SessionStore) -> None:
    app = make_app(store)
    per_user = store.as_per_user() is not None
    alice = log_in(app, "alice")
    bob = log_in(app, "bob")

    for command in ("list", "revoke"):
        one_line_error(invoke(app, command, "--user", "u" * 256), "1 to 255", "256")
        one_line_error(invoke(app, command, "--user", ""), "not a user id")
        one_line_error(invoke(app, command, "--user", "a\nb"), "not a user id")
    one_line_error(
        invoke(app, "revoke", "--user", "alice", "--session", "not a handle"),
        "not a session handle",
        "flask sessions list",
    )
    one_line_error(invoke(app, "revoke"), "--user ID")
    one_line_error(
        invoke(app, "revoke", "--all", "--user", "alice", "--yes"), "without --user"
    )
    if not per_user:
        one_line_error(
            invoke(app, "revoke", "--user", "alice", "--session", "A" * 22),
            "per-user index",
        )
        return
    # A handle of the form that no session of the user has, and one of
    # another user's session: nothing ends.
    bobs = json.loads(invoke(app, "list", "--user", "bob", "--json").stdout)
    (bobs_handle,) = (s["id"] for s in bobs["sessions"])
    for handle in ("A" * 22, bobs_handle):
        one_line_error(
            invoke(app, "revoke", "--user", "alice", "--session", handle),
            "user alice has no live session",
        )
    assert alice.get("/whoami").text == "alice"
    assert bob.get("/whoami").text == "bob"


def test_revoke_all_asks_first(store: SessionStore) -> None:
    app = make_app(store)
    if store.as_counting_per_user() is None:
        refused = invoke(app, "revoke", "--all", "--yes")
        expected = (
            "per_user_counts()" if store.as_per_user() else "keeps no per-user index"
        )
        one_line_error(refused, expected)
        return
    clients = {
        user: [log_in(app, user) for _ in range(n)]
        for user, n in (("alice", 2), ("bob", 1), ("carol", 3))
    }
    anonymous = app.test_client()
    anonymous.post("/anonymous")

    declined = invoke(app, "revoke", "--all", input="n\n")
    assert declined.exit_code == 1
    assert "End every session of every user in" in declined.stdout
    assert "Aborted!" in declined.stderr
    for user, logged_in in clients.items():
        assert all(c.get("/whoami").text == user for c in logged_in)

    accepted = invoke(app, "revoke", "--all", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert accepted.stdout.splitlines()[-1] == "revoked 6 sessions of 3 users"
    for logged_in in clients.values():
        assert all(c.get("/whoami").text == "None" for c in logged_in)
    for user in clients:
        assert invoke(app, "list", "--user", user).stdout == (
            f"0 sessions of user {user}\n"
        )
    # Anonymous sessions hold no identity and are left, as the help says.
    with anonymous.session_transaction() as anonymous_session:
        assert anonymous_session["cart"] == ["sku-1"]

    log_in(app, "dave")
    again = invoke(app, "revoke", "--all", "--yes", "--batch-size", "1")
    assert again.exit_code == 0, again.output
    assert again.stdout == "revoked 1 session of 1 user\n"
    nothing = invoke(app, "revoke", "--all", "--yes")
    assert nothing.stdout == "revoked 0 sessions of 0 users\n"


def test_revoke_all_in_small_batches() -> None:
    """More users than a batch: every one is revoked, each once."""
    store = MemoryStore()
    app = make_app(store)
    users = [f"user{n}" for n in range(7)]
    for user in users:
        log_in(app, user)
    result = invoke(app, "revoke", "--all", "--yes", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout == "revoked 7 sessions of 7 users\n"
    assert store.per_user_counts(100) == []


def test_revoke_all_needs_the_users_listed() -> None:
    """A per-user index without per_user_counts(): --all says what to add
    and what to do instead."""

    class NoCounts(MemoryStore):
        def as_counting_per_user(self) -> None:
            return None

    app = make_app(NoCounts())
    one_line_error(
        invoke(app, "revoke", "--all", "--yes"),
        "cannot list the users who have sessions",
        "CountingPerUser",
        "--user",
    )


def test_without_the_extension() -> None:
    """An app with a ServerSessionInterface of its own and the command
    group added by hand."""
    app = make_app(MemoryStore(), extension=False)
    client = log_in(app, "alice")
    assert invoke(app, "list", "--user", "alice").stdout.endswith(
        "\n1 session of user alice\n"
    )
    result = invoke(app, "revoke", "--user", "alice")
    assert result.stdout == "revoked 1 session of user alice\n"
    assert client.get("/whoami").text == "None"
