"""``flask sessions stats``, the Counting capability, and counts that agree
in number in every message of the ``flask sessions`` commands."""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest
from flask import Flask

from flask_towersess import SessionExt
from flask_towersess.cli import NO_PER_USER_INDEX
from flask_towersess.cli import counted
from flask_towersess.stores import Counting
from flask_towersess.stores import CountingPerUser
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.base import utcnow
from flask_towersess.stores.caching import CachingStore
from flask_towersess.stores.memory import MemoryStore

from .test_cli import UNREACHABLE_URLS
from .test_cli import add_records
from .test_cli import invoke
from .test_cli import make_app


def app_on(store: SessionStore) -> Flask:
    app = make_app()
    SessionExt(app, store=store)
    return app


def expected_lines(store: SessionStore, live: int, expired: int) -> list[str]:
    note = (
        f" ({type(store).__name__} expires sessions by itself)"
        if store.expires_natively
        else ""
    )
    return [
        f"live sessions: {live}",
        f"expired sessions (not yet purged): {expired}{note}",
        anonymous_per_user_line(store),
    ]


def anonymous_per_user_line(store: SessionStore) -> str:
    """The per-user line of a store whose sessions are all anonymous."""
    if store.as_counting_per_user() is None:
        return f"sessions per user: {NO_PER_USER_INDEX}"
    return "sessions per user: no user has a live session"


# -- stats on every store --------------------------------------------------------


def cannot_count(store: SessionStore) -> bool:
    """For a store without the Counting capability (Memcached cannot list
    its keys), check that the command refuses in one line with exit 1, and
    say so: there are no figures to check."""
    if store.as_counting() is not None:
        return False
    result = invoke(app_on(store), "stats")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {type(store).__name__} cannot count its sessions: give it"
        " count_live() (the Counting capability)."
    ]
    return True


def test_stats_of_an_empty_store(store: SessionStore) -> None:
    if cannot_count(store):
        return
    result = invoke(app_on(store), "stats")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == expected_lines(store, 0, 0)
    assert result.stderr == ""


def test_stats_counts_live_and_expired(store: SessionStore) -> None:
    if cannot_count(store):
        return
    add_records(store, expired=2, live=3)
    app = app_on(store)
    result = invoke(app, "stats")
    assert result.exit_code == 0, result.output
    live_line, expired_line, per_user_line = result.stdout.splitlines()
    assert live_line == "live sessions: 3"
    assert per_user_line == expected_lines(store, 3, 0)[2]

    figures = json.loads(invoke(app, "stats", "--json").stdout)
    assert figures["live"] == 3
    assert figures["store"] == store.describe()
    assert figures["expires_natively"] is store.expires_natively
    indexed = store.as_counting_per_user() is not None
    assert figures["per_user"] == ([] if indexed else None)
    if store.as_purging() is None:
        # Redis: an expired record was never kept.
        assert figures["expired"] == 0
    elif store.expires_natively:
        # MongoDB: its TTL monitor may delete them at any moment.
        assert 0 <= figures["expired"] <= 2
    else:
        assert figures["expired"] == 2
    assert expired_line == expected_lines(store, 3, figures["expired"])[1]


def test_stats_json_is_one_object(store: SessionStore) -> None:
    if cannot_count(store):
        return
    add_records(store, expired=0, live=1)
    result = invoke(app_on(store), "stats", "--json")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1
    assert set(json.loads(result.stdout)) == {
        "store",
        "live",
        "expired",
        "expires_natively",
        "per_user",
    }


def test_count_live_follows_deletes_and_expiry(store: SessionStore) -> None:
    if cannot_count(store):
        return
    counting = store.as_counting()
    assert isinstance(counting, Counting)
    _, live = add_records(store, expired=1, live=2)
    assert counting.count_live() == 2
    store.delete(live[0])
    assert counting.count_live() == 1
    store.touch(live[1], utcnow() - timedelta(seconds=1))
    # An expired record is no longer live, purged or not (Redis may keep
    # the key for a moment, but not past its TTL: give it that moment).
    assert counting.count_live() in ((0, 1) if store.expires_natively else (0,))


# -- Redis specifics -------------------------------------------------------------


def test_redis_counts_only_its_prefix_taken_literally(redis_url: str) -> None:
    from flask_towersess.stores.redis import RedisStore

    base = f"towersess-test:{uuid.uuid4().hex}:"
    # Unescaped, the first prefix's pattern "...a*[b]*" would match keys of
    # the second store too.
    globby = RedisStore.from_url(redis_url, key_prefix=base + "a*[b]")
    plain = RedisStore.from_url(redis_url, key_prefix=base + "aXb")
    try:
        add_records(globby, expired=0, live=2)
        add_records(plain, expired=0, live=3)
        # Not a session key: another app's value under the same prefix.
        plain.client.set(base + "aXbnot a key!", b"x")
        assert globby.count_live() == 2
        assert plain.count_live() == 3
    finally:
        for key in plain.client.scan_iter(match=base.replace("*", r"\*") + "*"):
            plain.client.delete(key)
        globby.close()
        plain.close()


# -- stores that cannot count, or count per user ---------------------------------


class UncountableStore(MemoryStore):
    """A store without count_live(): a third-party store of before 0.2."""

    def as_counting(self) -> None:
        return None


def test_stats_of_a_store_that_cannot_count() -> None:
    result = invoke(app_on(UncountableStore()), "stats")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "Error: UncountableStore cannot count its sessions: give it"
        " count_live() (the Counting capability).\n"
    )


class PerUserStore(MemoryStore):
    """A memory store with a made-up per-user index, for the ``--top`` hook."""

    def __init__(self, per_user: list[tuple[str, int]]) -> None:
        super().__init__()
        self.per_user = per_user
        self.asked: list[int] = []

    def per_user_counts(self, top: int) -> list[tuple[str, int]]:
        self.asked.append(top)
        return self.per_user[:top]


def test_stats_lists_users_of_a_store_with_a_per_user_index() -> None:
    store = PerUserStore([("ann", 3), ("bob", 1), ("cy", 1)])
    assert isinstance(store.as_counting_per_user(), CountingPerUser)
    app = app_on(store)
    result = invoke(app, "stats", "--top", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[2:] == [
        "sessions of user ann: 3",
        "sessions of user bob: 1",
    ]
    assert store.asked == [2]
    figures = json.loads(invoke(app, "stats", "--json").stdout)
    assert figures["per_user"] == [
        {"user_id": "ann", "sessions": 3},
        {"user_id": "bob", "sessions": 1},
        {"user_id": "cy", "sessions": 1},
    ]
    assert store.asked == [2, 10]  # the default --top


def test_stats_of_a_per_user_index_with_no_user() -> None:
    result = invoke(app_on(PerUserStore([])), "stats")
    assert result.stdout.splitlines()[2:] == [
        "sessions per user: no user has a live session"
    ]


def test_caching_store_counts_and_indexes_through_its_durable_store() -> None:
    durable = PerUserStore([("ann", 1)])
    caching = CachingStore(MemoryStore(), durable)
    add_records(caching, expired=1, live=2)
    assert caching.as_counting() is caching
    assert caching.count_live() == 2
    assert caching.as_counting_per_user() is durable
    assert CachingStore(MemoryStore(), UncountableStore()).as_counting() is None


def test_stats_rejects_a_zero_top() -> None:
    result = invoke(app_on(MemoryStore()), "stats", "--top", "0")
    assert result.exit_code == 2
    assert "--top" in result.output


@pytest.mark.parametrize("backend", sorted(UNREACHABLE_URLS))
@pytest.mark.parametrize("args", [(), ("--json",)], ids=["text", "json"])
def test_stats_of_an_unreachable_store(backend: str, args: tuple[str, ...]) -> None:
    app = make_app(SESSION_STORE=UNREACHABLE_URLS[backend])
    SessionExt(app)
    try:
        result = invoke(app, "stats", *args)
    finally:
        app.extensions["towersess"].get_store(app).close()
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        "Error: cannot reach the session store (SQLAlchemyStore "
    )


# -- counts agree in number ------------------------------------------------------


def test_counted() -> None:
    assert counted(0, "expired session") == "0 expired sessions"
    assert counted(1, "expired session") == "1 expired session"
    assert counted(2, "expired session") == "2 expired sessions"
    assert counted(1, "index", "indexes") == "1 index"
    assert counted(3, "index", "indexes") == "3 indexes"


def expired_store(count: int) -> MemoryStore:
    store = MemoryStore()
    for _ in range(count):
        store.create(
            Record(
                secrets.token_urlsafe(32),
                b"old",
                datetime(2020, 1, 1, tzinfo=timezone.utc),
            )
        )
    return store


@pytest.mark.parametrize(
    ("count", "noun"),
    [(0, "expired sessions"), (1, "expired session"), (2, "expired sessions")],
)
def test_purge_messages_agree_in_number(count: int, noun: str) -> None:
    app = app_on(expired_store(count))
    dry_run = invoke(app, "purge-expired", "--dry-run")
    assert dry_run.stdout == f"{count} {noun} would be purged (dry run)\n"
    purge = invoke(app, "purge-expired")
    assert purge.stdout.startswith(f"purged {count} {noun} in "), purge.stdout
    assert purge.exit_code == 0
