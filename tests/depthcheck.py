"""Run by tests/test_payload_depth.py in a subprocess: deep and hostile nesting.

``python -m tests.depthcheck MODE`` prints one JSON object on its last line:

- ``hostile``: payloads built byte by byte (``dumps()`` refuses to make
  them): extension values nested thousands deep, plain lists and dicts
  nested past msgpack's 1024, mixtures of both. Each is given to
  ``MsgPackSerializer.loads()`` in the main thread and in a thread with a
  256 KiB stack, and planted in a MemoryStore that a ServerSession reads in
  such a thread. ``{name: {"main": outcome, "thread": outcome, "session":
  outcome}}``.
- ``limit``: values nested exactly as deep as ``dumps()`` allows, saved and
  read back in a 256 KiB thread (``"round trip"`` when they come back the
  same, types included), then one level deeper (``dumps()`` must refuse).
  ``{name: {"at": outcome, "past": outcome}}``.
- ``fuzz``: hypothesis, in a 256 KiB thread, over random nestings built as
  bytes and as values, and over byte mutations of both: ``loads()`` returns
  a mapping or raises SerializationError, and what ``dumps()`` accepts reads
  back the same. ``{"examples": n}``; a failure is a traceback and exit 1.

An outcome is ``"refused: <message>"`` (a SerializationError), ``"ok"``,
``"round trip"``, ``"empty + warning"`` (a session), or ``"error: <type>:
<message>"`` for anything else.

Runs in its own process because what it guards against is a crash (a C
stack overflow is a SIGSEGV), which must fail a test instead of killing
pytest.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import typing as t
from collections.abc import Sequence
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from functools import cache
from functools import partial

import msgpack

from flask_towersess.errors import SerializationError
from flask_towersess.serializers import MAX_NESTING
from flask_towersess.serializers import MSGPACK_FORMAT
from flask_towersess.serializers import MsgPackSerializer
from flask_towersess.session import ServerSession
from flask_towersess.session import new_session_key
from flask_towersess.session import stored_key
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import utcnow
from flask_towersess.stores.memory import MemoryStore

#: The stack of the threads things run in: small, as some servers' are.
STACK = 256 * 1024

APP_CODE = 40


class Box:
    """An app type stored as the value it holds, so each Box is one level."""

    def __init__(self, inner: t.Any) -> None:
        self.inner = inner

    def __eq__(self, other: object) -> bool:
        return type(other) is Box and other.inner == self.inner

    def __hash__(self) -> int:
        return hash(("Box", self.inner))

    def __repr__(self) -> str:
        return f"Box({self.inner!r})"


def serializer() -> MsgPackSerializer:
    s = MsgPackSerializer()
    s.register_type(Box, APP_CODE, lambda box: box.inner, Box)
    return s


# -- payloads built as bytes -------------------------------------------------------

#: 5000 bytes of text: extension data longer than the Unpacker kept for reuse.
PAD = msgpack.packb("x" * 5000)


def ext(code: int, data: bytes) -> bytes:
    return msgpack.packb(msgpack.ExtType(code, data))  # type: ignore[no-any-return]


def wrap(kind: str, body: bytes) -> bytes:
    """``body`` (packed msgpack) inside one more level of ``kind``."""
    if kind == "list":
        return b"\x91" + body
    if kind == "dict":
        return b"\x81\xa1k" + body
    if kind == "key":  # a map whose key is body
        return b"\x81" + body + b"\xc0"
    if kind == "tuple":
        return ext(1, b"\x91" + body)
    if kind == "set":
        return ext(2, b"\x91" + body)
    if kind == "frozenset":
        return ext(3, b"\x91" + body)
    if kind == "datetime":  # [text, offset] with the value as text
        return ext(4, b"\x92" + body + b"\xc0")
    if kind == "markup":
        return ext(10, body)
    if kind == "app":
        return ext(APP_CODE, body)
    if kind == "unknown":
        return ext(99, body)
    if kind == "padded tuple":
        return ext(1, b"\x92" + PAD + body)
    raise ValueError(kind)


def nest(kinds: Sequence[str], times: int, core: bytes = b"\x90") -> bytes:
    """``core`` inside ``kinds`` (outermost first), the whole ``times`` over."""
    body = core
    for _ in range(times):
        for kind in reversed(kinds):
            body = wrap(kind, body)
    return body


def session_payload(body: bytes) -> bytes:
    """A payload whose session holds ``body`` (packed) under the key "v"."""
    return MSGPACK_FORMAT + b"\x81\xa4data\x81\xa1v" + body


@cache
def hostile_payloads() -> dict[str, bytes]:
    """Payloads no dumps() makes; loads() must refuse every one."""
    many = 5000
    every_ext = ["tuple", "set", "frozenset", "app", "markup", "datetime"]
    bodies = {
        # The report: about 1 KB, and it crashed the main thread of 0.1.0.
        "tuples 300": nest(["tuple"], 300),
        "tuples 5000": nest(["tuple"], many),
        "sets 5000": nest(["set"], many),
        "frozensets 5000": nest(["frozenset"], many),
        "app type 5000": nest(["app"], many),
        "markups 5000": nest(["markup"], many),
        "datetimes 5000": nest(["datetime"], many),
        # Past the first level, leaves are decoded like any extension value.
        "markups 5000, two tuples down": nest(["tuple"], 2, nest(["markup"], many)),
        "datetimes 5000, two sets down": nest(["set"], 2, nest(["datetime"], many)),
        "every extension type 6000": nest(every_ext, many // len(every_ext) + 1),
        "tuples as map keys 5000": nest(["key", "tuple"], many),
        "unknown extension code 5000 deep": nest(["unknown"], many),
        "tuples one past the limit": nest(["tuple"], MAX_NESTING + 1),
        "tuples with large data 40": nest(["padded tuple"], 40),
        "lists 2000": nest(["list"], 2000),
        "dicts 2000": nest(["dict"], 2000),
        "lists and dicts 3000": nest(["list", "dict"], 1500),
        "1000 lists in each of 40 tuples": nest(["tuple"] + ["list"] * 1000, 40),
        "1023 dicts in each of 100 sets": nest(["set"] + ["dict"] * 1023, 100),
        "truncated tuples 5000": nest(["tuple"], many)[:-7],
    }
    return {name: session_payload(body) for name, body in bodies.items()}


# -- running things -----------------------------------------------------------------


def in_thread(func: t.Callable[[], t.Any], stack: int = STACK) -> t.Any:
    """``func()`` in a new thread with a ``stack``-byte stack; its result or error."""
    outcome: dict[str, t.Any] = {}

    def run() -> None:
        try:
            outcome["value"] = func()
        except BaseException as exc:  # handed over to the caller's thread
            outcome["error"] = exc

    previous = threading.stack_size(stack)
    try:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
    finally:
        threading.stack_size(previous)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def outcome(func: t.Callable[[], t.Any]) -> str:
    try:
        func()
    except SerializationError as exc:
        return f"refused: {exc}"[:300]
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"[:300]
    return "ok"


class Warnings(logging.Handler):
    """Collects what the security logger says."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def read_session(payload: bytes) -> str:
    """Plant ``payload`` in a store and read it through a ServerSession."""
    store = MemoryStore()
    key = new_session_key()
    store.create(Record(stored_key(key), payload, utcnow() + timedelta(hours=1)))
    logger = logging.getLogger("flask_towersess.security")
    warnings = Warnings()
    logger.addHandler(warnings)
    try:
        data = dict(ServerSession(store, key, serializer=serializer()))
    finally:
        logger.removeHandler(warnings)
    if not data and warnings.records:
        return "empty + warning"
    return f"data {sorted(data)!r}, {len(warnings.records)} warnings"


def check_hostile() -> dict[str, dict[str, str]]:
    s = serializer()
    report = {}
    for name, payload in hostile_payloads().items():
        report[name] = {
            "main": outcome(partial(s.loads, payload)),
            "thread": in_thread(partial(outcome, partial(s.loads, payload))),
            "session": in_thread(partial(read_session, payload)),
        }
    return report


# -- values at the limit ------------------------------------------------------------

#: A leaf: an extension value of its own, that dumps() does not count.
LEAF = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))


def nested(kind: str, levels: int) -> t.Any:
    """A value ``levels`` deep (as dumps() counts) of ``kind``, around LEAF."""
    if kind == "set":  # a set holds hashable values only: frozensets inside
        return {nested("frozenset", levels - 1)}
    value: t.Any = LEAF
    for level in range(levels):
        # "mixed": a tuple in a list in a Box in a dict in a tuple...
        step = MIXED[level % len(MIXED)] if kind == "mixed" else kind
        if step == "tuple":
            value = (value,)
        elif step == "frozenset":
            value = frozenset([value])
        elif step == "app type":
            value = Box(value)
        elif step == "list":
            value = [value]
        elif step == "dict":
            value = {"k": value}
        else:
            raise ValueError(kind)
    return value


MIXED = ["tuple", "list", "app type", "dict"]


def state_of(value: t.Any, envelope: bool) -> dict[str, t.Any]:
    """What dumps() is given: the session layer's envelope, or a bare dict."""
    return {"data": {"v": value}, "expiry": 60} if envelope else {"v": value}


def typed(value: t.Any) -> t.Any:
    """A picture of ``value`` that also tells types apart (1 == 1.0 == True)."""
    kind = type(value).__qualname__
    if isinstance(value, (list, tuple)):
        return kind, [typed(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return kind, sorted((typed(item) for item in value), key=repr)
    if isinstance(value, dict):
        return kind, [(typed(k), typed(v)) for k, v in value.items()]
    if isinstance(value, Box):
        return kind, typed(value.inner)
    if isinstance(value, datetime):
        return kind, value.isoformat()
    return kind, repr(value)


def round_trip(state: dict[str, t.Any]) -> str:
    s = serializer()

    def save_and_read() -> str:
        back = s.loads(s.dumps(state))
        return "round trip" if typed(back) == typed(state) else f"changed: {back!r}"

    try:
        return t.cast(str, in_thread(save_and_read))
    except SerializationError as exc:
        return f"refused: {exc}"


def check_limit() -> dict[str, dict[str, str]]:
    s = serializer()
    report = {}
    kinds = ["tuple", "set", "frozenset", "app type", "list", "dict", "mixed"]
    for kind in kinds:
        # In the session layer's envelope, a value has two levels fewer.
        for envelope, allowed in [(True, MAX_NESTING - 2), (False, MAX_NESTING - 1)]:
            name = f"{kind} {'in the envelope' if envelope else 'bare'}"
            past = state_of(nested(kind, allowed + 1), envelope)
            report[name] = {
                "at": round_trip(state_of(nested(kind, allowed), envelope)),
                "past": in_thread(partial(outcome, partial(s.dumps, past))),
            }
    # The deepest payload loads() reads: MAX_NESTING extension values.
    for name, times in [("at", MAX_NESTING), ("past", MAX_NESTING + 1)]:
        payload = session_payload(nest(["tuple"], times))
        report.setdefault("payload of MAX_NESTING tuples", {})[name] = in_thread(
            partial(outcome, partial(s.loads, payload))
        )
    return report


# -- fuzzing -----------------------------------------------------------------------


def fuzz() -> dict[str, int]:
    from hypothesis import given
    from hypothesis import settings
    from hypothesis import strategies as st

    s = serializer()
    examples = 0
    wrappers = st.sampled_from(
        [
            "list",
            "dict",
            "key",
            "tuple",
            "set",
            "frozenset",
            "datetime",
            "markup",
            "app",
            "unknown",
        ]
    )
    cores = st.sampled_from(
        [b"\x90", b"\x80", b"\xc0", b"\x01", b"\xa1x", b"", ext(4, b"\x92\xa1x\xc0")]
    )

    @st.composite
    def mutated(draw: st.DrawFn, payload: bytes) -> bytes:
        how = draw(st.sampled_from(["none", "truncate", "flip", "insert", "delete"]))
        if how == "none" or not payload:
            return payload
        at = draw(st.integers(0, len(payload) - 1))
        if how == "truncate":
            return payload[:at]
        if how == "flip":
            return (
                payload[:at]
                + bytes([payload[at] ^ draw(st.integers(1, 255))])
                + payload[at + 1 :]
            )
        if how == "insert":
            return payload[:at] + draw(st.binary(min_size=1, max_size=8)) + payload[at:]
        return payload[:at] + payload[at + draw(st.integers(1, 16)) :]

    @st.composite
    def byte_nestings(draw: st.DrawFn) -> bytes:
        """A pattern of levels repeated up to thousands of times, maybe mutated."""
        pattern = draw(st.lists(wrappers, min_size=1, max_size=4))
        times = draw(st.integers(0, 2000 // len(pattern)))
        body = nest(pattern, times, draw(cores))
        payload = (
            session_payload(body) if draw(st.booleans()) else MSGPACK_FORMAT + body
        )
        return draw(mutated(payload))

    leaves = st.one_of(
        st.none(),
        st.integers(),
        st.text(max_size=5),
        st.just(LEAF),
        st.binary(max_size=5),
    )

    def deepen(value: t.Any, kind: str) -> t.Any:
        if kind == "list":
            return [value]
        if kind == "dict":
            return {"k": value}
        if kind == "tuple":
            return (value,)
        if kind == "app":
            return Box(value)
        try:
            hash(value)
        except TypeError:
            return [value]
        return frozenset([value]) if kind == "frozenset" else {value}

    @st.composite
    def value_nestings(draw: st.DrawFn) -> dict[str, t.Any]:
        """Values up to a dozen levels past the limit, wide in places."""
        value = draw(
            st.recursive(
                leaves,
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.lists(inner, max_size=3).map(tuple)
                    | st.dictionaries(st.text(max_size=3), inner, max_size=3)
                ),
                max_leaves=8,
            )
        )
        kinds = st.sampled_from(["list", "dict", "tuple", "app", "set", "frozenset"])
        levels = draw(st.integers(0, MAX_NESTING + 12))
        for kind in draw(st.lists(kinds, min_size=levels, max_size=levels)):
            value = deepen(value, kind)
        return {"data": {"v": value}, "expiry": None}

    def loads_or_refuses(payload: bytes) -> None:
        try:
            state = s.loads(payload)
        except SerializationError:
            return
        assert isinstance(state, dict)

    @settings(max_examples=200, deadline=None, database=None)
    @given(byte_nestings())
    def hostile_bytes(payload: bytes) -> None:
        nonlocal examples
        examples += 1
        loads_or_refuses(payload)

    @settings(max_examples=200, deadline=None, database=None)
    @given(value_nestings(), st.data())
    def deep_values(state: dict[str, t.Any], data: st.DataObject) -> None:
        nonlocal examples
        examples += 1
        try:
            payload = s.dumps(state)
        except SerializationError as exc:
            assert "levels deep" in str(exc), exc
            return
        assert typed(s.loads(payload)) == typed(state)
        loads_or_refuses(data.draw(mutated(payload)))

    def run_all() -> None:
        hostile_bytes()
        deep_values()

    in_thread(run_all)
    return {"examples": examples}


def main(argv: list[str]) -> int:
    (mode,) = argv
    if mode == "hostile":
        report: t.Any = check_hostile()
    elif mode == "limit":
        report = check_limit()
    elif mode == "fuzz":
        report = fuzz()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
