"""The key-hashing step of the 0.1 -> 0.2 upgrade (``flask sessions
migrate``).

0.1 stored each session under the key its cookie carries; 0.2 stores it
under the key's SHA-256 (:func:`~flask_towersess.session.stored_key`). A
request that finds a session only under its unhashed key moves it itself
(:meth:`ServerSession._fetch <flask_towersess.ServerSession>`); this module
moves all the others, in batches, the same way, so that the store ends up
holding no key a cookie can carry.

A 0.2 app that served before ``migrate`` upgraded an SQL table wrote its
records (those it moved, and new ones) without the per-user fields, which
the table had no columns for yet: :func:`index_unindexed` fills them in
from each record's data, so that those sessions join their user's index.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
import typing as t

from .errors import UpdateError
from .errors import VersionConflict
from .session import ServerSession
from .session import _from_millis
from .session import _index_user
from .session import is_valid_session_key
from .stores.base import BatchCallback
from .stores.base import LegacyKeys
from .stores.base import Record
from .stores.base import SessionStore
from .stores.base import UnindexedKeys
from .stores.base import utcnow

if t.TYPE_CHECKING:
    from .crypto import PayloadCipher
    from .serializers import Serializer

logger = logging.getLogger("flask_towersess")


def legacy_keys_of(store: SessionStore) -> LegacyKeys | None:
    """``store`` as a :class:`~flask_towersess.stores.LegacyKeys` store, or
    ``None`` if it cannot list the keys 0.1 stored unhashed.

    .. versionadded:: 0.2
    """
    return store if isinstance(store, LegacyKeys) else None


def rehash_key(
    store: SessionStore,
    key: str,
    *,
    serializer: Serializer | None = None,
    cipher: PayloadCipher | None = None,
) -> bool:
    """Move the record 0.1 stored under ``key`` under its hash, as a request
    that reads it would, and delete the unhashed record. Returns whether
    there was a record to move.

    Safe next to live requests: the record is created under the hash
    before the unhashed one is deleted, and a request (or another run of
    this) that moves it at the same moment finds the hashed one made by
    whichever came first (a create that collides), so every reader finds
    the session under one key or the other. A record found under both (a
    move that stopped between its two steps) keeps the hashed one, which
    is the one requests use; the unhashed one is deleted once that move is
    a minute old (before, it may be a request's move still under way, which
    deletes it itself), so a run may leave it to the next.

    ``serializer`` and ``cipher`` are the app's: the payload is decoded
    (with the cookie's key, which is this key) to fill in the user id that
    puts the session in its user's index.

    .. versionadded:: 0.2
    """
    legacy = store.load(key)
    if legacy is None:
        return False  # expired, or moved by a request meanwhile
    # The very code a request runs, so the two cannot disagree on what a
    # moved record holds.
    ServerSession(store, serializer=serializer, cipher=cipher)._rehash(
        key, legacy, clear_left_behind=True
    )
    return True


def rehash_keys(
    store: SessionStore,
    *,
    serializer: Serializer | None = None,
    cipher: PayloadCipher | None = None,
    batch_size: int = 1000,
    on_batch: BatchCallback | None = None,
) -> int:
    """Move every live record stored under an unhashed key under its hash
    (:func:`rehash_key`), ``batch_size`` keys listed at a time. Returns how
    many were moved.

    Resumable: an interrupted run leaves every record under one key or the
    other, and the next run lists only what is still unhashed.
    ``on_batch`` is called after each batch with the number of keys it
    handled (for a progress bar).

    :raises ConfigurationError: the store cannot list unhashed keys (it is
        not :class:`~flask_towersess.stores.LegacyKeys`).

    .. versionadded:: 0.2
    """
    from .errors import ConfigurationError

    legacy = legacy_keys_of(store)
    if legacy is None:
        raise ConfigurationError(
            f"{store.describe()} cannot list the keys 0.1 stored unhashed: give"
            " it unhashed_keys() and count_unhashed() (the LegacyKeys capability)."
        )

    def move(key: str) -> bool:
        if not is_valid_session_key(key):
            # No request can carry it, and no store call takes it.
            logger.warning("Skipped a stored key not of the session-key form")
            return False
        return rehash_key(store, key, serializer=serializer, cipher=cipher)

    moved = _each_page(
        legacy.unhashed_keys,
        move,
        batch_size=batch_size,
        on_batch=on_batch,
        batch_done="Moved a batch of %d session key(s) under their hash",
    )
    if moved:
        logger.info("Moved %d session(s) stored under unhashed keys", moved)
    return moved


def unindexed_keys_of(store: SessionStore) -> UnindexedKeys | None:
    """``store`` (or, for a :class:`~flask_towersess.stores.CachingStore`,
    the durable store behind it) as a store that lists the records written
    without the per-user fields (``unindexed_keys``, ``count_unindexed``,
    the optional part of :class:`~flask_towersess.stores.LegacyKeys`), or
    ``None`` if it cannot hold any.

    By duck typing: only a store whose schema can lack the per-user fields
    (an SQL table made by 0.1) has them.

    .. versionadded:: 0.2
    """
    from .stores.caching import CachingStore

    # The cache never holds what the durable store does not: listing there
    # finds them all, and the writes still go through the cache.
    lister = store.store if isinstance(store, CachingStore) else store
    if callable(getattr(lister, "unindexed_keys", None)) and callable(
        getattr(lister, "count_unindexed", None)
    ):
        return t.cast(UnindexedKeys, lister)
    return None


def _is_revocation_mark(record: Record) -> bool:
    # A revocation mark (per_user.mark_revoked) is no session: its payload
    # is a timestamp, shorter than any session state this package writes.
    from .per_user import _MARK

    return len(record.payload) == _MARK.size


def index_record(
    store: SessionStore,
    key: str,
    *,
    serializer: Serializer | None = None,
    cipher: PayloadCipher | None = None,
) -> bool:
    """Fill in the per-user fields of the record stored under (hashed)
    ``key``, written without them: the user id from its data (decoded as a
    request decodes it: with the app's serializer and cipher, for the key
    it is stored under), and its creation (from its data) and last
    activity (now). Returns whether a session was written; a revocation
    mark gets the times too (so that it is not listed again), uncounted.

    A compare-and-set on the version read: a request that wrote the
    record meanwhile wins (and wrote the fields itself, unless its store
    still ran without them, which ``migrate --check`` reports). An
    anonymous session gets the fields too, so it is not listed again.

    .. versionadded:: 0.2
    """
    # Past a cache: the compare-and-set needs the version it is decided on.
    record = store.load_current(key)
    if record is None:
        return False  # expired or deleted meanwhile
    now = utcnow()
    user: str | None = None
    created_at = now
    mark = _is_revocation_mark(record)
    if not mark:
        decoded = ServerSession(store, serializer=serializer, cipher=cipher)._decode(
            record, key
        )
        user = _index_user(decoded.data)
        if decoded.created is not None:
            # What the session's next save would write.
            created_at = _from_millis(decoded.created)
    indexed = Record(
        record.key,
        record.payload,
        record.expires_at,
        record.version + 1,
        user,
        created_at,
        now,
    )
    try:
        store.save(indexed, expected_version=record.version)
    except (VersionConflict, UpdateError):
        return False
    return not mark


def index_unindexed(
    store: SessionStore,
    *,
    serializer: Serializer | None = None,
    cipher: PayloadCipher | None = None,
    batch_size: int = 1000,
    on_batch: BatchCallback | None = None,
) -> int:
    """Fill in the per-user fields of every live record written without
    them (:func:`index_record`), ``batch_size`` keys listed at a time:
    what a 0.2 app wrote before ``migrate`` gave the store the columns for
    them. Returns how many were written; 0 on a store that cannot hold
    such records (:func:`unindexed_keys_of`).

    Resumable, like :func:`rehash_keys`: a record written is no longer
    listed. ``on_batch`` is called after each batch with the number of
    keys it handled.

    .. versionadded:: 0.2
    """
    unindexed = unindexed_keys_of(store)
    if unindexed is None:
        return 0
    indexed = _each_page(
        unindexed.unindexed_keys,
        lambda key: index_record(store, key, serializer=serializer, cipher=cipher),
        batch_size=batch_size,
        on_batch=on_batch,
        batch_done="Filled in the per-user fields of a batch of %d session(s)",
    )
    if indexed:
        logger.info(
            "Filled in the per-user fields of %d session(s) written before the upgrade",
            indexed,
        )
    return indexed


def _each_page(
    pages: t.Callable[[str | None, int], tuple[list[str], str | None]],
    handle: t.Callable[[str], bool],
    *,
    batch_size: int,
    on_batch: BatchCallback | None,
    batch_done: str,
) -> int:
    """Call ``handle`` on every key ``pages`` lists (``batch_size`` a page,
    a cursor from one page to the next), logging ``batch_done`` and calling
    ``on_batch`` after each page; how many keys ``handle`` changed."""
    changed = 0
    cursor: str | None = None
    while True:
        keys, cursor = pages(cursor, batch_size)
        for key in keys:
            if handle(key):
                changed += 1
        if keys:
            logger.debug(batch_done, len(keys))
            if on_batch is not None:
                on_batch(len(keys))
        if cursor is None:
            return changed
