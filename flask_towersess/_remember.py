"""Flask-Login's remember-me cookie, held to revocations.

Flask-Login's remember cookie carries the user id and an HMAC of it: the
same value every time it is issued, valid until it expires (a year by
default). Ending a user's sessions on the server does not touch it, so on
its own it would log a revoked user straight back in (Laravel's issue
24857). Two pieces stop that:

- when a log-in sets the remember cookie, a companion cookie
  (``<REMEMBER_COOKIE_NAME>_issued``) records, signed with the app's secret
  key, the moment it was issued;
- :meth:`SessionExt.revoke <flask_towersess.SessionExt.revoke>` of all of
  a user's sessions leaves a mark in the store with that moment; right
  before Flask-Login would load a user from the remember cookie (its
  ``user_accessed`` signal, sent first thing in every user load), a cookie
  of a revoked user issued before the mark, or without a companion (a
  cookie 0.1 issued), is turned away: Flask-Login is told to clear it, and
  the request stays anonymous.

.. versionadded:: 0.2
"""

from __future__ import annotations

import hashlib
import typing as t
from datetime import timedelta

from flask import current_app
from flask import request
from itsdangerous import BadSignature
from itsdangerous import Signer

from .per_user import revoked_at
from .session import ServerSession
from .session import current_server_session
from .stores._epoch import from_epoch_micros
from .stores._epoch import to_epoch_micros
from .stores.base import utcnow

if t.TYPE_CHECKING:
    from datetime import datetime

    from flask import Flask
    from flask import Response

    from .stores.base import SessionStore

#: Flask-Login's defaults, for an app that does not set them.
_DEFAULT_COOKIE_NAME = "remember_token"
_DEFAULT_DURATION = timedelta(days=365)
_SALT = "flask-towersess.remember-issued"


def remember_cookie_name(app: Flask) -> str:
    name: str = app.config.get("REMEMBER_COOKIE_NAME", _DEFAULT_COOKIE_NAME)
    return name


def issued_cookie_name(app: Flask) -> str:
    """The companion cookie's name: the remember cookie's, ``_issued``."""
    return f"{remember_cookie_name(app)}_issued"


def remember_duration(app: Flask) -> timedelta:
    """How long Flask-Login's remember cookie lasts."""
    value = app.config.get("REMEMBER_COOKIE_DURATION", _DEFAULT_DURATION)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return value if isinstance(value, timedelta) else _DEFAULT_DURATION


def _signer(app: Flask) -> Signer:
    return Signer(app.secret_key or "", salt=_SALT, digest_method=hashlib.sha256)


def _user_tag(user_id: object) -> str:
    """What binds a companion to its user: a short hash of the user id, so
    a companion someone got from a log-in of their own, after a revoke,
    does not vouch for another user's stolen remember cookie."""
    return hashlib.sha256(f"{user_id}".encode()).hexdigest()[:16]


def issued_at(app: Flask, user_id: object) -> tuple[datetime | None, int | None]:
    """When the request's remember cookie (of ``user_id``) was issued, and
    the device (:func:`~.per_user.device_of`) it was issued to, from its
    companion; ``(None, None)`` without a valid one for that user."""
    value = request.cookies.get(issued_cookie_name(app))
    if not value or len(value) > 200:
        return None, None
    try:
        micros, tag, device = (_signer(app).unsign(value).decode() + "::").split(":")[
            :3
        ]
        moment = from_epoch_micros(int(micros))
        device_id = int(device) if device else None
    except (BadSignature, ValueError, OverflowError, UnicodeDecodeError):
        return None, None
    if tag != _user_tag(user_id):
        return None, None
    return moment, device_id


def stamp_issued(
    app: Flask,
    response: Response,
    user_id: object,
    device: int | None,
    issued: datetime | None = None,
) -> None:
    """Set the companion cookie of ``user_id``'s remember cookie, issued to
    ``device`` at ``issued`` (default: now), with the remember cookie's
    attributes."""
    config = app.config
    moment = to_epoch_micros(issued or utcnow())
    stamp = f"{moment}:{_user_tag(user_id)}:{device or ''}"
    value = _signer(app).sign(stamp).decode()
    response.set_cookie(
        issued_cookie_name(app),
        value,
        max_age=int(remember_duration(app).total_seconds()),
        domain=config.get("REMEMBER_COOKIE_DOMAIN"),
        path=config.get("REMEMBER_COOKIE_PATH", "/"),
        secure=bool(config.get("REMEMBER_COOKIE_SECURE", False)),
        httponly=bool(config.get("REMEMBER_COOKIE_HTTPONLY", True)),
        samesite=config.get("REMEMBER_COOKIE_SAMESITE"),
    )


def sets_remember_cookie(
    app: Flask, session: ServerSession, response: Response
) -> bool:
    """Whether this response sets Flask-Login's remember cookie (or will:
    Flask-Login's after-request handler may run after ours)."""
    if session.get("_remember") == "set":
        return True
    prefix = f"{remember_cookie_name(app)}="
    return any(
        header.startswith(prefix) and not header.startswith(f"{prefix};")
        for header in response.headers.getlist("Set-Cookie")
    )


def after_login(app: Flask, session: ServerSession, response: Response) -> None:
    """At the end of a request that logged a user in, or that revoked the
    user's other sessions and keeps this one: stamp the remember cookie
    this device holds or is given."""
    if getattr(app, "login_manager", None) is None:
        return
    carried = request.cookies.get(remember_cookie_name(app)) is not None
    user_id = session.get("_user_id")
    if user_id is None:
        return
    if sets_remember_cookie(app, session, response) or (
        session.restamp_remember and carried
    ):
        stamp_issued(app, response, user_id, session.device)
    elif carried and session.logged_in_now:
        # Logged in by the remember cookie: a new session, so a new device
        # name; the cookie's issue time stays what it was.
        issued, _ = issued_at(app, user_id)
        if issued is not None:
            stamp_issued(app, response, user_id, session.device, issued)


def refuse_revoked_cookie(app: Flask, store: SessionStore) -> None:
    """Before Flask-Login loads a user: if it would load one from a remember
    cookie issued before that user's sessions were all revoked, make it
    clear the cookie instead."""
    name = remember_cookie_name(app)
    cookie = request.cookies.get(name)
    if not cookie:
        return
    server_session = current_server_session()
    if server_session is None:
        return
    if (
        server_session.get("_user_id") is not None
        or server_session.get("_remember") == "clear"
    ):
        return  # Flask-Login loads the user from the session, not the cookie
    from flask_login.utils import decode_cookie

    user_id = decode_cookie(cookie)
    if user_id is None:
        return  # a forged cookie: Flask-Login refuses it itself
    issued, device = issued_at(app, user_id)
    revoked = revoked_at(store, str(user_id), device, without_companion=issued is None)
    if revoked is None:
        return
    if issued is None or issued <= revoked:
        # Flask-Login reads this before the cookie, and clears the cookie
        # at the end of the request.
        server_session["_remember"] = "clear"
        current_app.logger.info(
            "A remember-me cookie issued before its user's sessions were"
            " revoked was refused."
        )
