"""Signals sent through a session's life, for metrics, audit logs and alerts.

They are `Blinker`_ signals, as Flask's own and Flask-Login's are (Blinker
comes with Flask). Connect a receiver to one, for every app or for one app
only:

.. code-block:: python

    from flask_towersess.signals import session_ended

    @session_ended.connect_via(app)
    def count_logouts(sender, session, key, reason, **extra):
        ...

**The sender** is the Flask app (``current_app._get_current_object()``),
as for Flask's signals, whenever the signal is sent in an application
context: always in a request. A :class:`~flask_towersess.ServerSession`
used outside any app context (a script, an admin task) sends with
``None`` as the sender, which only receivers connected to every sender get.

**The arguments** are keywords; every signal passes ``session``, the
:class:`~flask_towersess.ServerSession`. A receiver should take ``**extra``
as well, so a later version can add arguments without breaking it.

**Keys are the stored ones.** ``key``, ``old_key`` and ``new_key`` are
the keys the store holds the session under (:attr:`ServerSession.stored_key
<flask_towersess.ServerSession.stored_key>`, the SHA-256 of the cookie's
key), never the cookie's key: nothing a receiver sees works as a cookie.
They still name one session each: do not use them as metric labels, and
where one is shown, show :func:`~flask_towersess.stores.base.short_key` of
it, as this package's own logs do.

Receivers run in the request, synchronously, and an exception in one ends
the request with it: keep them short and let them not fail. With no
receiver connected, a signal costs a request next to nothing: the
arguments are not even built.

.. _Blinker: https://blinker.readthedocs.io/

.. versionadded:: 0.2
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: A new session was stored: a record under a fresh key, for a session that
#: had none (the first write of a visitor, the anonymous session that keeps
#: what a request wrote after a logout). Not sent when an existing session
#: moves to a new key (:data:`session_key_cycled` is).
#:
#: :param session: the :class:`~flask_towersess.ServerSession`.
#: :param key: its stored key.
session_created = _signals.signal("session-created")

#: A session moved to a fresh key and the record under its old key was
#: retired: :meth:`~flask_towersess.ServerSession.cycle_key`, or a change of
#: :attr:`~flask_towersess.ServerSession.user_id` (a log-in). Sent once the
#: move is saved, at the end of the request, not when ``cycle_key()`` is
#: called: a request that fails before its session is saved sends nothing.
#:
#: :param session: the :class:`~flask_towersess.ServerSession`.
#: :param old_key: the stored key it had (no longer valid).
#: :param new_key: the stored key it has now.
session_key_cycled = _signals.signal("session-key-cycled")

#: A stored session was ended: its record deleted. Sent when it is deleted,
#: which for :meth:`~flask_towersess.ServerSession.flush` and a log-out is
#: at once, not at the end of the request. Not sent by
#: :meth:`~flask_towersess.ServerSession.delete`, which deletes a record by
#: key, like a store call, whether a session uses it or not.
#:
#: :param session: the :class:`~flask_towersess.ServerSession`; ``None``
#:     for sessions ended on the server, with ``"revoke"`` or ``"limit"``.
#: :param key: the stored key of the deleted record.
#: :param reason: why, one of
#:
#:     - ``"flush"``: :meth:`~flask_towersess.ServerSession.flush` was called;
#:     - ``"logout"``: :meth:`~flask_towersess.ServerSession.end_identity`,
#:       which Flask-Login's ``logout_user()`` calls;
#:     - ``"emptied"``: the request left the session empty (``clear()``, or
#:       every key popped), which ends it at the end of the request.
#:
#:     - ``"revoke"``: :meth:`~flask_towersess.SessionExt.revoke` (or
#:       ``flask sessions revoke``) ended it, in whichever request or
#:       process called it;
#:     - ``"limit"``: a log-in of its user went beyond
#:       ``SESSION_MAX_PER_USER``, and it was the least recently active.
#:
#:     Count the values you do not know as "other": later versions may
#:     add some.
session_ended = _signals.signal("session-ended")

#: A save lost a compare-and-set: another request saved the same session
#: since this one read it. The session merges its own changes into the
#: stored record and tries again after a short, growing pause, so this is
#: sent once per retry, with ``retries`` counting up from 1. Frequent ones
#: mean many concurrent requests of one session (see :doc:`/concurrency`);
#: a save that runs out of retries ends the request with
#: :class:`~flask_towersess.SessionInterrupted`.
#:
#: :param session: the :class:`~flask_towersess.ServerSession`.
#: :param key: the stored key of the record that changed.
#: :param retries: which retry this conflict leads to: 1 for the first.
session_save_conflict = _signals.signal("session-save-conflict")

#: The store could not be reached (or timed out) while the session used it;
#: :class:`~flask_towersess.StoreUnavailable` is raised right after, and the
#: request answers ``503`` unless the app handles it. Sent once per failure,
#: however many layers it passes through.
#:
#: :param session: the :class:`~flask_towersess.ServerSession`.
#: :param error: the :class:`~flask_towersess.StoreUnavailable`; the
#:     driver's exception is its ``__cause__``.
#: :param operation: what the session was doing: ``"load"`` (reading the
#:     session), ``"save"`` (writing it), ``"touch"`` (moving its expiry
#:     forward) or ``"delete"`` (ending it).
session_store_unavailable = _signals.signal("session-store-unavailable")
