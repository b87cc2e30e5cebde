"""How :class:`~flask_towersess.stores.SQLAlchemyStore` runs its statements.

A session read or write is one short statement, and SQLAlchemy's
``Connection.execute()`` costs more Python time than SQLite takes to run it,
and about half a loopback round trip to PostgreSQL (a cache key per call, an
execution context, a result object, a transaction it then rolls back). So
on an engine that needs none of that, the store runs its per-request
statements on a pooled DBAPI connection (:meth:`Engine.raw_connection
<sqlalchemy.engine.Engine.raw_connection>`) with SQL compiled once per
dialect, and converts values with the dialect's own type processors, so
what is stored is the same either way.

An engine whose connections are not in autocommit, that has execution
options, statement event listeners or statement logging, or whose driver is
not one tested here, keeps the ``Connection.execute()`` path: the statements
then stay visible to its listeners and logs. Only the listener check needs
a private SQLAlchemy attribute; it lives in :mod:`._sqlalchemy_fastpath`.

.. versionadded:: 0.1
"""

from __future__ import annotations

import logging
import typing as t

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from ._sqlalchemy_fastpath import has_connection_listeners

#: Drivers the direct path is tested with (``dialect.driver``).
DIRECT_DRIVERS = frozenset({"pysqlite", "psycopg2", "pymysql"})

Row = t.Sequence[t.Any]
#: The kinds of statement the store runs.
CoreStatement = t.Union["sa.Select[t.Any]", sa.Insert, sa.Update, sa.Delete]
_Processor = t.Optional[t.Callable[[t.Any], t.Any]]


class _Compiled:
    """One statement as a DBAPI cursor takes it on one dialect."""

    def __init__(self, core: CoreStatement, dialect: sa.Dialect) -> None:
        # Post-compile parameters (a LIMIT on some dialects) are rendered
        # into the text: the DBAPI cursor never sees SQLAlchemy's markers.
        compiled = core.compile(
            dialect=dialect, compile_kwargs={"render_postcompile": True}
        )
        self.sql = compiled.string
        self.positional = bool(compiled.positional)
        names = (
            list(compiled.positiontup or ())
            if self.positional
            else list(compiled.binds)
        )
        self.binds: list[tuple[str, _Processor]] = [
            (name, _bind_processor(compiled.binds[name], dialect)) for name in names
        ]
        # Values fixed in the statement itself (a LIMIT given as a number).
        self.constants = {
            name: bind.effective_value
            for name, bind in compiled.binds.items()
            if not bind.required
        }
        self.results: list[_Processor] = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            # A query's columns, or a write's RETURNING columns.
            for column in core.exported_columns
        ]
        self.processes_results = any(p is not None for p in self.results)

    def parameters(self, values: t.Mapping[str, t.Any]) -> t.Any:
        if self.constants:
            values = {**self.constants, **values}
        converted = [
            (name, values[name] if process is None else process(values[name]))
            for name, process in self.binds
        ]
        if self.positional:
            return tuple(value for _, value in converted)
        return dict(converted)

    def row(self, raw: Row | None) -> Row | None:
        if raw is None or not self.processes_results:
            return raw
        return tuple(
            value if process is None else process(value)
            for process, value in zip(self.results, raw)
        )


def _bind_processor(bind: sa.BindParameter[t.Any], dialect: sa.Dialect) -> _Processor:
    return bind.type.dialect_impl(dialect).bind_processor(dialect)


class Statement:
    """A session statement: its Core form and, per dialect, its DBAPI form."""

    __slots__ = ("core", "_compiled")

    def __init__(self, core: CoreStatement) -> None:
        self.core = core
        self._compiled: dict[sa.Dialect, _Compiled] = {}

    def compiled(self, dialect: sa.Dialect) -> _Compiled:
        try:
            return self._compiled[dialect]
        except KeyError:
            compiled = self._compiled[dialect] = _Compiled(self.core, dialect)
            return compiled


class Executor(t.Protocol):
    """What a store operation runs its statements through."""

    def first(self, statement: Statement, values: t.Mapping[str, t.Any]) -> Row | None:
        """Run a query; its first row, or ``None``."""

    def rowcount(self, statement: Statement, values: t.Mapping[str, t.Any]) -> int:
        """Run a write; how many rows it matched."""

    def all(self, statement: Statement, values: t.Mapping[str, t.Any]) -> list[Row]:
        """Run a query, or a write with ``RETURNING``; all its rows.

        .. versionadded:: 0.2
        """


class CoreExecutor:
    """Runs statements through an SQLAlchemy :class:`~sqlalchemy.engine.Connection`."""

    def __init__(self, connection: sa.Connection) -> None:
        self.connection = connection

    def first(self, statement: Statement, values: t.Mapping[str, t.Any]) -> Row | None:
        return self.connection.execute(statement.core, values).first()

    def rowcount(self, statement: Statement, values: t.Mapping[str, t.Any]) -> int:
        return self.connection.execute(statement.core, values).rowcount

    def all(self, statement: Statement, values: t.Mapping[str, t.Any]) -> list[Row]:
        return list(self.connection.execute(statement.core, values).all())


class DBAPIExecutor:
    """Runs statements on a pooled DBAPI connection, in its autocommit mode.

    Driver errors are raised as SQLAlchemy would raise them (an
    :class:`~sqlalchemy.exc.DBAPIError` subclass, with
    ``connection_invalidated`` set and the connection invalidated when the
    dialect says the connection is gone), without parameters in the message:
    they hold session keys.
    """

    def __init__(self, connection: t.Any, dialect: sa.Dialect) -> None:
        self.connection = connection
        self.dialect = dialect
        self._error: type[Exception] = dialect.loaded_dbapi.Error

    def _execute(
        self,
        statement: Statement,
        values: t.Mapping[str, t.Any],
        fetch: t.Literal["one", "all", None],
    ) -> t.Any:
        compiled = statement.compiled(self.dialect)
        cursor = None
        try:
            cursor = self.connection.cursor()
            cursor.execute(compiled.sql, compiled.parameters(values))
            if fetch == "one":
                return compiled.row(cursor.fetchone())
            if fetch == "all":
                # Every row, so that a write with RETURNING runs to its end
                # (SQLite applies it only as its rows are stepped through).
                return [compiled.row(raw) for raw in cursor.fetchall()]
            return cursor.rowcount
        except self._error as exc:
            raise self._wrap(exc, compiled.sql, cursor) from exc
        finally:
            if cursor is not None:
                cursor.close()

    def _wrap(self, exc: t.Any, sql: str, cursor: t.Any) -> sa_exc.DBAPIError:
        dbapi_connection = self.connection.dbapi_connection
        gone = self.dialect.is_disconnect(exc, dbapi_connection, cursor)
        if gone:
            self.connection.invalidate(exc)
        return t.cast(
            sa_exc.DBAPIError,
            sa_exc.DBAPIError.instance(
                sql,
                None,
                exc,
                self._error,
                hide_parameters=True,
                connection_invalidated=gone,
                dialect=self.dialect,
            ),
        )

    def first(self, statement: Statement, values: t.Mapping[str, t.Any]) -> Row | None:
        return self._execute(statement, values, fetch="one")  # type: ignore[no-any-return]

    def rowcount(self, statement: Statement, values: t.Mapping[str, t.Any]) -> int:
        return self._execute(statement, values, fetch=None)  # type: ignore[no-any-return]

    def all(self, statement: Statement, values: t.Mapping[str, t.Any]) -> list[Row]:
        return self._execute(statement, values, fetch="all")  # type: ignore[no-any-return]


def connect_error(exc: Exception, dialect: sa.Dialect) -> sa_exc.DBAPIError:
    """A failure to open a DBAPI connection, as SQLAlchemy would raise it."""
    return t.cast(
        sa_exc.DBAPIError,
        sa_exc.DBAPIError.instance(
            None,
            None,
            exc,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            dialect=dialect,
        ),
    )


def runs_directly(engine: sa.engine.Engine) -> bool:
    """Whether the store bypasses ``Connection.execute()`` on ``engine`` now.

    Only for a plain engine whose connections are in autocommit (what
    :func:`~flask_towersess.stores.sqlalchemy.create_engine` makes), on a
    tested driver, with nothing that would miss the statements: no execution
    options (``schema_translate_map``, say), no event listeners on the
    engine, no statement logging. Checks out a pooled connection to see its
    autocommit setting, as the store does before each direct statement.
    """
    if not can_run_directly(engine) or has_statement_observers(engine):
        return False
    connection = engine.raw_connection()
    try:
        return in_autocommit(engine.dialect, connection.dbapi_connection)
    finally:
        connection.close()


def can_run_directly(engine: sa.engine.Engine) -> bool:
    """The part of :func:`runs_directly` fixed for the engine's lifetime
    and known without a connection (the store computes it once per engine)."""
    return (
        engine.dialect.driver in DIRECT_DRIVERS and not engine.get_execution_options()
    )


def in_autocommit(dialect: sa.Dialect, dbapi_connection: t.Any) -> bool:
    """Whether ``dbapi_connection`` commits each statement by itself.

    Asked of the connection, not of the engine: SQLAlchemy keeps the level
    given to ``create_engine(isolation_level=...)`` in no public place, and
    what a direct statement needs is that *this* connection is in
    autocommit. :meth:`~sqlalchemy.engine.Dialect.detect_autocommit_setting`
    (SQLAlchemy 2.0.43, the oldest release supported) reads the driver's own
    flag, without a round trip; a dialect that cannot tell counts as "no".
    """
    try:
        return bool(dialect.detect_autocommit_setting(dbapi_connection))
    except NotImplementedError:
        return False


def has_statement_observers(engine: sa.engine.Engine) -> bool:
    """Whether listeners or logs want to see the engine's statements.

    Checked on every call, so a listener added later (a tracing library's,
    say) sees the statements from then on.
    """
    return bool(
        has_connection_listeners(engine)
        or engine.echo
        or _engine_logger.isEnabledFor(logging.INFO)
    )


# The logger SQLAlchemy logs statements to (echo=True sets its level).
_engine_logger = logging.getLogger("sqlalchemy.engine.Engine")
