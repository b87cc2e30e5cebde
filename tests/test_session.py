"""ServerSession: Django's session API and flags, on every store."""

from __future__ import annotations

from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest

from flask_towersess import ServerSession
from flask_towersess.errors import CreateError
from flask_towersess.errors import SerializationError
from flask_towersess.errors import UpdateError
from flask_towersess.session import is_valid_session_key
from flask_towersess.session import new_session_key
from flask_towersess.session import stored_key
from flask_towersess.stores.base import SessionStore
from flask_towersess.stores.base import utcnow

from .helpers import CountingStore


def saved(store: SessionStore, **data: object) -> ServerSession:
    session = ServerSession(store)
    session.update(data)
    session.save()
    return session


def reopen(session: ServerSession) -> ServerSession:
    return ServerSession(session.store, session.session_key)


def test_new_session_has_no_key_until_saved(store: SessionStore) -> None:
    session = ServerSession(store)
    assert session.session_key is None
    assert session.is_empty()
    session["a"] = 1
    assert session.session_key is None
    session.save()
    assert is_valid_session_key(session.session_key)
    assert reopen(session)["a"] == 1


def test_session_key_is_read_only(store: SessionStore) -> None:
    with pytest.raises(AttributeError):
        ServerSession(store).session_key = "x" * 40  # type: ignore[misc]


def test_keys_are_random_and_long() -> None:
    keys = {new_session_key() for _ in range(1000)}
    assert len(keys) == 1000
    assert all(len(k) >= 43 for k in keys)


@pytest.mark.parametrize(
    "key", ["short", "", "a" * 7, "bad key with spaces", "é" * 40, "x" * 129, 12345678]
)
def test_invalid_keys_are_treated_as_no_key(key: object) -> None:
    store = CountingStore(__import__("flask_towersess").stores.MemoryStore())
    session = ServerSession(store, key)  # type: ignore[arg-type]
    assert session.session_key is None
    assert dict(session) == {}
    assert store.total == 0


def test_lazy_no_store_call_until_data_is_used(store: SessionStore) -> None:
    key = saved(store, a=1).session_key
    counting = CountingStore(store)
    session = ServerSession(counting, key)
    assert session.session_key == key
    assert counting.total == 0
    assert not session.accessed
    assert session["a"] == 1
    assert counting.calls == {"load": 1}
    session.get("a")
    _ = list(session.items())
    assert counting.calls == {"load": 1}


@pytest.mark.parametrize(
    "operation",
    [
        lambda s: s.get("a"),
        lambda s: "a" in s,
        lambda s: list(s.keys()),
        lambda s: list(s.values()),
        lambda s: list(s.items()),
        lambda s: len(s),
        lambda s: s["a"],
        lambda s: s.pop("missing", None),
        lambda s: s.setdefault("a", 5),
    ],
)
def test_reads_set_accessed_not_modified(
    store: SessionStore, operation: object
) -> None:
    session = reopen(saved(store, a=1))
    operation(session)  # type: ignore[operator]
    assert session.accessed
    assert not session.modified


@pytest.mark.parametrize(
    "operation",
    [
        lambda s: s.__setitem__("b", 2),
        lambda s: s.__delitem__("a"),
        lambda s: s.update(b=2),
        lambda s: s.clear(),
        lambda s: s.setdefault("new", 1),
        lambda s: s.pop("a"),
        lambda s: s.pop("a", None),
        lambda s: s.set_expiry(60),
        lambda s: s.flush(),
        lambda s: s.cycle_key(),
    ],
)
def test_writes_set_modified(store: SessionStore, operation: object) -> None:
    session = reopen(saved(store, a=1))
    operation(session)  # type: ignore[operator]
    assert session.accessed
    assert session.modified


def test_pop(store: SessionStore) -> None:
    session = reopen(saved(store, a=1))
    with pytest.raises(KeyError):
        session.pop("missing")
    assert session.pop("missing", "d") == "d"
    assert session.pop("missing", default="kw") == "kw"
    assert not session.modified
    assert session.pop("a") == 1
    assert session.modified


def test_setdefault(store: SessionStore) -> None:
    session = reopen(saved(store, a=1))
    assert session.setdefault("a", 2) == 1
    assert not session.modified
    assert session.setdefault("b", 3) == 3
    assert session.modified and session["b"] == 3


def test_new_flag(store: SessionStore) -> None:
    assert ServerSession(store).new
    session = reopen(saved(store, a=1))
    assert not session.new
    assert ServerSession(store, new_session_key()).new


def test_unknown_key_never_becomes_a_session(store: SessionStore) -> None:
    unknown = new_session_key()
    session = ServerSession(store, unknown)
    assert dict(session) == {}
    assert session.session_key is None
    session["a"] = 1
    session.save()
    assert session.session_key != unknown
    assert not store.exists(stored_key(unknown))


def test_clear_does_not_load(store: SessionStore) -> None:
    original = saved(store, a=1, b=2)
    counting = CountingStore(store)
    session = ServerSession(counting, original.session_key)
    session.clear()
    assert counting.total == 0
    assert dict(session) == {}
    session["c"] = 3
    session.save()
    assert dict(reopen(original)) == {"c": 3}
    assert session.session_key == original.session_key


def test_flush_deletes_record_and_forgets_key(store: SessionStore) -> None:
    original = saved(store, user=1)
    session = reopen(original)
    session.flush()
    assert session.session_key is None
    assert dict(session) == {}
    assert not store.exists(stored_key(original.session_key))  # type: ignore[arg-type]
    session["flash"] = "bye"
    session.save()
    assert session.session_key not in (None, original.session_key)


def test_cycle_key_keeps_data_moves_key(store: SessionStore) -> None:
    original = saved(store, cart=[1, 2])
    old_key = original.session_key
    session = reopen(original)  # data never loaded in this "request"
    session.cycle_key()
    new_key = session.session_key
    assert new_key is not None and new_key != old_key
    session.save()
    assert not store.exists(stored_key(old_key))  # type: ignore[arg-type]
    assert dict(ServerSession(store, new_key)) == {"cart": [1, 2]}


def test_cycle_key_on_new_session(store: SessionStore) -> None:
    session = ServerSession(store)
    session["a"] = 1
    session.cycle_key()
    session.save()
    assert reopen(session)["a"] == 1


def test_cycle_key_then_flush_deletes_both(store: SessionStore) -> None:
    original = saved(store, a=1)
    session = reopen(original)
    session.cycle_key()
    session.flush()
    assert not store.exists(stored_key(original.session_key))  # type: ignore[arg-type]


def test_save_must_create(store: SessionStore) -> None:
    # As in Django: must_create writes under the current key without loading
    # (loading an unknown key would drop it, as for any unknown key).
    key = new_session_key()
    session = ServerSession(store, key)
    session.save(must_create=True)
    assert session.session_key == key
    assert store.exists(stored_key(key))
    with pytest.raises(CreateError):
        ServerSession(store, key).save(must_create=True)


def test_create_uses_fresh_key(store: SessionStore) -> None:
    session = reopen(saved(store, a=1))
    old = session.session_key
    session.create()
    assert session.session_key != old


def test_load_exists_delete(store: SessionStore) -> None:
    original = saved(store, a=1)
    key = original.session_key
    session = ServerSession(store, key)
    assert session.load() == {"a": 1}
    assert session.exists(key)  # type: ignore[arg-type]
    assert not session.exists(new_session_key())
    assert not session.exists("bad")
    session.delete()
    assert not session.exists(key)  # type: ignore[arg-type]
    other = saved(store, b=1)
    session.delete(other.session_key)
    assert not store.exists(stored_key(other.session_key))  # type: ignore[arg-type]


def test_save_after_delete_elsewhere_raises_and_does_not_resurrect(
    store: SessionStore,
) -> None:
    original = saved(store, a=1)
    session = reopen(original)
    session["b"] = 2
    store.delete(stored_key(original.session_key))  # type: ignore[arg-type]
    with pytest.raises(UpdateError):
        session.save()
    assert not store.exists(stored_key(original.session_key))  # type: ignore[arg-type]


def test_unserializable_value_writes_nothing(store: SessionStore) -> None:
    original = saved(store, a=1)
    session = reopen(original)
    session["bad"] = object()
    with pytest.raises(SerializationError, match="'bad'"):
        session.save()
    assert dict(reopen(original)) == {"a": 1}
    fresh = ServerSession(store)
    fresh["bad"] = object()
    with pytest.raises(SerializationError):
        fresh.save()
    assert fresh.session_key is None


def test_is_empty(store: SessionStore) -> None:
    session = ServerSession(store)
    assert session.is_empty()
    session["a"] = 1
    assert not session.is_empty()
    assert not ServerSession(store, new_session_key()).is_empty()  # has a key


# -- expiry ---------------------------------------------------------------


def test_default_expiry_is_the_lifetime(store: SessionStore) -> None:
    session = ServerSession(store, lifetime=timedelta(hours=2))
    assert session.get_expiry_age() == 7200
    assert abs(session.get_expiry_date() - (utcnow() + timedelta(hours=2))) < timedelta(
        seconds=5
    )
    assert session.get_expire_at_browser_close()
    assert not session.permanent
    assert not ServerSession(store, permanent=True).get_expire_at_browser_close()


@pytest.mark.parametrize("value", [300, 300.0])
def test_set_expiry_inactivity(store: SessionStore, value: object) -> None:
    session = ServerSession(store)
    session.set_expiry(value)  # type: ignore[arg-type]
    assert session.get_expiry_age() == 300
    assert not session.get_expire_at_browser_close()
    session["a"] = 1
    session.save()
    record = store.load(stored_key(session.session_key))  # type: ignore[arg-type]
    assert record is not None
    assert abs(record.expires_at - (utcnow() + timedelta(seconds=300))) < timedelta(
        seconds=5
    )
    assert reopen(session).get_expiry_age() == 300  # kept with the data


def test_set_expiry_timedelta_is_a_fixed_moment(store: SessionStore) -> None:
    """Django: with a timedelta "the session will expire at that specific
    date/time", counted from the call; use does not move it."""
    session = ServerSession(store)
    before = utcnow()
    session.set_expiry(timedelta(minutes=5))
    after = utcnow()
    moment = session.get_expiry_date()
    assert before + timedelta(minutes=5) <= moment <= after + timedelta(minutes=5)
    session["a"] = 1
    session.save()
    again = reopen(session)
    assert again.get_expiry_date() == moment  # not pushed on by use
    again["b"] = 2
    again.save()
    assert reopen(again).get_expiry_date() == moment
    record = store.load(stored_key(again.session_key))  # type: ignore[arg-type]
    assert record is not None
    # (MongoDB keeps milliseconds: the payload keeps the exact moment.)
    assert abs(record.expires_at - moment) < timedelta(milliseconds=1)


def test_set_expiry_datetime(store: SessionStore) -> None:
    moment = (utcnow() + timedelta(days=3)).replace(microsecond=0)
    session = ServerSession(store)
    session.set_expiry(moment)
    assert session.get_expiry_date() == moment
    assert 3 * 86400 - 10 < session.get_expiry_age() <= 3 * 86400
    session["a"] = 1
    session.save()
    again = reopen(session)
    assert again.get_expiry_date() == moment
    naive = ServerSession(store)
    naive.set_expiry(moment.replace(tzinfo=None))
    assert naive.get_expiry_date() == moment


def test_set_expiry_datetime_in_past_expires(store: SessionStore) -> None:
    session = ServerSession(store)
    session["a"] = 1
    session.set_expiry(datetime(2000, 1, 1, tzinfo=timezone.utc))
    session.save()
    assert not store.exists(stored_key(session.session_key))  # type: ignore[arg-type]


def test_set_expiry_zero_is_browser_close(store: SessionStore) -> None:
    session = ServerSession(store, lifetime=timedelta(hours=1), permanent=True)
    session.set_expiry(0)
    assert session.get_expire_at_browser_close()
    assert not session.permanent
    assert session.get_expiry_age() == 3600  # the record still expires


def test_set_expiry_none_restores_policy(store: SessionStore) -> None:
    session = ServerSession(store, permanent=True)
    session.set_expiry(0)
    session.set_expiry(None)
    assert not session.get_expire_at_browser_close()


def test_set_expiry_rejects_other_types(store: SessionStore) -> None:
    with pytest.raises(TypeError):
        ServerSession(store).set_expiry("1 hour")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ServerSession(store).set_expiry(True)  # type: ignore[arg-type]


def test_permanent_maps_to_expiry(store: SessionStore) -> None:
    session = ServerSession(store, lifetime=timedelta(hours=1))
    assert not session.permanent
    session.permanent = True
    assert session.permanent and session.modified
    assert session.get_expiry_age() == 3600
    session.permanent = False
    assert session.get_expire_at_browser_close()


def test_setting_permanent_unchanged_is_not_a_modification(store: SessionStore) -> None:
    session = reopen(saved(store, a=1))
    session.permanent = False
    assert not session.modified
    permanent = ServerSession(store, permanent=True)
    permanent.permanent = True
    assert not permanent.modified


def test_get_expiry_age_with_arguments(store: SessionStore) -> None:
    session = ServerSession(store)
    moment = utcnow()
    assert session.get_expiry_age(expiry=60) == 60
    assert (
        session.get_expiry_age(
            modification=moment, expiry=moment + timedelta(seconds=90)
        )
        == 90
    )
    assert session.get_expiry_date(
        modification=moment, expiry=30
    ) == moment + timedelta(seconds=30)


def test_clear_resets_expiry(store: SessionStore) -> None:
    session = ServerSession(store)
    session.set_expiry(60)
    session.clear()
    assert session.get_expiry_age() == ServerSession(store).get_expiry_age()


def test_undecodable_payload_gives_empty_session(
    store: SessionStore, caplog: pytest.LogCaptureFixture
) -> None:
    from flask_towersess.stores.base import Record

    key = new_session_key()
    store.create(
        Record(stored_key(key), b"\x01\xc1garbage", utcnow() + timedelta(minutes=5))
    )
    with caplog.at_level("WARNING", logger="flask_towersess.security"):
        session = ServerSession(store, key)
        assert dict(session) == {}
    assert any(r.name == "flask_towersess.security" for r in caplog.records)
    session["a"] = 1
    session.save()  # the corrupt payload is replaced, under the same key
    assert dict(ServerSession(store, key)) == {"a": 1}


def test_repr_does_not_load(store: SessionStore) -> None:
    counting = CountingStore(store)
    session = ServerSession(counting, saved(store, a=1).session_key)
    assert "not loaded" in repr(session)
    assert counting.total == 0
