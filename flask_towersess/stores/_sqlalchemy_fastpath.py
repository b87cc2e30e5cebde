"""The one place the SQL store reads a private SQLAlchemy attribute.

:class:`~flask_towersess.stores.SQLAlchemyStore` runs its per-request
statements on a pooled DBAPI connection when nothing needs to see them (see
:mod:`._statements`). Whether a :class:`~sqlalchemy.events.ConnectionEvents`
listener is attached to an engine (a tracing library's
``before_cursor_execute``, say) has no public answer:
:func:`sqlalchemy.event.contains` needs the listener itself. SQLAlchemy
keeps the answer in ``Engine._has_events``, a ``bool`` it sets when any
such listener is added to the engine (or, for an engine made by
``execution_options()``, to it or to its parent), and checks before each of
its own event calls. Reading it costs one attribute lookup per request;
without it, every statement would have to take ``Connection.execute()``,
giving up the direct path on every engine.

Checked against SQLAlchemy 2.1.9 (the release installed when this was
written); ``tests/test_sql_statements.py`` checks the attribute on whatever
release is installed and fails loudly if it is gone or means something
else. If a release drops or retypes it, :func:`has_connection_listeners`
answers "yes", which sends every statement through ``Connection.execute()``:
slower, never wrong.

.. versionadded:: 0.2
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa

#: The SQLAlchemy releases :func:`has_connection_listeners` was checked against.
CHECKED_SQLALCHEMY = "2.1.9"

#: The private attribute read, named once so the test checks the same one.
LISTENER_FLAG = "_has_events"


def has_connection_listeners(engine: sa.engine.Engine) -> bool:
    """Whether any :class:`~sqlalchemy.events.ConnectionEvents` listener is
    attached to ``engine``; ``True`` when SQLAlchemy no longer says."""
    flag: t.Any = getattr(engine, LISTENER_FLAG, None)
    if type(flag) is not bool:
        return True  # unknown: take the path every listener sees
    return flag
