"""Driver errors, turned into the errors the session layer expects.

Every store that talks to a server sorts its driver's errors the same way,
in one method, :meth:`~.base.SessionStore._translate`, which returns:

- a :class:`~flask_towersess.errors.StoreUnavailable` (503) for a server
  that cannot be reached or timed out: it works again once the server is
  back (build it with :func:`store_unavailable`, which logs the reason);
- a :class:`~flask_towersess.errors.ConfigurationError` naming the setting
  to fix for settings the server refused (credentials, a database that does
  not exist): no retry fixes those (build it with
  :meth:`~.base.SessionStore._misconfigured`, which logs it at ERROR once
  per store);
- ``None`` for anything else (a bug, a bad query): the driver's error is
  raised as it was, never hidden behind an outage.

This module applies that sorting: :class:`ErrorTranslation` around the
driver calls of a store, or :func:`raise_translated` where a store catches
the error itself first (the SQL store retries lost lock races and dropped
pooled connections before it gives up).

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
import typing as t

from ..errors import StoreUnavailable
from ..errors import TowerSessError

if t.TYPE_CHECKING:
    from types import TracebackType

#: A store's classification of a driver error; see the module docstring.
Translate = t.Callable[[Exception], "TowerSessError | None"]


def store_unavailable(
    where: str, reason: object, log: logging.Logger
) -> StoreUnavailable:
    """The 503 for a store at ``where`` that cannot be reached, after
    logging ``reason`` as a warning on ``log``.

    The error has no message of its own: a StoreUnavailable's text is the
    public 503 page, and a driver's (hosts, ports, user names) must not reach
    the client. The raiser chains the driver's error as ``__cause__``.
    """
    log.warning("session store unavailable (%s): %s", where, reason)
    return StoreUnavailable()


def raise_translated(exc: Exception, error: TowerSessError | None) -> t.NoReturn:
    """Raise ``error`` (what a store's ``_translate`` made of ``exc``) from
    ``exc``; or ``exc`` itself when there was nothing to translate."""
    if error is None:
        raise exc
    raise error from exc


class ErrorTranslation:
    """A context manager that translates the driver errors raised in it.

    :param catch: the driver's exception classes to look at; any other
        exception passes through untouched.
    :param translate: the store's classification (its ``_translate``).
    :param before: called on entering, before any driver call (a store's
        fork check, say).

    Made once per store and entered around every driver call, so it keeps
    no state of its own: threads share it. A class, not a generator-based
    context manager, so that a call that does not fail costs two plain
    method calls.
    """

    __slots__ = ("_catch", "_translate", "_before")

    def __init__(
        self,
        catch: tuple[type[Exception], ...],
        translate: Translate,
        *,
        before: t.Callable[[], None] | None = None,
    ) -> None:
        self._catch = catch
        self._translate = translate
        self._before = before

    def __enter__(self) -> None:
        if self._before is not None:
            self._before()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None or not isinstance(exc, self._catch):
            return
        error = self._translate(exc)
        if error is not None:
            raise error from exc
        # None: the driver's error goes on as it was.
