"""The one place flask-towersess relies on werkzeug internals: reading the
session cookie without parsing the whole ``Cookie`` header.

``request.cookies`` splits every cookie of the header into a MultiDict on
first use; the session needs one value. Measured with callgrind (SQLite and
Redis stores, Flask test client, one cookie in the header), reading it with
``request.cookies.get(name)`` instead of :func:`request_cookie` costs about
5 % more instructions per request that uses the session; a browser often
sends more cookies than that, and the full parse grows with each.

What :func:`request_cookie` assumes of werkzeug:

- ``Request.cookies`` is a :class:`werkzeug.utils.cached_property` defined
  on :class:`werkzeug.sansio.request.Request` (a request class that
  overrides it is asked through ``request.cookies``), which keeps the parsed
  value in the instance's ``__dict__`` under ``"cookies"`` (so a value
  already parsed, or set by the app, is used as is);
- werkzeug's rules for an unquoted cookie: blanks around the name and the
  value are dropped, the first cookie of a name wins, a name without ``=``
  has the empty value.

Checked against werkzeug 3.1.9 (the release installed when this was
written; ``setup.cfg`` requires 3.1 or later). If the descriptor is
missing or of another kind, :func:`request_cookie` is
``request.cookies.get(name)``: slower, never wrong.
``tests/test_werkzeug_fastpath.py`` checks every assumption above against
the installed release and fails loudly when one no longer holds.

.. versionadded:: 0.2
"""

from __future__ import annotations

import typing as t

from werkzeug.sansio.request import Request as SansIORequest
from werkzeug.utils import cached_property

if t.TYPE_CHECKING:
    from flask import Request

#: The werkzeug releases the assumptions were checked against.
CHECKED_WERKZEUG = "3.1.9"

#: werkzeug's ``Request.cookies`` descriptor, which :func:`request_cookie`
#: stands in for; ``None`` when it is not what this module assumes.
_COOKIES_DESCRIPTOR: t.Any = SansIORequest.__dict__.get("cookies")
if not isinstance(_COOKIES_DESCRIPTOR, cached_property):
    _COOKIES_DESCRIPTOR = None

# Blanks werkzeug drops around a cookie's name and value.
_BLANKS = " \t"


def fast_path_enabled() -> bool:
    """Whether werkzeug is as this module assumes (else every lookup goes
    through ``request.cookies``)."""
    return _COOKIES_DESCRIPTOR is not None


def request_cookie(request: Request, name: str) -> str | None:
    """``request.cookies.get(name)``, without parsing every cookie.

    Finds the first cookie called ``name`` in the header by werkzeug's
    rules. A header with quoted values, a request class with its own
    ``cookies``, or a werkzeug this module does not know, goes through
    ``request.cookies``.
    """
    descriptor = _COOKIES_DESCRIPTOR
    if descriptor is None or type(request).cookies is not descriptor:
        return request.cookies.get(name)
    parsed = request.__dict__.get("cookies")  # where cached_property keeps it
    if parsed is not None:
        return parsed.get(name)  # type: ignore[no-any-return]
    header: str | None = request.environ.get("HTTP_COOKIE")
    if not header or name not in header:
        return None
    if '"' in header:
        # A quoted value may hold ";": only the full parser splits it right.
        return request.cookies.get(name)
    for part in header.split(";"):
        if name in part:
            # One part is a name, and optionally "=" and a value, blanks
            # around either dropped (werkzeug's rules for unquoted values;
            # no part holds '"' here). A blank inside the name or the value
            # makes the part no cookie. String methods, not a regular
            # expression: matching one cost more than the rest of a read of
            # the session from memory.
            found, equals, value = part.partition("=")
            found = found.strip(_BLANKS)
            if found != name or not found or " " in found or "\t" in found:
                continue
            if not equals:
                return ""
            value = value.strip(_BLANKS)
            if " " in value or "\t" in value:
                continue
            return value
    return None
