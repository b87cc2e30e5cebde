"""Turning session state into payload bytes and back.

:class:`MsgPackSerializer` is the default: compact, fast, and it round-trips
every type listed below without changing it. It never uses pickle, so a
payload read back from a compromised store cannot run code.

Types kept exactly: ``str``, ``bytes``, ``int`` (any size), ``float``,
``bool``, ``None``, ``list``, ``tuple``, ``dict``, ``set``, ``frozenset``,
``datetime`` (naive and aware, microseconds kept), ``date``, ``time``,
``timedelta``, ``UUID``, ``Decimal`` and ``markupsafe.Markup``. Apps add
their own with :meth:`MsgPackSerializer.register_type`.

.. versionadded:: 0.1
"""

from __future__ import annotations

import dataclasses
import threading
import typing as t
import uuid
from datetime import date
from datetime import datetime
from datetime import time
from datetime import timedelta
from datetime import timezone
from decimal import Decimal

import msgpack
from markupsafe import Markup

from .errors import SerializationError

#: The first byte of every MessagePack payload: lets a later release change
#: the format and still read what is stored, and makes a payload written by
#: something else fail loudly instead of decoding into nonsense.
MSGPACK_FORMAT = b"\x01"

#: Extension codes below this are reserved for flask-towersess.
FIRST_APP_TYPE_CODE = 32


class Serializer(t.Protocol):
    """What the session needs from a serializer."""

    def dumps(self, state: dict[str, t.Any]) -> bytes:
        """Encode ``state``; raise :class:`SerializationError` if impossible."""

    def loads(self, payload: bytes) -> dict[str, t.Any]:
        """Decode a payload; raise :class:`SerializationError` if it is invalid."""


@dataclasses.dataclass(frozen=True)
class _ExtType:
    cls: type
    code: int
    encode: t.Callable[[t.Any], t.Any]
    decode: t.Callable[[t.Any], t.Any]


def _offset_micros(offset: timedelta | None) -> int | None:
    # Microseconds, not seconds: Python allows sub-second UTC offsets.
    return None if offset is None else offset // timedelta(microseconds=1)


def _zone(micros: int | None) -> timezone | None:
    return None if micros is None else timezone(timedelta(microseconds=micros))


def _encode_datetime(value: datetime) -> list[t.Any]:
    return [value.replace(tzinfo=None).isoformat(), _offset_micros(value.utcoffset())]


def _decode_datetime(value: list[t.Any]) -> datetime:
    text, offset = value
    return datetime.fromisoformat(text).replace(tzinfo=_zone(offset))


def _encode_time(value: time) -> list[t.Any]:
    offset = value.utcoffset()
    if value.tzinfo is not None and offset is None:
        # A zone whose offset depends on the date (a ZoneInfo) has none for a
        # bare time: keeping it would silently turn the value naive.
        raise TypeError(value)
    return [value.replace(tzinfo=None).isoformat(), _offset_micros(offset)]


def _decode_time(value: list[t.Any]) -> time:
    text, offset = value
    return time.fromisoformat(text).replace(tzinfo=_zone(offset))


def _encode_big_int(value: int) -> bytes:
    # Bytes, not decimal text: Python refuses to convert ints of more than
    # 4300 digits to text, and bytes are smaller anyway.
    return value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)


def _decode_big_int(value: bytes) -> int:
    return int.from_bytes(value, "big", signed=True)


def _builtin_types() -> list[_ExtType]:
    # Order matters only for subclasses: the exact type is looked up first.
    return [
        _ExtType(tuple, 1, list, tuple),
        _ExtType(set, 2, list, set),
        _ExtType(frozenset, 3, list, frozenset),
        _ExtType(datetime, 4, _encode_datetime, _decode_datetime),
        _ExtType(date, 5, date.isoformat, date.fromisoformat),
        _ExtType(time, 6, _encode_time, _decode_time),
        _ExtType(
            timedelta,
            7,
            lambda v: [v.days, v.seconds, v.microseconds],
            lambda v: timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
        ),
        _ExtType(uuid.UUID, 8, lambda v: v.bytes, lambda v: uuid.UUID(bytes=v)),
        _ExtType(Decimal, 9, str, Decimal),
        _ExtType(Markup, 10, str, Markup),
        # msgpack stores integers up to 64 bits; larger ones go as bytes.
        _ExtType(int, 11, _encode_big_int, _decode_big_int),
    ]


class MsgPackSerializer:
    """The default serializer: MessagePack with extension types.

    :param max_size: the largest payload, in bytes, :meth:`dumps` returns;
        ``None`` for no limit.

    >>> s = MsgPackSerializer()
    >>> s.loads(s.dumps({"when": date(2024, 1, 2), "tags": {"a"}}))
    {'when': datetime.date(2024, 1, 2), 'tags': {'a'}}
    """

    def __init__(self, *, max_size: int | None = None) -> None:
        self.max_size = max_size
        self._by_type: dict[type, _ExtType] = {}
        self._by_code: dict[int, _ExtType] = {}
        # Packers are reused: making one per call (and one per nested
        # extension value) costs more than packing a small session. A packer
        # is not re-entrant, so each thread keeps one per nesting depth.
        self._local = threading.local()
        for ext in _builtin_types():
            self._add(ext)

    def _add(self, ext: _ExtType) -> None:
        self._by_type[ext.cls] = ext
        self._by_code[ext.code] = ext

    def register_type(
        self,
        cls: type,
        code: int,
        encode: t.Callable[[t.Any], t.Any],
        decode: t.Callable[[t.Any], t.Any],
    ) -> None:
        """Teach the serializer an app type.

        :param cls: the exact type (subclasses are not matched, so a
            registered type never captures values it was not written for).
        :param code: a number from 32 to 127, unique per serializer, that
            identifies the type in stored payloads: never reuse one for
            another type while old sessions may still hold it.
        :param encode: turns an instance into serializable values.
        :param decode: turns those values back into an instance.

        .. code-block:: python

            serializer.register_type(
                Point, 32, lambda p: [p.x, p.y], lambda v: Point(*v)
            )
        """
        if not FIRST_APP_TYPE_CODE <= code <= 127:
            raise ValueError(f"type codes for apps are 32 to 127, not {code}")
        if code in self._by_code:
            taken = self._by_code[code].cls.__qualname__
            raise ValueError(f"type code {code} is already used by {taken}")
        self._add(_ExtType(cls, code, encode, decode))

    def _default(self, value: t.Any) -> msgpack.ExtType:
        ext = self._by_type.get(type(value))
        if ext is None:
            raise TypeError(value)
        return msgpack.ExtType(ext.code, self._pack(ext.encode(value)))

    def _pack(self, value: t.Any) -> bytes:
        local = self._local
        try:
            packers: list[msgpack.Packer] = local.packers
            depth: int = local.depth
        except AttributeError:
            packers = local.packers = []
            depth = local.depth = 0
        if depth == len(packers):
            # strict_types sends tuples, Markup and other subclasses of the
            # natively packed types through _default, so they keep their type.
            packers.append(
                msgpack.Packer(
                    default=self._default, strict_types=True, use_bin_type=True
                )
            )
        packer = packers[depth]
        local.depth = depth + 1
        try:
            return packer.pack(value)  # type: ignore[no-any-return]
        except BaseException:
            packer.reset()  # drop what a failed pack left in the buffer
            raise
        finally:
            local.depth = depth

    def _ext_hook(self, code: int, data: bytes) -> t.Any:
        ext = self._by_code.get(code)
        if ext is None:
            raise ValueError(f"unknown extension type code {code}")
        return ext.decode(self._unpack(data))

    def _unpack(self, data: bytes) -> t.Any:
        return msgpack.unpackb(
            data, ext_hook=self._ext_hook, raw=False, strict_map_key=False
        )

    def _checked_pack(self, value: t.Any) -> bytes:
        _refuse_bytes_like(value)
        return self._pack(value)

    def dumps(self, state: dict[str, t.Any]) -> bytes:
        try:
            payload = MSGPACK_FORMAT + self._checked_pack(state)
        except (TypeError, ValueError, OverflowError) as exc:
            raise _unserializable(self._checked_pack, state, exc) from exc
        _check_size(payload, self.max_size)
        return payload

    def loads(self, payload: bytes) -> dict[str, t.Any]:
        if payload[:1] != MSGPACK_FORMAT:
            raise SerializationError("payload is not in a known MessagePack format")
        try:
            state = self._unpack(payload[1:])
        except Exception as exc:  # msgpack raises many types on bad input
            raise SerializationError(f"payload cannot be decoded: {exc!r}") from exc
        if not isinstance(state, dict):
            raise SerializationError("payload does not hold a mapping")
        return state


class JSONSerializer:
    """JSON payloads, with Flask's tagged JSON for non-JSON types.

    Readable in the store, and the same format Flask's cookie session uses.
    It keeps fewer types exactly than :class:`MsgPackSerializer`: ``set``,
    ``Decimal``, ``date``, ``time`` and ``timedelta`` are not supported, and
    ``datetime`` loses its microseconds and time zone (Flask's tag rules).

    :param max_size: the largest payload, in bytes; ``None`` for no limit.
    """

    def __init__(self, *, max_size: int | None = None) -> None:
        from flask.json.tag import TaggedJSONSerializer

        self.max_size = max_size
        self._tagged = TaggedJSONSerializer()

    def dumps(self, state: dict[str, t.Any]) -> bytes:
        def encode(value: t.Any) -> bytes:
            return self._tagged.dumps(value).encode()

        try:
            payload = encode(state)
        except (TypeError, ValueError) as exc:
            raise _unserializable(encode, state, exc) from exc
        _check_size(payload, self.max_size)
        return payload

    def loads(self, payload: bytes) -> dict[str, t.Any]:
        try:
            state = self._tagged.loads(payload.decode())
        except Exception as exc:
            raise SerializationError(f"payload cannot be decoded: {exc!r}") from exc
        if not isinstance(state, dict):
            raise SerializationError("payload does not hold a mapping")
        return state


_CONTAINERS = frozenset({list, tuple, set, frozenset})
# Types with nothing inside to look at: most session values.
_SCALARS = frozenset({str, int, float, bool, type(None), bytes})


def _refuse_bytes_like(value: t.Any) -> None:
    """Raise TypeError for a bytearray or memoryview anywhere in ``value``.

    MessagePack packs them natively, without asking ``default``, and they
    would come back as ``bytes``: a silent change of type, where any other
    unsupported type fails the save. Only the exact container types are
    walked; an app type's encoded form is the app's to choose.

    It runs on every save: scalars are passed over where they are found
    instead of going through the stack (an explicit stack, not recursion,
    so deep nesting cannot exhaust Python's).
    """
    stack = [value]
    push = stack.append
    while stack:
        item = stack.pop()
        cls = type(item)
        if cls is dict:
            for member in item:
                if type(member) not in _SCALARS:
                    push(member)
            members: t.Iterable[t.Any] = item.values()
        elif cls in _CONTAINERS:
            members = item
        elif cls is bytearray or cls is memoryview:
            raise TypeError(item)
        else:
            continue
        for member in members:
            if type(member) not in _SCALARS:
                push(member)


def _check_size(payload: bytes, max_size: int | None) -> None:
    if max_size is not None and len(payload) > max_size:
        raise SerializationError(
            f"the session payload is {len(payload)} bytes, more than the limit of"
            f" {max_size} (SESSION_MAX_PAYLOAD_SIZE); keep large data elsewhere"
            " and store a reference to it in the session"
        )


def _find_bad_value(value: t.Any, encode: t.Callable[[t.Any], t.Any]) -> t.Any:
    """Walk containers to the value the encoder refused."""
    children: t.Iterable[t.Any] = ()
    if isinstance(value, dict):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = value
    for child in children:
        try:
            encode(child)
        except (TypeError, ValueError, OverflowError):
            return _find_bad_value(child, encode)
    return value


def _unserializable(
    encode: t.Callable[[t.Any], t.Any], state: dict[str, t.Any], exc: Exception
) -> SerializationError:
    """Name the session key and the type that could not be encoded.

    Only runs on failure, so a successful save pays nothing for the search.
    """
    # The session hands over an envelope {"data": ..., "expiry": ...}; name
    # the key inside it, not "data".
    data = state.get("data")
    if not isinstance(data, dict):
        data = state
    for key, value in data.items():
        try:
            encode(value)
        except (TypeError, ValueError, OverflowError):
            bad = _find_bad_value(value, encode)
            kind = f"{type(bad).__module__}.{type(bad).__qualname__}"
            return SerializationError(
                f"cannot serialize session[{key!r}]: values of type {kind} are not"
                " supported; convert it to a supported type or register it with"
                " the serializer's register_type()"
            )
    return SerializationError(f"cannot serialize the session: {exc}")


def serializer_for(value: t.Any, *, max_size: int | None = None) -> Serializer:
    """Turn a ``SESSION_SERIALIZER`` value into a serializer.

    ``"msgpack"`` (the default), ``"json"``, or an object with ``dumps`` and
    ``loads`` (used as is; its own size limit, if any, applies).
    """
    named: dict[str, t.Callable[..., Serializer]] = {
        "msgpack": MsgPackSerializer,
        "json": JSONSerializer,
    }
    if isinstance(value, str):
        try:
            return named[value.lower()](max_size=max_size)
        except KeyError:
            raise SerializationError(
                f"unknown SESSION_SERIALIZER {value!r}: use 'msgpack', 'json' or"
                " an object with dumps() and loads()"
            ) from None
    if hasattr(value, "dumps") and hasattr(value, "loads"):
        return t.cast(Serializer, value)
    raise SerializationError(
        f"SESSION_SERIALIZER must be 'msgpack', 'json' or an object with dumps()"
        f" and loads(), not {type(value).__qualname__}"
    )
