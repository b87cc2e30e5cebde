"""What every benchmark module shares: the machine line and the output."""

from __future__ import annotations

import json
import os
import platform
import typing as t


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
