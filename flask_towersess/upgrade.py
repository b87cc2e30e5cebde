"""The key-hashing step of the 0.1 -> 0.2 upgrade (``flask sessions
migrate``).

0.1 stored each session under the key its cookie carries; 0.2 stores it
under the key's SHA-256 (:func:`~flask_towersess.session.stored_key`). A
request that finds a session only under its unhashed key moves it itself
(:meth:`ServerSession._fetch <flask_towersess.ServerSession>`); this module
moves all the others, in batches, the same way, so that the store ends up
holding no key a cookie can carry.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
import typing as t

from .session import ServerSession
from .session import is_valid_session_key
from .stores.base import BatchCallback
from .stores.base import LegacyKeys
from .stores.base import SessionStore

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
    is the one requests use.

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
    ServerSession(store, serializer=serializer, cipher=cipher)._rehash(key, legacy)
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
    moved = 0
    cursor: str | None = None
    while True:
        keys, cursor = legacy.unhashed_keys(cursor, batch_size)
        for key in keys:
            if not is_valid_session_key(key):
                # No request can carry it, and no store call takes it.
                logger.warning("Skipped a stored key not of the session-key form")
                continue
            if rehash_key(store, key, serializer=serializer, cipher=cipher):
                moved += 1
        if keys:
            logger.debug(
                "Moved a batch of %d session key(s) under their hash", len(keys)
            )
            if on_batch is not None:
                on_batch(len(keys))
        if cursor is None:
            break
    if moved:
        logger.info("Moved %d session(s) stored under unhashed keys", moved)
    return moved
