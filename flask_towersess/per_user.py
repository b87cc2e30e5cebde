"""Per-user sessions: the device list, revocation, and the mark that stops
a revoked user's remember-me cookie.

:meth:`SessionExt.sessions_for <flask_towersess.SessionExt.sessions_for>`
and :meth:`SessionExt.revoke <flask_towersess.SessionExt.revoke>` are the
public entry points; this module does the work on a store with a
:class:`~flask_towersess.stores.PerUserIndex`.

.. versionadded:: 0.2
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import struct
import typing as t
from datetime import datetime
from datetime import timedelta
from functools import partial

from .errors import ConfigurationError
from .errors import CreateError
from .errors import UpdateError
from .errors import VersionConflict
from .session import stored_key
from .signals import session_ended
from .stores._epoch import from_epoch_micros
from .stores._epoch import to_epoch_micros
from .stores.base import PerUserIndex
from .stores.base import Record
from .stores.base import SessionStore
from .stores.base import check_user_id
from .stores.base import short_key
from .stores.base import utcnow

if t.TYPE_CHECKING:
    from flask import Flask

logger = logging.getLogger("flask_towersess")

#: How many characters a session handle has: 128 bits of a SHA-256.
HANDLE_LENGTH = 22


@dataclasses.dataclass(frozen=True)
class SessionInfo:
    """One live session of a user, as a device list shows it.

    :param id: the session's public handle: safe to show in a page and to
        send back in a form (:meth:`SessionExt.revoke
        <flask_towersess.SessionExt.revoke>` takes it). It is derived from
        the stored key by a one-way hash: not the session key, not
        derivable into it, useless as a cookie, and it ends nothing when
        given with another user's id.
    :param user_id: whose session it is.
    :param created_at: when it began (unchanged when its key is cycled).
    :param last_active_at: when it was last written or touched: as often as
        the session's expiry is refreshed (``SESSION_TOUCH_INTERVAL``).
    :param expires_at: when its cookie stops working: the earlier of its
        inactivity deadline and ``SESSION_ABSOLUTE_LIFETIME``.
    :param user_agent: the browser's ``User-Agent`` at its last write
        (``SESSION_RECORD_USER_AGENT``), or ``None``.
    :param ip: the client's address at its last write, only with
        ``SESSION_RECORD_IP``; else ``None``.
    :param current: whether it is the session of the request asking.

    .. versionadded:: 0.2
    """

    id: str
    user_id: str
    created_at: datetime | None
    last_active_at: datetime | None
    expires_at: datetime
    user_agent: str | None
    ip: str | None
    current: bool


def session_handle(stored: str) -> str:
    """The public handle of the session stored under ``stored``.

    >>> len(session_handle("0" * 64))
    22
    """
    digest = hashlib.sha256(b"flask-towersess handle\0" + stored.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:HANDLE_LENGTH]


def per_user_store(store: SessionStore) -> PerUserIndex:
    """``store`` as a :class:`~flask_towersess.stores.PerUserIndex`.

    :raises ConfigurationError: it keeps no per-user index.
    """
    per_user = store.as_per_user()
    if per_user is None:
        raise ConfigurationError(
            f"{store.describe()} keeps no per-user index, so sessions cannot be"
            " listed or revoked by user: use a store that does (SQL, Redis,"
            " MongoDB, memory, or any of them behind SESSION_CACHE)."
        )
    return per_user


def list_sessions(
    store: SessionStore, user_id: object, *, current: str | None = None
) -> list[SessionInfo]:
    """The live sessions of ``user_id``, most recently active first.

    :param current: the stored key of the asking request's session.
    """
    user = check_user_id(_as_user_id(user_id))
    records = per_user_store(store).sessions_of(user)
    infos = [
        SessionInfo(
            id=session_handle(record.key),
            user_id=user,
            created_at=record.created_at,
            last_active_at=record.last_active_at,
            expires_at=record.expires_at,
            user_agent=record.user_agent,
            ip=record.ip,
            current=record.key == current,
        )
        for record in records
        if record.user_id in (None, user)
    ]
    infos.sort(key=_most_recent_first)
    return infos


def revoke_sessions(
    store: SessionStore,
    user_id: object,
    handle: str | None = None,
    *,
    keep: str | None = None,
    remember_for: timedelta | None = None,
) -> list[str]:
    """End one session of ``user_id`` (by ``handle``) or all of them but
    ``keep``; return the stored keys ended.

    Ending all of them also records the moment in the store, so that a
    Flask-Login remember-me cookie issued before it logs nobody in, for
    ``remember_for`` (Flask-Login's ``REMEMBER_COOKIE_DURATION``).
    """
    user = check_user_id(_as_user_id(user_id))
    per_user = per_user_store(store)
    if handle is not None:
        if not isinstance(handle, str):
            raise TypeError(f"a session handle is a str, not {type(handle).__name__}")
        chosen = [
            record
            for record in per_user.sessions_of(user)
            if session_handle(record.key) == handle
        ]
        keys = [record.key for record in chosen]
        # An unknown handle (or another user's) ends nothing; no store
        # call tells the two apart.
        ended = per_user.delete_sessions_of(user, keys, keep=keep) if keys else []
        for record in chosen:
            if record.key in ended and record.created_at is not None:
                # The remember-me cookie of that device, if it has one, must
                # not log it straight back in (Laravel's issue 24857).
                mark_device_revoked(
                    store,
                    user,
                    device_of(record.created_at),
                    lasting=remember_for or timedelta(days=365),
                )
        if ended:
            # The same remember cookie value serves every device of a user:
            # without its companion it names no device, so from now on it
            # must bring one.
            _write_mark(
                store,
                companion_required_key(user),
                remember_for or timedelta(days=365),
            )
    else:
        ended = per_user.delete_sessions_of(user, keep=keep)
        mark_revoked(store, user, lasting=remember_for or timedelta(days=365))
    if ended:
        logger.info(
            "Revoked %d session(s) of a user: %s",
            len(ended),
            ", ".join(short_key(key) for key in ended[:5]),
        )
    return ended


def signal_revoked(sender: Flask | None, keys: t.Iterable[str]) -> None:
    """Send :data:`~.signals.session_ended` with ``"revoke"`` for ``keys``."""
    if session_ended.receivers:
        for key in keys:
            session_ended.send(sender, session=None, key=key, reason="revoke")


# -- the revocation mark -------------------------------------------------------
#
# Kept as a record of the store itself, under a key no session can have (the
# hash of a text a cookie key cannot be: it holds a NUL), so every store,
# a third party's included, keeps it with the calls it has, and caches and
# replicas carry it as they carry sessions.

_MARK = struct.Struct(">q")


def revocation_key(user_id: str) -> str:
    """The stored key of ``user_id``'s revocation mark."""
    return stored_key(f"flask-towersess revoked\0{user_id}")


def device_of(created_at: datetime) -> int:
    """What names a device in the revocation marks: its session's start, in
    milliseconds (unchanged by key cycles; the remember-me companion cookie
    carries it). Two sessions of one user begun in the same millisecond
    share it: revoking one also turns away the other's remember cookie,
    never the reverse."""
    return round(created_at.timestamp() * 1000)


def device_revocation_key(user_id: str, device: int) -> str:
    """The stored key of the mark of one revoked device of ``user_id``."""
    return stored_key(f"flask-towersess revoked device\0{user_id}\0{device}")


def companion_required_key(user_id: str) -> str:
    """The stored key of the mark after which ``user_id``'s remember-me
    cookies need their companion (one of its devices was revoked)."""
    return stored_key(f"flask-towersess companion required\0{user_id}")


#: The stored key of the mark ``flask sessions revoke --all`` leaves.
EVERYONE_REVOKED_KEY = stored_key("flask-towersess revoked\0\0everyone")


def mark_revoked(store: SessionStore, user_id: str, *, lasting: timedelta) -> None:
    """Record that every session of ``user_id`` ended now, for ``lasting``."""
    _write_mark(store, revocation_key(user_id), lasting)


def mark_device_revoked(
    store: SessionStore, user_id: str, device: int, *, lasting: timedelta
) -> None:
    """Record that the session of ``user_id`` begun at ``device`` (see
    :func:`device_of`) ended now, for ``lasting``."""
    _write_mark(store, device_revocation_key(user_id, device), lasting)


def mark_everyone_revoked(store: SessionStore, *, lasting: timedelta) -> None:
    """Record that the sessions of every user ended now, for ``lasting``."""
    _write_mark(store, EVERYONE_REVOKED_KEY, lasting)


def _write_mark(store: SessionStore, key: str, lasting: timedelta) -> None:
    now = utcnow()
    payload = _MARK.pack(to_epoch_micros(now))
    # Written with created_at and last_active_at (and no user): a record
    # without them is one a store wrote before its schema had the per-user
    # fields, which `flask sessions migrate --check` reports until filled in.
    for _ in range(5):
        current = store.load(key)
        version = 1 if current is None else current.version + 1
        mark = Record(key, payload, now + lasting, version, None, now, now)
        try:
            if current is None:
                store.create(mark)
            else:
                store.save(mark, expected_version=current.version)
            return
        except (CreateError, VersionConflict, UpdateError):
            continue  # another revoke of the same user: try again
    raise ConfigurationError("the revocation mark could not be written")


def revoked_at(
    store: SessionStore,
    user_id: str,
    device: int | None = None,
    *,
    without_companion: bool = False,
) -> datetime | None:
    """When ``user_id``'s remember-me cookies issued before were last
    revoked (all of that user's sessions, every user's, or, with
    ``device``, that device's session; ``without_companion``: any of its
    devices), if a mark is still kept."""
    keys = [revocation_key(user_id), EVERYONE_REVOKED_KEY]
    if device is not None:
        keys.append(device_revocation_key(user_id, device))
    if without_companion:
        keys.append(companion_required_key(user_id))
    moments = [moment for moment in map(partial(_mark_of, store), keys) if moment]
    return max(moments) if moments else None


def _mark_of(store: SessionStore, key: str) -> datetime | None:
    record = store.load(key)
    if record is None or len(record.payload) != _MARK.size:
        return None
    try:
        return from_epoch_micros(_MARK.unpack(record.payload)[0])
    except (OverflowError, ValueError):
        return None


def _as_user_id(user_id: object) -> object:
    # As the session stores it: Flask-Login ids may be ints.
    if type(user_id) is int:
        return str(user_id)
    return user_id


def _most_recent_first(info: SessionInfo) -> tuple[float, str]:
    moment = info.last_active_at or info.created_at
    return (-(moment.timestamp() if moment else 0.0), info.id)
