"""Encryption at rest for session payloads: AES-GCM, keys rotatable.

With ``SESSION_ENCRYPTION_KEY`` set, every payload is sealed before it goes
to the store and opened after it is read, so the store (and its backups)
holds no readable session data. The session key is bound as associated data:
a payload copied to another session's record does not open.

Needs the ``cryptography`` package (``pip install 'flask-towersess[encryption]'``).

.. versionadded:: 0.1
"""

from __future__ import annotations

import base64
import binascii
import os
import typing as t

from .errors import ConfigurationError
from .errors import SerializationError

if t.TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: First byte of a sealed payload (a plain MessagePack payload starts with
#: 0x01): tells "not encrypted" apart from "encrypted with an unknown key".
SEALED_FORMAT = b"\xe1"
_NONCE_SIZE = 12  # the size AES-GCM is designed for

Key = t.Union[str, bytes]


def generate_key() -> str:
    """A new random 256-bit key, as the text ``SESSION_ENCRYPTION_KEY`` takes.

    .. code-block:: console

        $ python -c "import flask_towersess.crypto as c; print(c.generate_key())"
    """
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def _key_bytes(key: Key) -> bytes:
    if isinstance(key, str):
        try:
            key = base64.urlsafe_b64decode(key.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise ConfigurationError(
                "SESSION_ENCRYPTION_KEY must be URL-safe base64 text (or raw"
                " bytes) of a 16, 24 or 32 byte key; make one with"
                " flask_towersess.crypto.generate_key()"
            ) from None
    if len(key) not in (16, 24, 32):
        raise ConfigurationError(
            f"SESSION_ENCRYPTION_KEY must be 16, 24 or 32 bytes, not {len(key)};"
            " make one with flask_towersess.crypto.generate_key()"
        )
    return key


class PayloadCipher:
    """Seals and opens payloads with AES-GCM.

    :param keys: one key, or a list: the first seals, every one opens. To
        rotate, put the new key first and keep the old ones until every
        session sealed with them has expired or been saved again.
    """

    def __init__(self, keys: Key | t.Sequence[Key]) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise ConfigurationError(
                "SESSION_ENCRYPTION_KEY needs the cryptography package:"
                " pip install 'flask-towersess[encryption]'"
            ) from None
        if isinstance(keys, (str, bytes)):
            keys = [keys]
        if not keys:
            raise ConfigurationError("SESSION_ENCRYPTION_KEY is an empty list")
        self._ciphers: list[AESGCM] = [AESGCM(_key_bytes(k)) for k in keys]

    def seal(self, payload: bytes, session_key: str) -> bytes:
        """Encrypt ``payload`` with the first key, bound to ``session_key``."""
        nonce = os.urandom(_NONCE_SIZE)
        sealed = self._ciphers[0].encrypt(nonce, payload, session_key.encode())
        return SEALED_FORMAT + nonce + sealed

    def open(self, sealed: bytes, session_key: str) -> bytes:
        """Return the payload; :class:`SerializationError` if no key opens it."""
        from cryptography.exceptions import InvalidTag

        if sealed[:1] != SEALED_FORMAT or len(sealed) < 1 + _NONCE_SIZE + 16:
            raise SerializationError("the payload is not sealed")
        nonce = sealed[1 : 1 + _NONCE_SIZE]
        body = sealed[1 + _NONCE_SIZE :]
        associated = session_key.encode()
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, body, associated)
            except InvalidTag:
                continue
        raise SerializationError(
            "the payload does not open with any SESSION_ENCRYPTION_KEY (altered,"
            " moved from another session, or sealed with a retired key)"
        )
