"""Session keys hashed at rest, attacked through the app: the store never
holds a cookie's key, a stored hash is worth nothing as a cookie, logs
show only prefixes of hashes, and a record 0.1.0 stored under the raw key
is moved under its hash on first use.

.. versionadded:: 0.2
"""

from __future__ import annotations

import json
import logging
import re
import threading
import typing as t
from datetime import timedelta

import pytest

from flask_towersess.crypto import PayloadCipher
from flask_towersess.crypto import generate_key
from flask_towersess.per_user import session_handle
from flask_towersess.serializers import MsgPackSerializer
from flask_towersess.session import new_session_key
from flask_towersess.session import stored_key
from flask_towersess.stores.base import Record
from flask_towersess.stores.base import utcnow
from flask_towersess.stores.caching import CachingStore
from flask_towersess.stores.memory import MemoryStore

from .per_user_app import client_of
from .per_user_app import cookie_key
from .per_user_app import cookie_value
from .per_user_app import ext_of
from .per_user_app import make_app
from .per_user_app import stored_of

if t.TYPE_CHECKING:
    from flask import Flask
    from flask.testing import FlaskClient

    from flask_towersess.stores.base import SessionStore

HEX64 = re.compile(r"[0-9a-f]{64}")


def record_loads(monkeypatch: pytest.MonkeyPatch, store: SessionStore) -> list[str]:
    """Every key ``store.load`` is called with, from now on."""
    loaded: list[str] = []
    original = store.load

    def load(key: str) -> Record | None:
        loaded.append(key)
        return original(key)

    monkeypatch.setattr(store, "load", load)
    return loaded


def layers_of(store: SessionStore) -> list[SessionStore]:
    """The stores that hold records: a caching store's cache and durable
    store, or the store itself."""
    if isinstance(store, CachingStore):
        return [store.cache, store.store]
    return [store]


def read(client: FlaskClient) -> dict[str, t.Any]:
    response = client.get("/read")
    assert response.status_code == 200
    return t.cast(dict[str, t.Any], json.loads(response.data))


def legacy_record(
    key: str,
    data: dict[str, t.Any],
    *,
    cipher: PayloadCipher | None = None,
    expiry: int | None = None,
) -> Record:
    """The record 0.1.0 wrote for ``key``: under the key itself, the
    MessagePack state without "created"/"since", no per-user fields."""
    state: dict[str, t.Any] = {"data": data}
    if expiry is not None:
        state["expiry"] = expiry
    payload = MsgPackSerializer().dumps(state)
    if cipher is not None:
        payload = cipher.seal(payload, key)
    return Record(key, payload, utcnow() + timedelta(days=1))


def legacy_client(app: Flask, key: str) -> FlaskClient:
    client = client_of(app)
    client.set_cookie("session", cookie_value(app, key))
    return client


def test_the_store_never_holds_the_cookie_key(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store)
    client = client_of(app)
    client.post("/write")
    anonymous = cookie_key(app, client)
    client.post("/login/ann")
    client.post("/write")
    key = cookie_key(app, client)
    assert key is not None and anonymous is not None and key != anonymous
    assert per_user_store.load(key) is None
    assert per_user_store.load(stored_key(key)) is not None
    if isinstance(per_user_store, CachingStore):
        # The cache holds the session too, under the same hash.
        assert per_user_store.cache.load(stored_key(key)) is not None
    for layer in layers_of(per_user_store):
        assert layer.load(key) is None
        if isinstance(layer, MemoryStore):
            assert key not in layer._records
            assert all(HEX64.fullmatch(stored) for stored in layer._records)
            for record in layer._records.values():
                assert key.encode() not in record.payload
                assert anonymous.encode() not in record.payload


@pytest.mark.parametrize("signer", [True, False], ids=["signed", "unsigned"])
def test_a_stored_hash_as_a_cookie_is_an_empty_session(
    per_user_store: SessionStore, monkeypatch: pytest.MonkeyPatch, signer: bool
) -> None:
    app = make_app(per_user_store, SESSION_USE_SIGNER=signer)
    client = client_of(app)
    client.post("/login/ann")
    client.post("/write")
    stored = stored_of(app, client)
    loaded = record_loads(monkeypatch, per_user_store)
    thief = client_of(app)
    thief.set_cookie("session", cookie_value(app, stored))
    assert read(thief) == {}
    assert thief.get("/me").data == b"anonymous"
    assert stored not in loaded  # never looked up as it is
    assert stored_key(stored) in loaded  # hashed again, found nowhere
    # Nothing was created under the hash of the hash either, and the
    # victim's session is untouched.
    thief.post("/write")
    assert cookie_key(app, thief) != stored
    assert read(client)["n"] == 1


def test_logs_never_show_a_cookie_key(
    per_user_store: SessionStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger
    app = make_app(per_user_store)
    legacy_key = new_session_key()
    per_user_store.create(legacy_record(legacy_key, {"_user_id": "ann"}))
    keys: list[str] = [legacy_key]
    old = legacy_client(app, legacy_key)
    assert old.get("/me").data == b"ann"
    clients = [client_of(app) for _ in range(3)]
    for client in clients:
        client.post("/write")
        keys.append(t.cast(str, cookie_key(app, client)))
        client.post("/login/ann")
        keys.append(t.cast(str, cookie_key(app, client)))
    # An undecodable payload: logged to the security logger.
    broken = cookie_key(app, clients[0])
    assert broken is not None
    record = per_user_store.load(stored_key(broken))
    assert record is not None
    per_user_store.save(
        Record(
            record.key,
            b"\xc1garbage",
            record.expires_at,
            record.version + 1,
            record.user_id,
            record.created_at,
            record.last_active_at,
        ),
        expected_version=record.version,
    )
    assert read(clients[0]) == {}
    clients[1].post("/revoke/ann", query_string={"keep": "1"})
    clients[1].post("/logout")
    ext_of(app).revoke("ann", app=app)
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "undecodable payload" in caplog.text
    assert "Revoked" in caplog.text
    for key in keys:
        assert key not in text
        assert key[:12] not in text
        assert cookie_value(app, key) not in text
        # Of a stored key, only a short prefix.
        assert stored_key(key) not in text
        assert stored_key(key)[:16] not in text


def test_a_legacy_record_is_moved_under_its_hash(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store)
    key = new_session_key()
    assert len(key) == 43
    per_user_store.create(legacy_record(key, {"_user_id": "ann", "n": 5}))
    client = legacy_client(app, key)
    assert read(client) == {"_user_id": "ann", "n": 5}
    assert per_user_store.load(key) is None  # the unhashed record is gone
    moved = per_user_store.load(stored_key(key))
    assert moved is not None
    # Backfilled into the index (load() need not return the per-user fields).
    [listed] = per_user_store.as_per_user().sessions_of("ann")  # type: ignore[union-attr]
    assert listed.key == stored_key(key) and listed.created_at is not None
    assert [info.id for info in ext_of(app).sessions_for("ann", app=app)] == [
        session_handle(stored_key(key))
    ]
    # Used again: found hashed, the same session, and it takes writes.
    assert client.get("/me").data == b"ann"
    assert client.post("/write").data == b"6"
    assert cookie_key(app, client) == key  # no log-in happened: same key
    assert read(client)["n"] == 6
    for layer in layers_of(per_user_store):
        assert layer.load(key) is None
        if isinstance(layer, MemoryStore):
            assert key not in layer._records


def test_an_anonymous_legacy_record_is_moved_unlisted(
    per_user_store: SessionStore,
) -> None:
    app = make_app(per_user_store)
    key = new_session_key()
    per_user_store.create(legacy_record(key, {"cart": [1, 2]}, expiry=600))
    client = legacy_client(app, key)
    assert read(client) == {"cart": [1, 2]}
    moved = per_user_store.load(stored_key(key))
    assert moved is not None and moved.user_id is None
    assert per_user_store.load(key) is None


def test_two_threads_reading_one_legacy_key(
    per_user_store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(per_user_store)
    key = new_session_key()
    per_user_store.create(legacy_record(key, {"_user_id": "ann", "n": 1}))
    # Both requests find the unhashed record before either moves it.
    barrier = threading.Barrier(2)
    original = per_user_store.load

    def load(stored: str) -> Record | None:
        record = original(stored)
        if stored == key:
            barrier.wait(10)
        return record

    monkeypatch.setattr(per_user_store, "load", load)
    results: list[dict[str, t.Any]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(read(legacy_client(app, key)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert results == [{"_user_id": "ann", "n": 1}] * 2
    monkeypatch.undo()
    assert per_user_store.load(key) is None
    assert per_user_store.load(stored_key(key)) is not None
    assert len(ext_of(app).sessions_for("ann", app=app)) == 1


def test_legacy_keys_off_stops_the_fallback(per_user_store: SessionStore) -> None:
    app = make_app(per_user_store, SESSION_LEGACY_KEYS=False)
    key = new_session_key()
    per_user_store.create(legacy_record(key, {"_user_id": "ann"}))
    client = legacy_client(app, key)
    assert read(client) == {}
    assert client.get("/me").data == b"anonymous"
    assert per_user_store.load(key) is not None  # left as it was
    assert per_user_store.load(stored_key(key)) is None
    assert ext_of(app).sessions_for("ann", app=app) == []


def test_only_a_key_of_the_legacy_length_is_looked_up_raw(
    per_user_store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(per_user_store)
    key = "k" * 44
    per_user_store.create(legacy_record(key, {"x": 1}))
    loaded = record_loads(monkeypatch, per_user_store)
    assert read(legacy_client(app, key)) == {}
    assert key not in loaded


def test_an_encrypted_legacy_record_still_opens_after_the_move(
    per_user_store: SessionStore,
) -> None:
    secret = generate_key()
    app = make_app(per_user_store, SESSION_ENCRYPTION_KEY=secret)
    key = new_session_key()
    per_user_store.create(
        legacy_record(key, {"_user_id": "ann", "n": 2}, cipher=PayloadCipher(secret))
    )
    client = legacy_client(app, key)
    assert read(client) == {"_user_id": "ann", "n": 2}
    moved = per_user_store.load(stored_key(key))
    assert moved is not None
    assert [info.id for info in ext_of(app).sessions_for("ann", app=app)] == [
        session_handle(stored_key(key))
    ]
    assert b"ann" not in moved.payload  # still sealed
    assert per_user_store.load(key) is None
    # A fresh request finds it hashed and opens it.
    again = legacy_client(app, key)
    assert read(again) == {"_user_id": "ann", "n": 2}
    assert again.post("/write").data == b"3"
    assert read(client)["n"] == 3
    # A log-in moves it to a fresh key, still sealed and still readable.
    again.post("/login/bob")
    assert read(again)["_user_id"] == "bob"
