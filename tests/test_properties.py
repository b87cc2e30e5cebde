"""Property-based tests (hypothesis): hostile input and random use.

- Hostile cookies never raise, never reach the store when their signature
  is bad, and always give a fresh, empty session.
- Session data of every supported type, nested, round-trips exactly (same
  values, same types) through the serializer and through a save and a
  reload; unsupported values fail with ``SerializationError`` naming the
  key and the type, and write nothing.
- A state machine runs random sequences of session operations (with other
  tabs writing and logging out in between) against a plain dict model, on
  every store.
- Corrupted payloads in the store give an empty session and a warning on the
  ``flask_towersess.security`` logger, never an error response.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import typing as t
import uuid
from collections import OrderedDict
from datetime import date
from datetime import datetime
from datetime import time
from datetime import timedelta
from datetime import timezone
from decimal import Decimal

import pytest
from flask import Flask
from flask import session
from hypothesis import HealthCheck
from hypothesis import assume
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import initialize
from hypothesis.stateful import invariant
from hypothesis.stateful import precondition
from hypothesis.stateful import rule
from hypothesis.stateful import run_state_machine_as_test
from itsdangerous import Signer
from markupsafe import Markup

from flask_towersess import ServerSession
from flask_towersess import SessionExt
from flask_towersess.errors import SerializationError
from flask_towersess.errors import UpdateError
from flask_towersess.interface import ServerSessionInterface
from flask_towersess.serializers import MsgPackSerializer
from flask_towersess.session import LEGACY_KEY_LENGTH
from flask_towersess.session import new_session_key
from flask_towersess.session import stored_key
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.memory import MemoryStore

from .helpers import CountingStore

if t.TYPE_CHECKING:
    from collections.abc import Iterator

SECRET_KEY = "property secret"
COOKIE = "session"

# -- comparing values exactly -------------------------------------------------


def typed(value: t.Any) -> t.Any:
    """A comparable picture of ``value`` that also tells types apart.

    ``==`` alone would accept ``1 == 1.0 == True``, ``"x" == Markup("x")``,
    ``{1} == frozenset({1})``, and reject ``nan == nan``. Floats are compared
    by ``repr`` (``-0.0``, ``nan``), decimals by ``str`` (``1.0`` vs
    ``1.00``), datetimes and times by ISO text and offset, dicts in order.
    """
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if isinstance(value, (list, tuple)):
        return kind, tuple(typed(item) for item in value)
    if isinstance(value, dict):
        return kind, tuple((typed(k), typed(v)) for k, v in value.items())
    if isinstance(value, (set, frozenset)):
        return kind, tuple(sorted(repr(typed(item)) for item in value))
    if isinstance(value, (datetime, time)):
        return kind, value.isoformat(), value.utcoffset()
    if isinstance(value, Decimal):
        return kind, str(value)
    return kind, repr(value)


def typed_data(data: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """Session data compared by key, each value exactly."""
    return {key: typed(value) for key, value in data.items()}


# -- strategies -----------------------------------------------------------------

#: Fixed UTC offsets, down to the microsecond (Python allows sub-second ones).
offsets = st.one_of(
    st.just(timezone.utc),
    st.integers(-86399, 86399).map(lambda s: timezone(timedelta(seconds=s))),
    st.integers(-86399_999_999, 86399_999_999).map(
        lambda us: timezone(timedelta(microseconds=us))
    ),
)

#: Keys, including ones that look like the tags of Flask's tagged JSON, of
#: this package's envelope, and of Flask itself.
keys = st.one_of(
    st.text(max_size=8),
    st.sampled_from(
        [
            " t",
            " di",
            " b",
            " m",
            " u",
            " d",
            "__tuple__",
            "data",
            "expiry",
            "_permanent",
        ]
    ),
)

hashable_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(),
    st.text(max_size=10),
    st.binary(max_size=10),
    st.text(max_size=10).map(Markup),
    st.datetimes(),
    st.datetimes(timezones=offsets),
    st.dates(),
    st.times(),
    st.times(timezones=offsets),
    st.timedeltas(),
    st.uuids(),
    st.decimals(allow_nan=False, allow_infinity=False),
)

hashables = st.recursive(
    hashable_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(tuple),
        st.frozensets(children, max_size=3),
    ),
    max_leaves=6,
)

values = st.recursive(
    hashable_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(keys, children, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
    ),
    max_leaves=12,
)

session_data = st.dictionaries(keys, values, max_size=6)


class Opaque:
    """An app object the serializer was not taught."""

    def __repr__(self) -> str:
        return "<Opaque>"


unsupported = st.sampled_from(
    [object(), Opaque(), 1 + 2j, OrderedDict(a=1), range(3), Ellipsis]
)


@st.composite
def data_with_a_bad_value(draw: st.DrawFn) -> tuple[dict[str, t.Any], str, t.Any]:
    """Valid session data with one unsupported value hidden somewhere in it."""
    data = draw(session_data)
    key = draw(keys)
    bad = draw(unsupported)
    hidden: t.Any = bad
    for wrap in draw(st.lists(st.sampled_from(["list", "tuple", "dict"]), max_size=3)):
        siblings = draw(st.lists(values, max_size=2))
        if wrap == "list":
            hidden = [*siblings, hidden]
        elif wrap == "tuple":
            hidden = (hidden, *siblings)
        else:
            hidden = {**{f"s{i}": v for i, v in enumerate(siblings)}, "x": hidden}
    data[key] = hidden
    return data, key, bad


def type_name(value: t.Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


FAST = settings(max_examples=150, deadline=None)
#: For tests that take a (module-scoped, so shared) fixture.
WITH_FIXTURE = settings(
    FAST, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# -- round trips ------------------------------------------------------------------


@FAST
@given(session_data)
def test_serializer_round_trips_exactly(data: dict[str, t.Any]) -> None:
    serializer = MsgPackSerializer()
    state = {"data": data, "expiry": 3600}
    assert typed(serializer.loads(serializer.dumps(state))) == typed(state)


@FAST
@given(session_data)
def test_save_and_reload_round_trips_exactly(data: dict[str, t.Any]) -> None:
    store = MemoryStore()
    saved = ServerSession(store)
    saved.update(data)
    saved.save()
    reloaded = ServerSession(store, saved.session_key)
    assert typed_data(reloaded) == typed_data(data)
    assert list(reloaded) == list(data)  # in the same order, too


@pytest.mark.parametrize(
    "value",
    [
        "x" * 200_000,
        b"\xff" * 200_000,
        2**4000,
        -(2**4000),
        2**64 - 1,
        -(2**63),
        [list(range(100))] * 100,
        float("nan"),
        float("-inf"),
        -0.0,
        datetime.min,
        datetime.max.replace(tzinfo=timezone(-timedelta(hours=23, minutes=59))),
        timedelta.max,
        Decimal("-1E+999999"),
    ],
    ids=[
        "long str",
        "long bytes",
        "huge int",
        "huge negative int",
        "uint64 max",
        "int64 min",
        "big nested list",
        "nan",
        "-inf",
        "-0.0",
        "datetime.min",
        "datetime.max aware",
        "timedelta.max",
        "huge decimal",
    ],
)
def test_extreme_values_round_trip(value: t.Any) -> None:
    store = MemoryStore()
    saved = ServerSession(store)
    saved["v"] = value
    saved.save()
    assert typed(ServerSession(store, saved.session_key)["v"]) == typed(value)


@FAST
@given(data_with_a_bad_value(), st.booleans())
def test_unsupported_value_names_key_and_type_and_writes_nothing(
    case: tuple[dict[str, t.Any], str, t.Any], existing: bool
) -> None:
    data, key, bad = case
    store = MemoryStore()
    session_ = ServerSession(store)
    before: Record | None = None
    if existing:
        session_["kept"] = 1
        session_.save()
        before = store.load(session_.stored_key)  # type: ignore[arg-type]
        assert before is not None
    session_.update(data)
    with pytest.raises(SerializationError) as info:
        session_.save()
    message = str(info.value)
    assert f"session[{key!r}]" in message
    assert type_name(bad) in message
    if existing:
        assert store.load(session_.stored_key) == before  # type: ignore[arg-type]
    else:
        assert len(store) == 0


# -- hostile cookies --------------------------------------------------------------


def latin1(raw: bytes) -> str:
    """Header bytes as a WSGI server hands them over (PEP 3333)."""
    return raw.decode("latin-1")


key_like = st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
    min_size=8,
    max_size=64,
)
signed_looking = st.builds(lambda k, s: f"{k}.{s}", key_like, key_like)

cookie_values = st.one_of(
    st.binary(max_size=300).map(latin1),  # any bytes, UTF-8 or not
    st.text(max_size=100).map(lambda s: latin1(s.encode("utf-8"))),  # any unicode
    signed_looking,
    key_like,  # an unsigned key
    st.integers(257, 20_000).map(lambda n: "A" * n),  # too long
    st.integers(257, 5_000).map(lambda n: "A" * 43 + "." + "B" * n),
)


@st.composite
def hostile_cookie_headers(draw: st.DrawFn) -> str:
    shape = draw(st.sampled_from(["one", "many", "raw", "other secret"]))
    if shape == "one":
        return f"{COOKIE}={draw(cookie_values)}"
    if shape == "many":  # several cookies of the same name, and others
        parts = [
            f"{draw(st.sampled_from([COOKIE, 'other', COOKIE.upper()]))}={v}"
            for v in draw(st.lists(cookie_values, min_size=2, max_size=6))
        ]
        return "; ".join(parts)
    if shape == "raw":  # a whole header of anything
        return draw(st.binary(max_size=400).map(latin1))
    # A good signature, but made with another secret key.
    secret = draw(st.text(min_size=1, max_size=20))
    assume(secret != SECRET_KEY)
    other = Signer(secret, salt="flask-towersess", digest_method=hashlib.sha256)
    return f"{COOKIE}={other.sign(new_session_key()).decode()}"


class HostileApp:
    """One app on a counting memory store, shared by the examples."""

    def __init__(self) -> None:
        self.store = CountingStore(MemoryStore())
        app = self.app = Flask(__name__)
        app.config.update(SECRET_KEY=SECRET_KEY)
        SessionExt(app, store=self.store)

        @app.get("/read")
        def read() -> str:
            return repr(dict(session))

        @app.post("/write")
        def write() -> str:
            session["written"] = True
            return "ok"

    def client(self) -> t.Any:
        """A client without a cookie jar: with one, the test client drops
        an ``HTTP_COOKIE`` given in ``environ_overrides`` while the jar is
        empty, and the request would carry no cookie at all."""
        return self.app.test_client(use_cookies=False)

    def signed(self, key: str) -> str:
        interface = t.cast(ServerSessionInterface, self.app.session_interface)
        return interface._cookie_value(self.app, key)


@pytest.fixture(scope="module")
def hostile() -> HostileApp:
    return HostileApp()


def new_cookie_key(response: t.Any) -> str:
    header = response.headers["Set-Cookie"]
    assert header.startswith(f"{COOKIE}=")
    return t.cast(str, header.partition("=")[2].partition(".")[0])


@WITH_FIXTURE
@given(header=hostile_cookie_headers())
def test_hostile_cookie_gives_fresh_session_without_store_call(
    hostile: HostileApp, header: str
) -> None:
    client = hostile.client()
    hostile.store.reset()
    response = client.get("/read", environ_overrides={"HTTP_COOKIE": header})
    assert response.status_code == 200
    assert response.data == b"{}"
    assert hostile.store.total == 0
    assert "Set-Cookie" not in response.headers
    # Writing with it issues a fresh key, never one the cookie named.
    response = client.post("/write", environ_overrides={"HTTP_COOKIE": header})
    assert response.status_code == 200
    assert hostile.store.calls == {"create": 1}
    assert new_cookie_key(response) not in header


@WITH_FIXTURE
@given(data=st.data())
def test_tampered_cookie_of_a_real_session_is_ignored(
    hostile: HostileApp, data: st.DataObject
) -> None:
    owner = hostile.app.test_client()
    owner.post("/write")
    cookie = owner.get_cookie(COOKIE).value
    key, _, signature = cookie.partition(".")
    # Any character of the key or of the signature, replaced by another one
    # of the alphabet; the signature's last one too (only its canonical
    # base64 form is accepted, though decoding ignores its two low bits).
    position = data.draw(st.integers(0, len(key) + len(signature) - 1))
    index = position if position < len(key) else position + 1
    replacement = data.draw(key_like.map(lambda s: s[0]))
    assume(replacement != cookie[index])
    forged = cookie[:index] + replacement + cookie[index + 1 :]
    hostile.store.reset()
    response = hostile.client().get(
        "/read", environ_overrides={"HTTP_COOKIE": f"{COOKIE}={forged}"}
    )
    assert response.status_code == 200
    assert response.data == b"{}"
    assert hostile.store.total == 0


@WITH_FIXTURE
@given(key=key_like)
def test_signed_unknown_key_never_becomes_a_session(
    hostile: HostileApp, key: str
) -> None:
    header = f"{COOKIE}={hostile.signed(key)}"
    client = hostile.client()
    hostile.store.reset()
    response = client.get("/read", environ_overrides={"HTTP_COOKIE": header})
    assert response.data == b"{}"
    # Looked up, nothing created: under its hash; a key of the length 0.1
    # made also unhashed (a record 0.1 stored) and under its hash again
    # (another request may have moved it in between).
    loads = 3 if len(key) == LEGACY_KEY_LENGTH else 1
    assert hostile.store.calls == {"load": loads}
    response = client.post("/write", environ_overrides={"HTTP_COOKIE": header})
    assert response.status_code == 200
    fresh = new_cookie_key(response)
    assert fresh != key
    assert hostile.store.inner.load(stored_key(fresh)) is not None
    assert hostile.store.inner.load(stored_key(key)) is None
    assert hostile.store.inner.load(key) is None


# -- corrupted payloads in the store ------------------------------------------------


@contextlib.contextmanager
def security_warnings() -> Iterator[list[logging.LogRecord]]:
    """Collect what the security logger says (caplog is per test, not per example)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("flask_towersess.security")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def is_session_payload(payload: bytes) -> bool:
    """Whether the session layer would accept ``payload`` as a session."""
    try:
        state = MsgPackSerializer().loads(payload)
    except SerializationError:
        return False
    # What ServerSession._decode() accepts.
    return isinstance(state.get("data"), dict) and isinstance(
        state.get("expiry"), (int, datetime, type(None))
    )


@st.composite
def corrupted_payloads(draw: st.DrawFn) -> bytes:
    good = MsgPackSerializer().dumps({"data": draw(session_data)})
    kind = draw(st.sampled_from(["truncated", "random", "format byte", "flipped"]))
    if kind == "truncated":
        return good[: draw(st.integers(0, len(good) - 1))]
    if kind == "random":
        return draw(st.binary(max_size=200))
    if kind == "format byte":
        return bytes([draw(st.integers(0, 255).filter(lambda b: b != 1))]) + good[1:]
    position = draw(st.integers(0, len(good) - 1))
    flipped = good[position] ^ draw(st.integers(1, 255))
    return good[:position] + bytes([flipped]) + good[position + 1 :]


class CorruptionApp:
    def __init__(self) -> None:
        self.store = MemoryStore()
        app = self.app = Flask(__name__)
        app.config.update(SECRET_KEY=SECRET_KEY)
        SessionExt(app, store=self.store)

        @app.get("/read")
        def read() -> str:
            return repr(sorted(session.items(), key=repr))

        @app.post("/write")
        def write() -> str:
            session["after"] = 1
            return "ok"


@pytest.fixture(scope="module")
def corruption() -> CorruptionApp:
    return CorruptionApp()


@WITH_FIXTURE
@given(payload=corrupted_payloads())
def test_corrupted_payload_gives_empty_session_and_a_warning(
    corruption: CorruptionApp, payload: bytes
) -> None:
    client = corruption.app.test_client()
    client.post("/write")
    key = client.get_cookie(COOKIE).value.partition(".")[0]
    record = corruption.store.load(stored_key(key))
    assert record is not None
    corruption.store.save(
        dataclasses.replace(record, payload=payload, version=record.version + 1),
        record.version,
    )
    with security_warnings() as warnings:
        response = client.get("/read")
    assert response.status_code == 200
    if not is_session_payload(payload):
        assert response.data == b"[]"
        assert len(warnings) == 1
        assert key not in warnings[0].getMessage()  # a bearer secret: never logged
    # The user is not locked out: the next write replaces the payload.
    assert client.post("/write").status_code == 200
    assert b"('after', 1)" in client.get("/read").data


# -- a random walk through the session API, against a model, on every store --------

LIFETIME = timedelta(hours=1)
MACHINE_KEYS = st.sampled_from(["a", "b", "c", "data"])
#: Values of several types, including ones equal across types (1 == True),
#: whose change of type only a merge must keep.
MACHINE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.lists(st.integers(0, 2), max_size=3),
    st.tuples(st.integers(0, 2)),
    st.dates(min_value=date(2000, 1, 1), max_value=date(2000, 1, 9)),
)
EXPIRIES: dict[str, tuple[t.Any, int | None]] = {
    "policy": (None, None),
    "browser": (0, 0),
    "ten minutes": (600, 600),
    "two hours": (7200, 7200),
}


class SessionMachine(RuleBasedStateMachine):
    """One user's session, used request after request, with other tabs.

    The model follows the contract: lazy loading (an unloaded session reads
    what the store holds when first used), the changes a save re-applies on
    top of a concurrent save, a record deleted elsewhere never coming back.
    """

    def __init__(self, store: SessionStore) -> None:
        super().__init__()
        self.store = store
        # The store, as the model sees it: live records and their versions.
        self.stored: dict[str, dict[str, t.Any]] = {}
        self.stored_expiry: dict[str, int | None] = {}
        self.versions: dict[str, int] = {}
        self.dead: set[str] = set()
        self.key: str | None = None
        self.new_request(None)

    # -- the model ------------------------------------------------------------

    def new_request(self, key: str | None) -> None:
        self.session = ServerSession(self.store, key, lifetime=LIFETIME)
        self.key = key
        self.data: dict[str, t.Any] | None = None  # None: not loaded yet
        self.base: dict[str, t.Any] = {}  # as loaded or last saved
        self.version: int | None = None
        self.cleared = False
        self.must_create = False
        # The record cycle_key() moves from, as this request read it.
        self.stale: str | None = None
        self.stale_version: int | None = None
        self.stale_base: dict[str, t.Any] = {}
        self.expiry: int | None = None
        self.expiry_changed = False
        self.from_store = False  # a record was loaded for this session

    def load(self) -> dict[str, t.Any]:
        if self.data is None:
            if self.key is None or self.must_create:
                self.data = {}
            elif self.key in self.stored:
                self.data = dict(self.stored[self.key])
                self.base = dict(self.data)
                self.from_store = True
                self.version = self.versions[self.key]
                if not self.expiry_changed:
                    self.expiry = self.stored_expiry[self.key]
            else:  # an unknown key never becomes a session
                self.key = None
                self.data = {}
        return self.data

    def forget(self, key: str) -> None:
        if self.stored.pop(key, None) is not None:
            self.dead.add(key)

    def write(self, key: str) -> None:
        assert self.data is not None
        self.stored[key] = dict(self.data)
        self.stored_expiry[key] = self.expiry
        self.versions[key] = self.versions.get(key, 0) + 1
        self.version = self.versions[key]
        self.base = dict(self.data)
        if self.stale is not None:  # retired by the move
            self.forget(self.stale)
        self.stale = None
        self.cleared = self.expiry_changed = self.must_create = False

    def merge(
        self, key: str | None = None, base: dict[str, t.Any] | None = None
    ) -> None:
        """Re-apply this request's changes over what ``key`` (default: the
        session's own) holds now, as compared with ``base``."""
        key = self.key if key is None else key
        base = self.base if base is None else base
        assert key is not None and self.data is not None
        theirs = self.stored[key]
        if self.cleared:
            merged = dict(self.data)
        else:
            merged = dict(theirs)
            for gone in base.keys() - self.data.keys():
                merged.pop(gone, None)
            for name, value in self.data.items():
                if name not in base or typed(base[name]) != typed(value):
                    merged[name] = value
        self.data = merged
        if not self.expiry_changed:
            self.expiry = self.stored_expiry[key]
        if key == self.key:
            self.base = dict(theirs)
            self.version = self.versions[key]

    def expected_save(self) -> str:
        """Apply a save to the model and say how it goes: "created" under a
        fresh key, "created here" (the key cycle_key() picked), "saved" over
        the record, or "gone" (deleted elsewhere: UpdateError)."""
        if self.must_create:
            if self.stale is None:
                return "created here"
            # The move retires the old record by compare-and-set on the
            # version read: deleted meanwhile (a logout in another tab), the
            # move fails; changed meanwhile, the change is merged in, and the
            # new record written again (one version more).
            if self.stale not in self.stored:
                self.stale = None
                return "gone"
            if self.versions[self.stale] != self.stale_version:
                self.merge(self.stale, self.stale_base)
                assert self.key is not None
                self.versions[self.key] = 1
            return "created here"
        if self.key is not None:
            self.load()
        if self.key is not None:
            if self.version is None:  # cleared before it was ever loaded
                if self.key in self.stored:
                    self.version = self.versions[self.key]
                    self.base = dict(self.stored[self.key])
                    return "saved"
                self.key = None
            elif self.key not in self.stored:
                return "gone"
            else:
                if self.versions[self.key] != self.version:
                    self.merge()
                return "saved"
        if self.data is None:
            self.data = {}
        return "created"

    # -- the rules --------------------------------------------------------------

    @initialize(data=st.dictionaries(MACHINE_KEYS, MACHINE_VALUES, max_size=3))
    def logged_in(self, data: dict[str, t.Any]) -> None:
        """Most walks start from a stored session, so that other tabs can
        write and log out from the first step on."""
        self.session.update(data)
        self.load().update(data)
        self.save()
        self.next_request()

    @rule(name=MACHINE_KEYS, value=MACHINE_VALUES)
    def set_value(self, name: str, value: t.Any) -> None:
        self.session[name] = value
        self.load()[name] = value
        assert self.session.modified

    @rule(name=MACHINE_KEYS)
    def delete_value(self, name: str) -> None:
        if name in self.load():
            del self.session[name]
            del self.load()[name]
        else:
            with pytest.raises(KeyError):
                del self.session[name]

    @rule(name=MACHINE_KEYS)
    def pop_value(self, name: str) -> None:
        expected = self.load().pop(name, "missing")
        assert typed(self.session.pop(name, "missing")) == typed(expected)

    @rule(name=MACHINE_KEYS)
    def get_value(self, name: str) -> None:
        modified = self.session.modified
        assert typed(self.session.get(name)) == typed(self.load().get(name))
        assert self.session.modified == modified

    @rule()
    def clear(self) -> None:
        self.session.clear()
        self.data = {}
        self.cleared = True
        self.expiry = None
        self.expiry_changed = True

    @rule()
    def flush(self) -> None:
        self.session.flush()
        if self.stale is not None:
            self.forget(self.stale)
        if self.key is not None and not self.must_create:
            self.forget(self.key)
        flushed = self.session
        self.new_request(None)
        self.session = flushed  # the flushed object goes on being used
        self.data = {}
        assert self.session.session_key is None

    @rule()
    def cycle_key(self) -> None:
        self.load()
        old = self.key
        self.session.cycle_key()
        if old is not None and not self.must_create:
            if self.version is None and old in self.stored:
                # Cleared before it was read: cycle_key() reads the version.
                self.version = self.versions[old]
                self.base = dict(self.stored[old])
            if self.version is not None:
                self.stale = old
                self.stale_version = self.version
                self.stale_base = dict(self.base)
        self.key = self.session.session_key
        assert self.key is not None and self.key != old
        self.must_create = True
        self.version = None
        self.base = {}

    @rule(expiry=st.sampled_from(sorted(EXPIRIES)))
    def set_expiry(self, expiry: str) -> None:
        value, normalized = EXPIRIES[expiry]
        self.load()
        self.session.set_expiry(value)
        self.expiry = normalized
        self.expiry_changed = True

    @rule()
    def save(self) -> None:
        outcome = self.expected_save()
        if outcome == "gone":
            with pytest.raises(UpdateError):
                self.session.save()
            # The user's next request comes with the same, dead, cookie.
            self.new_request(self.key)
            return
        self.session.save()
        if outcome == "created":
            assert self.session.session_key not in (None, self.key)
            self.key = self.session.session_key
        assert self.key is not None
        self.write(self.key)

    @rule()
    def end_of_request(self) -> None:
        """Save, and go on with the browser's next request."""
        self.save()
        self.next_request()

    @rule()
    def next_request(self) -> None:
        """The same browser's next request: a new session object, unloaded."""
        self.new_request(self.key)

    @precondition(lambda self: self.key in self.stored and not self.must_create)
    @rule(name=MACHINE_KEYS, value=MACHINE_VALUES)
    def other_tab_writes(self, name: str, value: t.Any) -> None:
        assert self.key is not None
        other = ServerSession(self.store, self.key, lifetime=LIFETIME)
        other[name] = value
        other.save()
        self.stored[self.key][name] = value
        self.versions[self.key] += 1

    @precondition(lambda self: self.key in self.stored and not self.must_create)
    @rule(name=MACHINE_KEYS, value=MACHINE_VALUES)
    def other_tab_writes_after_we_loaded(self, name: str, value: t.Any) -> None:
        """The race a merge resolves: we have read the session, then
        another request saves it before we do."""
        self.get_value(name)
        self.other_tab_writes(name, value)

    @precondition(lambda self: self.key in self.stored and not self.must_create)
    @rule()
    def other_tab_logs_out(self) -> None:
        assert self.key is not None
        ServerSession(self.store, self.key).flush()
        self.forget(self.key)

    @rule()
    def check(self) -> None:
        data = self.load()
        assert typed_data(self.session) == typed_data(data)
        assert self.session.session_key == self.key
        expected_age = self.expiry or int(LIFETIME.total_seconds())
        assert self.session.get_expiry_age() == expected_age

    @invariant()
    def store_matches_model(self) -> None:
        for key, data in self.stored.items():
            record = self.store.load(stored_key(key))
            assert record is not None, "a live record is missing"
            assert record.version == self.versions[key]
            stored = ServerSession(self.store, key, lifetime=LIFETIME)
            assert typed_data(stored) == typed_data(data)
            expected_age = self.stored_expiry[key] or int(LIFETIME.total_seconds())
            assert stored.get_expiry_age() == expected_age
        for key in self.dead:
            assert self.store.load(stored_key(key)) is None, (
                "a deleted record came back"
            )


def test_random_session_use_matches_the_model(store: SessionStore) -> None:
    run_state_machine_as_test(
        lambda: SessionMachine(store),
        settings=settings(
            max_examples=12,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


def test_random_session_use_matches_the_model_at_length() -> None:
    """The memory store is fast: there, many more and longer walks."""
    run_state_machine_as_test(
        lambda: SessionMachine(MemoryStore()),
        settings=settings(max_examples=150, stateful_step_count=40, deadline=None),
    )


# -- bugs found here -------------------------------------------------------------


@pytest.mark.parametrize(
    "expiry", [datetime(2100, 1, 1), 10**30, -(10**30)], ids=["naive", "huge", "-huge"]
)
def test_payload_with_an_impossible_expiry_is_treated_as_undecodable(
    expiry: t.Any,
) -> None:
    app = CorruptionApp()
    client = app.app.test_client()
    client.post("/write")
    key = client.get_cookie(COOKIE).value.partition(".")[0]
    record = app.store.load(stored_key(key))
    assert record is not None
    payload = MsgPackSerializer().dumps({"data": {"x": 1}, "expiry": expiry})
    app.store.save(dataclasses.replace(record, payload=payload, version=2), 1)
    with security_warnings() as warnings:
        statuses = [client.get("/read").status_code]
        statuses.append(client.post("/write").status_code)
        statuses.append(client.get("/read").status_code)
    assert statuses == [200, 200, 200]
    assert warnings


def test_merge_keeps_a_change_of_type_only() -> None:
    store = MemoryStore()
    original = ServerSession(store)
    original.update({"flag": 1, "message": "hi", "ratio": 1})
    original.save()
    first = ServerSession(store, original.session_key)
    second = ServerSession(store, original.session_key)
    first.load()
    second.load()
    first.update({"flag": True, "message": Markup("hi"), "ratio": 1.0})
    second["other"] = 1
    second.save()
    first.save()  # conflict: merged with second's save
    reloaded = ServerSession(store, original.session_key)
    assert typed_data(reloaded) == typed_data(
        {"flag": True, "message": Markup("hi"), "ratio": 1.0, "other": 1}
    )


@pytest.mark.parametrize("kind", ["datetime", "time"])
def test_sub_second_utc_offsets_round_trip(kind: str) -> None:
    zone = timezone(timedelta(seconds=5, microseconds=250_000))
    value: t.Any = datetime(2024, 1, 2, 3, 4, 5, tzinfo=zone)
    if kind == "time":
        value = value.timetz()
    serializer = MsgPackSerializer()
    assert typed(serializer.loads(serializer.dumps({"v": value}))["v"]) == typed(value)


def test_ints_of_any_size_round_trip() -> None:
    value = 7**6000  # 5071 digits
    serializer = MsgPackSerializer()
    assert serializer.loads(serializer.dumps({"v": value}))["v"] == value


@pytest.mark.parametrize(
    "value", [bytearray(b"ab"), memoryview(b"ab")], ids=["bytearray", "memoryview"]
)
def test_unlisted_bytes_like_types_fail_instead_of_changing_type(value: t.Any) -> None:
    serializer = MsgPackSerializer()
    try:
        loaded = serializer.loads(serializer.dumps({"data": {"v": value}}))
    except SerializationError:
        return
    assert type(loaded["data"]["v"]) is type(value)


def test_uuid_and_tag_like_keys_survive_the_interface() -> None:
    """A smoke test of the interface path for values the properties cover."""
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET_KEY)
    SessionExt(app, store=MemoryStore())
    value = {" t": (uuid.UUID(int=5), Markup("<b>"), {Decimal("1.10")})}

    @app.post("/put")
    def put() -> str:
        session[" di"] = value
        return "ok"

    @app.get("/check")
    def check() -> str:
        return "same" if typed(session[" di"]) == typed(value) else "changed"

    client = app.test_client()
    client.post("/put")
    assert client.get("/check").data == b"same"
