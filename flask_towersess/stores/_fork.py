"""Connections belong to the process that opened them.

A pre-forking server (gunicorn with ``--preload``, uWSGI without
``lazy-apps``) imports the app once and forks its workers from that process.
A store that connected before the fork (a ``migrate()`` at import, a start-up
check) would leave every worker with the same pooled sockets: two workers
then read each other's replies, and users get each other's sessions.

:class:`ProcessGuard` lets a store start afresh in a forked child before its
first use there. It runs the store's reset in two ways, because not every
fork goes through Python's ``os.fork``: from an ``os.register_at_fork`` hook
right after the fork, and from :meth:`ProcessGuard.check`, a process-id
comparison each store makes before it talks to its backend (a C-level fork,
as some servers make, runs no Python hooks).

A reset must never close what the parent opened: closing a shared socket in
the child would tear down the parent's connection too. It drops the
references and opens new connections on demand.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
import os
import typing as t
import weakref

logger = logging.getLogger("flask_towersess.stores")


class ProcessGuard:
    """Calls ``reset`` once in each forked child, before the child uses the store.

    :param reset: drops the parent's connections (without closing them) and
        whatever else must not cross a fork (locks, threads, caches tied to
        connections). Called with no arguments, in the child only.
    :param name: what is reset, for the debug log.
    """

    __slots__ = ("__weakref__", "_pid", "_reset", "_name")

    def __init__(self, reset: t.Callable[[], None], name: str) -> None:
        self._pid = os.getpid()
        self._reset = reset
        self._name = name
        _guards.add(self)

    @property
    def pid(self) -> int:
        """The process the guarded connections belong to."""
        return self._pid

    def check(self) -> None:
        """Reset first if this is a child of the process that made the store.

        Costs one ``os.getpid()`` call when nothing has forked.
        """
        if self._pid != os.getpid():
            self._after_fork()

    def _after_fork(self) -> None:
        pid = os.getpid()
        if self._pid == pid:
            return
        parent, self._pid = self._pid, pid
        # Set before the reset: a second thread that checks meanwhile must
        # not reset again what this one is rebuilding. (No lock: one taken in
        # the parent may be held forever in the child.)
        logger.debug(
            "%s: forked from process %d; opening new connections in process %d",
            self._name,
            parent,
            pid,
        )
        try:
            self._reset()
        except BaseException:
            self._pid = parent  # so that the next check() tries again
            raise


#: Every live guard, for the at-fork hook. Weak: a store that is gone needs
#: no reset.
_guards: weakref.WeakSet[ProcessGuard] = weakref.WeakSet()


def _reset_all_in_child() -> None:
    for guard in list(_guards):
        try:
            guard.check()
        except Exception:  # pragma: no cover - the next check() retries it
            # An exception here would be printed by the interpreter and lost;
            # the store's own check() on first use tries again and raises.
            logger.exception("could not reset a session store after fork")


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_reset_all_in_child)
