"""Helpers for testing apps that use flask-towersess.

With Flask's cookie session, a test can decode the session cookie to see
what a view stored. With server-side sessions the cookie holds only a
signed key; the data is in the store. The helpers in the first section read
a test client's session the way the app itself does on the client's next
request, so such a test keeps working with one line changed::

    from flask_towersess.testing import session_data

    assert session_data(client)["cart"] == ["apple"]

The second section is for people who write a store:
:class:`StoreContract`, the test suite every store must pass (it imports
pytest, on first use)::

    from flask_towersess.testing import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store(self):
            return MyStore()

.. versionadded:: 0.2
"""

from __future__ import annotations

import importlib
import sys
import typing as t

from werkzeug.http import dump_cookie

from .session import ServerSession

if t.TYPE_CHECKING:
    from flask import Flask
    from flask.sessions import SessionMixin
    from flask.testing import FlaskClient

    from ._store_contract import StoreContract
    from ._store_contract import make_record

__all__ = ["StoreContract", "make_record", "session_data", "session_key"]

#: The names that need pytest, imported on first use (see __getattr__).
_CONTRACT_NAMES = frozenset({"StoreContract", "make_record"})
_CONTRACT_MODULE = "flask_towersess._store_contract"


def __getattr__(name: str) -> t.Any:
    # The store contract suite imports pytest, which an app's tests that
    # only read sessions (session_data, session_key) may run without.
    if name not in _CONTRACT_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _CONTRACT_MODULE not in sys.modules:
        import pytest

        # So that a failing contract test shows the values compared, as
        # asserts in the test modules themselves do. Only before the first
        # import: pytest warns about a module imported already.
        pytest.register_assert_rewrite(_CONTRACT_MODULE)
    module = importlib.import_module(_CONTRACT_MODULE)
    value = getattr(module, name)
    globals()[name] = value
    return value


# -- Reading a test client's session -------------------------------------------
#
# These read only: nothing is written to the store, no expiry is refreshed,
# and the client's cookies are left as they are.


def _open_session(client: FlaskClient, app: Flask | None) -> SessionMixin | None:
    """Open the session ``client`` would send with its next request.

    The read half of Flask's ``session_transaction()``: the session cookie
    the client would send with a request to the cookie's path (on
    ``SERVER_NAME``, or ``localhost``) goes into a test request, and the
    app's session interface opens the session from it, so the cookie name,
    the signature and ``SECRET_KEY_FALLBACKS`` are handled exactly as in a
    request. ``None`` if the interface opened no session (no
    ``SECRET_KEY``).
    """
    if app is None:
        app = client.application
    interface = app.session_interface
    scheme = app.config.get("PREFERRED_URL_SCHEME") or "http"
    host = app.config.get("SERVER_NAME") or "localhost"
    path = interface.get_cookie_path(app)
    headers = {}
    cookie = _cookie_sent(client, interface.get_cookie_name(app), host, path)
    if cookie is not None:
        # The name=value part of a Set-Cookie header is the form a request
        # sends it in, quoted where the value needs it.
        pair = dump_cookie(interface.get_cookie_name(app), cookie).partition(";")[0]
        headers["Cookie"] = pair
    ctx = app.test_request_context(
        path, base_url=f"{scheme}://{host}/", headers=headers
    )
    with ctx:
        return interface.open_session(app, ctx.request)


def _cookie_sent(client: FlaskClient, name: str, host: str, path: str) -> str | None:
    """The value of the cookie ``name`` the client sends to ``host`` and
    ``path``, through the client's public ``get_cookie()``: the most
    specific match, as a browser puts it first (the longest path, then the
    host itself before the domains above it)."""
    hostname = host.partition(":")[0]
    labels = hostname.split(".")
    domains = [".".join(labels[i:]) for i in range(len(labels))]
    parts = path.rstrip("/").split("/")
    paths = ["/".join(parts[:i]) or "/" for i in range(len(parts), 0, -1)]
    if path.endswith("/") and path != "/":
        paths.insert(0, path)
    for cookie_path in paths:
        for domain in domains:
            cookie = client.get_cookie(name, domain=domain, path=cookie_path)
            if cookie is None:
                continue
            # A cookie without a Domain attribute goes to its own host only.
            if domain == hostname or not cookie.origin_only:
                return cookie.value
    return None


def session_data(client: FlaskClient, app: Flask | None = None) -> dict[str, t.Any]:
    """The data of the session a test client holds, read from the store.

    :param client: a Flask test client (``app.test_client()``) that keeps
        cookies.
    :param app: the app whose session interface reads the cookie; by
        default the client's own app.
    :return: a copy of the session's data, decoded as the app decodes it
        (serializer, encryption at rest); ``{}`` when the client has no
        session cookie, or one that names no live session (a forged or
        expired one, or a session ended by a log-out).

    This replaces decoding the cookie in tests written for Flask's cookie
    session. It reads only: the session's expiry is not refreshed and the
    client's cookies are not changed. It works with any session interface
    (with Flask's own cookie session it returns what the cookie holds), so
    a test can run on both.

    >>> from flask import Flask, session
    >>> from flask_towersess import SessionExt
    >>> from flask_towersess.testing import session_data
    >>> app = Flask(__name__)
    >>> app.config.update(SECRET_KEY="change me", SESSION_STORE="memory://")
    >>> _ = SessionExt(app)
    >>> @app.post("/cart/<item>")
    ... def add(item):
    ...     session["cart"] = session.get("cart", []) + [item]
    ...     return "added"
    >>> client = app.test_client()
    >>> session_data(client)
    {}
    >>> client.post("/cart/apple").text
    'added'
    >>> session_data(client)
    {'cart': ['apple']}

    .. versionadded:: 0.2
    """
    session = _open_session(client, app)
    if session is None:
        return {}
    return dict(session)


def session_key(client: FlaskClient, app: Flask | None = None) -> str | None:
    """The key of the session a test client holds, from its cookie.

    :param client: a Flask test client that keeps cookies.
    :param app: the app whose session interface reads the cookie; by
        default the client's own app.
    :return: the session key the client's cookie carries, once its
        signature checks out; ``None`` when the client has no session
        cookie, or a forged or malformed one.
    :raises TypeError: the app's session is not a flask-towersess one.

    Whether the store still holds a session under the key is not checked
    (no store call is made). The store holds a session under the hash of
    its cookie's key, not the key itself: ask it with
    :func:`~flask_towersess.session.stored_key`
    (``store.exists(stored_key(key))``). Use it to see a session move to a
    fresh key, at a log-in for example, and its old record go.

    >>> from flask import Flask, session
    >>> from flask_towersess import SessionExt
    >>> from flask_towersess.session import stored_key
    >>> from flask_towersess.testing import session_key
    >>> app = Flask(__name__)
    >>> app.secret_key = "change me"
    >>> sessions = SessionExt(app, store="memory://")
    >>> @app.post("/visit")
    ... def visit():
    ...     session["visited"] = True
    ...     return "ok"
    >>> @app.post("/login")
    ... def login():
    ...     session.cycle_key()
    ...     return "ok"
    >>> client = app.test_client()
    >>> session_key(client) is None
    True
    >>> _ = client.post("/visit")
    >>> before = session_key(client)
    >>> _ = client.post("/login")
    >>> after = session_key(client)
    >>> store = sessions.get_store(app)
    >>> after != before
    True
    >>> store.exists(stored_key(before)), store.exists(stored_key(after))
    (False, True)

    .. versionadded:: 0.2
    """
    session = _open_session(client, app)
    if session is None:
        return None
    if not isinstance(session, ServerSession):
        raise TypeError(
            f"the app's session is a {type(session).__qualname__}, not a"
            " flask-towersess ServerSession: set up SessionExt(app) first"
        )
    return session.session_key
