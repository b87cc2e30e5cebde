"""What every benchmark module shares: the machine line and the output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import typing as t

#: The servers the benchmarks use, as the test suite finds them.
SERVER_URLS = {
    "postgresql": os.environ.get(
        "TOWERSESS_POSTGRESQL_URL",
        "postgresql+psycopg2://postgres:postgres@127.0.0.1:5432/test",
    ),
    "mariadb": os.environ.get(
        "TOWERSESS_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
    ),
    "redis": os.environ.get("TOWERSESS_REDIS_URL", "redis://127.0.0.1:6379/0"),
}


def machine() -> str:
    """The machine, as the report's first line names it."""
    return (
        f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus,"
        f" Python {platform.python_version()}, {platform.system()}"
        f" {platform.release()}"
    )


def emit(result: dict[str, t.Any], text: str, ok: bool, json_path: str | None) -> int:
    """Print the report, save the results as JSON if asked; the exit code."""
    print(text)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if ok else 1


def store_names(
    parser: argparse.ArgumentParser,
    text: str,
    known: t.Iterable[str],
    what: str = "stores",
) -> list[str]:
    """The comma-separated ``--stores`` value (or another list of ``what``)
    as a list; an unknown name is a usage error."""
    stores = [s.strip() for s in text.split(",") if s.strip()]
    unknown = set(stores) - set(known)
    if unknown:
        parser.error(f"unknown {what}: {', '.join(sorted(unknown))}")
    return stores
