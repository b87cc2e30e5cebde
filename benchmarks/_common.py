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


def names_from(
    known: t.Iterable[str], what: str = "stores"
) -> t.Callable[[str], list[str]]:
    """An argparse ``type``: a comma-separated list of names, each one of
    ``known``; an unknown name is a usage error that names it."""
    allowed = frozenset(known)

    def names(text: str) -> list[str]:
        chosen = [name.strip() for name in text.split(",") if name.strip()]
        unknown = set(chosen) - allowed
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what}: {', '.join(sorted(unknown))}"
            )
        return chosen

    return names


def positive_ints(text: str) -> list[int]:
    """An argparse ``type``: a comma-separated list of whole numbers of at
    least 1 (``"1,4,8"``), not empty."""
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return numbers


def benchmark_parser(
    prog: str,
    doc: str,
    *,
    stores: t.Iterable[str] | None = None,
    default_stores: t.Iterable[str] | None = None,
    stores_help: str | None = None,
) -> argparse.ArgumentParser:
    """A benchmark's command line: ``doc``'s first paragraph as its
    description and a ``--json PATH`` option; with ``stores`` (the names it
    knows), a ``--stores`` option that parses to a list of them, all of them
    by default or ``default_stores``."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    if stores is not None:
        known = list(stores)
        default = known if default_stores is None else list(default_stores)
        parser.add_argument(
            "--stores",
            type=names_from(known),
            default=",".join(default),
            help=stores_help
            or f"comma-separated: {', '.join(known)} (default: %(default)s)",
        )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return parser
