"""The ``flask sessions`` command group.

- ``flask sessions migrate``: create or upgrade the store's tables/indexes.
- ``flask sessions purge-expired``: delete expired sessions, for cron.
- ``flask sessions stats``: count live and expired sessions.

Each works on a store with the capability (:class:`~.stores.base.Migrating`,
:class:`~.stores.base.Purging`, :class:`~.stores.base.Counting`) and says in
one line when the store has nothing to do, or cannot do it.

.. versionadded:: 0.1
.. versionchanged:: 0.2
    A store without the capability gets a one-line answer instead of a call
    to a method that did nothing. Counts agree in number with what they
    count ("1 expired session"). ``stats`` is new.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import time
import typing as t

import click
from flask import current_app
from flask.cli import ScriptInfo

from .errors import ConfigurationError
from .errors import StoreUnavailable
from .interface import ServerSessionInterface
from .stores.base import SessionStore

T = t.TypeVar("T")


def _current_store() -> SessionStore:
    ext = current_app.extensions.get("towersess")
    if ext is not None:
        # The extension keys its per-app state by the app object itself; the
        # current_app proxy cannot be weakly referenced.
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        return ext.get_store(app)  # type: ignore[no-any-return]
    interface = current_app.session_interface
    if isinstance(interface, ServerSessionInterface):
        return interface.store
    raise click.ClickException(
        "flask-towersess is not set up on this app: call SessionExt(app)."
    )


def _one_line(text: str) -> str:
    # Cron mail and log scrapers want one line per failure.
    return " ".join(text.split())


def _first_line(text: str) -> str:
    # Driver messages often span lines (psycopg2 adds "Is the server
    # running...?", SQLAlchemy the statement and a link): the first says it.
    return next((line for line in text.splitlines() if line.strip()), "")


@contextlib.contextmanager
def _no_log_on_stderr() -> t.Iterator[None]:
    """Keep the package's log records off stderr while a command runs, when
    the app has set up no logging.

    Python then prints warnings and errors to stderr itself (its "last
    resort" handler): a store's "unavailable" warning would come before the
    command's own one-line error, which says the same. An app that set up
    logging gets the records where it sends them.
    """
    package_logger = logging.getLogger("flask_towersess")
    if package_logger.hasHandlers():
        yield
        return
    handler = logging.NullHandler()
    package_logger.addHandler(handler)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)


def _call(store: SessionStore, work: t.Callable[[], T]) -> T:
    """Run store work, turning store failures into a one-line CLI error."""
    try:
        with _no_log_on_stderr():
            return work()
    except StoreUnavailable as exc:
        # The driver's error (kept out of the public 503 page) is what an
        # operator needs here; the description if there is none.
        reason = _first_line(str(exc.__cause__ or "")) or exc.description
        raise click.ClickException(
            _one_line(f"cannot reach the session store ({store.describe()}): {reason}")
        ) from exc
    except ConfigurationError as exc:
        raise click.ClickException(_one_line(str(exc))) from exc


def _with_app(command: t.Callable[..., T]) -> t.Callable[..., T]:
    """Flask's ``with_appcontext``, with a one-line error for an app that
    refuses its session settings while it loads (``SessionExt(app)`` with a
    bad ``SESSION_STORE``), instead of the traceback of the app's import.

    It can do so because the group is registered as a ``flask.commands``
    plugin: Flask finds it without loading the app first.
    """

    @click.pass_context
    def run(ctx: click.Context, /, *args: t.Any, **kwargs: t.Any) -> T:
        if not current_app:
            try:
                with _no_log_on_stderr():
                    app = ctx.ensure_object(ScriptInfo).load_app()
            except ConfigurationError as exc:
                raise click.ClickException(_one_line(str(exc))) from exc
            ctx.with_resource(app.app_context())
        return ctx.invoke(command, *args, **kwargs)

    return functools.update_wrapper(run, command)


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``count`` and the noun in the number it calls for: ``1 expired
    session``, ``0 expired sessions``, ``2 expired sessions``.

    ``plural`` defaults to ``singular`` with an ``s``.

    .. versionadded:: 0.2
    """
    noun = singular if count == 1 else (plural or f"{singular}s")
    return f"{count} {noun}"


def _stderr_is_terminal() -> bool:
    """Whether to draw a progress bar: only for a person at a terminal."""
    return sys.stderr.isatty()


@click.group("sessions")
def sessions_command() -> None:
    """Manage the server-side session store."""


def _needs_no_migration(store: SessionStore) -> str:
    return f"{type(store).__name__} needs no migration; there is nothing to migrate."


def _needs_no_purge(store: SessionStore) -> str:
    """The line for a store that is not :class:`~.stores.base.Purging`.

    Success when the backend expires sessions by itself, which is what a
    cron job that runs the purge everywhere expects; an error otherwise,
    since expired sessions then pile up and someone must notice.
    """
    name = type(store).__name__
    # Nothing to purge, but a cron job must still learn that the store is
    # unreachable or refuses its settings (a non-zero exit).
    _call(store, store.ping)
    if not store.expires_natively:
        raise click.ClickException(
            f"{name} cannot purge expired sessions, and does not expire them by"
            " itself: give it purge_expired() and count_expired() (the Purging"
            " capability)."
        )
    return f"{name} expires sessions by itself; there is nothing to purge."


@sessions_command.command("migrate")
@click.option("--sql", is_flag=True, help="Print the DDL instead of running it.")
@_with_app
def migrate_command(sql: bool) -> None:
    """Create or upgrade what the store needs (idempotent)."""
    store = _current_store()
    migrating = store.as_migrating()
    if sql:
        ddl = None if migrating is None else _call(store, migrating.migration_sql)
        click.echo(ddl if ddl is not None else f"-- {store.describe()}: no SQL schema")
        return
    if migrating is None:
        click.echo(_needs_no_migration(store))
        return
    for line in _call(store, migrating.migrate):
        click.echo(line)


@sessions_command.command("purge-expired")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Records deleted per statement (and per transaction).",
)
@click.option("--dry-run", is_flag=True, help="Count expired sessions; delete nothing.")
@_with_app
def purge_expired_command(batch_size: int, dry_run: bool) -> None:
    """Delete expired sessions in batches (run it from cron).

    Safe to run from several hosts at once.
    """
    store = _current_store()
    purging = store.as_purging()
    if purging is None:
        click.echo(_needs_no_purge(store))
        return
    started = time.monotonic()
    if dry_run:
        count = _call(store, purging.count_expired)
        click.echo(f"{counted(count, 'expired session')} would be purged (dry run)")
        return
    if _stderr_is_terminal():
        # The bar goes to stderr and only on a terminal, so cron mail and
        # logs get just the summary line.
        total = _call(store, purging.count_expired)
        with click.progressbar(
            length=total, label="Purging expired sessions", file=sys.stderr
        ) as bar:
            purged = _call(
                store, lambda: purging.purge_expired(batch_size, on_batch=bar.update)
            )
    else:
        purged = _call(store, lambda: purging.purge_expired(batch_size))
    elapsed = time.monotonic() - started
    note = (
        f" ({store.describe()} expires sessions itself)"
        if store.expires_natively
        else ""
    )
    click.echo(f"purged {counted(purged, 'expired session')} in {elapsed:.2f} s{note}")


#: What ``stats`` says of a store without a per-user index.
NO_PER_USER_INDEX = "not available (this store keeps no per-user index)"


@sessions_command.command("stats")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object instead of one line per figure.",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="How many users to list, on a store with a per-user index.",
)
@_with_app
def stats_command(as_json: bool, top: int) -> None:
    """Count live and expired sessions, and sessions per user."""
    store = _current_store()
    counting = store.as_counting()
    if counting is None:
        raise click.ClickException(
            f"{type(store).__name__} cannot count its sessions: give it"
            " count_live() (the Counting capability)."
        )
    live = _call(store, counting.count_live)
    purging = store.as_purging()
    # A store that expires sessions by itself and cannot count what it has
    # not dropped yet (Redis) keeps no expired session to speak of.
    expired = 0 if purging is None else _call(store, purging.count_expired)
    per_user_counting = store.as_counting_per_user()
    per_user = (
        None
        if per_user_counting is None
        else _call(store, lambda: per_user_counting.per_user_counts(top))
    )
    if as_json:
        figures = {
            "store": store.describe(),
            "live": live,
            "expired": expired,
            "expires_natively": store.expires_natively,
            "per_user": None
            if per_user is None
            else [{"user_id": user, "sessions": n} for user, n in per_user],
        }
        click.echo(json.dumps(figures))
        return
    click.echo(f"live sessions: {live}")
    note = (
        f" ({type(store).__name__} expires sessions by itself)"
        if store.expires_natively
        else ""
    )
    click.echo(f"expired sessions (not yet purged): {expired}{note}")
    if per_user is None:
        click.echo(f"sessions per user: {NO_PER_USER_INDEX}")
        return
    if not per_user:
        click.echo("sessions per user: no user has a live session")
    for user, n in per_user:
        click.echo(f"sessions of user {user}: {n}")
