"""Write and read sessions with flask-towersess 0.1.0 (run by its Python).

Run by :class:`tests.legacy.LegacyPython` in the 0.1.0 virtualenv, never
imported by the tests: it imports nothing from this checkout.

.. code-block:: console

    $ python legacy_writer.py write STORE --secret-key KEY [--options JSON]
          [--config JSON] [--count N] [--kinds anonymous,logged_in,...]
    $ python legacy_writer.py read STORE --secret-key KEY --cookies JSON
          [--options JSON] [--config JSON] [--documents EXTJSON]

``STORE`` is a ``SESSION_STORE`` URL (``sqlite:///path``,
``postgresql://...``, ``mysql+pymysql://...``, ``redis://...``), or
``mongomock://`` for a mongomock collection living in this process only:
``write`` then prints its documents as canonical extended JSON
(``bson.json_util``), and ``read`` takes them with ``--documents``.
``--options`` is ``SESSION_STORE_OPTIONS``; ``--config`` more app config
(``PERMANENT_SESSION_LIFETIME`` in seconds).

``write`` builds a 0.1.0 app with ``SessionExt``, runs ``flask sessions
migrate`` through Flask's CLI runner, then writes ``--count`` sessions, each
through a request of its own test client, the kinds taken in turn, and reads
each back with 0.1.0. It prints JSON: ``migrate_output``, ``sessions`` (per
session: ``kind``, ``cookie_name``, ``cookie``, ``key``, ``set_cookie``,
``data``, ``expires_at``, ``version``, ``payload`` in base64, ``expiry_date``,
``permanent``) and for mongomock ``documents``.

``read`` serves one request per cookie and prints ``{"reads": [{"data",
"key", "new"}, ...]}``. Data is in the tagged JSON of ``encode_value``
(``tests/legacy.py`` decodes it).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import typing as t
import uuid
from datetime import date
from datetime import datetime
from datetime import time
from datetime import timedelta
from datetime import timezone
from decimal import Decimal

#: The kinds of session ``write`` makes, in turn.
KINDS = (
    "anonymous",
    "logged_in",
    "expiry_seconds",
    "expiry_datetime",
    "browser_close",
    "permanent",
    "rich",
)
#: Kinds written only when asked for.
EXTRA_KINDS = ("deep_tuples",)


def session_data(kind: str, n: int) -> dict[str, t.Any]:
    """What a session of ``kind`` holds (the ``n``-th written)."""
    from markupsafe import Markup

    cart = {"cart": ["sku-1", f"sku-{n}", n]}
    if kind == "logged_in":
        # What Flask-Login's login_user() puts in the session.
        return {"_user_id": f"u{n}", "_fresh": True, "_id": "a" * 128, **cart}
    if kind == "rich":
        return {
            "when": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc),
            "naive": datetime(2026, 1, 2, 3, 4, 5, 6),
            "day": date(2026, 1, 2),
            "at": time(12, 30, 1, 5),
            "span": timedelta(days=2, seconds=5, microseconds=7),
            "id": uuid.UUID(int=n + 1),
            "price": Decimal("19.99"),
            "tags": {"a", "b"},
            "frozen": frozenset({1, 2}),
            "pair": (1, "two"),
            "flashes": [("message", Markup("<b>saved</b>"))],
            "big": 2**70 + n,
            "blob": b"\x00\xffbytes",
            "nested": {"x": [1, 2.5, None, True], "y": {"z": "é"}},
        }
    if kind == "deep_tuples":
        # 40 tuples inside one another: each is an extension value.
        deep: t.Any = "bottom"
        for _ in range(40):
            deep = (deep,)
        return {"deep": deep, **cart}
    return cart


def _apply_expiry(session: t.Any, kind: str) -> None:
    if kind == "expiry_seconds":
        session.set_expiry(3600)
    elif kind == "expiry_datetime":
        session.set_expiry(datetime(2099, 12, 31, 23, 59, 59, tzinfo=timezone.utc))
    elif kind == "browser_close":
        session.set_expiry(0)
    elif kind == "permanent":
        session.permanent = True


# -- tagged JSON (the same rules as tests/legacy.py) ---------------------------


def encode_value(value: t.Any) -> t.Any:
    from markupsafe import Markup

    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        if isinstance(value, Markup):
            return {"$markup": str(value)}
        return value
    if isinstance(value, int):
        return value if -(2**53) < value < 2**53 else {"$int": str(value)}
    if isinstance(value, dict):
        return {"$dict": [[encode_value(k), encode_value(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode_value(v) for v in value]}
    if isinstance(value, frozenset):
        return {"$frozenset": sorted((encode_value(v) for v in value), key=repr)}
    if isinstance(value, set):
        return {"$set": sorted((encode_value(v) for v in value), key=repr)}
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, time):
        return {"$time": value.isoformat()}
    if isinstance(value, timedelta):
        return {"$timedelta": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"cannot encode {type(value).__qualname__}")


# -- the 0.1.0 app ---------------------------------------------------------------


def _check_version() -> None:
    import flask_towersess

    if flask_towersess.__version__ != "0.1.0":
        raise SystemExit(
            f"legacy_writer.py runs 0.1.0, not {flask_towersess.__version__}"
            f" ({flask_towersess.__file__})"
        )


def _mongomock_collection(documents: str | None) -> t.Any:
    import mongomock

    collection = mongomock.MongoClient().towersess_legacy.sessions
    if documents:
        from bson import json_util

        loaded = json_util.loads(documents)
        if loaded:
            collection.insert_many(loaded)
    return collection


def make_app(args: argparse.Namespace, collection: t.Any = None) -> t.Any:
    from flask import Flask
    from flask import session

    from flask_towersess import SessionExt

    app = Flask("legacy_writer")
    app.config.update(SECRET_KEY=args.secret_key, TESTING=True)
    config = json.loads(args.config)
    if "PERMANENT_SESSION_LIFETIME" in config:
        config["PERMANENT_SESSION_LIFETIME"] = timedelta(
            seconds=config["PERMANENT_SESSION_LIFETIME"]
        )
    app.config.update(config)
    options = json.loads(args.options)
    if collection is not None:
        from flask_towersess.stores.mongodb import MongoDBStore

        SessionExt(app, store=MongoDBStore(collection, **options))
    else:
        app.config["SESSION_STORE"] = args.store
        app.config["SESSION_STORE_OPTIONS"] = options
        SessionExt(app)

    @app.post("/write/<kind>/<int:n>")
    def write(kind: str, n: int) -> str:
        session.update(session_data(kind, n))
        _apply_expiry(session, kind)
        return "ok"

    @app.get("/read")
    def read() -> dict[str, t.Any]:
        data = dict(session)
        return {
            "data": encode_value(data),
            "key": session.session_key,
            "new": session.new,
            "expiry_date": session.get_expiry_date().isoformat(),
            "permanent": session.permanent,
        }

    return app


def _cookie_name(app: t.Any) -> str:
    return str(app.config["SESSION_COOKIE_NAME"])


def write(args: argparse.Namespace) -> dict[str, t.Any]:
    collection = _mongomock_collection(None) if args.store == "mongomock://" else None
    app = make_app(args, collection)
    result = app.test_cli_runner().invoke(args=["sessions", "migrate"])
    if result.exit_code != 0:
        raise SystemExit(f"flask sessions migrate failed: {result.output}")
    kinds = args.kinds.split(",") if args.kinds else list(KINDS)
    name = _cookie_name(app)
    interface = app.session_interface
    store = interface.store
    sessions = []
    for n in range(args.count):
        kind = kinds[n % len(kinds)]
        client = app.test_client()
        response = client.post(f"/write/{kind}/{n}")
        assert response.status_code == 200, response.data
        cookie = client.get_cookie(name)
        assert cookie is not None, response.headers
        with app.test_request_context():
            key, _ = interface._key_from_cookie(app, cookie.value)
        assert key is not None
        record = store.load(key)
        assert record is not None
        # Read back through 0.1.0: what it made of its own session.
        back = client.get("/read").get_json()
        assert back["key"] == key, back
        sessions.append(
            {
                "kind": kind,
                "cookie_name": name,
                "cookie": cookie.value,
                "key": key,
                "set_cookie": response.headers["Set-Cookie"],
                "data": back["data"],
                "expires_at": record.expires_at.isoformat(),
                "version": record.version,
                "payload": base64.b64encode(record.payload).decode("ascii"),
                "expiry_date": back["expiry_date"],
                "permanent": back["permanent"],
            }
        )
    out: dict[str, t.Any] = {"migrate_output": result.output, "sessions": sessions}
    if collection is not None:
        from bson import json_util

        out["documents"] = json_util.dumps(
            list(collection.find()), json_options=json_util.CANONICAL_JSON_OPTIONS
        )
    store.close()
    return out


def read(args: argparse.Namespace) -> dict[str, t.Any]:
    collection = None
    if args.store == "mongomock://":
        collection = _mongomock_collection(args.documents)
    app = make_app(args, collection)
    name = _cookie_name(app)
    reads = []
    for cookie in json.loads(args.cookies):
        client = app.test_client()
        client.set_cookie(name, cookie)
        response = client.get("/read")
        assert response.status_code == 200, response.data
        reads.append(response.get_json())
    app.session_interface.store.close()
    return {"reads": reads}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["write", "read"])
    parser.add_argument("store")
    parser.add_argument("--secret-key", required=True)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--config", default="{}")
    parser.add_argument("--count", type=int, default=len(KINDS))
    parser.add_argument("--kinds", default="")
    parser.add_argument("--cookies", default="[]")
    parser.add_argument("--documents", default=None)
    args = parser.parse_args(argv)
    _check_version()
    result = write(args) if args.command == "write" else read(args)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
