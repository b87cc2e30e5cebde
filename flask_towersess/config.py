"""The ``SESSION_*`` settings: each one's default, defined once, and how its
value is read.

:meth:`SessionExt.init_app <flask_towersess.SessionExt.init_app>` fills in
:data:`CONFIG_DEFAULTS` for the keys an app has not set. Everything that
reads a setting (the extension once at set-up, the session interface's
getters on each request, as Flask reads its own) goes through :func:`read`,
which takes the app's value, or the default when the app never ran
``init_app``, and turns the forms a setting accepts (seconds or a
``timedelta``) into one type, with an error naming the setting for a value
of the wrong type.

.. versionadded:: 0.2
"""

from __future__ import annotations

import typing as t
from datetime import timedelta

from .errors import ConfigurationError

#: How long a save that meets concurrent saves keeps merging and retrying.
DEFAULT_SAVE_TIMEOUT = timedelta(seconds=1)
#: The largest payload a session may write (and a store may hand back).
DEFAULT_MAX_PAYLOAD_SIZE = 256 * 1024
#: How long a cached copy may serve reads before it is read again.
DEFAULT_CACHE_MAX_AGE = timedelta(minutes=5)
#: After a cache call fails, how long the cache is skipped.
DEFAULT_CACHE_RETRY_AFTER = timedelta(seconds=2)
#: The least time between two expiry refreshes of an unmodified session.
DEFAULT_TOUCH_INTERVAL = timedelta(seconds=60)


class Setting(t.NamedTuple):
    """One ``SESSION_*`` key: its default and how a value of it is read."""

    default: t.Any
    read: t.Callable[[str, t.Any], t.Any]
    #: Types whose values are read as they are: getters run on every
    #: request, and the value is almost always of its final type already.
    final_types: tuple[type, ...] = ()


def _as_is(name: str, value: t.Any) -> t.Any:
    return value


def _flag(name: str, value: t.Any) -> bool:
    return bool(value)


def _duration(name: str, value: t.Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return timedelta(seconds=value)
        except (ValueError, OverflowError):
            # NaN, infinity, or more seconds than a timedelta holds: the
            # setting's own error, not timedelta's.
            raise ConfigurationError(
                f"{name} must be a finite number of seconds (at most"
                f" {timedelta.max.days} days) or a timedelta; got {value!r}."
            ) from None
    raise ConfigurationError(
        f"{name} must be a number of seconds or a timedelta;"
        f" got {type(value).__qualname__} {value!r}."
    )


def _optional_duration(name: str, value: t.Any) -> timedelta | None:
    return None if value is None else _duration(name, value)


def _optional_count(name: str, value: t.Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ConfigurationError(
        f"{name} must be a whole number of at least 0, or None; got {value!r}."
    )


def _optional_positive_count(name: str, value: t.Any) -> int | None:
    if value is None or (
        isinstance(value, int) and not isinstance(value, bool) and value >= 1
    ):
        return value
    raise ConfigurationError(
        f"{name} must be a whole number of at least 1, or None; got {value!r}."
    )


def _optional_positive_duration(name: str, value: t.Any) -> timedelta | None:
    duration = _optional_duration(name, value)
    if duration is not None and duration <= timedelta(0):
        raise ConfigurationError(
            f"{name} must be a positive number of seconds or timedelta, or None;"
            f" got {value!r}."
        )
    return duration


def _size(name: str, value: t.Any) -> int | None:
    if value is None or (
        isinstance(value, int) and not isinstance(value, bool) and value > 0
    ):
        return value
    raise ConfigurationError(
        f"{name} must be a number of bytes (more than 0), or None; got {value!r}."
    )


#: Every ``SESSION_*`` key flask-towersess reads. Flask's own session
#: settings (``SESSION_COOKIE_*``, ``PERMANENT_SESSION_LIFETIME``,
#: ``SESSION_REFRESH_EACH_REQUEST``, ``SECRET_KEY_FALLBACKS``) apply as well
#: and keep Flask's defaults.
SETTINGS: dict[str, Setting] = {
    # A URL, a store, or a client a store wraps; None: SQLite in the
    # instance folder.
    "SESSION_STORE": Setting(None, _as_is),
    # Keyword options for the store (table, schema, key_prefix, ...).
    "SESSION_STORE_OPTIONS": Setting({}, _as_is),
    # A fast store in front of SESSION_STORE (see CachingStore), its
    # options, how long a cached copy serves reads, and how long the cache
    # is skipped after it failed.
    "SESSION_CACHE": Setting(None, _as_is),
    "SESSION_CACHE_OPTIONS": Setting({}, _as_is),
    "SESSION_CACHE_MAX_AGE": Setting(
        DEFAULT_CACHE_MAX_AGE, _optional_duration, (timedelta, type(None))
    ),
    "SESSION_CACHE_RETRY_AFTER": Setting(
        DEFAULT_CACHE_RETRY_AFTER, _duration, (timedelta,)
    ),
    "SESSION_SERIALIZER": Setting("msgpack", _as_is),
    "SESSION_MAX_PAYLOAD_SIZE": Setting(DEFAULT_MAX_PAYLOAD_SIZE, _size),
    # Encrypt payloads at rest (AES-GCM): a key, or a list of keys, newest
    # first. See flask_towersess.crypto.generate_key().
    "SESSION_ENCRYPTION_KEY": Setting(None, _as_is),
    "SESSION_USE_SIGNER": Setting(True, _flag, (bool,)),
    "SESSION_PERMANENT": Setting(False, _flag, (bool,)),
    "SESSION_TOUCH_INTERVAL": Setting(DEFAULT_TOUCH_INTERVAL, _duration, (timedelta,)),
    # How long a save that meets concurrent saves keeps merging and retrying
    # (with random, growing pauses), and the most retries (None: no limit
    # but the time).
    "SESSION_SAVE_TIMEOUT": Setting(DEFAULT_SAVE_TIMEOUT, _duration, (timedelta,)),
    "SESSION_SAVE_RETRIES": Setting(None, _optional_count, (type(None),)),
    # With Flask-Login: a fresh session key at login (against session
    # fixation), and the signed-in session ended at logout.
    "SESSION_CYCLE_ON_LOGIN": Setting(True, _flag, (bool,)),
    "SESSION_FLUSH_ON_LOGOUT": Setting(True, _flag, (bool,)),
    # Per-user sessions: what a session records for a device list, how
    # many sessions one user may hold (None: no limit), and the age at
    # which a session ends however active (None: no such age).
    "SESSION_RECORD_USER_AGENT": Setting(True, _flag, (bool,)),
    "SESSION_RECORD_IP": Setting(False, _flag, (bool,)),
    "SESSION_MAX_PER_USER": Setting(None, _optional_positive_count, (type(None),)),
    "SESSION_ABSOLUTE_LIFETIME": Setting(
        None, _optional_positive_duration, (type(None),)
    ),
    # Look up a key 0.1 stored unhashed when its hash is not found, and
    # store it hashed; off once `flask sessions migrate --check` passes.
    "SESSION_LEGACY_KEYS": Setting(True, _flag, (bool,)),
}

#: The defaults ``init_app`` sets, by key.
CONFIG_DEFAULTS: dict[str, t.Any] = {
    name: setting.default for name, setting in SETTINGS.items()
}


def read(config: t.Mapping[str, t.Any], name: str) -> t.Any:
    """The value of setting ``name`` in ``config`` (the default if unset),
    in its one type.

    :raises ConfigurationError: the value has the wrong type; the message
        names the setting.
    """
    setting = SETTINGS[name]
    value = config.get(name, setting.default)
    if type(value) in setting.final_types:
        return value
    return setting.read(name, value)
