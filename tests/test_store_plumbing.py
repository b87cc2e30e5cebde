"""The helpers every store shares: key shortening, the epoch codec, URL
locations and driver-error translation."""

from __future__ import annotations

import logging
from datetime import datetime
from datetime import timezone

import pytest

from flask_towersess.errors import ConfigurationError
from flask_towersess.errors import StoreUnavailable
from flask_towersess.errors import TowerSessError
from flask_towersess.stores import MemoryStore
from flask_towersess.stores import Migrating
from flask_towersess.stores import Purging
from flask_towersess.stores._epoch import MAX_EPOCH_MICROS
from flask_towersess.stores._epoch import from_epoch_micros
from flask_towersess.stores._epoch import to_epoch_micros
from flask_towersess.stores._errors import ErrorTranslation
from flask_towersess.stores._errors import raise_translated
from flask_towersess.stores._errors import store_unavailable
from flask_towersess.stores._urls import url_location
from flask_towersess.stores.base import short_key


def test_short_key_shows_a_prefix_only() -> None:
    key = "A" * 6 + "secret-rest-of-the-key"
    assert short_key(key) == "AAAAAA..."


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1970, 1, 1, tzinfo=timezone.utc),
        datetime(2026, 12, 3, 1, 2, 3, 456789, tzinfo=timezone.utc),
        datetime(1, 1, 1, tzinfo=timezone.utc),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
    ],
)
def test_epoch_micros_round_trip_exactly(moment: datetime) -> None:
    assert from_epoch_micros(to_epoch_micros(moment)) == moment


def test_epoch_micros_out_of_range_is_none() -> None:
    assert from_epoch_micros(MAX_EPOCH_MICROS + 1) is None
    assert from_epoch_micros(-(2**63)) is None


def test_url_location_has_no_credentials_path_or_query() -> None:
    url = "mongodb://app:p@ss/w@db1:27017,db2/main?authSource=admin#x"
    assert url_location(url) == "mongodb://db1:27017,db2"
    assert url_location("not a url") == "<not a URL>"


class _Down(Exception):
    pass


class _Refused(Exception):
    pass


class _Bug(Exception):
    pass


def _translate(exc: Exception) -> TowerSessError | None:
    if isinstance(exc, _Down):
        return StoreUnavailable()
    if isinstance(exc, _Refused):
        return ConfigurationError("SESSION_STORE (x): fix it")
    return None


@pytest.mark.parametrize(
    ("raised", "expected"),
    [(_Down, StoreUnavailable), (_Refused, ConfigurationError), (_Bug, _Bug)],
)
def test_error_translation(raised: type[Exception], expected: type[Exception]) -> None:
    translation = ErrorTranslation((_Down, _Refused, _Bug), _translate)
    with pytest.raises(expected) as info, translation:
        raise raised("driver says no")
    if expected is not raised:
        assert isinstance(info.value.__cause__, raised)
    with pytest.raises(expected):
        try:
            raise raised("driver says no")
        except Exception as exc:
            raise_translated(exc, _translate(exc))


def test_error_translation_ignores_other_exceptions_and_runs_before() -> None:
    calls: list[str] = []
    translation = ErrorTranslation(
        (_Down,), _translate, before=lambda: calls.append("check")
    )
    with pytest.raises(KeyError), translation:
        raise KeyError("not a driver error")
    with translation:
        pass
    assert calls == ["check", "check"]


def test_store_unavailable_logs_the_reason_not_the_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("flask_towersess.stores.test")
    with caplog.at_level(logging.WARNING, log.name):
        error = store_unavailable("redis://h:1/0", "connection refused", log)
    assert "connection refused" in caplog.text and "redis://h:1/0" in caplog.text
    assert "connection refused" not in str(error.description)


def test_misconfiguration_is_logged_once_per_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    log = logging.getLogger("flask_towersess.stores.test")
    with caplog.at_level(logging.ERROR, log.name):
        for _ in range(3):
            error = store._misconfigured("db://h", "bad password", log)
    assert str(error) == "SESSION_STORE (db://h): bad password"
    assert len(caplog.records) == 1


def test_capabilities() -> None:
    store = MemoryStore()
    assert isinstance(store, Purging) and store.as_purging() is store
    assert not isinstance(store, Migrating) and store.as_migrating() is None
    store.ping()  # a store that answers


def test_record_init_matches_its_fields() -> None:
    # Record's __init__ is written by hand (for speed): a field added to the
    # class must be added to it too, with the same default, in order.
    import dataclasses
    import inspect

    from flask_towersess.stores.base import Record

    params = list(inspect.signature(Record.__init__).parameters.values())[1:]
    fields = dataclasses.fields(Record)
    assert [p.name for p in params] == [f.name for f in fields]
    for param, field in zip(params, fields):
        assert param.default == (
            inspect.Parameter.empty
            if field.default is dataclasses.MISSING
            else field.default
        ), field.name
    moment = datetime(2030, 1, 1, tzinfo=timezone.utc)
    values = {f.name: f"v-{f.name}" for f in fields}
    values["expires_at"] = moment
    record = Record(**values)  # type: ignore[arg-type]
    assert dataclasses.asdict(record) == values
    assert record == dataclasses.replace(record)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.key = "other"  # type: ignore[misc]
