"""The signals of flask_towersess.signals: when each is sent, by whom, with
which arguments, and that nothing is sent (or built) when it should not be."""

from __future__ import annotations

import typing as t
from datetime import timedelta

import pytest
from blinker import Signal
from flask import Flask
from flask import abort
from flask import session

import flask_towersess.session as session_module
from flask_towersess import ServerSession
from flask_towersess import SessionExt
from flask_towersess import signals
from flask_towersess.errors import StoreUnavailable
from flask_towersess.session import stored_key
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.memory import MemoryStore

from .apps import add_flask_login
from .apps import session_app
from .helpers import CountingStore
from .helpers import session_key

ALL_SIGNALS = {
    "created": signals.session_created,
    "key_cycled": signals.session_key_cycled,
    "ended": signals.session_ended,
    "save_conflict": signals.session_save_conflict,
    "store_unavailable": signals.session_store_unavailable,
}


class Sent(t.NamedTuple):
    name: str
    sender: t.Any
    arguments: dict[str, t.Any]


class Recorder:
    """Receives every signal of the package, from any sender, in order."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self._receivers: list[tuple[Signal, t.Callable[..., None]]] = []
        for name, signal in ALL_SIGNALS.items():
            receiver = self._receiver(name)
            signal.connect(receiver, weak=False)
            self._receivers.append((signal, receiver))

    def _receiver(self, name: str) -> t.Callable[..., None]:
        def receive(sender: t.Any, **arguments: t.Any) -> None:
            self.sent.append(Sent(name, sender, arguments))

        return receive

    @property
    def names(self) -> list[str]:
        return [sent.name for sent in self.sent]

    def only(self, name: str) -> Sent:
        assert self.names == [name]
        return self.sent[0]

    def clear(self) -> None:
        self.sent.clear()

    def disconnect(self) -> None:
        for signal, receiver in self._receivers:
            signal.disconnect(receiver)


@pytest.fixture
def recorder() -> t.Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.disconnect()


class Interfering(CountingStore):
    """A store on which, before each of the next ``conflicts`` saves, another
    writer saves the same session: a real compare-and-set conflict."""

    conflicts = 0
    #: The cookie's key of the session the other writer saves: the record
    #: holds only its stored key (its hash).
    cookie_key = ""

    def save(self, record: Record, expected_version: int) -> None:
        if self.conflicts:
            self.conflicts -= 1
            assert record.key == stored_key(self.cookie_key)
            other = ServerSession(self.inner, self.cookie_key)
            other[f"other{self.conflicts}"] = True
            other.save()
        super().save(record, expected_version)


class Breakable(CountingStore):
    """A store whose methods named in ``down`` raise StoreUnavailable."""

    def __init__(self, inner: SessionStore) -> None:
        super().__init__(inner)
        self.down: set[str] = set()

    def __getattribute__(self, name: str) -> t.Any:
        if name in object.__getattribute__(self, "down"):
            raise StoreUnavailable("the store is down (test)")
        return object.__getattribute__(self, name)


@pytest.fixture(params=["memory", "redis"])
def signal_store(request: pytest.FixtureRequest) -> SessionStore:
    """The memory store and one real server, each fresh and empty."""
    return t.cast(SessionStore, request.getfixturevalue(f"{request.param}_store"))


def make_app(store: SessionStore) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="test secret", TESTING=True)
    SessionExt(app, store=store)

    @app.get("/nothing")
    def nothing() -> str:
        return "nothing"

    @app.get("/read")
    def read() -> str:
        return str(session.get("n"))

    @app.post("/set/<int:n>")
    def set_n(n: int) -> str:
        session["n"] = n
        return "set"

    @app.post("/login/<user>")
    def login(user: str) -> str:
        session["user"] = user
        session.cycle_key()
        return "in"

    @app.post("/login-failing")
    def login_failing() -> str:
        session.cycle_key()
        session["user"] = "mallory"
        abort(500)

    @app.post("/user/<user>")
    def set_user(user: str) -> str:
        session.user_id = user  # type: ignore[attr-defined]
        return "user"

    @app.post("/flush")
    def flush() -> str:
        session.flush()  # type: ignore[attr-defined]
        return "flushed"

    @app.post("/logout")
    def logout() -> str:
        session["flash"] = "bye"
        session.end_identity()  # type: ignore[attr-defined]
        return "out"

    @app.post("/clear")
    def clear() -> str:
        session.clear()
        return "cleared"

    return app


def test_the_signals_are_blinker_signals_with_flask_names() -> None:
    for signal in ALL_SIGNALS.values():
        assert isinstance(signal, Signal)
    assert signals.session_created.name == "session-created"
    assert signals.session_store_unavailable.name == "session-store-unavailable"


def test_a_request_that_does_not_use_the_session_sends_nothing(
    signal_store: SessionStore, recorder: Recorder
) -> None:
    client = make_app(signal_store).test_client()
    client.post("/set/1")
    recorder.clear()
    assert client.get("/nothing").text == "nothing"
    assert client.get("/read").text == "1"
    assert recorder.sent == []


def test_a_new_session_sends_created_with_the_app_and_its_key(
    signal_store: SessionStore, recorder: Recorder
) -> None:
    app = make_app(signal_store)
    client = app.test_client()
    client.post("/set/1")
    sent = recorder.only("created")
    assert sent.sender is app
    assert isinstance(sent.arguments["session"], ServerSession)
    assert sent.arguments["key"] == stored_key(session_key(client))
    recorder.clear()
    client.post("/set/2")  # an update is not a creation
    assert recorder.sent == []


def test_cycle_key_sends_key_cycled_when_the_move_is_saved(
    signal_store: SessionStore, recorder: Recorder
) -> None:
    app = make_app(signal_store)
    client = app.test_client()
    client.post("/set/1")
    old_key = stored_key(session_key(client))
    recorder.clear()
    client.post("/login/alice")
    sent = recorder.only("key_cycled")
    assert sent.sender is app
    assert sent.arguments["old_key"] == old_key
    assert sent.arguments["new_key"] == stored_key(session_key(client)) != old_key
    assert sent.arguments["session"].stored_key == sent.arguments["new_key"]


def test_a_failed_request_that_cycled_the_key_sends_nothing(
    signal_store: SessionStore, recorder: Recorder
) -> None:
    client = make_app(signal_store).test_client()
    client.post("/set/1")
    old_key = session_key(client)
    recorder.clear()
    assert client.post("/login-failing").status_code == 500
    assert recorder.sent == []
    assert session_key(client) == old_key
    assert signal_store.load(stored_key(old_key)) is not None


def test_cycle_key_on_a_session_never_saved_sends_created(
    signal_store: SessionStore, recorder: Recorder
) -> None:
    client = make_app(signal_store).test_client()
    client.post("/login/alice")
    assert recorder.only("created").arguments["key"] == stored_key(session_key(client))


def test_a_change_of_user_id_sends_key_cycled(
    signal_store: SessionStore, recorder: Recorder
) -> None:
    client = make_app(signal_store).test_client()
    client.post("/set/1")
    anonymous_key = stored_key(session_key(client))
    recorder.clear()
    client.post("/user/alice")
    sent = recorder.only("key_cycled")
    assert sent.arguments["old_key"] == anonymous_key
    assert sent.arguments["new_key"] == stored_key(session_key(client))
    recorder.clear()
    client.post("/user/bob")
    assert recorder.names == ["key_cycled"]


@pytest.mark.parametrize(
    ("view", "reason"), [("/flush", "flush"), ("/clear", "emptied")]
)
def test_ending_a_stored_session_sends_ended_with_its_key_and_why(
    signal_store: SessionStore, recorder: Recorder, view: str, reason: str
) -> None:
    app = make_app(signal_store)
    client = app.test_client()
    client.post("/set/1")
    key = stored_key(session_key(client))
    recorder.clear()
    client.post(view)
    sent = recorder.only("ended")
    assert sent.sender is app
    assert sent.arguments["key"] == key
    assert sent.arguments["reason"] == reason
    assert signal_store.load(key) is None


def test_ending_a_session_that_was_never_stored_sends_nothing(
    signal_store: SessionStore, recorder: Recorder
) -> None:
    client = make_app(signal_store).test_client()
    client.post("/flush")
    client.post("/clear")
    assert recorder.sent == []


def test_logout_sends_ended_then_created_for_what_the_request_kept(
    signal_store: SessionStore, recorder: Recorder
) -> None:
    client = make_app(signal_store).test_client()
    client.post("/user/alice")
    signed_in_key = stored_key(session_key(client))
    recorder.clear()
    client.post("/logout")
    assert recorder.names == ["ended", "created"]
    ended, created = recorder.sent
    assert ended.arguments["key"] == signed_in_key
    assert ended.arguments["reason"] == "logout"
    assert created.arguments["key"] == stored_key(session_key(client)) != signed_in_key


def test_each_save_conflict_sends_save_conflict_with_the_retry_count(
    signal_store: SessionStore, recorder: Recorder
) -> None:
    store = Interfering(signal_store)
    app = make_app(store)
    client = app.test_client()
    client.post("/set/1")
    key = session_key(client)
    recorder.clear()
    store.cookie_key = key
    store.conflicts = 3
    assert client.post("/set/2").status_code == 200
    assert recorder.names == ["save_conflict"] * 3
    assert [sent.arguments["retries"] for sent in recorder.sent] == [1, 2, 3]
    for sent in recorder.sent:
        assert sent.sender is app
        assert sent.arguments["key"] == stored_key(key)
    # The conflicts were real: every writer's change was kept.
    stored = ServerSession(signal_store, key)
    assert dict(stored) == {"n": 2, "other0": True, "other1": True, "other2": True}


@pytest.mark.parametrize(
    ("down", "view", "operation"),
    [
        ({"load"}, "/read", "load"),
        ({"save"}, "/set/2", "save"),
        ({"delete"}, "/flush", "delete"),
        ({"create"}, "/login/alice", "save"),
        ({"touch"}, "/read", "touch"),
    ],
)
def test_an_unreachable_store_sends_store_unavailable_once(
    signal_store: SessionStore,
    recorder: Recorder,
    down: set[str],
    view: str,
    operation: str,
) -> None:
    store = Breakable(signal_store)
    app = make_app(store)
    app.config["SESSION_TOUCH_INTERVAL"] = timedelta(0)  # a touch at every read
    client = app.test_client()
    client.post("/set/1")
    recorder.clear()
    store.down = down
    method = client.get if view == "/read" else client.post
    assert method(view).status_code == 503
    sent = recorder.only("store_unavailable")
    assert sent.sender is app
    assert isinstance(sent.arguments["error"], StoreUnavailable)
    assert sent.arguments["operation"] == operation
    assert isinstance(sent.arguments["session"], ServerSession)


def test_a_failure_is_reported_once_however_many_methods_it_passes(
    recorder: Recorder,
) -> None:
    store = Breakable(MemoryStore())
    first = ServerSession(store)
    first["n"] = 1
    first.save()
    recorder.clear()
    again = ServerSession(store, first.session_key)
    again.modified = True  # saved unread: the save reads it first
    store.down = {"load"}
    with pytest.raises(StoreUnavailable):
        again.save()
    assert recorder.only("store_unavailable").arguments["operation"] == "load"
    # Saving again refuses at once, without the store: nothing new to report.
    with pytest.raises(StoreUnavailable):
        again.save()
    assert len(recorder.sent) == 1


def test_a_store_failure_in_a_save_outside_a_request_is_reported(
    recorder: Recorder,
) -> None:
    store = Breakable(MemoryStore())
    first = ServerSession(store)
    first["n"] = 1
    first.save()
    first["n"] = 2
    recorder.clear()
    store.down = {"save"}
    with pytest.raises(StoreUnavailable):
        first.save()
    sent = recorder.only("store_unavailable")
    assert sent.sender is None
    assert sent.arguments["operation"] == "save"
    assert sent.arguments["session"] is first


def test_the_sender_is_none_outside_an_app_context(recorder: Recorder) -> None:
    session = ServerSession(MemoryStore())
    session["n"] = 1
    session.save()
    session.cycle_key()
    session.save()
    session.flush()
    assert recorder.names == ["created", "key_cycled", "ended"]
    assert [sent.sender for sent in recorder.sent] == [None, None, None]


def test_receivers_connected_to_one_app_hear_only_that_app() -> None:
    store = MemoryStore()
    app, other = make_app(store), make_app(store)
    heard: list[Flask] = []

    def receive(sender: Flask, **arguments: t.Any) -> None:
        heard.append(sender)

    with signals.session_created.connected_to(receive, app):
        other.test_client().post("/set/1")
        app.test_client().post("/set/1")
    assert heard == [app]


def test_with_no_receivers_nothing_is_built(
    monkeypatch: pytest.MonkeyPatch, signal_store: SessionStore
) -> None:
    for signal in ALL_SIGNALS.values():
        assert not signal.receivers, "a receiver leaked from another test"

    def no_sender() -> t.NoReturn:
        raise AssertionError("signal arguments built with no receiver")

    monkeypatch.setattr(session_module, "_signal_sender", no_sender)
    store = Interfering(signal_store)
    client = make_app(store).test_client()
    client.post("/set/1")
    store.cookie_key = session_key(client)
    store.conflicts = 1
    for view in ("/set/2", "/login/alice", "/logout", "/flush"):
        assert client.post(view).status_code == 200
    broken = Breakable(MemoryStore())
    broken_client = make_app(broken).test_client()
    broken_client.post("/set/1")
    broken.down = {"load"}
    assert broken_client.get("/read").status_code == 503


def test_prometheus_counters_follow_the_signals(signal_store: SessionStore) -> None:
    """What docs/observability.rst's recipe does, with a conflict too."""
    from prometheus_client import CollectorRegistry
    from prometheus_client import Counter

    registry = CollectorRegistry()
    conflicts = Counter("conflicts", "Save retries.", registry=registry)
    ended = Counter("ended", "Sessions ended.", ["reason"], registry=registry)

    def on_conflict(sender: Flask, **extra: t.Any) -> None:
        conflicts.inc()

    def on_ended(sender: Flask, reason: str, **extra: t.Any) -> None:
        ended.labels(reason).inc()

    store = Interfering(signal_store)
    app = make_app(store)
    client = app.test_client()
    with (
        signals.session_save_conflict.connected_to(on_conflict, app),
        signals.session_ended.connected_to(on_ended, app),
    ):
        client.post("/set/1")
        store.cookie_key = session_key(client)
        store.conflicts = 2
        client.post("/set/2")
        client.post("/flush")
    assert registry.get_sample_value("conflicts_total") == 2.0
    assert registry.get_sample_value("ended_total", {"reason": "flush"}) == 1.0


def test_flask_login_log_in_and_out(
    signal_store: SessionStore, recorder: Recorder
) -> None:
    """An anonymous visitor logs in (the key is cycled) and out (ended)."""
    flask_login = pytest.importorskip("flask_login")
    app = session_app(signal_store)
    add_flask_login(app)

    @app.post("/set/<int:n>")
    def set_n(n: int) -> str:
        session["n"] = n
        return "set"

    @app.post("/sign-out")
    def sign_out() -> str:
        flask_login.logout_user()
        return "out"

    client = app.test_client()
    client.post("/set/1")
    anonymous_key = stored_key(session_key(client))
    recorder.clear()
    client.post("/login/alice")
    cycled = recorder.only("key_cycled")
    assert cycled.arguments["old_key"] == anonymous_key
    signed_in_key = stored_key(session_key(client))
    assert cycled.arguments["new_key"] == signed_in_key
    recorder.clear()
    client.post("/sign-out")
    assert recorder.names == ["ended"]
    assert recorder.sent[0].arguments == {
        "session": recorder.sent[0].arguments["session"],
        "key": signed_in_key,
        "reason": "logout",
    }
