"""Store URLs as logs, error messages and ``describe()`` may show them.

.. versionadded:: 0.2
"""

from __future__ import annotations

import re
from urllib.parse import unquote

#: Query parameters whose value is masked: any whose name contains one of
#: these, case-insensitively (``password``, ``sslpassword``,
#: ``tlsCertificateKeyFilePassword``, ``passwd``, ``pwd``, ``client_secret``,
#: ``token``, ``auth``, ``authMechanismProperties``, ...).
SECRET_PARAMETER_WORDS = ("pass", "pwd", "secret", "token", "auth")

_MASK = "***"
# A query parameter: after "?", "&" or ";" (pymongo takes ";" too).
_PARAMETER = re.compile(r"(?<=[?&;])([^=&;?#]*)=([^&;#]*)")
# What a user name cannot hold: finding one means the "@" taken for the end
# of the user information belongs to the path or the query.
_NOT_A_USER = re.compile(r"[/?#&;=]")


def _mask_parameter(match: re.Match[str]) -> str:
    name = match.group(1)
    lowered = unquote(name).lower()
    if any(word in lowered for word in SECRET_PARAMETER_WORDS):
        return f"{name}={_MASK}"
    return match.group(0)


_NOT_A_URL = "<not a URL>"
_END_OF_HOSTS = re.compile(r"[/?#]")


def _split(url: str) -> tuple[str, str | None, str] | None:
    """``(scheme, user information or None, the rest)``, or ``None`` for
    text that is not a URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    # The last "@" ends the user information: a password may hold an
    # unescaped "@", "/", "?" or "#", so only what follows it is split.
    userinfo, at, rest = rest.rpartition("@")
    return scheme, userinfo if at else None, rest


def redact_url(url: str) -> str:
    """``url`` without secrets: the password of the user information and the
    value of every secret-looking query parameter (see
    :data:`SECRET_PARAMETER_WORDS`) become ``***``; the fragment is dropped.

    Parsed by hand, not with :func:`urllib.parse.urlsplit`, which cannot take
    some URLs drivers accept (several hosts, unescaped characters in a
    password) and would then show what it could not parse. When in doubt,
    more is masked, never less.

    >>> redact_url("postgresql://app:pw@db/main?sslmode=require&password=pw2")
    'postgresql://app:***@db/main?sslmode=require&password=***'

    .. versionadded:: 0.2
    """
    parts = _split(url)
    if parts is None:
        return _NOT_A_URL
    scheme, userinfo, rest = parts
    shown = f"{scheme}://"
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        if _NOT_A_USER.search(user):
            shown += f"{_MASK}@"
        else:
            shown += f"{user}:{_MASK}@" if colon else f"{user}@"
    return shown + _PARAMETER.sub(_mask_parameter, rest.partition("#")[0])


def url_location(url: str) -> str:
    """Where ``url`` points, for :meth:`~.base.SessionStore.describe`: the
    scheme and the hosts, without the user information, the path, the query
    or the fragment.

    >>> url_location("mongodb://app:pw@db1:27017,db2/main?authSource=admin")
    'mongodb://db1:27017,db2'

    .. versionadded:: 0.2
    """
    parts = _split(url)
    # The hosts end where the path, the query or the fragment starts.
    return (
        _NOT_A_URL
        if parts is None
        else f"{parts[0]}://{_END_OF_HOSTS.split(parts[2], 1)[0]}"
    )


def _secrets(url: str) -> set[str]:
    """The values :func:`redact_url` masks, as written and percent-decoded."""
    found: set[str] = set()
    parts = _split(url)
    if parts is None:
        return found
    _, userinfo, rest = parts
    if userinfo is not None:
        user, colon, password = userinfo.partition(":")
        if _NOT_A_USER.search(user):
            found.add(userinfo)
        elif colon:
            found.add(password)
    for match in _PARAMETER.finditer(rest):
        if _mask_parameter(match) != match.group(0):
            found.add(match.group(2))
    found |= {unquote(value) for value in found}
    return {value for value in found if value}


def redact_message(text: str, url: str) -> str:
    """``text`` (a driver's error message about ``url``) with every secret of
    ``url`` and ``url`` itself replaced as :func:`redact_url` does.

    .. versionadded:: 0.2
    """
    text = text.replace(url, redact_url(url))
    # Longest first, so no secret is left half-replaced by a shorter one.
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return text
