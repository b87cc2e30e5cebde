"""The exceptions raised by flask-towersess.

Every exception derives from :class:`TowerSessError`, so an app can catch
everything this package raises with one ``except`` clause. The two errors a
request can end with are also Werkzeug HTTP exceptions, so Flask turns them
into a response (and runs the app's ``errorhandler`` for them):

- :class:`SessionInterrupted` is a ``400 Bad Request``;
- :class:`StoreUnavailable` is a ``503 Service Unavailable``.

.. versionadded:: 0.1
"""

from __future__ import annotations

from werkzeug.exceptions import BadRequest
from werkzeug.exceptions import ServiceUnavailable


class TowerSessError(Exception):
    """Base class of every exception raised by flask-towersess."""


class ConfigurationError(TowerSessError, ValueError):
    """The app or a store is configured in a way that cannot work.

    The message says what is wrong and how to fix it, for example a missing
    session table ("run ``flask sessions migrate``") or an unknown URL scheme.
    """


class SerializationError(TowerSessError, ValueError):
    """Session data could not be serialized (or a payload decoded).

    Raised at save time, before anything is written, for a value of a type
    the serializer does not support; the message names the session key and
    the type. Also raised when a payload exceeds the configured size limit.
    """


class CreateError(TowerSessError):
    """A record could not be created because its key is already taken."""


class UpdateError(TowerSessError):
    """A record could not be saved because it no longer exists.

    It was deleted (a logout in another tab, a purge) or it expired after it
    was loaded. The store never brings such a record back.
    """


class VersionConflict(TowerSessError):
    """The record changed in the store since it was loaded.

    Raised by :meth:`SessionStore.save` when the stored version is not the
    expected one. :class:`~flask_towersess.ServerSession` handles it by
    reloading and re-applying its own changes; apps normally never see it.
    """


class SessionInterrupted(TowerSessError, BadRequest):
    """The session ended while the request was using it (400).

    The record was deleted, or expired, by someone else while this request
    ran, so its changes cannot be saved without bringing the session back.
    Also raised when concurrent requests kept changing the session until the
    configured number of save retries ran out.
    """

    description = (
        "The session was ended (for example by a logout in another window)"
        " while this request was using it. Reload the page and try again."
    )


class StoreUnavailable(TowerSessError, ServiceUnavailable):
    """The session store cannot be reached or timed out (503).

    The underlying driver exception is attached as ``__cause__``. Nothing was
    changed; the same session works again once the store is back.
    """

    description = "The session store is temporarily unavailable. Try again shortly."
