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
import re
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


#: Base64 text, standard or URL-safe (one alphabet, not a mix), padded or
#: not: a key is never silently shortened by dropping what is not base64.
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]+|[A-Za-z0-9_-]+)={0,2}")
_KEY_SIZE = 32  # AES-256
_HOW_TO_MAKE_ONE = (
    'make one with: python -c "import flask_towersess.crypto as c;'
    ' print(c.generate_key())"'
)


def _key_bytes(key: Key) -> bytes:
    """The 32 bytes of one ``SESSION_ENCRYPTION_KEY``, strictly checked."""
    if isinstance(key, str):
        if not _BASE64.fullmatch(key):
            raise ConfigurationError(
                "SESSION_ENCRYPTION_KEY must be base64 text (standard or"
                f" URL-safe) of a {_KEY_SIZE}-byte key, with no other"
                f" characters; {_HOW_TO_MAKE_ONE}"
            )
        urlsafe = "-" in key or "_" in key
        text = key.rstrip("=")
        text += "=" * (-len(text) % 4)
        try:
            raw = base64.b64decode(
                text, altchars=b"-_" if urlsafe else None, validate=True
            )
        except (binascii.Error, ValueError):
            raise ConfigurationError(
                f"SESSION_ENCRYPTION_KEY is not valid base64; {_HOW_TO_MAKE_ONE}"
            ) from None
    elif isinstance(key, bytes):
        raw = key
    else:
        raise ConfigurationError(
            "SESSION_ENCRYPTION_KEY must be base64 text or bytes, not"
            f" {type(key).__name__}; {_HOW_TO_MAKE_ONE}"
        )
    if len(raw) != _KEY_SIZE:
        raise ConfigurationError(
            f"SESSION_ENCRYPTION_KEY must be exactly {_KEY_SIZE} bytes (AES-256),"
            f" not {len(raw)}; {_HOW_TO_MAKE_ONE}"
        )
    if len(set(raw)) == 1:
        raise ConfigurationError(
            "SESSION_ENCRYPTION_KEY has every byte the same: that is a"
            f" placeholder, not a secret; {_HOW_TO_MAKE_ONE}"
        )
    return raw


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
        # One key, or a list of them; _key_bytes says what is wrong with a key.
        key_list: list[t.Any] = (
            list(keys) if isinstance(keys, (list, tuple)) else [keys]
        )
        if not key_list:
            raise ConfigurationError("SESSION_ENCRYPTION_KEY is an empty list")
        self._ciphers: list[AESGCM] = [AESGCM(_key_bytes(k)) for k in key_list]

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
