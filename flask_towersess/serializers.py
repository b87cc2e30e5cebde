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

#: How deep a state may nest. :meth:`MsgPackSerializer.dumps` refuses a state
#: in which containers and app values sit more than this many levels inside
#: one another, counting the state itself (so a session's values, inside the
#: session layer's envelope and the session's own dict, may nest 30 levels).
#: Each dict, list, tuple, set and frozenset counts one level, and so does a
#: value of an app type, with what its encoder returns counted inside it; a
#: datetime, date, time, timedelta, UUID, Decimal, Markup or large int counts
#: none, as it holds no other value.
#:
#: :meth:`MsgPackSerializer.loads` refuses a payload with more than this many
#: extension values (tuples, sets, app values, datetimes...) inside one
#: another, before it decodes the one past the limit. They are what costs C
#: stack when reading, each being decoded by a nested call into msgpack.
#: Whatever dumps() accepts has no more than this many (a leaf such as a
#: datetime is uncounted there, but the state itself, a dict, is), so it
#: reads back. Plain lists and dicts cost no C stack to read: msgpack keeps
#: its own stack for them, and refuses past 1024 levels.
#:
#: 32 is far more than sessions hold, and keeps both directions small. At
#: the limit, loads() needs about 130 KiB of C stack (as much as a Markup in
#: a tuple always did) and dumps() less than 32 KiB, so both work in a thread
#: of 256 KiB with room left for the server and the app around them. Before
#: there was a limit, each level cost about 40 KiB when reading: a 1 KB
#: payload of 300 nested tuples crashed the process, five levels a 256 KiB
#: thread; and packing a list 500 levels deep took 220 KiB.
MAX_NESTING = 32

#: Extension data up to this size, two or more extension levels deep, is
#: decoded by an Unpacker kept per thread and depth (making one costs more
#: than decoding a small value). Its limits on the lengths a header may
#: announce are those of this size; larger data gets an Unpacker of its own,
#: sized for it, as unpackb() sizes its limits on the data it is given.
_REUSED_UNPACKER_SIZE = 4096


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
    #: Stored as scalars, or a list of scalars: holds no extension value.
    leaf: bool = False


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


def _decode_markup(value: str) -> Markup:
    # Markup() takes anything and calls str() on it: a payload holding a
    # deeply nested list there would be repr()'d level by level.
    if type(value) is not str:
        raise TypeError(f"Markup is stored as str, not {type(value).__qualname__}")
    return Markup(value)


def _builtin_types() -> list[_ExtType]:
    # Order matters only for subclasses: the exact type is looked up first.
    return [
        _ExtType(tuple, 1, list, tuple),
        _ExtType(set, 2, list, set),
        _ExtType(frozenset, 3, list, frozenset),
        _ExtType(datetime, 4, _encode_datetime, _decode_datetime, leaf=True),
        _ExtType(date, 5, date.isoformat, date.fromisoformat, leaf=True),
        _ExtType(time, 6, _encode_time, _decode_time, leaf=True),
        _ExtType(
            timedelta,
            7,
            lambda v: [v.days, v.seconds, v.microseconds],
            lambda v: timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
            leaf=True,
        ),
        _ExtType(
            uuid.UUID,
            8,
            lambda v: v.bytes,
            lambda v: uuid.UUID(bytes=v),
            leaf=True,
        ),
        _ExtType(Decimal, 9, str, Decimal, leaf=True),
        _ExtType(Markup, 10, str, _decode_markup, leaf=True),
        # msgpack stores integers up to 64 bits; larger ones go as bytes.
        _ExtType(int, 11, _encode_big_int, _decode_big_int, leaf=True),
    ]


class _TooDeep(Exception):
    """A state nested past the limit; dumps() turns it into a message naming the key.

    Not a ValueError (SerializationError is one), so the search for an
    unsupported value, which follows ValueErrors down, never follows it.
    """


def _refuse_extension(code: int, data: bytes) -> t.NoReturn:
    raise ValueError(f"extension value (code {code}) inside a leaf value")


class _Decoder:
    """One thread's state for decoding payloads of one serializer.

    It counts how many extension values are being decoded inside one
    another, refusing the one past :data:`MAX_NESTING` before it recurses,
    and keeps the Unpackers that decode the deeper ones.

    Why two ways of unpacking: :func:`msgpack.unpackb` keeps its context (a
    stack of 1024 entries, about 40 KiB) on the C stack, an
    :class:`msgpack.Unpacker` in the object. The top level, the extension
    values in it (the datetimes, UUIDs, tuples... of a session) and the
    leaves in those (a Markup in a flashed message's tuple) use unpackb, the
    fastest; deeper values use an Unpacker, which costs about 1.3 KiB of C
    stack per level instead of 40 KiB.
    """

    __slots__ = ("by_code", "depth", "hook", "unpackers")

    def __init__(self, by_code: dict[int, _ExtType]) -> None:
        self.by_code = by_code  # the serializer's own dict: sees app types added later
        #: How many extension values are being decoded inside one another.
        #: Not reset by :meth:`unpack`: an app's decoder that calls loads()
        #: again goes on counting (and leaves the Unpackers in use alone).
        self.depth = 0
        #: Index ``n``: the idle Unpacker for data at depth ``n`` (or None).
        self.unpackers: list[msgpack.Unpacker | None] = [None] * (MAX_NESTING + 1)
        self.hook = self._ext_hook  # one bound method, not one per call

    def unpack(self, data: bytes) -> t.Any:
        return msgpack.unpackb(
            data, ext_hook=self.hook, raw=False, strict_map_key=False
        )

    def _ext_hook(self, code: int, data: bytes) -> t.Any:
        ext = self.by_code.get(code)
        if ext is None:
            raise ValueError(f"unknown extension type code {code}")
        depth = self.depth
        if depth >= MAX_NESTING:
            raise ValueError(
                f"extension values nested more than {MAX_NESTING} deep (MAX_NESTING)"
            )
        self.depth = depth + 1
        try:
            if not depth:
                value = msgpack.unpackb(
                    data, ext_hook=self.hook, raw=False, strict_map_key=False
                )
            elif depth == 1 and ext.leaf:
                # A leaf in a tuple (a flashed Markup): unpackb is faster
                # than an Unpacker, and this one goes no deeper, its hook
                # refusing any extension value. Its 40 KiB of C stack, with
                # the two above, are as much as the deepest payload needs.
                value = msgpack.unpackb(
                    data, ext_hook=_refuse_extension, raw=False, strict_map_key=False
                )
            elif len(data) <= _REUSED_UNPACKER_SIZE:
                # Inline, not a method: it runs for every value two or more
                # extension levels down (a tuple in a tuple, a set's dates).
                unpackers = self.unpackers
                unpacker = unpackers[depth]
                if unpacker is None:
                    unpacker = self._new_unpacker(_REUSED_UNPACKER_SIZE)
                # Taken out while in use: after a failure its state is
                # undefined (half a value in its context, bytes left in its
                # buffer), so only one that finished cleanly is put back.
                unpackers[depth] = None
                unpacker.feed(data)
                value = unpacker.unpack()
                if unpacker.read_bytes(1):  # cheaper than two tell()s
                    raise ValueError("extra data after an extension value")
                unpackers[depth] = unpacker
            else:
                unpacker = self._new_unpacker(len(data))
                unpacker.feed(data)
                value = unpacker.unpack()
                if unpacker.read_bytes(1):
                    raise ValueError("extra data after an extension value")
        finally:
            self.depth = depth
        # Decoded at the outer depth: an app's decoder calling loads() again
        # may use this depth's Unpacker, idle by now.
        return ext.decode(value)

    def _new_unpacker(self, size: int) -> msgpack.Unpacker:
        # max_buffer_size also bounds the lengths an array, map, str or bin
        # header may announce, as unpackb() does with the length of its data.
        return msgpack.Unpacker(
            ext_hook=self.hook,
            raw=False,
            strict_map_key=False,
            max_buffer_size=max(size, 1),
        )


class MsgPackSerializer:
    """The default serializer: MessagePack with extension types.

    :param max_size: the largest payload, in bytes, :meth:`dumps` returns;
        ``None`` for no limit.

    Values may nest :data:`MAX_NESTING` levels deep; :meth:`dumps` refuses
    deeper ones and :meth:`loads` payloads holding them.

    >>> s = MsgPackSerializer()
    >>> s.loads(s.dumps({"when": date(2024, 1, 2), "tags": {"a"}}))
    {'when': datetime.date(2024, 1, 2), 'tags': {'a'}}
    """

    def __init__(self, *, max_size: int | None = None) -> None:
        self.max_size = max_size
        self._by_type: dict[type, _ExtType] = {}
        self._by_code: dict[int, _ExtType] = {}
        #: What :func:`_walk` looks inside, by exact type.
        self._walked: dict[type, int] = dict(_WALKED)
        # Packers are reused: making one per call (and one per nested
        # extension value) costs more than packing a small session. A packer
        # is not re-entrant, so each thread keeps one per nesting depth. The
        # same goes for the Unpackers, kept by each thread's _Decoder.
        self._local = threading.local()
        for ext in _builtin_types():
            self._add(ext)

    def _add(self, ext: _ExtType) -> None:
        self._by_type[ext.cls] = ext
        self._by_code[ext.code] = ext
        if ext.code >= FIRST_APP_TYPE_CODE and ext.cls not in _PACKED_NATIVELY:
            self._walked[ext.cls] = _APP

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

        An instance counts one level towards :data:`MAX_NESTING`, and what
        ``encode`` returns is counted inside it.

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
        if ext.code >= FIRST_APP_TYPE_CODE:
            # Encoded once, by _walk(), which measured its depth: encoding it
            # again could give something else, unmeasured.
            encoded = self._local.app_forms[id(value)]
        else:
            encoded = ext.encode(value)
        return msgpack.ExtType(ext.code, self._pack(encoded))

    def _pack(self, value: t.Any) -> bytes:
        # This thread's idle packers: one is taken out while it packs, so an
        # extension value packed meanwhile (from _default) takes another.
        # One thread-local read per call: each costs several list steps.
        try:
            idle: list[msgpack.Packer] = self._local.packers
        except AttributeError:
            idle = self._local.packers = []
        if idle:
            packer = idle.pop()
        else:
            # strict_types sends tuples, Markup and other subclasses of the
            # natively packed types through _default, so they keep their type.
            packer = msgpack.Packer(
                default=self._default, strict_types=True, use_bin_type=True
            )
        try:
            return packer.pack(value)  # type: ignore[no-any-return]
        except BaseException:
            packer.reset()  # drop what a failed pack left in the buffer
            raise
        finally:
            idle.append(packer)

    def _checked_pack(self, value: t.Any) -> bytes:
        app_forms = _walk(value, self._walked, self._by_type, MAX_NESTING)
        if app_forms is None:
            return self._pack(value)
        local = self._local
        outer = getattr(local, "app_forms", None)  # re-entrant, to be safe
        local.app_forms = app_forms
        try:
            return self._pack(value)
        finally:
            local.app_forms = outer

    def _nesting_error(self, state: dict[str, t.Any]) -> SerializationError:
        """Name the session key whose value nests too deep (failures only)."""
        data = state.get("data")
        if isinstance(data, dict):
            limit = MAX_NESTING - 2  # inside the envelope and the data dict
        else:
            data, limit = state, MAX_NESTING - 1
        for key, value in data.items():
            try:
                _walk(value, self._walked, self._by_type, limit)
            except _TooDeep:
                return SerializationError(
                    f"cannot serialize session[{key!r}]: it nests more than"
                    f" {limit} levels deep (each dict, list, tuple, set, frozenset"
                    " and app-type value is a level; MAX_NESTING); store flatter"
                    " data"
                )
            except (TypeError, ValueError, OverflowError):
                continue
        return SerializationError(
            f"cannot serialize the session: it nests more than {MAX_NESTING}"
            " levels deep (MAX_NESTING)"
        )

    def dumps(self, state: dict[str, t.Any]) -> bytes:
        try:
            try:
                payload = MSGPACK_FORMAT + self._checked_pack(state)
            except (TypeError, ValueError, OverflowError) as exc:
                raise _unserializable(self._checked_pack, state, exc) from exc
        except _TooDeep as exc:
            raise self._nesting_error(state) from exc
        max_size = self.max_size
        if max_size is not None and len(payload) > max_size:
            _check_size(payload, max_size)  # raises, with the message
        return payload

    def _decoder(self) -> _Decoder:
        try:
            return self._local.decoder  # type: ignore[no-any-return]
        except AttributeError:
            decoder = self._local.decoder = _Decoder(self._by_code)
            return decoder

    def loads(self, payload: bytes) -> dict[str, t.Any]:
        if payload[:1] != MSGPACK_FORMAT:
            raise SerializationError("payload is not in a known MessagePack format")
        try:
            try:
                decoder: _Decoder = self._local.decoder
            except AttributeError:
                decoder = self._decoder()
            state = decoder.unpack(payload[1:])
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


# What _walk() does with a value, by its exact type: look into a dict (keys
# and values), look into a list, tuple, set or frozenset, encode an app value
# and look into that, refuse a bytearray or memoryview. Other types are leaves.
_DICT, _SEQUENCE, _APP, _BYTES_LIKE = range(4)
_WALKED: dict[type, int] = {
    dict: _DICT,
    list: _SEQUENCE,
    tuple: _SEQUENCE,
    set: _SEQUENCE,
    frozenset: _SEQUENCE,
    bytearray: _BYTES_LIKE,
    memoryview: _BYTES_LIKE,
}
# Packed without asking ``default``, so never encoded by an app type's encoder.
_PACKED_NATIVELY = frozenset(
    {dict, list, str, bytes, bytearray, memoryview, int, float, bool, type(None)}
)


def _walk(
    value: t.Any,
    walked: dict[type, int],
    by_type: dict[type, _ExtType],
    limit: int,
    app_forms: dict[int, t.Any] | None = None,
    *,
    in_app_form: bool = False,
) -> dict[int, t.Any] | None:
    """Check ``value`` before it is packed; return its app values' encoded forms.

    Raise :class:`_TooDeep` if containers and app values nest more than
    ``limit`` levels (see :data:`MAX_NESTING`), and TypeError for a
    bytearray or memoryview: MessagePack packs them natively, without asking
    ``default``, and they would come back as ``bytes``, a silent change of
    type where any other unsupported type fails the save. Inside what an app
    type's encoder returns, they are the app's to choose (its decoder gets
    ``bytes`` back), as they always were.

    App values are encoded here, to measure what their encoder returns, and
    handed to the packer by ``id()`` in the returned dict (``None``: there
    are none, the usual case). Only the exact container types are walked,
    the ones the packer descends into; anything else is a leaf, or
    unsupported and left for the packer to refuse.

    It runs on every save, so it is lean: breadth first, one level at a time
    (the depth is the number of levels, with no per-value bookkeeping), and
    only what needs looking into is queued. A loop, not recursion (but for
    app values, each a level), so no nesting can exhaust Python's stack or
    the C stack.
    """
    level = [value] if type(value) in walked else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            # Any container or app value here is a level too many; a
            # bytearray is a leaf.
            for item in level:
                if walked[type(item)] != _BYTES_LIKE:
                    raise _TooDeep(f"values nested more than {limit} levels deep")
            if in_app_form:
                break
            raise TypeError(level[0])
        below: list[t.Any] = []
        # below.append(), not a bound alias: Python 3.11 and later run a
        # list's append() called this way without a call; and a dict's keys
        # and values are looked at in one loop. About 15 % of this walk.
        for item in level:
            kind = walked[type(item)]
            if kind == _DICT:
                for name, member in item.items():
                    if type(name) in walked:
                        below.append(name)
                    if type(member) in walked:
                        below.append(member)
                continue
            if kind == _APP:
                encoded = by_type[type(item)].encode(item)
                if app_forms is None:
                    app_forms = {}
                app_forms[id(item)] = encoded
                # One level down, under the app's own rules.
                _walk(
                    encoded, walked, by_type, limit - depth, app_forms, in_app_form=True
                )
                continue
            if kind != _SEQUENCE:  # a bytearray or memoryview
                if in_app_form:
                    continue
                raise TypeError(item)
            for member in item:
                if type(member) in walked:
                    below.append(member)
        level = below
    return app_forms


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
