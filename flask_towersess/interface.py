"""The Flask session interface: opens a :class:`ServerSession` for each
request and saves it, with its cookie, when the request ends.

It behaves like Flask's own cookie session in everything but where the data
lives: the same ``SESSION_COOKIE_*`` settings, ``SESSION_REFRESH_EACH_REQUEST``,
``SECRET_KEY_FALLBACKS``, ``Vary: Cookie``, ``session_transaction()``. The
cookie carries only the session key, signed with ``SECRET_KEY``.

.. versionadded:: 0.1
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import logging
import re
import typing as t
from datetime import timedelta

from flask import has_request_context
from flask import request
from flask.sessions import NullSession
from flask.sessions import SessionInterface
from itsdangerous import Signer
from werkzeug.exceptions import HTTPException
from werkzeug.http import dump_cookie

from . import config
from ._werkzeug_fastpath import request_cookie
from .config import DEFAULT_MAX_PAYLOAD_SIZE
from .errors import SessionInterrupted
from .errors import UpdateError
from .serializers import MsgPackSerializer
from .serializers import Serializer
from .session import ServerSession
from .session import is_valid_session_key
from .stores import store_for
from .stores.base import SessionStore

if t.TYPE_CHECKING:
    from datetime import datetime

    from flask import Flask
    from flask import Request
    from flask import Response
    from flask.sessions import SessionMixin

    from .crypto import PayloadCipher

logger = logging.getLogger("flask_towersess")


class _Signer(Signer):
    """itsdangerous's Signer, remembering its derived keys.

    The stock one derives the key (an HMAC) again for every signature; the
    key only changes with ``SECRET_KEY``, and this runs on every request.
    """

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._derived: dict[str | bytes | None, bytes] = {}
        # One keyed HMAC per secret, copied for each check: keying it anew
        # costs more than the check itself.
        self._keyed: dict[bytes, hmac.HMAC] = {}

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        try:
            return self._derived[secret_key]
        except KeyError:
            derived = self._derived[secret_key] = super().derive_key(secret_key)
            return derived

    def unsign_key(self, cookie: str) -> str | None:
        """The value of a ``value.signature`` cookie, if any key signed it.

        What :meth:`unsign` checks, for the default HMAC algorithm, without
        its Python layers: this runs on every request that uses the session.
        The comparison is constant-time.
        """
        value, _, signature = cookie.rpartition(".")
        if not value:
            return None
        message = value.encode("ascii")
        given = signature.encode("ascii")
        for secret_key in reversed(self.secret_keys):
            keyed = self._keyed.get(secret_key)
            if keyed is None:
                keyed = self._keyed[secret_key] = hmac.new(
                    self.derive_key(secret_key), digestmod=self.digest_method
                )
            mac = keyed.copy()
            mac.update(message)
            expected = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=")
            if hmac.compare_digest(expected, given):
                return value
        return None


#: A signed cookie is a key (43 characters), a dot and a signature (43): a
#: cookie much longer than that, or with other characters, is not ours and
#: is dropped before any signature check or store call.
MAX_COOKIE_LENGTH = 256
_COOKIE_PATTERN = re.compile(r"[A-Za-z0-9_\-.]+")

#: How many verified cookies each worker remembers (about 150 bytes each);
#: the cache is emptied when it is full.
VERIFIED_COOKIES_CACHED = 4096


class ServerNullSession(NullSession):
    """The session of an app without ``SECRET_KEY``: Flask's own
    :class:`~flask.sessions.NullSession`, read-only and empty, whose
    :class:`ServerSession` methods give Flask's "no secret key" error too.

    .. versionadded:: 0.2
    """

    def _no_secret_key(self, *args: t.Any, **kwargs: t.Any) -> t.NoReturn:
        # Flask's own message, from the method it uses for the same purpose.
        NullSession.__setitem__(self, "", None)
        raise AssertionError("unreachable")  # pragma: no cover

    cycle_key = flush = set_expiry = save = create = load = delete = exists = (
        end_identity
    ) = get_expiry_age = get_expiry_date = get_expire_at_browser_close = is_empty = (
        _no_secret_key
    )

    @property
    def session_key(self) -> t.NoReturn:
        self._no_secret_key()

    @property
    def user_id(self) -> t.NoReturn:
        self._no_secret_key()

    @user_id.setter
    def user_id(self, value: object) -> t.NoReturn:
        self._no_secret_key()


class ServerSessionInterface(SessionInterface):
    """Server-side sessions for a Flask app.

    :param store: where sessions are kept; a
        :class:`~flask_towersess.stores.SessionStore`, a URL, or a client a
        store accepts (see ``SESSION_STORE``).
    :param serializer: turns session data into bytes; MessagePack (with a
        256 KiB payload limit) by default.
    :param cipher: a :class:`~flask_towersess.crypto.PayloadCipher` that
        encrypts payloads at rest; ``None`` for none.

    Usable without :class:`~flask_towersess.SessionExt`:

    .. code-block:: python

        app.session_interface = ServerSessionInterface(MemoryStore())

    .. versionadded:: 0.1
    """

    session_class = ServerSession
    null_session_class = ServerNullSession
    #: Separates these signatures from any other use of ``SECRET_KEY``.
    salt = "flask-towersess"

    def __init__(
        self,
        store: SessionStore | str | t.Any,
        *,
        serializer: Serializer | None = None,
        cipher: PayloadCipher | None = None,
    ) -> None:
        self.store = store_for(store)
        self.serializer: Serializer = serializer or MsgPackSerializer(
            max_size=DEFAULT_MAX_PAYLOAD_SIZE
        )
        self.cipher = cipher
        self._warned_insecure = False
        # Signers are built once per set of secret keys, not per request.
        self._signers: dict[tuple[t.Any, ...], tuple[_Signer, _Signer | None]] = {}
        # Cookies whose signature checked out, per set of signers: a user's
        # cookie is the same on each of their requests, and a dict lookup
        # costs a tenth of a signature check. Only verified cookies go in,
        # so what a client sends cannot fill it; a new SECRET_KEY gets new
        # signers, and with them an empty cache.
        self._verified: collections.defaultdict[
            tuple[_Signer, _Signer | None], dict[str, tuple[str, bool]]
        ] = collections.defaultdict(dict)
        # The other way round, for sending the cookie back (Flask's rule:
        # after every change): the signed value of a key, from a cookie that
        # verified with SECRET_KEY itself or from signing it once.
        self._signed: collections.defaultdict[
            tuple[_Signer, _Signer | None], dict[str, str]
        ] = collections.defaultdict(dict)
        # Whole Set-Cookie headers of browser-session cookies (no Expires):
        # the same on each of a user's writes, and building one costs more
        # than a store round trip to memory.
        self._cookie_headers: dict[tuple[t.Any, ...], str] = {}

    # -- configuration getters (read each request, like Flask's own) ----------

    def get_use_signer(self, app: Flask) -> bool:
        """``SESSION_USE_SIGNER``: sign the session key in the cookie."""
        # The flags and the interval are read once or twice on every request
        # that uses the session: a value of the final type (init_app set
        # one) is taken as it is, without config.read()'s call.
        value = app.config.get("SESSION_USE_SIGNER")
        if type(value) is bool:
            return value
        flag: bool = config.read(app.config, "SESSION_USE_SIGNER")
        return flag

    def get_default_permanent(self, app: Flask) -> bool:
        """``SESSION_PERMANENT``: the default of ``session.permanent``."""
        value = app.config.get("SESSION_PERMANENT")
        if type(value) is bool:
            return value
        flag: bool = config.read(app.config, "SESSION_PERMANENT")
        return flag

    def get_touch_interval(self, app: Flask) -> timedelta:
        """``SESSION_TOUCH_INTERVAL``: the least time between two expiry
        refreshes of an unmodified session (seconds or a ``timedelta``)."""
        value = app.config.get("SESSION_TOUCH_INTERVAL")
        if type(value) is timedelta:
            return value
        interval: timedelta = config.read(app.config, "SESSION_TOUCH_INTERVAL")
        return interval

    def get_refresh_each_request(self, app: Flask) -> bool:
        """``SESSION_REFRESH_EACH_REQUEST``: extend the expiry of a session
        that a request used without modifying it (Flask's setting)."""
        return bool(app.config.get("SESSION_REFRESH_EACH_REQUEST", True))

    def get_save_timeout(self, app: Flask) -> timedelta:
        """``SESSION_SAVE_TIMEOUT``: how long a save that meets concurrent
        saves keeps retrying (seconds or a ``timedelta``).

        .. versionadded:: 0.2
        """
        value: timedelta = config.read(app.config, "SESSION_SAVE_TIMEOUT")
        return value

    def get_cycle_on_login(self, app: Flask) -> bool:
        """``SESSION_CYCLE_ON_LOGIN``: move the session to a fresh key when
        its user changes (see :attr:`ServerSession.user_id`).

        .. versionadded:: 0.2
        """
        value: bool = config.read(app.config, "SESSION_CYCLE_ON_LOGIN")
        return value

    def get_save_retries(self, app: Flask) -> int | None:
        """``SESSION_SAVE_RETRIES``: the most retries of a save that meets
        concurrent saves, or ``None`` for as many as the timeout allows.

        .. versionchanged:: 0.2
            ``None`` by default; :meth:`get_save_timeout` bounds retries.
        """
        value: int | None = config.read(app.config, "SESSION_SAVE_RETRIES")
        return value

    # -- the cookie ----------------------------------------------------------

    def _get_signers(self, app: Flask) -> tuple[_Signer, _Signer | None]:
        fallbacks = app.config.get("SECRET_KEY_FALLBACKS")
        # Twice on a write: most apps have no fallbacks, whose key is built
        # without a tuple() and an unpacking of nothing.
        if fallbacks:
            fallbacks = tuple(fallbacks)
            cache_key = (app.secret_key, *fallbacks)
        else:
            cache_key = (app.secret_key,)
        signers = self._signers.get(cache_key)
        if signers is None:
            options = {"salt": self.salt, "digest_method": hashlib.sha256}
            current = _Signer(app.secret_key, **options)
            # itsdangerous takes keys oldest first and tries them newest
            # first; the current key is checked alone before, so a cookie
            # signed with a fallback is known to need re-signing.
            with_fallbacks = _Signer([*fallbacks], **options) if fallbacks else None
            signers = self._signers[cache_key] = (current, with_fallbacks)
        return signers

    def _key_from_cookie(self, app: Flask, cookie: str) -> tuple[str | None, bool]:
        """Return the session key in ``cookie`` and whether to re-sign it."""
        if not self.get_use_signer(app):
            if len(cookie) <= MAX_COOKIE_LENGTH and is_valid_session_key(cookie):
                return cookie, False
            return None, False
        current, fallbacks = signers = self._get_signers(app)
        verified = self._verified[signers]
        found = verified.get(cookie)
        if found is not None:
            return found
        if len(cookie) > MAX_COOKIE_LENGTH or not _COOKIE_PATTERN.fullmatch(cookie):
            return None, False
        resign = False
        key = current.unsign_key(cookie)
        if key is None and fallbacks is not None:
            key = fallbacks.unsign_key(cookie)
            resign = True
        if key is None or not is_valid_session_key(key):
            return None, False
        if len(verified) >= VERIFIED_COOKIES_CACHED:
            verified.clear()
        verified[cookie] = found = (key, resign)
        if not resign:
            _remember(self._signed[signers], key, cookie)
        return found

    def _cookie_value(self, app: Flask, key: str) -> str:
        if not self.get_use_signer(app):
            return key
        signers = self._get_signers(app)
        signed = self._signed[signers]
        value = signed.get(key)
        if value is None:
            value = signers[0].sign(key).decode("ascii")
            _remember(signed, key, value)
        return value

    def _warn_if_insecure(self) -> None:
        """Called for a cookie sent without ``Secure``: warn (once) if the
        request came over HTTPS."""
        if self._warned_insecure:
            return
        if has_request_context() and request.is_secure:
            self._warned_insecure = True
            logger.warning(
                "Sessions are served over HTTPS but SESSION_COOKIE_SECURE is"
                " False: browsers will also send the session cookie over plain"
                " HTTP. Set SESSION_COOKIE_SECURE = True."
            )

    def _set_cookie(
        self,
        app: Flask,
        session: ServerSession,
        response: Response,
        *,
        new_key: bool = True,
    ) -> None:
        key = session.session_key
        assert key is not None
        expires = self.get_expiration_time(app, session)
        name = self.get_cookie_name(app)
        value = self._cookie_value(app, key)
        # The getters' values in response.set_cookie()'s order: a tuple,
        # the key of the cache of whole headers below; the keyword dict is
        # built only where it is used (a miss, a cookie with an expiry).
        attributes = (
            name,
            value,
            self.get_cookie_httponly(app),
            self.get_cookie_domain(app),
            self.get_cookie_path(app),
            self.get_cookie_secure(app),
            self.get_cookie_partitioned(app),
            self.get_cookie_samesite(app),
        )
        if new_key and not attributes[5]:
            # Checked when a cookie carries a new key only: every visitor's
            # first response and every log-in, often enough to be seen.
            self._warn_if_insecure()
        if expires is not None:
            response.set_cookie(name, value, expires=expires, **_options(attributes))
        else:
            # What response.set_cookie() adds, built once per cookie.
            header = self._cookie_headers.get(attributes)
            if header is None:
                header = dump_cookie(
                    name,
                    value,
                    max_size=response.max_cookie_size,
                    **_options(attributes),
                )
                _remember(self._cookie_headers, attributes, header)
            response.headers.add("Set-Cookie", header)
        # Vary: Cookie is on the response already (save_session).

    def _delete_cookie(self, app: Flask, response: Response) -> None:
        response.delete_cookie(
            self.get_cookie_name(app),
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            partitioned=self.get_cookie_partitioned(app),
            samesite=self.get_cookie_samesite(app),
            httponly=self.get_cookie_httponly(app),
        )
        _vary_on_cookie(response)

    # -- the request cycle ---------------------------------------------------

    def open_session(self, app: Flask, request: Request) -> ServerSession | None:
        if not app.secret_key and self.get_use_signer(app):
            # Flask then gives its own "no secret key" error on first use.
            return None
        session = self.session_class(
            self.store,
            serializer=self.serializer,
            lifetime=app.permanent_session_lifetime,
            cipher=self.cipher,
            # The cookie is read and verified on first use of the session only.
            key_from_cookie=lambda: self._key_from_request(app, request),
        )
        # SESSION_PERMANENT, SESSION_SAVE_TIMEOUT, SESSION_SAVE_RETRIES and
        # SESSION_CYCLE_ON_LOGIN are read through this interface's getters
        # when the session first needs them: most requests need none of them
        # (and a save only meets the last three on a conflict or a log-in).
        session._settings_from = (self, app)
        session.served = (app, request)
        return session

    def _key_from_request(
        self, app: Flask, request: Request
    ) -> tuple[str | None, bool]:
        cookie = request_cookie(request, self.get_cookie_name(app))
        if not cookie:
            return None, False
        return self._key_from_cookie(app, cookie)

    def save_session(
        self, app: Flask, session: SessionMixin, response: Response
    ) -> None:
        if not isinstance(session, ServerSession) or not session.accessed:
            # Never used: no store call, no cookie, no Vary (as Flask).
            return
        _vary_on_cookie(response)
        if response.status_code >= 500:
            # The request failed: keep the stored session as it was, and the
            # cookie too.
            return
        touch = None
        if not session.modified and self.get_refresh_each_request(app):
            touch = self.get_touch_interval(app)
        try:
            end = session.end_request(touch)
        except UpdateError as exc:
            self._respond_with_error(app, response, SessionInterrupted(str(exc)))
            return
        except HTTPException as exc:  # StoreUnavailable, SessionInterrupted
            self._respond_with_error(app, response, exc)
            return
        if session.logged_in_now or session.restamp_remember:
            from ._remember import after_login

            after_login(app, session, response)
        if end.delete_cookie:
            self._delete_cookie(app, response)
        # Flask's rule, through Flask's hook, so an app overrides it as it
        # would for the cookie session: sent when modified, and on every
        # request for a permanent session with SESSION_REFRESH_EACH_REQUEST.
        elif end.has_key and (end.renew_cookie or self.should_set_cookie(app, session)):
            self._set_cookie(app, session, response, new_key=end.renew_cookie)

    def get_expiration_time(self, app: Flask, session: SessionMixin) -> datetime | None:
        """When the cookie expires: the session's own expiry for a permanent
        session (see :meth:`ServerSession.set_expiry`), ``None`` (at browser
        close) otherwise. Flask's hook: override it as for Flask's session.

        .. versionadded:: 0.2
        """
        if isinstance(session, ServerSession):
            return session.get_expiry_date() if session.permanent else None
        return super().get_expiration_time(app, session)

    def _respond_with_error(
        self, app: Flask, response: Response, error: HTTPException
    ) -> None:
        """Turn ``response`` into the app's response for ``error``.

        The session is saved after the view has returned, where Flask no
        longer routes exceptions to error handlers; this gives the client the
        400 or 503 (and the app's handler its say) instead of a 500.
        """
        logger.warning("Session not saved: %s", error)
        error_response = app.make_response(app.handle_http_exception(error))
        response.status = error_response.status
        response.headers = error_response.headers
        response.response = error_response.response
        response.direct_passthrough = error_response.direct_passthrough
        _vary_on_cookie(response)


class _StoreInterface(ServerSessionInterface):
    """Base of the per-backend interfaces: builds the store from a URL or a
    native client, with the store's own keyword options."""

    store_class_name: t.ClassVar[str]

    def __init__(
        self,
        client: t.Any,
        *,
        serializer: Serializer | None = None,
        **store_options: t.Any,
    ) -> None:
        from . import stores

        store_class = getattr(stores, self.store_class_name)
        if isinstance(client, str):
            store = store_class.from_url(client, **store_options)
        else:
            store = store_class(client, **store_options)
        super().__init__(store, serializer=serializer)


class MemorySessionInterface(ServerSessionInterface):
    """Sessions in this process's memory (tests, single-process dev).

    .. versionadded:: 0.1
    """

    def __init__(self, *, serializer: Serializer | None = None) -> None:
        from .stores.memory import MemoryStore

        super().__init__(MemoryStore(), serializer=serializer)


class SQLAlchemySessionInterface(_StoreInterface):
    """Sessions in an SQL table: ``SQLAlchemySessionInterface(engine_or_url,
    table="sessions", schema=None)``; also takes a Flask-SQLAlchemy ``db``.

    .. versionadded:: 0.1
    """

    store_class_name = "SQLAlchemyStore"


class RedisSessionInterface(_StoreInterface):
    """Sessions in Redis: ``RedisSessionInterface(client_or_url,
    key_prefix="session:")``.

    .. versionadded:: 0.1
    """

    store_class_name = "RedisStore"


class MongoDBSessionInterface(_StoreInterface):
    """Sessions in MongoDB: ``MongoDBSessionInterface(collection_or_url,
    collection="sessions")``.

    .. versionadded:: 0.1
    """

    store_class_name = "MongoDBStore"


def _options(attributes: tuple[t.Any, ...]) -> dict[str, t.Any]:
    """The cookie attributes of :meth:`ServerSessionInterface._set_cookie`'s
    tuple, as ``set_cookie()`` and ``dump_cookie()`` take them."""
    httponly, domain, path, secure, partitioned, samesite = attributes[2:]
    return {
        "httponly": httponly,
        "domain": domain,
        "path": path,
        "secure": secure,
        "partitioned": partitioned,
        "samesite": samesite,
    }


def _remember(cache: dict[t.Any, t.Any], key: t.Any, value: t.Any) -> None:
    """Put ``key`` in a bounded cache (emptied when full, like the others)."""
    if len(cache) >= VERIFIED_COOKIES_CACHED:
        cache.clear()
    cache[key] = value


def _vary_on_cookie(response: Response) -> None:
    """Add ``Cookie`` to ``Vary``, as Flask's session does.

    ``response.vary`` parses and re-serializes the header, and
    ``headers.getlist`` converts every header: this runs on every request that
    uses the session, and most responses have no Vary header yet.
    """
    for name, value in response.headers:
        if name.lower() == "vary":
            if "cookie" not in value.lower():
                response.vary.add("Cookie")
            return
    response.headers.add("Vary", "Cookie")
