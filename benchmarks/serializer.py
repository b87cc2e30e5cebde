"""Encode and decode time of a typical session payload.

A session of about 1 KB with mixed types (datetimes, a UUID, Decimals,
Markup, a tuple, a set, nested dicts, Flask's ``_flashes`` list of tuples) is
encoded and decoded by :class:`~flask_towersess.serializers.MsgPackSerializer`
in the session layer's envelope ``{"data": ...}``. The baseline is plain
``msgpack.packb`` / ``msgpack.unpackb`` of the same data turned into plain
types first (datetimes, UUIDs, Decimals and Markup to ``str``, tuples and sets
to lists), in the same envelope: what storing it without keeping the types
would cost. For reference, ``plain convert+packb`` also times that
conversion (done in Python by :func:`to_plain`), which a store keeping plain
types would pay on every save.

Cases are interleaved (each repeat times every case once, in turn) and the
median of the repeats is reported.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import typing as t
import uuid
from datetime import date
from datetime import datetime
from datetime import timezone
from decimal import Decimal

import msgpack
from markupsafe import Markup

from flask_towersess.serializers import MsgPackSerializer

from ._common import benchmark_parser
from ._common import emit
from ._common import machine as _machine


def typical_session() -> dict[str, t.Any]:
    """What a logged-in user's session of a shop or an admin site holds."""
    return {
        "_user_id": "4242",
        "_fresh": True,
        "_id": "9f2c" * 32,  # Flask-Login's session identifier: 128 hex chars
        "csrf_token": "a3f5c0e1d9b84c7f8e6d5c4b3a2f1e0d9c8b7a6f",
        "user": {
            "id": 4242,
            "name": "Ada Lovelace",
            "email": "ada@example.org",
            "roles": ["admin", "editor"],
            "verified": True,
        },
        "login_at": datetime(2024, 5, 17, 9, 30, 12, 345678, tzinfo=timezone.utc),
        "last_seen": datetime(2024, 5, 17, 10, 2, 7, 123456),
        "birthday": date(1815, 12, 10),
        "org_id": uuid.UUID("6f1c2b9e-3d4a-4f5b-8c7d-9e0f1a2b3c4d"),
        "cart": {
            "items": [
                {"sku": "BK-1843-NOTES", "qty": 1, "price": Decimal("24.50")},
                {"sku": "PN-0001-QUILL", "qty": 3, "price": Decimal("3.99")},
                {"sku": "IN-0002-BLACK", "qty": 2, "price": Decimal("7.25")},
            ],
            "total": Decimal("50.97"),
            "currency": "GBP",
            "updated_at": datetime(2024, 5, 17, 10, 1, 59, 987654, tzinfo=timezone.utc),
        },
        "recently_viewed": (1201, 1187, 1190, 1044, 1311, 1002, 1205, 1199),
        "feature_flags": {"beta-search", "new-checkout", "dark-mode"},
        "prefs": {
            "theme": "dark",
            "lang": "en-GB",
            "tz": "Europe/London",
            "page_size": 50,
            "notifications": {"email": True, "sms": False, "digest": "weekly"},
        },
        "_flashes": [
            ("message", Markup("<b>Welcome back</b>, Ada!")),
            ("info", "Your cart was saved."),
            ("warning", Markup("Your card expires in <em>30 days</em>.")),
        ],
        "search": {"q": "analytical engine", "page": 2, "filters": ["books", "new"]},
        "ratio": 0.75,
        "nonce": b"\x8f\x13\x02\xa7\x5c\xe0\x19\x44\x6b\xd2\x0e\x91\x37\xc8\x5a\xf4",
    }


def to_plain(value: t.Any) -> t.Any:
    """The same data in types msgpack stores natively (types are lost)."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(to_plain(v) for v in value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, Decimal, Markup)):
        return str(value)
    return value


class Case:
    def __init__(self, name: str, func: t.Callable[[], t.Any]) -> None:
        self.name = name
        self.func = func
        self.timings: list[float] = []

    def run(self, number: int) -> None:
        func = self.func
        started = time.perf_counter()
        for _ in range(number):
            func()
        self.timings.append((time.perf_counter() - started) / number)

    @property
    def median_us(self) -> float:
        return statistics.median(self.timings) * 1e6


def run(*, repeats: int, number: int, warmup: int) -> dict[str, t.Any]:
    serializer = MsgPackSerializer()
    state = {"data": typical_session()}
    plain_state = {"data": to_plain(state["data"])}

    payload = serializer.dumps(state)
    plain_payload = msgpack.packb(plain_state, use_bin_type=True)
    if serializer.loads(payload) != state:
        raise AssertionError("MsgPackSerializer did not round-trip the session")

    cases = [
        Case("towersess dumps", lambda: serializer.dumps(state)),
        Case("plain packb", lambda: msgpack.packb(plain_state, use_bin_type=True)),
        Case(
            "plain convert+packb",
            lambda: msgpack.packb({"data": to_plain(state["data"])}, use_bin_type=True),
        ),
        Case("towersess loads", lambda: serializer.loads(payload)),
        Case("plain unpackb", lambda: msgpack.unpackb(plain_payload, raw=False)),
    ]
    for case in cases:
        case.run(warmup)
        case.timings.clear()
    for _ in range(repeats):
        for case in cases:
            case.run(number)
    medians = {c.name: c.median_us for c in cases}
    encode = medians["towersess dumps"] / medians["plain packb"]
    decode = medians["towersess loads"] / medians["plain unpackb"]
    round_trip = (medians["towersess dumps"] + medians["towersess loads"]) / (
        medians["plain packb"] + medians["plain unpackb"]
    )
    convert = medians["towersess dumps"] / medians["plain convert+packb"]
    return {
        "machine": _machine(),
        "load_average": os.getloadavg(),
        "msgpack": msgpack.version,
        "repeats": repeats,
        "number": number,
        "payload_bytes": {"towersess": len(payload), "plain": len(plain_payload)},
        "medians_us": medians,
        "spread_us": {
            c.name: [min(c.timings) * 1e6, max(c.timings) * 1e6] for c in cases
        },
        "ratios": {
            "encode": encode,
            "decode": decode,
            "round_trip": round_trip,
            "encode_vs_convert_and_pack": convert,
        },
    }


def report(result: dict[str, t.Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in result["load_average"])
    sizes = result["payload_bytes"]
    version = ".".join(str(x) for x in result["msgpack"])
    lines = [
        f"machine: {result['machine']}; load average {load}",
        f"msgpack {version}; {result['repeats']} repeats x {result['number']} calls",
        f"payload: towersess {sizes['towersess']} bytes, plain {sizes['plain']} bytes",
        "",
        f"{'case':<20} {'median us':>10} {'min us':>8} {'max us':>8}",
    ]
    for name, median in result["medians_us"].items():
        low, high = result["spread_us"][name]
        lines.append(f"{name:<20} {median:>10.2f} {low:>8.2f} {high:>8.2f}")
    r = result["ratios"]
    lines.append("")
    lines.append(
        f"towersess / plain: encode {r['encode']:.2f}x, decode {r['decode']:.2f}x,"
        f" round trip {r['round_trip']:.2f}x"
    )
    lines.append(
        f"towersess dumps / plain convert+packb: {r['encode_vs_convert_and_pack']:.2f}x"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("python -m benchmarks serializer", __doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--number", type=int, default=2000, help="calls per timing")
    parser.add_argument("--warmup", type=int, default=500)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.number < 1 or args.warmup < 0:
        parser.error("--repeats and --number must be at least 1")
    result = run(repeats=args.repeats, number=args.number, warmup=args.warmup)
    return emit(result, report(result), True, args.json)


if __name__ == "__main__":
    sys.exit(main())
