"""What a session knows of its stored record, and the merge of two writers.

:class:`~flask_towersess.ServerSession` is the mapping and the Django API;
this module holds the rest of its state: the record as this request last
read or wrote it (the version a compare-and-set must match, the payload a
merge diffs against, the expiry a touch compares with), the record a
:meth:`~flask_towersess.ServerSession.cycle_key` moves away from, and which
of this request's own changes a merge must keep over a concurrent writer's.
All of it is reset in one place, :meth:`Persisted.reset`.

.. versionadded:: 0.2
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    from datetime import datetime

    from .stores.base import Record

#: Who a session belongs to, and whether that log-in is fresh.
Identity = tuple[t.Optional[str], bool]
ANONYMOUS: Identity = (None, False)


class Persisted:
    """One session's view of its stored record.

    Every field has a class-level default, so a session that is never used
    (most requests) costs one empty object, and :meth:`reset` is clearing
    the instance's own values.
    """

    #: The record's version as last read or written; ``None`` when this
    #: request has not seen it (a new session, or one replaced unread).
    version: int | None = None
    #: The stored payload of that version: what a merge diffs against.
    payload: bytes | None = None
    #: The stored expiry of that version: what a touch compares with.
    expires_at: datetime | None = None
    #: Whether the data came from the store (``ServerSession.new``).
    from_store = False
    #: Who the stored session belonged to; a change moves it to a new key.
    identity: Identity = ANONYMOUS

    # This request's own changes that a merge keeps over a concurrent
    # writer's: a clear() and an explicit expiry.
    cleared = False
    expiry_changed = False

    #: The current key was chosen by cycle_key() and has no record yet.
    must_create = False
    # The record cycle_key() moves the session from, with the version and
    # payload it was read at: the save retires it by compare-and-set, so a
    # concurrent change to it is merged in, and a logout elsewhere stops the
    # move.
    moving_from: str | None = None
    moving_version: int | None = None
    moving_payload: bytes | None = None

    def reset(self) -> None:
        """Forget everything: the session has no stored record."""
        self.__dict__.clear()

    def remember(self, record: Record) -> None:
        """``record`` is what the store now holds for the session's key."""
        self.version = record.version
        self.payload = record.payload
        self.expires_at = record.expires_at

    def written(self, record: Record, identity: Identity) -> None:
        """The session was written as ``record``: nothing of this request's
        changes is pending any more."""
        self.remember(record)
        self.cleared = False
        self.expiry_changed = False
        self.must_create = False
        self.identity = identity

    def start_move(self, key: str | None) -> None:
        """:meth:`ServerSession.cycle_key` chose a new key; the record of
        ``key`` (if this request knows its version) is to be retired."""
        if key is not None and not self.must_create and self.version is not None:
            self.moving_from = key
            self.moving_version = self.version
            self.moving_payload = self.payload
        self.must_create = True
        self.version = None
        self.payload = None
        self.expires_at = None

    def end_move(self) -> None:
        """The record moved from is retired (or gone): nothing to retire."""
        self.moving_from = self.moving_version = self.moving_payload = None

    def baseline(self, key: str) -> bytes | None:
        """The payload this request read for ``key``: its own key's, or the
        one it moves from."""
        return self.moving_payload if key == self.moving_from else self.payload


def merge(
    mine: dict[str, t.Any],
    theirs: dict[str, t.Any],
    before: t.Mapping[str, t.Any],
    changed: t.Callable[[t.Any, t.Any], bool],
) -> dict[str, t.Any]:
    """``theirs`` (stored by a concurrent writer) with this request's own
    changes applied again: the keys it deleted since it read ``before`` are
    removed, and the keys it set or changed are set."""
    merged = dict(theirs)
    for name in before.keys() - mine.keys():
        merged.pop(name, None)
    merged.update(written_since(mine, before, changed))
    return merged


def written_since(
    data: t.Mapping[str, t.Any],
    before: t.Mapping[str, t.Any],
    changed: t.Callable[[t.Any, t.Any], bool],
) -> dict[str, t.Any]:
    """The keys of ``data`` set or changed since it was ``before``.

    Compared by value (``changed``), so in-place changes to nested values
    (followed by ``modified = True``) count too.
    """
    return {
        name: value
        for name, value in data.items()
        if name not in before or changed(before[name], value)
    }
