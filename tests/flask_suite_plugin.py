"""pytest plugin: run Flask's own test suite with flask-towersess sessions.

Loaded with ``-p tests.flask_suite_plugin`` by tests/test_flask_suite.py,
in a pytest run over Flask's test suite (from the sdist of the installed
Flask). Every Flask app it creates gets a :class:`ServerSessionInterface` on
a memory store instead of Flask's cookie session: an extension written for
Flask's session must not notice the difference, and neither must Flask.

Without ``TOWERSESS_FLASK_SUITE_SERVER_SESSIONS=1`` it only makes Flask's
conftest run on this pytest (the baseline run).
"""

from __future__ import annotations

import os

import _pytest.monkeypatch

# Flask 3.1's conftest uses a name pytest 9 no longer has.
if not hasattr(_pytest.monkeypatch, "notset"):
    _pytest.monkeypatch.notset = _pytest.monkeypatch.NOTSET  # type: ignore[attr-defined]

if os.environ.get("TOWERSESS_FLASK_SUITE_SERVER_SESSIONS") == "1":
    import flask

    from flask_towersess import ServerSessionInterface
    from flask_towersess.stores import MemoryStore

    flask.Flask.session_interface = ServerSessionInterface(MemoryStore())
