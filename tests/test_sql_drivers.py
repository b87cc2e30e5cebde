"""Which driver a database URL that names none gets, as docs/stores.rst
says: psycopg2 then psycopg for ``postgresql://`` and ``postgres://``,
PyMySQL then mysqlclient for ``mysql://`` and ``mariadb://``."""

from __future__ import annotations

import importlib.util
import typing as t

import pytest
import sqlalchemy as sa

from flask_towersess.errors import ConfigurationError
from flask_towersess.stores.sqlalchemy import _with_installed_driver
from flask_towersess.stores.sqlalchemy import create_engine


def driver_of(url: str) -> str:
    # Building an engine connects to nothing.
    engine = create_engine(url)
    try:
        return engine.url.drivername
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "drivername"),
    [
        ("postgresql://app@127.0.0.1/app", "postgresql+psycopg2"),
        ("postgres://app@127.0.0.1/app", "postgresql+psycopg2"),
        ("mysql://app@127.0.0.1/app", "mysql+pymysql"),
        ("mariadb://app@127.0.0.1/app", "mariadb+pymysql"),
        # A driver named is the driver used.
        ("postgresql+psycopg2://app@127.0.0.1/app", "postgresql+psycopg2"),
        ("mysql+pymysql://app@127.0.0.1/app", "mysql+pymysql"),
    ],
)
def test_url_without_a_driver_gets_the_extras_driver(url: str, drivername: str) -> None:
    pytest.importorskip("psycopg2")
    pytest.importorskip("pymysql")
    assert driver_of(url) == drivername


def hide_modules(monkeypatch: pytest.MonkeyPatch, *hidden: str) -> None:
    find_spec = importlib.util.find_spec

    def find_spec_without(name: str, *args: t.Any) -> t.Any:
        return None if name in hidden else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec_without)


@pytest.mark.parametrize(
    ("url", "hidden", "fallback", "drivername"),
    [
        ("postgresql://app@h/app", "psycopg2", "psycopg", "postgresql+psycopg"),
        ("postgres://app@h/app", "psycopg2", "psycopg", "postgresql+psycopg"),
        ("mysql://app@h/app", "pymysql", "MySQLdb", "mysql+mysqldb"),
    ],
)
def test_second_choice_driver(
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    hidden: str,
    fallback: str,
    drivername: str,
) -> None:
    # The second choice need not be installed here: only the URL is checked,
    # no engine built.
    find_spec = importlib.util.find_spec

    def find_spec_with(name: str, *args: t.Any) -> t.Any:
        if name == hidden:
            return None
        if name == fallback:
            return object()
        return find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec_with)
    chosen = _with_installed_driver(sa.engine.make_url(url))
    assert chosen.drivername == drivername


@pytest.mark.parametrize(
    ("url", "hidden", "extra"),
    [
        ("postgresql://app@h/app", ("psycopg2", "psycopg"), "postgres"),
        ("postgres://app@h/app", ("psycopg2", "psycopg"), "postgres"),
        ("mysql://app@h/app", ("pymysql", "MySQLdb"), "mysql"),
        ("mariadb://app@h/app", ("pymysql", "MySQLdb"), "mysql"),
    ],
)
def test_no_driver_installed(
    monkeypatch: pytest.MonkeyPatch, url: str, hidden: tuple[str, ...], extra: str
) -> None:
    hide_modules(monkeypatch, *hidden)
    with pytest.raises(ConfigurationError, match=rf"flask-towersess\[{extra}\]"):
        create_engine(url)
