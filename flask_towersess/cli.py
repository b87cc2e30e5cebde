"""The ``flask sessions`` command group.

- ``flask sessions migrate``: create or upgrade the store's tables/indexes.
- ``flask sessions purge-expired``: delete expired sessions, for cron.
- ``flask sessions stats``: count live and expired sessions.
- ``flask sessions list --user ID``: a user's sessions.
- ``flask sessions revoke``: end a user's sessions, or every user's.

Each works on a store with the capability (:class:`~.stores.base.Migrating`,
:class:`~.stores.base.Purging`, :class:`~.stores.base.Counting`) and says in
one line when the store has nothing to do, or cannot do it.

.. versionadded:: 0.1
.. versionchanged:: 0.2
    A store without the capability gets a one-line answer instead of a call
    to a method that did nothing. Counts agree in number with what they
    count ("1 expired session"). ``stats``, ``list`` and ``revoke`` are
    new; ``migrate`` moves the sessions 0.1 stored under unhashed keys, and
    has ``--check``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import sys
import time
import typing as t
from datetime import datetime

import click
from flask import current_app
from flask.cli import ScriptInfo

from .errors import ConfigurationError
from .errors import StoreUnavailable
from .interface import ServerSessionInterface
from .per_user import HANDLE_LENGTH
from .per_user import SessionInfo
from .stores.base import LegacyKeys
from .stores.base import Migrating
from .stores.base import SessionStore
from .stores.base import check_user_id
from .upgrade import index_unindexed
from .upgrade import legacy_keys_of
from .upgrade import rehash_keys
from .upgrade import unindexed_keys_of

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


def _codec() -> tuple[t.Any, t.Any]:
    """The app's serializer and cipher: moving a 0.1 record decodes its
    payload for the user id, as a request would."""
    interface = current_app.session_interface
    return getattr(interface, "serializer", None), getattr(interface, "cipher", None)


@sessions_command.command("migrate")
@click.option("--sql", is_flag=True, help="Print the DDL instead of running it.")
@click.option(
    "--check",
    is_flag=True,
    help="Say what is left to do and exit with status 1 until nothing is;"
    " change nothing.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Session keys listed per batch (to hash, then to index).",
)
@_with_app
def migrate_command(sql: bool, check: bool, batch_size: int) -> None:
    """Create or upgrade what the store needs (idempotent).

    Upgrading from 0.1, it also moves the sessions 0.1 stored under their
    cookie's key under the key's hash, and puts the sessions written before
    the upgrade in their user's index, next to live traffic; an interrupted
    run resumes where it stopped.
    """
    store = _current_store()
    migrating = store.as_migrating()
    if sql and check:
        raise click.ClickException("--sql and --check do not go together: use one.")
    if sql:
        ddl = None if migrating is None else _call(store, migrating.migration_sql)
        click.echo(ddl if ddl is not None else f"-- {store.describe()}: no SQL schema")
        return
    legacy = legacy_keys_of(store)
    if check:
        _check_migration(store, migrating, legacy)
        return
    if migrating is None and legacy is None:
        click.echo(_needs_no_migration(store))
        return
    if migrating is not None:
        # The schema first: moved records carry the per-user fields, which
        # need its columns and indexes.
        for line in _call(store, migrating.migrate):
            click.echo(line)
    if legacy is None:
        return
    serializer, cipher = _codec()

    def rehash(on_batch: t.Callable[[int], None] | None = None) -> int:
        return rehash_keys(
            store,
            serializer=serializer,
            cipher=cipher,
            batch_size=batch_size,
            on_batch=on_batch,
        )

    def index(on_batch: t.Callable[[int], None] | None = None) -> int:
        return index_unindexed(
            store,
            serializer=serializer,
            cipher=cipher,
            batch_size=batch_size,
            on_batch=on_batch,
        )

    unindexed = unindexed_keys_of(store)
    if _stderr_is_terminal():
        total = _call(store, legacy.count_unhashed)
        with click.progressbar(
            length=total, label="Hashing session keys", file=sys.stderr
        ) as bar:
            moved = _call(store, lambda: rehash(bar.update))
        # After the keys: the records moved by requests before the schema
        # was upgraded are among those it lists.
        total = 0 if unindexed is None else _call(store, unindexed.count_unindexed)
        if total:
            with click.progressbar(
                length=total, label="Indexing sessions", file=sys.stderr
            ) as bar:
                indexed = _call(store, lambda: index(bar.update))
        else:
            indexed = _call(store, index)
    else:
        moved = _call(store, rehash)
        indexed = _call(store, index)
    done = []
    if moved:
        done.append(f"hashed {counted(moved, 'session key')}")
    if indexed:
        done.append(f"indexed {counted(indexed, 'session')} written before the upgrade")
    if done:
        click.echo("; ".join(done))
    elif migrating is None:
        click.echo(_needs_no_migration(store))


def _check_migration(
    store: SessionStore, migrating: Migrating | None, legacy: LegacyKeys | None
) -> None:
    """``migrate --check``: what is left, and a non-zero exit until nothing is."""
    pending: list[str] = []
    if migrating is not None:
        # A store that has the capability by duck typing may lack the
        # method added in 0.2: it then reports nothing pending.
        pending_migrations = getattr(migrating, "pending_migrations", None)
        if pending_migrations is not None:
            pending = _call(store, pending_migrations)
    unhashed = 0 if legacy is None else _call(store, legacy.count_unhashed)
    lister = None if legacy is None else unindexed_keys_of(store)
    unindexed = 0 if lister is None else _call(store, lister.count_unindexed)
    for line in pending:
        click.echo(line)
    if unhashed:
        click.echo(f"{counted(unhashed, 'session key')} stored unhashed (by 0.1)")
    if unindexed:
        click.echo(
            f"{counted(unindexed, 'session')} not in the per-user index"
            " (written before the upgrade)"
        )
    if pending or unhashed or unindexed:
        raise click.ClickException(
            f"{store.describe()} is not up to date: run `flask sessions migrate`."
        )
    click.echo(f"{store.describe()} is up to date; nothing to migrate")


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


# -- per-user sessions ---------------------------------------------------------

_HANDLE = re.compile(rf"[A-Za-z0-9_-]{{{HANDLE_LENGTH}}}")
#: The most characters of a User-Agent the table shows (``--json`` has all).
_TABLE_USER_AGENT = 40


def _per_user_call(store: SessionStore, work: t.Callable[[], T]) -> T:
    """:func:`_call`, with a user id the index cannot take as a one-line
    error too."""
    try:
        return _call(store, work)
    except (ValueError, TypeError) as exc:
        raise click.ClickException(_one_line(str(exc))) from exc


def _user_id(value: str) -> str:
    try:
        return check_user_id(value)
    except ValueError as exc:
        raise click.ClickException(_one_line(f"--user: {exc}")) from exc


def _sessions_for(user_id: str) -> list[SessionInfo]:
    store = _current_store()
    ext = current_app.extensions.get("towersess")
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if ext is not None:
        return _per_user_call(store, lambda: ext.sessions_for(user_id, app=app))
    from .per_user import list_sessions

    return _per_user_call(store, lambda: list_sessions(store, user_id))


def _revoke(user_id: str, handle: str | None = None) -> int:
    """Revoke as :meth:`SessionExt.revoke <flask_towersess.SessionExt.revoke>`
    does (the revocation mark for remember-me cookies, the signals)."""
    store = _current_store()
    ext = current_app.extensions.get("towersess")
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if ext is not None:
        ended: int = _per_user_call(store, lambda: ext.revoke(user_id, handle, app=app))
        return ended
    from ._remember import remember_duration
    from .per_user import revoke_sessions
    from .per_user import signal_revoked

    keys = _per_user_call(
        store,
        lambda: revoke_sessions(
            store, user_id, handle, remember_for=remember_duration(app)
        ),
    )
    signal_revoked(app, keys)
    return len(keys)


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _clip(text: str | None, width: int) -> str:
    if not text:
        return "-"
    return text if len(text) <= width else text[: width - 3] + "..."


@sessions_command.command("list")
@click.option(
    "--user", "user_id", required=True, help="The user id, as the app sets it."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object instead of a table."
)
@_with_app
def list_command(user_id: str, as_json: bool) -> None:
    """List a user's live sessions, most recently active first.

    Times are in UTC. Needs a store with a per-user index.
    """
    user = _user_id(user_id)
    infos = _sessions_for(user)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "user_id": user,
                    "sessions": [
                        {
                            "id": info.id,
                            "created_at": _iso(info.created_at),
                            "last_active_at": _iso(info.last_active_at),
                            "expires_at": _iso(info.expires_at),
                            "user_agent": info.user_agent,
                            "ip": info.ip,
                        }
                        for info in infos
                    ],
                }
            )
        )
        return
    if infos:
        rows = [("HANDLE", "CREATED", "LAST ACTIVE", "EXPIRES", "USER AGENT", "IP")]
        rows += [
            (
                info.id,
                _when(info.created_at),
                _when(info.last_active_at),
                _when(info.expires_at),
                _clip(info.user_agent, _TABLE_USER_AGENT),
                info.ip or "-",
            )
            for info in infos
        ]
        widths = [max(len(row[n]) for row in rows) for n in range(len(rows[0]))]
        for row in rows:
            click.echo(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
            )
    click.echo(f"{counted(len(infos), 'session')} of user {user}")


@sessions_command.command("revoke")
@click.option("--user", "user_id", help="End this user's sessions.")
@click.option(
    "--session",
    "handle",
    help="End only the session of this handle (from `flask sessions list`).",
)
@click.option(
    "--all",
    "every_user",
    is_flag=True,
    help="End every session of every user (incident response).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (--all).")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Users listed per batch (--all).",
)
@_with_app
def revoke_command(
    user_id: str | None,
    handle: str | None,
    every_user: bool,
    yes: bool,
    batch_size: int,
) -> None:
    """End a user's sessions, one of them, or every user's.

    --user ends all of a user's sessions; with --session, only the one of
    that handle; --all, those of every user.

    Revoking all of a user's sessions also refuses the Flask-Login
    remember-me cookies issued before it. --all ends the sessions of every
    user with a live session; sessions of nobody (anonymous ones) are left.
    Needs a store with a per-user index.
    """
    if every_user:
        if user_id is not None or handle is not None:
            raise click.ClickException(
                "--all ends every user's sessions: give it without --user or --session."
            )
        _revoke_all(yes, batch_size)
        return
    if user_id is None:
        raise click.ClickException(
            "say whose sessions to end: --user ID (or --all for every user's)."
        )
    user = _user_id(user_id)
    if handle is not None:
        if not _HANDLE.fullmatch(handle):
            raise click.ClickException(
                f"--session: not a session handle: a handle is {HANDLE_LENGTH}"
                " characters of A-Z, a-z, 0-9, '-' and '_', as `flask sessions"
                " list` shows it."
            )
        if _revoke(user, handle) == 0:
            raise click.ClickException(
                f"user {user} has no live session {handle} (ended already, or"
                " another user's): see `flask sessions list --user ID`."
            )
        click.echo(f"revoked 1 session of user {user}")
        return
    ended = _revoke(user)
    click.echo(f"revoked {counted(ended, 'session')} of user {user}")


def _revoke_all(yes: bool, batch_size: int) -> None:
    """Revoke the sessions of every user the store's per-user counts list,
    a batch of users at a time, each once."""
    store = _current_store()
    counting = store.as_counting_per_user()
    if counting is None:
        if store.as_per_user() is None:
            # The same one line as list and revoke --user give.
            _per_user_call(store, lambda: _sessions_for_check(store))
        raise click.ClickException(
            f"{store.describe()} cannot list the users who have sessions: give it"
            " per_user_counts() (the CountingPerUser capability), or revoke"
            " them one by one with --user."
        )
    if not yes:
        click.confirm(
            f"End every session of every user in {store.describe()}?", abort=True
        )
    from ._remember import remember_duration
    from .per_user import mark_everyone_revoked

    # First: remember-me cookies of users with no live session now are
    # refused too, and so are those of users who log in during the run.
    _call(
        store,
        lambda: mark_everyone_revoked(store, lasting=remember_duration(current_app)),
    )
    revoked: set[str] = set()
    ended = 0
    top = batch_size
    while True:
        listed = _per_user_call(store, functools.partial(counting.per_user_counts, top))
        fresh = [user for user, _ in listed if user not in revoked]
        if not fresh:
            if len(listed) < top:
                break
            # Only users revoked in this run who logged in again since: look
            # further down the list for any not revoked yet.
            top *= 2
            continue
        for user in fresh:
            ended += _revoke(user)
            revoked.add(user)
        top = batch_size
    click.echo(
        f"revoked {counted(ended, 'session')} of {counted(len(revoked), 'user')}"
    )


def _sessions_for_check(store: SessionStore) -> None:
    from .per_user import per_user_store

    per_user_store(store)
