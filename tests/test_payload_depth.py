"""Nesting depth: dumps() and loads() bound it, so deep values cannot crash a worker.

In 0.1.0 tuples (or any extension type) nested a few hundred deep went
through dumps(); loads() then recursed through msgpack at about 40 KiB of C
stack a level and died with SIGSEGV, past msgpack's depth guard and Python's
recursion limit: a 1 KB payload killed the worker, and on a threaded server
a view storing user-shaped nested data crashed that user's next request.
Now dumps() refuses values nested past
:data:`~flask_towersess.serializers.MAX_NESTING` and loads() refuses
payloads that are, before recursing, in the main thread and in a thread
with a 256 KiB stack alike.

What could crash runs in a subprocess (``tests/depthcheck.py``), so a crash
fails a test instead of killing pytest: hand-built hostile payloads, values
at the limit read back in a 256 KiB thread, and a hypothesis fuzz. The
in-process tests here only run what the subprocess has shown to be safe.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import typing as t
from datetime import date
from datetime import timedelta
from pathlib import Path

import pytest
from markupsafe import Markup

from flask_towersess.errors import SerializationError
from flask_towersess.serializers import MAX_NESTING
from flask_towersess.serializers import MsgPackSerializer
from flask_towersess.session import ServerSession
from flask_towersess.session import new_session_key
from flask_towersess.session import stored_key
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import utcnow
from flask_towersess.stores.memory import MemoryStore

from . import depthcheck
from .depthcheck import Box
from .depthcheck import nest
from .depthcheck import nested
from .depthcheck import serializer
from .depthcheck import session_payload
from .depthcheck import typed

ROOT = Path(__file__).resolve().parent.parent


def run_depthcheck(mode: str) -> t.Any:
    """``python -m tests.depthcheck MODE``: its report, or a failure saying why."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.depthcheck", mode],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    # A negative code is the signal that killed it: -11 is SIGSEGV, -6 SIGABRT.
    assert done.returncode == 0, (
        f"tests.depthcheck {mode} exited with {done.returncode}:\n"
        f"{done.stdout[-2000:]}\n{done.stderr[-5000:]}"
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hostile_report() -> dict[str, dict[str, str]]:
    return t.cast("dict[str, dict[str, str]]", run_depthcheck("hostile"))


# -- hostile payloads, in a subprocess -----------------------------------------------


def expected_refusal(name: str) -> str:
    """What the message of loads()'s refusal of payload ``name`` says."""
    if name.startswith(("lists", "dicts")):
        return "StackError"  # msgpack's own limit of 1024 levels
    if name.startswith("truncated"):
        return "incomplete input"  # the outermost length runs past the end
    if name.startswith("unknown"):
        return "unknown extension type code 99"
    if name in ("markups 5000", "datetimes 5000"):
        return "inside a leaf value"  # a Markup or datetime holds no extension
    return f"extension values nested more than {MAX_NESTING} deep"


@pytest.mark.parametrize("name", sorted(depthcheck.hostile_payloads()))
def test_hostile_payload_is_refused_without_crashing(
    name: str, hostile_report: dict[str, dict[str, str]]
) -> None:
    """Main thread, 256 KiB thread, and through a ServerSession in one."""
    report = hostile_report[name]
    for where in ("main", "thread"):
        assert report[where].startswith("refused: payload cannot be decoded"), report
        assert expected_refusal(name) in report[where], report
    assert report["session"] == "empty + warning"


def test_hostile_payloads_are_small() -> None:
    """The report's case: about a kilobyte of payload was enough."""
    assert len(depthcheck.hostile_payloads()["tuples 300"]) < 1500


def test_values_at_the_limit_round_trip_in_a_small_thread() -> None:
    """At the limit exactly, dumps() and loads() work in a 256 KiB thread; past it
    dumps() refuses, there too."""
    report = run_depthcheck("limit")
    kinds = ["tuple", "set", "frozenset", "app type", "list", "dict", "mixed"]
    names = {
        f"{kind} {where}" for kind in kinds for where in ("in the envelope", "bare")
    }
    assert names <= report.keys()
    for name in names:
        assert report[name]["at"] == "round trip", (name, report[name])
        allowed = MAX_NESTING - 2 if "envelope" in name else MAX_NESTING - 1
        assert report[name]["past"].startswith(
            f"refused: cannot serialize session['v']: it nests more than {allowed}"
            " levels deep (each dict, list, tuple, set, frozenset and app-type value"
            " is a level; MAX_NESTING)"
        ), (name, report[name])
    deepest = report["payload of MAX_NESTING tuples"]
    assert deepest["at"] == "ok"
    assert deepest["past"].startswith("refused: payload cannot be decoded")


def test_fuzz_in_a_small_thread() -> None:
    """Hypothesis, in a 256 KiB thread: random nestings as bytes and as values,
    and mutations of both; see tests/depthcheck.py."""
    report = run_depthcheck("fuzz")
    assert report["examples"] >= 400


def test_session_with_hostile_payload_is_empty_and_logged(
    hostile_report: dict[str, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    """In process: the subprocess has shown none of these can crash."""
    assert all(r["session"] == "empty + warning" for r in hostile_report.values())
    for name, payload in depthcheck.hostile_payloads().items():
        store = MemoryStore()
        key = new_session_key()
        store.create(Record(stored_key(key), payload, utcnow() + timedelta(hours=1)))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="flask_towersess.security"):
            session = ServerSession(store, key, serializer=serializer())
            assert dict(session) == {}, name
            session["after"] = 1  # the user goes on with a fresh session
            session.save()
        assert any("undecodable payload" in r.getMessage() for r in caplog.records), (
            name
        )
        back = ServerSession(store, session.session_key)
        assert dict(back) == {"after": 1}


# -- dumps(): what it refuses, in process (it never recurses on a value) -------------


@pytest.mark.parametrize("kind", ["tuple", "set", "frozenset", "app type", "list"])
def test_dumps_refuses_one_level_past_the_limit(kind: str) -> None:
    s = serializer()
    allowed = MAX_NESTING - 2
    at = {"data": {"deep": nested(kind, allowed)}}
    assert typed(s.loads(s.dumps(at))) == typed(at)
    with pytest.raises(SerializationError) as info:
        s.dumps({"data": {"fine": 1, "deep": nested(kind, allowed + 1)}})
    message = str(info.value)
    assert f"session['deep']: it nests more than {allowed} levels deep" in message
    assert "MAX_NESTING" in message
    assert "fine" not in message


@pytest.mark.parametrize("kind", ["tuple", "frozenset", "app type", "list", "dict"])
def test_dumps_refuses_very_deep_values(kind: str) -> None:
    """Thousands of levels: refused, not a RecursionError (or worse)."""
    with pytest.raises(SerializationError, match="levels deep"):
        serializer().dumps({"data": {"v": nested(kind, 5000)}})


def test_dumps_refuses_a_value_that_contains_itself() -> None:
    loop: list[t.Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match=r"session\['loop'\]: it nests"):
        MsgPackSerializer().dumps({"data": {"loop": loop}})


def test_leaves_count_no_level() -> None:
    """A datetime, Decimal, Markup... holds no value: it adds no level, though
    it is an extension value of its own in the payload."""
    s = MsgPackSerializer()
    leaves = [date(2024, 1, 1), Markup("<b>"), 2**100, timedelta(seconds=1)]
    for leaf in leaves:
        value: t.Any = leaf
        for _ in range(MAX_NESTING - 2):
            value = (value,)
        state = {"data": {"v": value}}
        assert typed(s.loads(s.dumps(state))) == typed(state)


def test_dict_keys_count() -> None:
    """A tuple used as a dict key is a level inside that dict, like a value."""
    s = MsgPackSerializer()
    key = nested("tuple", MAX_NESTING - 3)
    state = {"data": {"v": {key: 1}}}
    assert s.loads(s.dumps(state)) == state
    with pytest.raises(SerializationError, match="levels deep"):
        s.dumps({"data": {"v": {(key,): 1}}})


def test_app_type_counts_one_level_plus_its_encoded_form() -> None:
    s = MsgPackSerializer()
    s.register_type(Box, 41, lambda box: [box.inner], lambda v: Box(v[0]))
    # Each Box is two levels here: itself, and the list it encodes as.
    value: t.Any = 1
    for _ in range((MAX_NESTING - 2) // 2):
        value = Box(value)
    assert s.loads(s.dumps({"data": {"v": value}}))["data"]["v"] == value
    with pytest.raises(SerializationError, match="levels deep"):
        s.dumps({"data": {"v": Box(value)}})


def test_app_type_is_encoded_once() -> None:
    calls = []

    def encode(box: Box) -> t.Any:
        calls.append(box)
        return box.inner

    s = MsgPackSerializer()
    s.register_type(Box, 41, encode, Box)
    value = {"data": {"a": Box(Box(1)), "b": [Box(2)]}}
    assert s.loads(s.dumps(value)) == value
    assert len(calls) == 3


def test_app_encoded_form_may_hold_bytes_like() -> None:
    """Inside an app type's encoded form a bytearray is the app's business, as
    before: it reaches the app's decoder as bytes."""
    s = MsgPackSerializer()
    s.register_type(Box, 41, lambda box: bytearray(box.inner), lambda v: Box(bytes(v)))
    assert s.loads(s.dumps({"v": Box(b"ab")})) == {"v": Box(b"ab")}
    with pytest.raises(SerializationError, match="bytearray"):
        s.dumps({"data": {"v": [bytearray(b"ab")]}})


# -- loads(): the limit, and the Unpackers it reuses ---------------------------------


def test_loads_reads_max_nesting_extension_values_and_refuses_one_more() -> None:
    """In the main thread (its stack is large: this cannot crash either way)."""
    s = MsgPackSerializer()
    state = s.loads(session_payload(nest(["tuple"], MAX_NESTING)))
    depth, value = 0, state["data"]["v"]
    while isinstance(value, tuple) and value:
        depth, value = depth + 1, value[0]
    assert (depth, value) == (MAX_NESTING, [])
    with pytest.raises(SerializationError, match=f"more than {MAX_NESTING} deep"):
        s.loads(session_payload(nest(["tuple"], MAX_NESTING + 1)))


def test_loads_recovers_after_a_refused_payload() -> None:
    """A failure deep down leaves no Unpacker half-way through a value."""
    s = MsgPackSerializer()
    good = {"data": {"v": [("m", Markup("<i>x</i>"), (date(2024, 1, 1),))] * 3}}
    payload = s.dumps(good)
    bad = [
        session_payload(nest(["tuple"], MAX_NESTING + 1)),
        # A tuple in a tuple whose data runs short, or has bytes to spare.
        session_payload(depthcheck.ext(1, b"\x91" + depthcheck.ext(1, b"\x92\x01"))),
        session_payload(
            depthcheck.ext(1, b"\x91" + depthcheck.ext(1, b"\x91\x01\x02"))
        ),
    ]
    for hostile in bad:
        with pytest.raises(SerializationError):
            s.loads(hostile)
        assert typed(s.loads(payload)) == typed(good)


def test_loads_of_large_values_deep_down() -> None:
    """Data too big for the reused Unpacker gets one of its own."""
    s = MsgPackSerializer()
    state = {"data": {"v": (("x" * 100_000, b"\xff" * 50_000, [1] * 10_000),)}}
    assert typed(s.loads(s.dumps(state))) == typed(state)


def test_app_decoder_may_call_loads_again() -> None:
    """A decoder that reads a payload of its own, deep down: no Unpacker in use
    is taken over."""
    s = MsgPackSerializer()
    inner = {"data": {"t": ((Markup("a"),),)}}
    s.register_type(Box, 41, lambda box: s.dumps(box.inner), lambda v: Box(s.loads(v)))
    state = {"data": {"v": ((Box(inner), Markup("b")),)}}
    back = s.loads(s.dumps(state))
    assert typed(back["data"]["v"][0][0].inner) == typed(inner)
    assert back == state


def test_loads_in_many_threads_at_once() -> None:
    """Each thread decodes with Unpackers of its own."""
    s = MsgPackSerializer()
    states = [
        {"data": {"v": ((Markup(f"<b>{n}</b>"), (n, frozenset({n}))),) * 3}}
        for n in range(8)
    ]
    payloads = [s.dumps(state) for state in states]
    errors: list[BaseException] = []

    def read(n: int) -> None:
        try:
            for _ in range(300):
                assert s.loads(payloads[n]) == states[n]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_markup_is_decoded_from_text_only() -> None:
    """Markup(x) calls str(x): from a deeply nested list that would repr() it
    level by level, the crash this module guards against."""
    body = depthcheck.ext(10, b"\x91" * 1000 + b"\x90")
    with pytest.raises(SerializationError, match="Markup is stored as str"):
        MsgPackSerializer().loads(session_payload(body))


def test_plain_nesting_past_msgpack_limit_is_refused() -> None:
    """msgpack decodes lists and dicts with its own stack, no recursion, and
    refuses past 1024 levels."""
    with pytest.raises(SerializationError, match="StackError"):
        MsgPackSerializer().loads(session_payload(nest(["list"], 1100)))


def test_a_hostile_user_id_is_never_turned_into_text() -> None:
    """A stored ``_user_id`` nested as deep as msgpack allows (plain lists
    cost it no C stack) must not be str()'d level by level at save."""
    from flask_towersess.session import _identity

    deep: list[t.Any] = []
    for _ in range(5000):
        deep = [deep]
    assert _identity({"_user_id": deep}) == ("<list>", False)
    assert _identity({"_user_id": 42, "_fresh": True}) == ("42", True)
    assert _identity({"_user_id": "ann", "_fresh": "yes"}) == ("ann", False)
