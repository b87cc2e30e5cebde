"""``python -m benchmarks [NAME] [options]``: NAME is one of requests, purge,
load, http, serializer, contention, per-user.

Without a benchmark name, runs ``requests`` (the per-request overhead
benchmark). ``python -m benchmarks NAME --help`` lists a benchmark's options.
"""

from __future__ import annotations

import importlib
import sys

from .requests import main

#: Benchmark name -> module (under this package) with a ``main(argv)``.
BENCHMARKS = {
    "requests": ".requests",
    "purge": ".purge",
    "load": ".load",
    "http": ".http",
    "serializer": ".serializer",
    "contention": ".contention",
    "per-user": ".per_user",
}


def dispatch(argv: list[str]) -> int:
    if argv and argv[0] in BENCHMARKS:
        name, rest = argv[0], argv[1:]
    else:
        if argv[:1] in (["-h"], ["--help"]):
            print(
                f"usage: python -m benchmarks [{'|'.join(BENCHMARKS)}] [options]\n"
                "(no name: requests; its options follow)\n"
            )
        return int(main(argv))
    module = importlib.import_module(BENCHMARKS[name], __package__)
    return int(module.main(rest))


if __name__ == "__main__":
    sys.exit(dispatch(sys.argv[1:]))
