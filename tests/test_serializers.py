from __future__ import annotations

import uuid
from datetime import date
from datetime import datetime
from datetime import time
from datetime import timedelta
from datetime import timezone
from decimal import Decimal

import pytest
from markupsafe import Markup

from flask_towersess.errors import SerializationError
from flask_towersess.serializers import JSONSerializer
from flask_towersess.serializers import MsgPackSerializer
from flask_towersess.serializers import serializer_for

VALUES = {
    "str": "héllo",
    "bytes": b"\x00\xff",
    "int": 7,
    "bigint": 2**100,
    "negbigint": -(2**80),
    "float": 1.5,
    "bool": True,
    "none": None,
    "list": [1, "a", [2]],
    "tuple": (1, (2, "x")),
    "dict": {"a": {"b": 1}},
    "tag_like": {" t": 1, "__tuple__": [1], "data": 2},
    "set": {1, 2},
    "frozenset": frozenset({"a"}),
    "naive": datetime(2024, 5, 6, 7, 8, 9, 123456),
    "aware": datetime(
        2024, 5, 6, 7, 8, 9, 654321, tzinfo=timezone(timedelta(hours=-3, minutes=-30))
    ),
    "utc": datetime(2024, 5, 6, tzinfo=timezone.utc),
    "date": date(2024, 2, 29),
    "time": time(23, 59, 59, 999999),
    "aware_time": time(1, 2, tzinfo=timezone(timedelta(hours=2))),
    "timedelta": timedelta(days=-2, seconds=5, microseconds=7),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "decimal": Decimal("3.14159265358979323846"),
    "markup": Markup("<b>bold</b>"),
    "nested": [(Markup("<i>x</i>"), {date(2020, 1, 1)})],
}


def _assert_same(a: object, b: object) -> None:
    assert type(a) is type(b), (a, b)
    assert a == b
    if isinstance(a, dict):
        for key in a:
            _assert_same(a[key], b[key])  # type: ignore[index]
    elif isinstance(a, (list, tuple)):
        for x, y in zip(a, b):  # type: ignore[call-overload]
            _assert_same(x, y)


@pytest.mark.parametrize("name", sorted(VALUES))
def test_msgpack_round_trips_type_exactly(name: str) -> None:
    s = MsgPackSerializer()
    state = {"data": {name: VALUES[name]}}
    _assert_same(s.loads(s.dumps(state)), state)


def test_aware_datetime_keeps_offset() -> None:
    s = MsgPackSerializer()
    value = VALUES["aware"]
    back = s.loads(s.dumps({"v": value}))["v"]
    assert back.utcoffset() == value.utcoffset()  # type: ignore[union-attr]
    assert back.microsecond == 654321


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


def test_registered_app_type() -> None:
    s = MsgPackSerializer()
    s.register_type(Point, 32, lambda p: [p.x, p.y], lambda v: Point(*v))
    back = s.loads(s.dumps({"data": {"p": [Point(1, 2)]}}))
    assert back["data"]["p"] == [Point(1, 2)]


@pytest.mark.parametrize("code", [0, 11, 31, 128])
def test_register_type_rejects_reserved_codes(code: int) -> None:
    with pytest.raises(ValueError, match="32 to 127"):
        MsgPackSerializer().register_type(Point, code, str, str)


def test_register_type_rejects_duplicate_code() -> None:
    s = MsgPackSerializer()
    s.register_type(Point, 40, str, str)
    with pytest.raises(ValueError, match="already used"):
        s.register_type(complex, 40, str, str)


@pytest.mark.parametrize("serializer", [MsgPackSerializer(), JSONSerializer()])
def test_unsupported_type_names_key_and_type(serializer: MsgPackSerializer) -> None:
    state = {"data": {"fine": 1, "cart": {"items": [Point(1, 2)]}}}
    with pytest.raises(SerializationError) as info:
        serializer.dumps(state)
    message = str(info.value)
    assert "'cart'" in message
    assert "Point" in message
    assert "fine" not in message


@pytest.mark.parametrize("serializer_class", [MsgPackSerializer, JSONSerializer])
def test_size_limit(serializer_class: type[MsgPackSerializer]) -> None:
    s = serializer_class(max_size=100)
    s.dumps({"data": {"a": "x" * 10}})
    with pytest.raises(SerializationError, match="SESSION_MAX_PAYLOAD_SIZE"):
        s.dumps({"data": {"a": "x" * 200}})


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x01",
        b"\x02abc",
        b"\x01\xc1",
        b"\x01\x93\x01\x02\x03",
        b"\x01\xd4\x63\x00",
        b"garbage",
        b"\x01\xc7\x03\x0a\xd4\x01\x90",  # a Markup holding a tuple
        b"\x01\xc7\x03\x0a\x91\xa1x",  # a Markup stored as a list
        b"\x01\xc7\x07\x01\x91\xc7\x03\x01\x91\x01\x02",  # a tuple in a tuple, a byte over
        b"\x01\xc7\x05\x01\x91\xd5\x01\x92\x01",  # a tuple in a tuple, cut short
    ],
)
def test_msgpack_rejects_bad_payloads(payload: bytes) -> None:
    with pytest.raises(SerializationError):
        MsgPackSerializer().loads(payload)


def test_json_round_trip_of_flask_types() -> None:
    s = JSONSerializer()
    state = {"data": {"t": (1, 2), "m": Markup("<b>"), "b": b"x", "u": uuid.uuid4()}}
    assert s.loads(s.dumps(state)) == state


def test_json_rejects_bad_payload() -> None:
    with pytest.raises(SerializationError):
        JSONSerializer().loads(b"\xff{")
    with pytest.raises(SerializationError):
        JSONSerializer().loads(b"[1]")


def test_serializer_for() -> None:
    assert isinstance(serializer_for("msgpack"), MsgPackSerializer)
    assert isinstance(serializer_for("JSON"), JSONSerializer)
    custom = JSONSerializer()
    assert serializer_for(custom) is custom
    with pytest.raises(SerializationError, match="unknown SESSION_SERIALIZER"):
        serializer_for("pickle")
    with pytest.raises(SerializationError):
        serializer_for(42)


def test_time_in_a_zone_without_fixed_offset_is_refused() -> None:
    from zoneinfo import ZoneInfo

    value = time(9, 30, tzinfo=ZoneInfo("Europe/Paris"))
    assert value.utcoffset() is None  # what makes it impossible to keep
    with pytest.raises(SerializationError, match="'meeting'"):
        MsgPackSerializer().dumps({"data": {"meeting": value}})


def test_nesting_limit_names_the_key() -> None:
    """Past MAX_NESTING (counting the envelope and the data dict), the save
    fails naming the key, like an unsupported type; see test_payload_depth.py."""
    from flask_towersess.serializers import MAX_NESTING

    value: object = 1
    for _ in range(MAX_NESTING - 1):
        value = [value]
    with pytest.raises(SerializationError) as info:
        MsgPackSerializer().dumps({"data": {"fine": [[1]], "cart": value}})
    message = str(info.value)
    assert f"session['cart']: it nests more than {MAX_NESTING - 2} levels" in message
    assert "fine" not in message
