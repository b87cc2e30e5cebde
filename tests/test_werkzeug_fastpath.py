"""What :mod:`flask_towersess._werkzeug_fastpath` assumes of werkzeug, checked
against the installed release.

If one of these fails after a werkzeug upgrade, sessions still work when
the descriptor changed (the lookup falls back to ``request.cookies``), but a
changed parsing rule would make the session cookie read differently from
``request.cookies``: check what the release changed, and update the adapter
(or drop it for ``request.cookies.get()``).
"""

from __future__ import annotations

import importlib.metadata
import typing as t

import pytest
from flask import Flask
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from werkzeug.http import parse_cookie
from werkzeug.sansio.request import Request as SansIORequest
from werkzeug.test import EnvironBuilder
from werkzeug.utils import cached_property

from flask_towersess import _werkzeug_fastpath
from flask_towersess._werkzeug_fastpath import CHECKED_WERKZEUG
from flask_towersess._werkzeug_fastpath import fast_path_enabled
from flask_towersess._werkzeug_fastpath import request_cookie

INSTALLED = (
    f"werkzeug {importlib.metadata.version('werkzeug')}"
    f" (adapter checked on {CHECKED_WERKZEUG})"
)


def a_request(header: str, request_class: type[t.Any] | None = None) -> t.Any:
    cls = request_class or Flask(__name__).request_class
    return cls(EnvironBuilder(headers={"Cookie": header}).get_environ())


def test_the_cookies_descriptor_is_what_the_adapter_assumes() -> None:
    descriptor = SansIORequest.__dict__.get("cookies")
    assert isinstance(descriptor, cached_property), (
        f"{INSTALLED}: Request.cookies is {descriptor!r}, not a cached_property"
    )
    assert fast_path_enabled(), INSTALLED
    request = a_request("session=abc; other=1")
    # Flask's request class inherits it unchanged...
    assert type(request).cookies is descriptor, INSTALLED
    # ... and the parsed value lands in the instance's __dict__.
    assert "cookies" not in request.__dict__
    parsed = request.cookies
    assert request.__dict__.get("cookies") is parsed, INSTALLED


def test_a_value_already_parsed_or_set_is_used() -> None:
    request = a_request("session=from-header")
    request.cookies = parse_cookie("session=set-by-the-app")
    assert request_cookie(request, "session") == "set-by-the-app"


def test_a_request_class_with_its_own_cookies_is_asked() -> None:
    class OwnCookies(Flask(__name__).request_class):  # type: ignore[misc,name-defined]
        @property
        def cookies(self) -> dict[str, str]:  # type: ignore[override]
            return {"session": "own"}

    assert request_cookie(a_request("session=header", OwnCookies), "session") == "own"


def test_an_unknown_werkzeug_falls_back_to_request_cookies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_werkzeug_fastpath, "_COOKIES_DESCRIPTOR", None)
    assert not fast_path_enabled()
    request = a_request("session=abc; other=1")
    assert request_cookie(request, "session") == "abc"
    assert "cookies" in request.__dict__  # went through request.cookies


# Cookie headers built from the characters werkzeug's parser treats
# specially, around the names "session" and "sessionx".
_cookie_header_pieces = st.lists(
    st.sampled_from(
        ["session", "sessionx", "other", "=", ";", " ", "\t", '"', "\\", "abc", "x.y"]
    ),
    max_size=14,
).map("".join)


@given(header=_cookie_header_pieces)
@settings(max_examples=400)
def test_session_cookie_lookup_agrees_with_werkzeug(header: str) -> None:
    request = a_request(header)
    for name in ("session", "sessionx"):
        assert request_cookie(request, name) == parse_cookie(header).get(name), (
            INSTALLED
        )
