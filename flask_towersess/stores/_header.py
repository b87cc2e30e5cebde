"""The binary record header of the key-value stores (Redis, memcached).

A record is one value: a header, then the payload. Two formats exist; a
store reads both and every format an earlier release wrote.

Format 1 (tag ``0xF1``; everything 0.1 wrote, and what
:class:`~.memcached.MemcachedStore` writes)::

    offset  size  field
    0       1     format tag, 0xF1
    1       8     version, signed, big-endian
    9       8     expires_at, microseconds since the Unix epoch, signed
    17      ...   payload

Format 2 (tag ``0xF2``; what :class:`~.redis.RedisStore` writes since 0.2,
with the per-user fields of :class:`~.base.Record`)::

    offset  size  field
    0       1     format tag, 0xF2
    1       8     version, signed, big-endian
    9       8     expires_at, microseconds since the Unix epoch, signed
    17      8     last_active_at, same unit (-2**63: none)
    25      2     M, the length of the metadata that follows, unsigned
    27      M     metadata:
                    1 byte  L, then L bytes: the user's index tag (ASCII,
                            empty for an anonymous record)
                    8 bytes created_at (-2**63: none)
                    then user_id, user_agent, ip, each a 2-byte length
                    (0xFFFF: none) and that many bytes of UTF-8
    27+M  ...     payload

``expires_at`` and ``last_active_at`` sit next to each other at fixed
offsets, so a touch patches both with one ``SETRANGE``; the index tag is
at a fixed offset too, so a Lua script finds the user's index reading the
first :data:`TAG_END` bytes, without parsing the rest.

.. versionadded:: 0.2
"""

from __future__ import annotations

import functools
import hashlib
import struct
import time
import typing as t

from ._epoch import from_epoch_micros
from ._epoch import to_epoch_micros
from .base import MAX_VERSION
from .base import MIN_VERSION
from .base import Record
from .base import checked_info
from .base import refuse_record

if t.TYPE_CHECKING:
    from datetime import datetime

TAG_V1 = 0xF1
TAG_V2 = 0xF2
HEADER_V1 = struct.Struct(">Bqq")
HEADER_V2 = struct.Struct(">BqqqH")
#: The version as a compare-and-set compares it (after the tag byte).
VERSION = struct.Struct(">q")
#: Offsets of the 8-byte fields a touch patches in place.
EXPIRY_OFFSET = 9
#: The length of an index tag (hex digits of SHA-256 of the user id).
INDEX_TAG_LENGTH = 32
#: How many bytes of a format-2 value hold its index tag, at most.
TAG_END = HEADER_V2.size + 1 + INDEX_TAG_LENGTH

_NONE_MICROS = -(2**63)
_NO_TEXT = 0xFFFF
_LENGTH = struct.Struct(">H")
_MICROS = struct.Struct(">q")


@functools.lru_cache(maxsize=4096)
def index_tag(user_id: str) -> str:
    """The tag naming ``user_id``'s index: 128 bits of SHA-256, in hex.

    Hashed so that any user id (braces, colons, 255 characters) makes a
    short key safe in a Redis Cluster hash tag; 128 bits so that two users
    never share an index in practice (a listing still checks the user id).
    The last few thousand are remembered: a logged-in session's every save
    needs its user's.
    """
    return hashlib.sha256(user_id.encode()).hexdigest()[:INDEX_TAG_LENGTH]


def is_record(value: object) -> bool:
    """Whether ``value`` has the form of a record (either format)."""
    if not isinstance(value, bytes) or not value:
        return False
    tag = value[0]
    if tag == TAG_V1:
        return len(value) >= HEADER_V1.size
    return tag == TAG_V2 and len(value) >= HEADER_V2.size


def pack_v1(version: int, micros: int, payload: bytes) -> bytes:
    """A format-1 value."""
    return HEADER_V1.pack(TAG_V1, version, micros) + payload


def _micros_or_none(moment: t.Any) -> int:
    return _NONE_MICROS if moment is None else to_epoch_micros(moment)


def _text(value: str | None) -> bytes:
    if value is None:
        return _LENGTH.pack(_NO_TEXT)
    data = value.encode("utf-8", "replace")[: _NO_TEXT - 1]
    return _LENGTH.pack(len(data)) + data


@functools.lru_cache(maxsize=1024)
def _metadata(
    tag: str,
    created_at: datetime | None,
    user_id: str | None,
    user_agent: str | None,
    ip: str | None,
) -> bytes:
    """The metadata of a format-2 value. Remembered: it is the same on each
    of a session's saves (the user, the start, the browser, the address),
    and building it took a third of a save's work outside Redis."""
    tag_bytes = tag.encode("ascii")
    return b"".join(
        (
            bytes((len(tag_bytes),)),
            tag_bytes,
            _MICROS.pack(_micros_or_none(created_at)),
            _text(user_id),
            _text(user_agent),
            _text(ip),
        )
    )


def pack_v2(record: Record, micros: int, tag: str) -> bytes:
    """A format-2 value of ``record``, expiring at ``micros``, in the index
    of ``tag`` (empty: none)."""
    meta = _metadata(
        tag, record.created_at, record.user_id, record.user_agent, record.ip
    )
    head = HEADER_V2.pack(
        TAG_V2,
        record.version,
        micros,
        _micros_or_none(record.last_active_at),
        len(meta),
    )
    return head + meta + record.payload


def trim_state(record: Record) -> bytes:
    """The version and ``last_active_at`` of ``record`` as a format-2
    header holds them (bytes 1-8 and 17-24), to check that a record is
    unchanged since it was read."""
    return VERSION.pack(record.version) + _MICROS.pack(
        _micros_or_none(record.last_active_at)
    )


def parse(store: str, key: str, value: bytes, prefix: str) -> Record | None:
    """The live record in ``value`` (either format), without its per-user
    fields; ``None`` if it has expired, and ``None`` with a warning (see
    :func:`~.base.refuse_record`) if this package did not write it."""
    tag = value[0] if value else None
    if tag == TAG_V2 and len(value) >= HEADER_V2.size:
        _, version, micros, _, meta = HEADER_V2.unpack_from(value)
        start = HEADER_V2.size + meta
        if len(value) < start:
            refuse_record(store, key, "truncated header")
            return None
    elif tag == TAG_V1 and len(value) >= HEADER_V1.size:
        _, version, micros = HEADER_V1.unpack_from(value)
        start = HEADER_V1.size
    else:
        # Another app's value under the prefix, or a damaged one.
        refuse_record(
            store, key, f"not a flask-towersess session record under {prefix!r}"
        )
        return None
    # The 8 bytes go up to year 294,000, a datetime only to 9999.
    expires_at = from_epoch_micros(micros)
    if expires_at is None:
        refuse_record(store, key, "expiry out of range")
        return None
    if not MIN_VERSION <= version <= MAX_VERSION:
        refuse_record(store, key, "version out of range")
        return None
    # The backend drops the value at about the same moment; this matters
    # when the app's clock runs ahead of the server's (memcached keeps an
    # item up to two seconds past its expiry).
    # In microseconds: the clock utcnow() reads (floored to the
    # microsecond, as it is), without building a datetime for every read.
    if micros <= time.time_ns() // 1000:
        return None
    return Record(key, value[start:], expires_at, version)


class Info(t.NamedTuple):
    """What :func:`parse_info` reads from a format-2 header."""

    record: Record
    tag: str


def parse_info(key: str, header: bytes) -> Info | None:
    """The record in a format-2 ``header`` (the payload need not follow),
    with its per-user fields and an empty payload, and its index tag;
    ``None`` if it is not a format-2 record or its expiry or version is
    out of range. A per-user field that is damaged or of the wrong size is
    ``None`` (:func:`~.base.checked_info`): it is only shown."""
    if len(header) < HEADER_V2.size or header[0] != TAG_V2:
        return None
    _, version, micros, active, _ = HEADER_V2.unpack_from(header)
    expires_at = from_epoch_micros(micros)
    if expires_at is None or not MIN_VERSION <= version <= MAX_VERSION:
        return None
    fields: dict[str, object] = {"last_active_at": _moment(active)}
    offset = HEADER_V2.size
    tag = ""
    try:
        length = header[offset]
        tag = header[offset + 1 : offset + 1 + length].decode("ascii")
        offset += 1 + length
        (created,) = _MICROS.unpack_from(header, offset)
        fields["created_at"] = _moment(created)
        offset += _MICROS.size
        for name in ("user_id", "user_agent", "ip"):
            (size,) = _LENGTH.unpack_from(header, offset)
            offset += _LENGTH.size
            if size == _NO_TEXT:
                fields[name] = None
                continue
            data = header[offset : offset + size]
            offset += size
            try:
                fields[name] = data.decode("utf-8") if len(data) == size else None
            except UnicodeDecodeError:
                fields[name] = None
    except (IndexError, struct.error, UnicodeDecodeError):
        pass  # a truncated header: what is missing stays None
    record = Record(key, b"", expires_at, version)
    return Info(checked_info(record, **fields), tag)


def _moment(micros: int) -> object:
    return None if micros == _NONE_MICROS else from_epoch_micros(micros)
