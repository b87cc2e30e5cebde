"""The dict-like object behind :data:`flask.session`.

:class:`ServerSession` follows Django's ``SessionBase``: lazy loading, the
``accessed`` and ``modified`` flags, ``flush()``, ``cycle_key()`` and the
expiry API. It works the same inside a request and outside one (scripts,
admin tasks, tests).

.. versionadded:: 0.1
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import logging
import os
import random
import secrets
import threading
import time
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

from flask import current_app
from flask import has_app_context
from flask.sessions import SessionMixin

from . import config
from ._persisted import Identity
from ._persisted import Persisted
from ._persisted import merge
from ._persisted import written_since
from .config import DEFAULT_SAVE_TIMEOUT
from .errors import CreateError
from .errors import SerializationError
from .errors import SessionInterrupted
from .errors import StoreUnavailable
from .errors import UpdateError
from .errors import VersionConflict
from .serializers import MsgPackSerializer
from .serializers import Serializer
from .signals import session_created
from .signals import session_ended
from .signals import session_key_cycled
from .signals import session_save_conflict
from .signals import session_store_unavailable
from .stores._fork import ProcessGuard
from .stores.base import IP_LENGTH
from .stores.base import KEY_PATTERN as _KEY_PATTERN
from .stores.base import USER_AGENT_LENGTH
from .stores.base import USER_ID_LENGTH
from .stores.base import Record
from .stores.base import SessionStore
from .stores.base import check_key
from .stores.base import recency
from .stores.base import short_key
from .stores.base import utcnow

if t.TYPE_CHECKING:
    from blinker import Signal
    from flask import Flask
    from flask import Request

    from .crypto import PayloadCipher
    from .interface import ServerSessionInterface

#: Warnings about payloads that cannot be decoded (tampering, corruption)
#: go here, so operators can route them apart from ordinary logs.
security_logger = logging.getLogger("flask_towersess.security")

#: An expiry setting, as stored: ``None`` (the app's policy), ``0`` (until
#: the browser closes), seconds of inactivity, or a fixed aware datetime.
Expiry = t.Union[int, datetime, None]

_MISSING: t.Any = object()
# How many fresh keys create() tries before it gives up. With 256-bit
# random keys a second attempt never happens in practice; the bound only
# keeps a broken store from looping forever.
_CREATE_ATTEMPTS = 10

#: The pause before the first retry of a save that lost a compare-and-set,
#: and the most any pause may be, in seconds. Each retry may wait up to twice
#: as long as the one before ("full jitter": a random part of that bound), so
#: writers that collided spread out instead of colliding again, which
#: retrying at once did: under eight writers on one session, they livelocked.
_RETRY_FIRST_PAUSE = 0.002
_RETRY_MAX_PAUSE = 0.05

#: The expiry of a record :meth:`ServerSession.cycle_key` moved away from:
#: long past, not "now", which a store's clock (Redis reads a cached one)
#: may still see as a moment in the future.
_RETIRED_AT = datetime(2000, 1, 1, tzinfo=timezone.utc)

#: Where a session keeps who it belongs to: Flask-Login's own key, so that
#: every way a user gets into a session (``login_user()``, the remember-me
#: cookie, an app writing it itself) is one and the same change.
USER_ID_KEY = "_user_id"
#: Flask-Login's mark of a session logged in by a password just now.
FRESH_KEY = "_fresh"


def _identity(data: t.Mapping[str, t.Any]) -> Identity:
    user = data.get(USER_ID_KEY)
    if user is None:
        name = None
    elif type(user) is str or (type(user) is int):
        name = str(user)
    elif type(user) in (bytes, float, bool):  # flat: safe to show whole
        name = f"{type(user).__name__}:{user!r}"
    else:
        # Not a user id an app writes (Flask-Login's are strings): never
        # str() it, which on a hostile payload's deeply nested list would
        # recurse level by level. Its type alone still tells a change.
        name = f"<{type(user).__name__}>"
    return (name, data.get(FRESH_KEY) is True)


def _client(
    served: tuple[Flask, Request] | None,
) -> tuple[str | None, str | None]:
    """The ``User-Agent`` and the address of the client of ``served`` (the
    app and request the session serves), as the app records them
    (``SESSION_RECORD_USER_AGENT``, ``SESSION_RECORD_IP``); ``(None, None)``
    outside a request."""
    if served is None:
        return None, None
    app, request = served
    settings = app.config
    # Straight from the WSGI environ, as werkzeug's own properties read
    # them (after a ProxyFix, too): this runs on every write.
    environ = request.environ
    user_agent = ip = None
    # Plain lookups: init_app checked the settings' types (a flag is read
    # as a bool), and this runs on every write.
    if settings.get("SESSION_RECORD_USER_AGENT", True):
        user_agent = environ.get("HTTP_USER_AGENT")
        if user_agent is not None:
            # Shown in a page later: bounded, and no control characters
            # (checked in one C call: real browsers send none).
            user_agent = user_agent[:USER_AGENT_LENGTH]
            if not user_agent.isprintable():
                user_agent = "".join(filter(str.isprintable, user_agent))
    if settings.get("SESSION_RECORD_IP", False):
        ip = environ.get("REMOTE_ADDR")
        if not isinstance(ip, str) or len(ip) > IP_LENGTH:
            ip = None
    return user_agent, ip


class _RetryLocks:
    """Lets one thread of a process at a time retry saves of one session.

    Threads of one process whose saves of a session collided would otherwise
    go on colliding with each other, each merge and retry undoing the last
    one's chance; with a lock, the process's writers retry one after another
    and meet only other processes' writers. Striped (a fixed set of locks
    picked by the key's hash), so there is nothing to create or clean up per
    session; two sessions that share a stripe only wait briefly. Made afresh
    in a forked child: a lock held at the fork would stay held there.
    """

    stripes = 64

    def __init__(self) -> None:
        self._make()
        self._process = ProcessGuard(self._make, "session retry locks")

    def _make(self) -> None:
        self._locks = [threading.Lock() for _ in range(self.stripes)]

    def acquire(self, key: str, deadline: float) -> threading.Lock | None:
        """The lock of ``key``, held; ``None`` if not free by ``deadline``."""
        self._process.check()
        lock = self._locks[hash(key) % self.stripes]
        if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return lock
        return None


_retry_locks = _RetryLocks()


def _signal_sender() -> Flask | None:
    """Who sends the session's signals: the app, as for Flask's own
    signals, or ``None`` outside an application context."""
    if has_app_context():
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        return app
    return None


def current_server_session() -> ServerSession | None:
    """The :class:`ServerSession` of the request being served; ``None``
    outside a request, or when the app uses another session interface.

    .. versionadded:: 0.2
    """
    from flask import has_request_context
    from flask import session

    if not has_request_context():
        return None
    obj = session._get_current_object()  # type: ignore[attr-defined]
    return obj if isinstance(obj, ServerSession) else None


def new_session_key(prefix: str = "") -> str:
    """A fresh session key: 256 random bits from :mod:`secrets`, URL-safe.

    With ``prefix`` (a store's
    :meth:`~flask_towersess.stores.SessionStore.colocation_prefix`: hex, an
    even number of digits, at most four), a key whose :func:`stored_key`
    begins with it: keys are drawn until one does, 256 on average for two
    digits (a fraction of a millisecond). The key keeps all but those 8 (or
    16) of its 256 bits' unpredictability: what narrows it is a public
    function of the key, not of a secret.

    .. versionchanged:: 0.2
        ``prefix``.
    """
    if not prefix:
        return secrets.token_urlsafe(32)
    if len(prefix) > 4 or len(prefix) % 2:
        raise ValueError(f"a colocation prefix has 2 or 4 hex digits, not {prefix!r}")
    wanted = bytes.fromhex(prefix)
    size = len(wanted)
    while True:
        # One read of the OS's randomness for many draws: a draw is then
        # the encoding and a hash, a microsecond or so.
        pool = os.urandom(32 * _KEYS_PER_DRAW)
        for start in range(0, len(pool), 32):
            # What secrets.token_urlsafe(32) makes: 43 characters, no "=".
            key = base64.urlsafe_b64encode(pool[start : start + 32])[:-1]
            if hashlib.sha256(key).digest()[:size] == wanted:
                return key.decode("ascii")


#: How old a move of a 0.1 key must be before ``flask sessions migrate``
#: takes the unhashed record it left for one a stopped mover left behind.
#: A mover's two steps take milliseconds; one that stopped leaves it to the
#: next run.
_LEFT_BEHIND_AFTER = timedelta(minutes=1)

#: Keys drawn per read of the OS's randomness by :func:`new_session_key`.
_KEYS_PER_DRAW = 64


@functools.lru_cache(maxsize=4096)
def stored_key(key: str) -> str:
    """The key a session is stored under: the SHA-256 of the key its cookie
    carries, in lowercase hex.

    A copy of the store (a dump, a replica, a backup, a Redis ``SCAN``)
    then holds nothing a cookie can carry: the cookie's key is 256 random
    bits, so its hash cannot be inverted or guessed, and a hash sent as a
    cookie is hashed again and found nowhere. Unkeyed on purpose: no secret
    to rotate or lose, and the same key on every app sharing the store.
    The last few thousand hashes are kept (a session's requests mostly
    reach the same worker), as the interface keeps the cookies it verified.

    >>> stored_key("Yq3Zk1bG0xWm8aE2cV5nR7tL9pH4sJ6dF1gK3hN5oQ0")[:12]
    '10d4e7f17c69'

    .. versionadded:: 0.2
    """
    return hashlib.sha256(key.encode()).hexdigest()


#: The length of the keys 0.1 made (and stored unhashed): only a cookie key
#: of this length is looked up unhashed (``SESSION_LEGACY_KEYS``). A stored
#: hash (64 characters) sent as a cookie is never looked up as it is.
LEGACY_KEY_LENGTH = 43


def is_valid_session_key(key: object) -> bool:
    """Whether ``key`` has the form of a session key.

    At least 8 characters of the URL-safe base64 alphabet, at most 128.
    """
    return isinstance(key, str) and _KEY_PATTERN.fullmatch(key) is not None


#: The longest expiry age a payload may carry (about 1,000 years): larger
#: ones overflow date arithmetic. Only a payload not written by this package
#: holds such a value.
_MAX_EXPIRY_SECONDS = 1000 * 365 * 86400

#: The fixed expiry moments a payload may carry: those a datetime can hold in
#: UTC. 9999-12-31 23:00 at UTC-5 is in year 10000 in UTC, and converting it
#: (for the cookie's Expires, for a store) overflowed on every request.
_EARLIEST_EXPIRY = datetime.min.replace(tzinfo=timezone.utc)
_LATEST_EXPIRY = datetime.max.replace(tzinfo=timezone.utc)

#: What :class:`~flask_towersess.crypto.PayloadCipher` adds to a payload it
#: seals: a format byte, a 12-byte nonce and a 16-byte tag.
_SEALING_OVERHEAD = 1 + 12 + 16


def _is_valid_expiry(expiry: object) -> bool:
    if expiry is None:
        return True
    if isinstance(expiry, datetime):
        return (
            expiry.utcoffset() is not None
            and _EARLIEST_EXPIRY <= expiry <= _LATEST_EXPIRY
        )
    return (
        isinstance(expiry, int)
        and not isinstance(expiry, bool)
        and abs(expiry) <= _MAX_EXPIRY_SECONDS
    )


def _normalize_expiry(value: int | float | timedelta | datetime | None) -> Expiry:
    if value is None or isinstance(value, bool):
        if isinstance(value, bool):
            raise TypeError("set_expiry() takes seconds, a timedelta or a datetime")
        return None
    if isinstance(value, timedelta):
        # Django: "the session will expire at that specific date/time",
        # counted from now. Only an int is seconds of inactivity.
        return utcnow() + value
    if isinstance(value, datetime):
        # Naive datetimes are taken as UTC, the clock every store uses.
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
    if isinstance(value, (int, float)):
        return int(value)
    raise TypeError(
        "set_expiry() takes seconds, a timedelta, a datetime, 0 or None;"
        f" got {type(value).__qualname__}"
    )


class _Decoded(t.NamedTuple):
    """A payload as :meth:`ServerSession._decode` read it."""

    data: dict[str, t.Any]
    expiry: Expiry
    #: When the session began, and when its user last changed (the start
    #: of SESSION_ABSOLUTE_LIFETIME), in milliseconds since the epoch;
    #: ``None`` in a payload 0.1 wrote.
    created: int | None = None
    since: int | None = None


_new_tuple = tuple.__new__


def _now_millis() -> int:
    return int(time.time() * 1000)


@functools.lru_cache(maxsize=64)
def _seconds(seconds: int) -> timedelta:
    """``timedelta(seconds=seconds)``, remembered: a session's age is one
    of a few values (the app's lifetime, mostly), and building a timedelta
    from keywords costs several times a cache lookup."""
    return timedelta(seconds=seconds)


@functools.lru_cache(maxsize=1024)
def _from_millis(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, timezone.utc)


#: The latest moment a payload's times may name (year 9999): beyond it a
#: datetime cannot be made, and no payload this package wrote holds one.
_MAX_EPOCH_MILLIS = 253402300799000


def _index_user(data: t.Mapping[str, t.Any]) -> str | None:
    """The user a per-user index lists the session under: the user id as a
    string, for the types apps and Flask-Login write (``str``, ``int``);
    ``None`` for anonymous, and for a value no index can hold."""
    user = data.get(USER_ID_KEY)
    if type(user) is int:
        user = str(user)
    elif type(user) is not str:
        return None
    if not 0 < len(user) <= USER_ID_LENGTH or not user.isprintable():
        return None
    return user


class RequestEnd(t.NamedTuple):
    """What the cookie needs once :meth:`ServerSession.end_request` stored
    the session.

    .. versionadded:: 0.2
    """

    #: The session has a key a cookie may carry.
    has_key: bool
    #: The cookie must be sent whatever Flask's rule says: the key changed,
    #: or the client's cookie was signed with a fallback secret key.
    renew_cookie: bool
    #: The session ended: delete the cookie the client sent.
    delete_cookie: bool


_UNCHANGED = RequestEnd(has_key=False, renew_cookie=False, delete_cookie=False)
_DELETE_COOKIE = RequestEnd(has_key=False, renew_cookie=False, delete_cookie=True)
_KEEP_COOKIE = RequestEnd(has_key=True, renew_cookie=False, delete_cookie=False)
_RENEW_COOKIE = RequestEnd(has_key=True, renew_cookie=True, delete_cookie=False)


class ServerSession(SessionMixin):
    """A session whose data lives in a :class:`~flask_towersess.stores.SessionStore`.

    :param store: where the session is kept.
    :param session_key: the key of an existing session, or ``None`` for a
        new one. A key that is not of the session-key form is ignored.
    :param serializer: turns the data into payload bytes; MessagePack by
        default.
    :param lifetime: how long a session lives without use, unless
        :meth:`set_expiry` says otherwise (Flask's
        ``PERMANENT_SESSION_LIFETIME``).
    :param permanent: the default for :attr:`permanent` (``SESSION_PERMANENT``):
        whether the cookie outlives the browser when the session has no
        expiry of its own.
    :param save_timeout: how long a save that meets concurrent changes may
        keep merging and retrying, pausing a random, growing time between
        tries, before :class:`SessionInterrupted` is raised.
    :param save_retries: the most retries, whatever the time; ``None`` for no
        limit but ``save_timeout``.
    :param cipher: seals payloads before they are stored (encryption at rest,
        see ``SESSION_ENCRYPTION_KEY``); ``None`` stores them as serialized.

    Nothing is read from the store until the data is first used.

    .. code-block:: python

        session = ServerSession(MemoryStore())
        session["user_id"] = 42
        session.save()
        again = ServerSession(session.store, session.session_key)
        assert again["user_id"] == 42

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        store: SessionStore,
        session_key: str | None = None,
        *,
        serializer: Serializer | None = None,
        lifetime: timedelta = timedelta(days=31),
        permanent: bool = False,
        save_timeout: timedelta = DEFAULT_SAVE_TIMEOUT,
        save_retries: int | None = None,
        cipher: PayloadCipher | None = None,
        key_from_cookie: t.Callable[[], tuple[str | None, bool]] | None = None,
    ) -> None:
        self.store = store
        self.cipher = cipher
        self.serializer: Serializer = serializer or MsgPackSerializer()
        # What the lifetime setter does, without its call: this runs on
        # every request.
        self._lifetime = lifetime
        self._lifetime_seconds = int(lifetime.total_seconds())
        # Only what differs from the class-level defaults: left unset, they
        # are read from the served app's settings when first needed (see
        # _setting), which most requests never do.
        if permanent:
            self._default_permanent = permanent
        if save_timeout is not DEFAULT_SAVE_TIMEOUT:
            self._save_timeout = save_timeout
        if save_retries is not None:
            self._save_retries = save_retries
        if session_key is not None:
            self._key_value = session_key if is_valid_session_key(session_key) else None
        self._persisted = Persisted()
        if key_from_cookie is not None:
            self._key_resolver = key_from_cookie

    # Per-session state. Class-level defaults, so opening a session (every
    # request, most of which never use it) sets only what differs.

    #: The data; ``None`` until loaded (or replaced without loading).
    _data: dict[str, t.Any] | None = None
    _expiry: Expiry = None
    _key_value: str | None = None
    # The interface and the app whose settings (SESSION_PERMANENT,
    # SESSION_SAVE_TIMEOUT, SESSION_SAVE_RETRIES, SESSION_CYCLE_ON_LOGIN)
    # the properties below read through the interface's getters on first
    # use, instead of the interface reading all four on every request; set
    # by the interface. ``None``: the defaults.
    _settings_from: tuple[ServerSessionInterface, Flask] | None = None
    _default_permanent: t.Any = _MISSING
    _save_timeout: t.Any = _MISSING
    _save_retries: t.Any = _MISSING
    _cycle_on_login: t.Any = _MISSING
    accessed = False
    modified = False
    # Given by the interface (key_from_cookie): reads the key from the
    # request's cookie on first use, so a request that never uses the
    # session never parses or verifies the cookie. It also records the key
    # the cookie carried and whether it was signed with a fallback secret.
    _key_resolver: t.Callable[[], tuple[str | None, bool]] | None = None
    # The StoreUnavailable the first read raised, if it did: the rest of the
    # request sees an empty session that is never saved, without calling the
    # store again (an app's 503 page showing current_user must not wait for
    # the store a second time, and fail with a 500).
    _read_failure: StoreUnavailable | None = None
    # The StoreUnavailable last reported by session_store_unavailable: one
    # failure passing through several methods (a read inside a save) is
    # reported once.
    _reported_failure: StoreUnavailable | None = None
    _cookie_key: str | None = None
    _resign_cookie = False
    #: The cookie's key and the key it is stored under (its hash), last
    #: computed: most requests hash one key once.
    _hashed: tuple[str, str] = ("", "")
    #: When the session began, and when its user last changed, in
    #: milliseconds since the epoch (see _Decoded); ``None`` until read or
    #: first written.
    _created: int | None = None
    _since: int | None = None
    # SESSION_ABSOLUTE_LIFETIME and SESSION_LEGACY_KEYS, read from the
    # served app's config when first needed (most requests never need
    # them), or set on the session.
    _absolute_lifetime: t.Any = _MISSING
    _legacy_keys: t.Any = _MISSING
    #: Whether this request moved the session to a (new) user: set by the
    #: save that did, for what the interface adds to the response.
    logged_in_now = False
    _login_pending = False
    #: The app and request the session serves (set by the interface); what
    #: a write records of the client comes from them.
    served: tuple[Flask, Request] | None = None
    #: Whether the interface re-stamps the remember-me cookie this request
    #: carries (its user's other sessions were revoked, this one kept).
    restamp_remember = False

    def _setting(self, getter: str, default: t.Any) -> t.Any:
        """The value the interface's ``getter`` gives for the served app,
        or ``default`` without an interface."""
        source = self._settings_from
        if source is None:
            return default
        interface, app = source
        return getattr(interface, getter)(app)

    @property
    def default_permanent(self) -> bool:
        """The default of :attr:`permanent` (``SESSION_PERMANENT``)."""
        value = self._default_permanent
        if value is _MISSING:
            value = self._default_permanent = self._setting(
                "get_default_permanent", False
            )
        return bool(value)

    @default_permanent.setter
    def default_permanent(self, value: bool) -> None:
        self._default_permanent = value

    @property
    def save_timeout(self) -> timedelta:
        """How long a save that meets concurrent changes may keep merging
        and retrying (``SESSION_SAVE_TIMEOUT``)."""
        value = self._save_timeout
        if value is _MISSING:
            value = self._save_timeout = self._setting(
                "get_save_timeout", DEFAULT_SAVE_TIMEOUT
            )
        return value  # type: ignore[no-any-return]

    @save_timeout.setter
    def save_timeout(self, value: timedelta) -> None:
        self._save_timeout = value

    @property
    def save_retries(self) -> int | None:
        """The most retries of a save, whatever the time; ``None`` for no
        limit but :attr:`save_timeout` (``SESSION_SAVE_RETRIES``)."""
        value = self._save_retries
        if value is _MISSING:
            value = self._save_retries = self._setting("get_save_retries", None)
        return value  # type: ignore[no-any-return]

    @save_retries.setter
    def save_retries(self, value: int | None) -> None:
        self._save_retries = value

    @property
    def cycle_on_login(self) -> bool:
        """Whether a change of :attr:`user_id` (or a log-in becoming fresh)
        moves the session to a fresh key at save (``SESSION_CYCLE_ON_LOGIN``)."""
        value = self._cycle_on_login
        if value is _MISSING:
            value = self._cycle_on_login = bool(
                self._setting("get_cycle_on_login", True)
            )
        return bool(value)

    @cycle_on_login.setter
    def cycle_on_login(self, value: bool) -> None:
        self._cycle_on_login = value

    @property
    def _key(self) -> str | None:
        resolver = self._key_resolver
        if resolver is not None:
            self._key_resolver = None
            key, self._resign_cookie = resolver()
            self._cookie_key = self._key_value = key
        return self._key_value

    @_key.setter
    def _key(self, value: str | None) -> None:
        if self._key_resolver is not None:
            self._key  # noqa: B018 - record which key the cookie carried first
        self._key_value = value

    @property
    def absolute_lifetime(self) -> timedelta | None:
        """The longest the session may live, counted from its start or its
        last change of user, however active (``SESSION_ABSOLUTE_LIFETIME``
        of the app it serves); ``None``: no such limit.

        .. versionadded:: 0.2
        """
        value = self._absolute_lifetime
        if value is _MISSING:
            served = self.served
            if served is not None:
                # Unset (None) in most apps, and read on every write: the
                # full (checking) read only for a value that needs it.
                value = served[0].config.get("SESSION_ABSOLUTE_LIFETIME")
                if value is not None:
                    value = config.read(served[0].config, "SESSION_ABSOLUTE_LIFETIME")
            else:
                value = None
            self._absolute_lifetime = value
        return value  # type: ignore[no-any-return]

    @absolute_lifetime.setter
    def absolute_lifetime(self, value: timedelta | None) -> None:
        self._absolute_lifetime = value

    @property
    def legacy_keys(self) -> bool:
        """Whether a key of the length 0.1 made is looked up unhashed when
        its hash is not found, and then stored hashed
        (``SESSION_LEGACY_KEYS`` of the app it serves; true outside one).

        .. versionadded:: 0.2
        """
        value = self._legacy_keys
        if value is _MISSING:
            served = self.served
            value = self._legacy_keys = served is None or config.read(
                served[0].config, "SESSION_LEGACY_KEYS"
            )
        return bool(value)

    @legacy_keys.setter
    def legacy_keys(self, value: bool) -> None:
        self._legacy_keys = value

    def _stored(self, key: str) -> str:
        """The key the store knows ``key``'s session by (its hash)."""
        hashed = self._hashed
        if hashed[0] != key:
            hashed = self._hashed = (key, stored_key(key))
        return hashed[1]

    @property
    def device(self) -> int | None:
        """What names this session's device in revocations: its start, in
        milliseconds since the epoch; ``None`` before it is stored.

        .. versionadded:: 0.2
        """
        return self._created

    @property
    def stored_key(self) -> str | None:
        """The key the store holds this session under (the SHA-256 of
        :attr:`session_key`); ``None`` while there is no key. Safe to log
        a prefix of; the public handle of a session in
        :meth:`~flask_towersess.SessionExt.sessions_for` is derived from it.

        .. versionadded:: 0.2
        """
        key = self._key
        return None if key is None else self._stored(key)

    @property
    def lifetime(self) -> timedelta:
        """How long the session lives without use, unless :meth:`set_expiry`
        says otherwise."""
        return self._lifetime

    @lifetime.setter
    def lifetime(self, value: timedelta) -> None:
        self._lifetime = value
        # In seconds once, not at every expiry computation.
        self._lifetime_seconds = int(value.total_seconds())

    # -- the key and the flags -------------------------------------------------

    @property
    def session_key(self) -> str | None:
        """The session's key; ``None`` until the session is saved."""
        return self._key

    @property
    def new(self) -> bool:  # type: ignore[override]
        """True when this session was not loaded from the store."""
        self._load_data()
        return not self._persisted.from_store

    @property
    def user_id(self) -> str | None:
        """Who the session belongs to: ``None`` when anonymous.

        Kept in the session under Flask-Login's key (``_user_id``), so
        Flask-Login sets it at every log-in, by password or by remember-me
        cookie; an app without Flask-Login sets it itself. Whenever it
        changes (anonymous to a user, one user to another, a user to
        anonymous), and whenever a log-in becomes fresh again (Flask-Login's
        ``confirm_login()``), the next :meth:`save` moves the session to a
        fresh key, as :meth:`cycle_key` does: a key someone planted or copied
        before the log-in is worth nothing after it.

        .. versionadded:: 0.2
        """
        return _identity(self._session)[0]

    @user_id.setter
    def user_id(self, value: object) -> None:
        if value is None:
            self.pop(USER_ID_KEY, None)
        else:
            self[USER_ID_KEY] = str(value)

    def _identity_changed(self) -> bool:
        user, fresh = _identity(self._data or {})
        loaded_user, was_fresh = self._persisted.identity
        return user != loaded_user or (user is not None and fresh and not was_fresh)

    @property
    def permanent(self) -> bool:
        """Whether the cookie outlives the browser (Flask's meaning).

        Setting it to ``False`` is :meth:`set_expiry(0) <set_expiry>`;
        setting it to ``True`` gives the session the app's lifetime.
        """
        return not self.get_expire_at_browser_close()

    @permanent.setter
    def permanent(self, value: bool) -> None:
        if bool(value) == self.permanent:
            # Apps often set this on every request; an unchanged value must
            # not turn every request into a write.
            return
        if not value:
            self.set_expiry(0)
        elif self.default_permanent:
            self.set_expiry(None)
        else:
            self.set_expiry(self._lifetime_seconds)  # of inactivity

    def is_empty(self) -> bool:
        """True when the session has no key and no data (Django's meaning)."""
        return self._key is None and not self._data

    # -- loading ----------------------------------------------------------------

    def _load_data(self) -> dict[str, t.Any]:
        if self._data is None:
            self._data = self._read_store()
        return self._data

    @property
    def _session(self) -> dict[str, t.Any]:
        self.accessed = True
        # What _load_data() does, without its call: every use of the
        # mapping comes here.
        data = self._data
        if data is None:
            data = self._data = self._read_store()
        return data

    def _read_store(self) -> dict[str, t.Any]:
        key = self._key
        persisted = self._persisted
        if key is None or persisted.must_create or self._read_failure is not None:
            return {}
        try:
            record = self._fetch(key)
        except StoreUnavailable as exc:
            self._read_failure = exc
            self._report_unavailable(exc, "load")
            raise
        if record is None:
            # An unknown or expired key never becomes a session: forget it,
            # so a save issues a fresh key instead of reviving this one.
            self._key = None
            return {}
        persisted.remember(record)
        persisted.from_store = True
        decoded = self._decode(record, key)
        if not persisted.expiry_changed:
            self._expiry = decoded.expiry
        self._created = decoded.created
        self._since = decoded.since
        persisted.identity = _identity(decoded.data)
        return decoded.data

    def _fetch(self, key: str) -> Record | None:
        """The live record of ``key``: under its hash, or (a session 0.1
        stored) under the key itself, which is then moved under its hash."""
        stored = self._stored(key)
        record = self.store.load(stored)
        if record is None and self.legacy_keys and len(key) == LEGACY_KEY_LENGTH:
            legacy = self.store.load(key)
            if legacy is not None:
                return self._rehash(key, legacy)
            # Another request may have moved it between the two reads.
            record = self.store.load(stored)
        return record

    def _rehash(
        self, key: str, legacy: Record, *, clear_left_behind: bool = False
    ) -> Record | None:
        """Store the record 0.1 kept under ``key`` itself under its hash,
        and delete the unhashed one; return the record now stored.

        The payload moves as it is (a sealed one is sealed again for the
        hashed key, which the cipher binds); the per-user fields are filled
        from it, so the session joins its user's index.

        A session ended meanwhile stays ended: the unhashed record is
        retired by compare-and-set after the hashed one is written, and if
        someone else retired it first (a request that moved it, which a
        log-out or a revocation may have followed), the hashed record
        written here is deleted again. A logged-in session of a user whose
        sessions were revoked since (0.1 sessions are older than any
        revocation) is ended, not moved.

        .. versionadded:: 0.2
        """
        data = self._decode(legacy, key).data
        user = _index_user(data)
        if user is not None:
            from .per_user import revoked_at

            if revoked_at(self.store, user) is not None:
                self.store.delete(key)
                return None
        now = utcnow()
        stored = self._stored(key)
        payload = legacy.payload
        if self.cipher is not None and data:
            # 0.1 sealed it for the unhashed key; seal it for its new one.
            payload = self.cipher.seal(self.cipher.open(payload, key), stored)
        record = Record(
            stored,
            payload,
            legacy.expires_at,
            1,
            user,
            now,
            now,
        )
        try:
            self.store.create(record)
        except CreateError:
            # Another request (or `flask sessions migrate`) is moving it, or
            # moved it: the hashed record is the session. The unhashed one
            # is the mover's to retire: retiring it here would make that
            # mover take the move for a stale one (below), and undo it.
            # Only the migration clears one a move left behind (a mover that
            # stopped between its two steps), and only once that move is
            # old: a mover still between its steps would take the unhashed
            # record's disappearance for a session ended meanwhile, and
            # undo its move (a logged-in user logged out by the upgrade).
            moved = self.store.load(record.key)
            if clear_left_behind and (
                moved is None
                or moved.created_at is None
                or moved.created_at <= now - _LEFT_BEHIND_AFTER
            ):
                self.store.delete(key)
            return moved
        retired = Record(key, b"", _RETIRED_AT, legacy.version + 1)
        try:
            self.store.save(retired, expected_version=legacy.version)
        except (UpdateError, VersionConflict):
            # Retired since it was read, by a mover that came first (movers
            # that find the hashed record leave the unhashed one alone): the
            # hashed record was written, and then ended (a log-out, a
            # revocation), so the one written here must not bring it back.
            self.store.delete(record.key)
            return self.store.load(record.key)
        self.store.delete(key)
        return record

    def _decode(self, record: Record, key: str) -> _Decoded:
        """The state in ``record`` (stored for the cookie key ``key``)."""
        try:
            payload = record.payload
            # Refused before any work: a stored payload larger than a save
            # may write (SESSION_MAX_PAYLOAD_SIZE) was not written by this app.
            limit: int | None = getattr(self.serializer, "max_size", None)
            if limit is not None:
                if self.cipher is not None:
                    limit += _SEALING_OVERHEAD
                if len(payload) > limit:
                    raise SerializationError(
                        f"{len(payload)} bytes, more than SESSION_MAX_PAYLOAD_SIZE"
                    )
            if self.cipher is not None:
                # Sealed for the key it is stored under: its hash, or the
                # cookie's key itself in a record 0.1 wrote.
                payload = self.cipher.open(payload, record.key)
            state = self.serializer.loads(payload)
            data = state["data"]
            expiry = state.get("expiry")
            if not isinstance(data, dict) or (
                expiry is not None and not _is_valid_expiry(expiry)
            ):
                raise SerializationError("the payload is not a session")
        except (SerializationError, KeyError) as exc:
            # A payload that cannot be read is treated as an empty session:
            # raising would lock the user out for good. It may be tampering,
            # so say so where security events go.
            security_logger.warning(
                "Session %s: undecodable payload (%s); using an empty session",
                short_key(self._stored(key)),
                exc,
            )
            return _Decoded({}, None)
        # Times a payload of this package holds (ints in the range of a
        # datetime), else None; the tuple made without the named tuple's
        # __new__ (a Python call): every read comes here.
        created = state.get("created")
        since = state.get("since", created)
        if type(created) is not int or not 0 <= created <= _MAX_EPOCH_MILLIS:
            created = None
        if type(since) is not int or not 0 <= since <= _MAX_EPOCH_MILLIS:
            since = None
        return _new_tuple(_Decoded, (data, expiry, created, since))

    def load(self) -> dict[str, t.Any]:
        """Read the session from the store and return its data.

        An unknown or expired key gives an empty dict and clears
        :attr:`session_key`.
        """
        self._data = self._read_store()
        return self._data

    def exists(self, session_key: str) -> bool:
        """Whether the store holds a live session under ``session_key``."""
        return (
            is_valid_session_key(session_key) and self._fetch(session_key) is not None
        )

    # -- the mapping -----------------------------------------------------------

    def __getitem__(self, key: str) -> t.Any:
        return self._session[key]

    def __setitem__(self, key: str, value: t.Any) -> None:
        self._session[key] = value
        self.modified = True

    def __delitem__(self, key: str) -> None:
        del self._session[key]
        self.modified = True

    def __iter__(self) -> t.Iterator[str]:
        return iter(self._session)

    def __len__(self) -> int:
        return len(self._session)

    def __contains__(self, key: object) -> bool:
        return key in self._session

    def get(self, key: str, default: t.Any = None) -> t.Any:
        return self._session.get(key, default)

    def keys(self) -> t.KeysView[str]:
        return self._session.keys()

    def values(self) -> t.ValuesView[t.Any]:
        return self._session.values()

    def items(self) -> t.ItemsView[str, t.Any]:
        return self._session.items()

    def pop(self, key: str, default: t.Any = _MISSING) -> t.Any:
        """Remove ``key`` and return its value.

        A missing key raises :exc:`KeyError`, or returns ``default`` if one
        is given; only removing a key that existed sets :attr:`modified`.
        """
        data = self._session
        if key in data:
            self.modified = True
            return data.pop(key)
        if default is _MISSING:
            raise KeyError(key)
        return default

    def setdefault(self, key: str, default: t.Any = None) -> t.Any:
        data = self._session
        if key in data:
            return data[key]
        data[key] = default
        self.modified = True
        return default

    def update(self, *args: t.Any, **kwargs: t.Any) -> None:
        self._session.update(*args, **kwargs)
        self.modified = True

    def clear(self) -> None:
        """Remove all data, without loading it first.

        The expiry goes back to the app's policy, as Flask's ``_permanent``
        key goes with a cleared cookie session.
        """
        self._data = {}
        self._persisted.cleared = True
        self._expiry = None
        self._persisted.expiry_changed = True
        self.accessed = True
        self.modified = True

    def __repr__(self) -> str:
        key = short_key(self._stored(self._key)) if self._key else None
        data = "<not loaded>" if self._data is None else self._data
        return f"<{type(self).__name__} {key} {data!r}>"

    # -- expiry ----------------------------------------------------------------

    def set_expiry(self, value: int | float | timedelta | datetime | None) -> None:
        """Set when the session expires.

        - ``int`` seconds or a ``timedelta``: after that much inactivity;
        - a ``datetime``: at that moment (naive datetimes are UTC);
        - ``0``: when the browser closes (the record still expires after the
          app's lifetime without use);
        - ``None``: the app's policy (``PERMANENT_SESSION_LIFETIME`` and
          ``SESSION_PERMANENT``).
        """
        expiry = _normalize_expiry(value)
        self._load_data()
        self._expiry = expiry
        self._persisted.expiry_changed = True
        self.accessed = True
        self.modified = True

    def _current_expiry(self) -> Expiry:
        self.accessed = True
        if self._data is None:  # _load_data(), without its call
            self._data = self._read_store()
        return self._expiry

    def get_expiry_age(
        self, *, modification: datetime | None = None, expiry: Expiry = _MISSING
    ) -> int:
        """Seconds from ``modification`` (default: now) until expiry."""
        if expiry is _MISSING:
            expiry = self._current_expiry()
        if not isinstance(expiry, datetime) and self.absolute_lifetime is None:
            return self._inactivity_age(expiry)
        now = modification or utcnow()
        delta = self.get_expiry_date(modification=now, expiry=expiry) - now
        return delta.days * 86400 + delta.seconds

    def get_expiry_date(
        self, *, modification: datetime | None = None, expiry: Expiry = _MISSING
    ) -> datetime:
        """When the session expires, as an aware UTC datetime."""
        if expiry is _MISSING:
            expiry = self._current_expiry()
        if isinstance(expiry, datetime):
            moment = expiry
        else:
            # What _inactivity_age() says, without its call: every write
            # comes here.
            moment = (modification or utcnow()) + _seconds(
                expiry or self._lifetime_seconds
            )
        if self.absolute_lifetime is not None:
            return min(moment, self.absolute_deadline())
        return moment

    def absolute_deadline(self) -> datetime:
        """When the session ends however active it is: its age limit
        (:attr:`absolute_lifetime`) counted from its start or its last
        change of user. Far in the future without a limit.

        .. versionadded:: 0.2
        """
        limit = self.absolute_lifetime
        if limit is None:
            return _LATEST_EXPIRY
        since = self._since
        if since is None or self._identity_changed():
            start = utcnow()  # the next save starts it
        else:
            start = _from_millis(since)
        try:
            return start + limit
        except OverflowError:
            return _LATEST_EXPIRY

    def _inactivity_age(self, expiry: int | None) -> int:
        """Seconds of inactivity a session lives: its own setting, or the
        app's lifetime for ``None`` and ``0`` (browser close)."""
        return expiry or self._lifetime_seconds

    def get_expire_at_browser_close(self) -> bool:
        """Whether the cookie is a browser-session cookie."""
        expiry = self._current_expiry()
        if expiry is None:
            return not self.default_permanent
        return expiry == 0

    # -- writing ---------------------------------------------------------------

    def _payload(self) -> bytes:
        now = None
        if self._created is None:
            now = _now_millis()
            self._created = now
        if self._since is None:
            self._since = now or _now_millis()
        state: dict[str, t.Any] = {"data": self._data or {}, "created": self._created}
        if self._since != self._created:
            # Most sessions never change user after they begin: then the
            # start of their age limit is their start, and is left out.
            state["since"] = self._since
        if self._expiry is not None:
            state["expiry"] = self._expiry
        return self.serializer.dumps(state)

    def _record(
        self,
        key: str,
        payload: bytes,
        expires_at: datetime,
        version: int,
        now: datetime | None = None,
    ) -> Record:
        """The record of this session's state, stored for cookie key ``key``."""
        stored = self._stored(key)
        if self.cipher is not None:
            # Bound to the record's key: a payload copied to another record
            # does not open there. The stored key, not the cookie's: so
            # `flask sessions migrate`, which knows only stored keys, can
            # open a payload to fill in its user.
            payload = self.cipher.seal(payload, stored)
        data = self._data or {}
        user = _index_user(data)
        created_at = None
        if self._created is not None:
            created_at = _from_millis(self._created)
        user_agent, ip = _client(self.served)
        return Record(
            stored,
            payload,
            expires_at,
            version,
            user,
            created_at,
            now or utcnow(),
            user_agent,
            ip,
        )

    def _after_write(self, record: Record) -> None:
        self._persisted.written(record, _identity(self._data or {}))

    def create(self) -> None:
        """Store the session under a fresh key.

        The current data (if loaded) moves along; key collisions are retried.
        """
        if self._data is None:
            self._data = {}
        record = self._insert_under_fresh_key()
        self.modified = True
        self._after_write(record)
        if session_created.receivers:
            self._send(session_created, key=record.key)

    def _insert_under_fresh_key(self) -> Record:
        payload = self._payload()
        expires_at = self.get_expiry_date()
        prefix = self._colocation_prefix()
        for _ in range(_CREATE_ATTEMPTS):
            self._key = new_session_key(prefix)
            record = self._record(self._key, payload, expires_at, 1)
            try:
                self.store.create(record)
            except CreateError:
                continue
            return record
        raise CreateError(f"no free session key after {_CREATE_ATTEMPTS} attempts")

    def save(self, must_create: bool = False) -> None:
        """Write the session to the store.

        A session without a key is created under a fresh one. Otherwise the
        write is a compare-and-set on the version loaded: if another request
        saved meanwhile, this request's own changes (keys set and deleted, a
        clear, the expiry) are applied again on top of the current record
        and the save retried, so concurrent changes to different keys both
        survive.

        :param must_create: create the record under the current key; raise
            :class:`CreateError` if it is taken.
        :raises UpdateError: the record was deleted (or expired) since it was
            loaded; it is not brought back.
        :raises SessionInterrupted: concurrent writers kept winning for
            :attr:`save_timeout` (or :attr:`save_retries` retries).
        :raises SerializationError: a value cannot be serialized; nothing
            was written.

        .. versionchanged:: 0.2
            Retries pause for a random, growing time, and are bounded by
            :attr:`save_timeout` rather than by a count. A change of
            :attr:`user_id` moves the session to a fresh key. A key the
            client sent never gets a record created under it.
        """
        if self._read_failure is not None:
            # The data was never read: writing what is in memory now would
            # overwrite the stored session with a partial one.
            raise StoreUnavailable() from self._read_failure.__cause__
        try:
            self._save(must_create)
            if self._login_pending:
                self._login_pending = False
                self._limit_sessions_per_user()
        except StoreUnavailable as exc:
            self._report_unavailable(exc, "save")
            raise

    def _limit_sessions_per_user(self) -> None:
        """After a log-in, end the user's least recently active sessions
        beyond ``SESSION_MAX_PER_USER``."""
        # The served app's setting, as for the other settings read when
        # needed; a session saved outside a request uses the current app's.
        if self.served is not None:
            settings = self.served[0].config
        elif has_app_context():
            settings = current_app.config
        else:
            return
        limit = config.read(settings, "SESSION_MAX_PER_USER")
        user = _index_user(self._data or {})
        key = self.stored_key
        if limit is None or user is None or key is None:
            return
        per_user = self.store.as_per_user()
        if per_user is None:
            return  # init_app refuses the setting on such a store
        ended = per_user.trim_sessions_of(user, limit, keep=key)
        # Logins racing each other each kept their own new session: one more
        # pass, keeping the most recently active session by the stores' one
        # order (which every racer agrees on), brings the user down to the
        # limit; the last racer to look sees every session made before it.
        # (A session last written by a host whose clock runs ahead can thus
        # outrank this log-in: keep app hosts' clocks in step.)
        live = per_user.sessions_of(user)
        if len(live) > limit:
            top = max(live, key=recency)
            ended += per_user.trim_sessions_of(user, limit, keep=top.key)
        if ended and session_ended.receivers:
            sender = _signal_sender()
            for stored in ended:
                session_ended.send(sender, session=None, key=stored, reason="limit")

    def _save(self, must_create: bool) -> None:
        if self._key is None:
            if _index_user(self._data or {}) is not None:
                self.logged_in_now = self._login_pending = True
            self.create()
            return
        persisted = self._persisted
        if must_create and not persisted.must_create:
            if self._data is None:
                self._data = {}
            if self._key == self._cookie_key:
                # Never a record under a key the client sent: a copied cookie
                # of a session that ended must not work again.
                if self._fetch(self._key) is not None:
                    raise CreateError(
                        "a session with key"
                        f" {short_key(self._stored(self._key))} exists"
                    )
                self.create()
            else:
                self._create_at_current_key()
            return
        self._load_data()
        # The key's own attribute from here on: the first line above read
        # the cookie, and the property's call costs on every write.
        if self._key_value is None:  # the stored session had gone away
            self.create()
            return
        if persisted.version is None and not persisted.must_create:
            # The data was replaced (clear()) before it was ever loaded: the
            # compare-and-set still needs the stored version, and the
            # identity check whom the stored session belonged to.
            record = self._fetch(self._key)
            if record is None:
                self._key = None
                self.create()
                return
            persisted.remember(record)
            decoded = self._decode(record, self._key)
            persisted.identity = _identity(decoded.data)
            self._created = decoded.created
        if self._identity_changed():
            # A log-in (or a log-out kept as an anonymous session): the
            # absolute lifetime starts again, and the key moves on.
            self._since = None
            self.logged_in_now = self._login_pending = (
                _index_user(self._data or {}) is not None
            )
            if self.cycle_on_login and not persisted.must_create:
                self.cycle_key()
        if persisted.must_create:
            self._move_to_current_key()
            return
        key = self._key_value

        def updated() -> Record:
            version = persisted.version
            assert version is not None
            now = utcnow()
            return self._record(
                key,
                self._payload(),
                self.get_expiry_date(modification=now),
                version + 1,
                now,
            )

        self._after_write(self._compare_and_set(updated, key))

    def _compare_and_set(self, make_record: t.Callable[[], Record], key: str) -> Record:
        """Save ``make_record()`` over the version last read of ``key``.

        On a conflict, pause, merge this session's own changes into the
        record now stored (which becomes the version to match), and try again
        with a record made anew, until :attr:`save_timeout` runs out.
        """
        retries = 0
        deadline = 0.0
        held: threading.Lock | None = None
        try:
            while True:
                persisted = self._persisted
                if key == self._key_value:
                    version = persisted.version
                else:
                    version = persisted.moving_version
                assert version is not None
                record = make_record()
                try:
                    self.store.save(record, expected_version=version)
                    return record
                except VersionConflict:
                    retries += 1
                    if session_save_conflict.receivers:
                        self._send(
                            session_save_conflict,
                            key=self._stored(key),
                            retries=retries,
                        )
                    if retries == 1:
                        deadline = time.monotonic() + self.save_timeout.total_seconds()
                        held = _retry_locks.acquire(key, deadline)
                        if held is None:
                            raise SessionInterrupted(
                                "Other requests of this process kept saving the"
                                f" session for {self.save_timeout.total_seconds():g}"
                                " s; this request's changes were not saved."
                            ) from None
                    self._pause_before_retry(retries, deadline)
                    self._merge_with_stored(key)
        finally:
            if held is not None:
                held.release()

    def _pause_before_retry(self, retry: int, deadline: float) -> None:
        """Wait before retry number ``retry``, or give up if it is too late."""
        if self.save_retries is not None and retry > self.save_retries:
            raise SessionInterrupted(
                f"Other requests saved the session each of the {retry} times"
                " this request tried to; its changes were not saved."
            )
        bound = min(_RETRY_MAX_PAUSE, _RETRY_FIRST_PAUSE * 2 ** (retry - 1))
        pause = random.uniform(0, bound)
        if time.monotonic() + pause >= deadline:
            raise SessionInterrupted(
                "Other requests kept saving the session for"
                f" {self.save_timeout.total_seconds():g} s while this request"
                f" tried to ({retry} times); its changes were not saved."
            )
        time.sleep(pause)

    def _move_to_current_key(self) -> None:
        """Write the data under the key :meth:`cycle_key` chose, and retire
        the record it came from.

        The new record is written first, then the old one is ended by a
        compare-and-set on the version this request read (it is saved with
        an expiry of now, so no store returns it again). A concurrent change
        to the old record makes that fail: it is merged in, the new record
        rewritten, and the move tried again, so no change of another request
        is undone. If the old record is gone (a logout elsewhere), the new
        one is deleted too and :class:`UpdateError` raised: a move never
        keeps a session alive that ended meanwhile.
        """
        assert self._key is not None
        prefix = self._colocation_prefix()
        if prefix and not self._stored(self._key).startswith(prefix):
            # The user was set after cycle_key() chose the key: no record
            # and no cookie has it yet, so it can still be one the store
            # keeps next to the user's other sessions.
            self._key = new_session_key(prefix)
        record = self._record(self._key, self._payload(), self.get_expiry_date(), 1)
        try:
            self.store.create(record)
        except CreateError:
            record = self._insert_under_fresh_key()
        persisted = self._persisted
        old, merged_from = persisted.moving_from, persisted.moving_version
        if old is not None:
            try:
                self._compare_and_set(self._retirement, old)
            except UpdateError:
                # Ended elsewhere meanwhile: so is the move. The session stays
                # at the (deleted) new key, so a second save fails the same
                # way instead of creating it afresh.
                self.store.delete(record.key)
                persisted.must_create = False
                persisted.version = record.version
                persisted.end_move()
                raise UpdateError(
                    "the session was deleted while this request was using it"
                ) from None
            except BaseException:
                # The move failed (the store went away): the new record must
                # not outlive it, if the store still takes a delete; the
                # record to retire is kept, so a second save tries again.
                with contextlib.suppress(Exception):
                    self.store.delete(record.key)
                raise
            merged = persisted.moving_version != merged_from
            persisted.end_move()
            if merged:
                # Another request's change was merged in before the old
                # record could be retired: the new record must hold it too.
                # Nobody else knows the new key, so this cannot conflict.
                expected = record.version
                key = self._key
                assert key is not None
                # The cookie's key: _record hashes it (record.key is hashed).
                record = self._record(
                    key, self._payload(), self.get_expiry_date(), expected + 1
                )
                self.store.save(record, expected_version=expected)
        self._after_write(record)
        if old is None:
            # No stored session moved: the session is new (cycle_key() was
            # called before it was ever saved).
            if session_created.receivers:
                self._send(session_created, key=record.key)
        elif session_key_cycled.receivers:
            self._send(
                session_key_cycled, old_key=self._stored(old), new_key=record.key
            )

    def _retirement(self) -> Record:
        """What ends the record :meth:`cycle_key` moves from: a next version
        that has expired already, so no store returns it again."""
        key, version = self._persisted.moving_from, self._persisted.moving_version
        assert key is not None and version is not None
        return Record(self._stored(key), b"", _RETIRED_AT, version + 1)

    def _create_at_current_key(self) -> None:
        assert self._key is not None
        record = self._record(self._key, self._payload(), self.get_expiry_date(), 1)
        self.store.create(record)
        self.modified = True
        self._after_write(record)
        if session_created.receivers:
            self._send(session_created, key=record.key)

    def _merge_with_stored(self, key: str) -> None:
        """Re-apply this session's changes on top of the record stored under
        ``key`` (its own key, or the one :meth:`cycle_key` moves it from)."""
        assert self._data is not None
        # From where the compare-and-set that just failed was decided: a
        # cached copy may still be the version that lost.
        record = self.store.load_current(self._stored(key))
        if record is None:
            raise UpdateError("the session was deleted while this request was using it")
        theirs, their_expiry = self._decode(record, key)[:2]
        persisted = self._persisted
        if persisted.cleared:
            merged = dict(self._data)
        else:
            baseline = persisted.baseline(key)
            before: dict[str, t.Any] = {}
            if baseline is not None:
                before = self._decode(
                    Record(record.key, baseline, record.expires_at), key
                ).data
            merged = merge(self._data, theirs, before, self._changed)
        self._data = merged
        if not persisted.expiry_changed:
            self._expiry = their_expiry
        if key == persisted.moving_from:
            persisted.moving_version = record.version
            persisted.moving_payload = record.payload
        else:
            persisted.remember(record)

    def _own_writes(self) -> dict[str, t.Any]:
        """What this request wrote: every key it set or changed."""
        persisted = self._persisted
        data = self._data or {}
        if persisted.cleared:
            return dict(data)
        key: str | None
        payload: bytes | None
        if persisted.moving_payload is not None:  # cycled: the record it came from
            key, payload = persisted.moving_from, persisted.moving_payload
        else:
            key, payload = self._key, persisted.payload
        if key is None or payload is None:  # nothing was stored
            return dict(data)
        before = self._decode(Record(self._stored(key), payload, utcnow()), key).data
        return written_since(data, before, self._changed)

    def end_identity(self) -> None:
        """Log out: end the stored session, keep what this request wrote.

        The record is deleted and the key forgotten, as :meth:`flush` does;
        what was loaded from the store (the signed-in state) is dropped, and
        what this request wrote before (a flashed message, a flag for an
        after-request handler) goes into a new anonymous session, under a
        fresh key. Called at Flask-Login's ``logout_user()``.

        .. versionadded:: 0.2
        """
        self._load_data()
        kept = self._own_writes()
        for name in (USER_ID_KEY, FRESH_KEY):
            kept.pop(name, None)
        self._end("logout")
        if kept:
            self.update(kept)

    def _changed(self, before: t.Any, after: t.Any) -> bool:
        # == misses a change of type only (1 -> True, "x" -> Markup("x")),
        # which the serializer keeps: compare what would be stored as well.
        if before != after:
            return True
        pack = self.serializer.dumps
        return pack({"data": {"v": before}}) != pack({"data": {"v": after}})

    def delete(self, session_key: str | None = None) -> None:
        """Delete the record of ``session_key`` (default: this session's)."""
        key = self._key if session_key is None else session_key
        if key is not None:
            # Refused as the store refuses a malformed key: hashed, any
            # string would look like a key and silently delete nothing.
            self.store.delete(self._stored(check_key(key)))

    def flush(self) -> None:
        """Log out: remove the data, delete the record, forget the key.

        The cookie is deleted at the end of the request; data stored after
        this goes under a fresh key.
        """
        self._end("flush")

    def _end(self, reason: str) -> None:
        """:meth:`flush`, saying why to :data:`~.signals.session_ended`."""
        self._data = {}
        self._discard(reason)
        self._persisted.reset()
        self._expiry = None
        # What follows (a flash after a log-out) is a new session.
        self._created = self._since = None
        self.accessed = True
        self.modified = True

    def end_revoked(self) -> None:
        """This session was revoked while the request used it: forget it
        without saving (its record is gone already).

        .. versionadded:: 0.2
        """
        self._end("revoke")

    def cycle_key(self) -> None:
        """Move the data to a fresh key and delete the old record.

        Call it at log-in, against session fixation. The new key is
        :attr:`session_key` at once; the new record is written, and the old
        one deleted, by the next :meth:`save` (the end of the request), so a
        request that fails keeps the old session intact. On a store that
        keeps a user's sessions together (Redis Cluster, see
        :meth:`~flask_towersess.stores.SessionStore.colocation_prefix`), a
        key chosen before the session's user was set is chosen again by that
        save, for the user: read :attr:`session_key` after the save (or set
        the user before calling this) if you keep it.
        """
        self.accessed = True
        self._load_data()  # the data must move along, loaded or not
        persisted = self._persisted
        key = self._key
        if key is not None and not persisted.must_create and persisted.version is None:
            # Cleared before it was ever read: the move still needs the
            # version it retires.
            try:
                record = self._fetch(key)
            except StoreUnavailable as exc:
                self._report_unavailable(exc, "load")
                raise
            if record is not None:
                persisted.remember(record)
        persisted.start_move(key)
        self._key = new_session_key(self._colocation_prefix())
        self.modified = True

    def _colocation_prefix(self) -> str:
        """How the store wants the stored key of this session to begin, for
        its user (``""``: anonymous, or any key will do)."""
        user = _index_user(self._data or {})
        return "" if user is None else self.store.colocation_prefix(user)

    # -- the end of a request --------------------------------------------------

    def end_request(self, touch_interval: timedelta | None) -> RequestEnd:
        """Store what the request changed, and say what its cookie needs.

        Called by the session interface once the view has returned, for a
        session the request used: a modified session is saved (or, ended
        empty, its record deleted); an unmodified one read from the store
        has its expiry moved forward if ``touch_interval`` (``None``: never)
        has passed since the last time. A session whose read failed is left
        as it is stored.

        :raises UpdateError: the session was deleted meanwhile.
        :raises StoreUnavailable: the store could not be reached.
        :raises SessionInterrupted: concurrent writers kept winning.

        .. versionadded:: 0.2
        """
        if self._read_failure is not None:
            return _UNCHANGED
        key = self._key  # reads the cookie, if nothing did yet
        cookie_key = self._cookie_key
        if self._data is not None and not self._data and (self.modified or key is None):
            # Ended empty (logout, clear()) or the cookie named no live
            # session: drop the record too, so a copied ID keeps nothing.
            if self.modified:
                self._discard("emptied")
            return _DELETE_COOKIE if cookie_key is not None else _UNCHANGED
        if self.modified:
            self.save()
        elif key is None:
            return _UNCHANGED
        elif touch_interval is not None:
            self._touch_if_due(touch_interval)
        renew = self._resign_cookie or self._key_value != cookie_key
        return _RENEW_COOKIE if renew else _KEEP_COOKIE

    def _touch_if_due(self, min_interval: timedelta) -> bool:
        """Move the stored expiry forward, if it is due; return whether it was.

        Only for a session read from the store and not modified: the expiry
        it was read with tells, at no extra cost, when it was last touched.
        """
        stored_expires_at = self._persisted.expires_at
        expiry = self._expiry
        if stored_expires_at is None or isinstance(expiry, datetime):
            return False
        age = self._inactivity_age(expiry)
        # Plain timestamps: most reads find no touch due, and building
        # datetimes for that answer would cost more than the rest of it.
        due_by = time.time() + age - stored_expires_at.timestamp()
        # At most half the session's age: a session living less than the
        # interval must still be kept alive by use.
        if due_by < min(min_interval.total_seconds(), age / 2):
            return False
        key = self._key
        if key is None:
            return False
        expires_at = utcnow() + timedelta(seconds=age)
        if self.absolute_lifetime is not None:
            expires_at = min(expires_at, self.absolute_deadline())
        try:
            self.store.touch(self._stored(key), expires_at)
        except StoreUnavailable as exc:
            self._report_unavailable(exc, "touch")
            raise
        self._persisted.expires_at = expires_at
        return True

    def _discard(self, reason: str) -> None:
        """Delete every record this session holds and forget its key;
        ``reason`` is what :data:`~.signals.session_ended` reports.

        The current key is only deleted if it was ever written (a key from
        :meth:`cycle_key` is not until the next save).
        """
        persisted = self._persisted
        keys = [] if persisted.moving_from is None else [persisted.moving_from]
        if self._key is not None and not persisted.must_create:
            keys.append(self._key)
        try:
            for key in keys:
                self.store.delete(self._stored(key))
        except StoreUnavailable as exc:
            self._report_unavailable(exc, "delete")
            raise
        persisted.end_move()
        self._key = None
        if keys and session_ended.receivers:
            # One session ended, whichever of its records it had: the
            # current one if written, else the one cycle_key() moved from.
            self._send(session_ended, key=self._stored(keys[-1]), reason=reason)

    # -- signals -----------------------------------------------------------------

    def _send(self, signal: Signal, **arguments: t.Any) -> None:
        # Callers check signal.receivers first: finding the app and building
        # the arguments is only worth it when someone listens.
        signal.send(_signal_sender(), session=self, **arguments)

    def _report_unavailable(self, error: StoreUnavailable, operation: str) -> None:
        """Send :data:`~.signals.session_store_unavailable` for ``error``,
        unless it was sent for it already."""
        if error is self._reported_failure:
            return
        self._reported_failure = error
        if session_store_unavailable.receivers:
            self._send(session_store_unavailable, error=error, operation=operation)
