"""The benchmarks run and check what they claim (a short run of each that
has a correctness target of its own; timings are never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_contention_benchmark_keeps_every_write(redis_url: str, tmp_path: Path) -> None:
    """A short ``python -m benchmarks contention`` run on SQLite and Redis:
    exit 0, no failed save, every writer's key at its number of saves, and
    with several writers the retries are counted."""
    out = tmp_path / "contention.json"
    env = {**os.environ, "TOWERSESS_REDIS_URL": redis_url}
    args = ["contention", "--stores", "sqlite,redis", "--writers", "1,4"]
    args += ["--saves", "6", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "target: no failed save and every write kept" in done.stdout
    rows: list[dict[str, t.Any]] = json.loads(out.read_text())["results"]
    assert [(r["store"], r["writers"]) for r in rows] == [
        ("sqlite", 1),
        ("sqlite", 4),
        ("redis", 1),
        ("redis", 4),
    ]
    for row in rows:
        assert row["saves"] == 6 * row["writers"]
        assert row["failed"] == 0 and row["all_kept"] is True
        assert row["raw_ms"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    # One writer never conflicts with itself.
    assert all(r["retries_per_save"] == 0 for r in rows if r["writers"] == 1)


def test_benchmark_usage_errors_name_the_option() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "contention", "--stores", "oracle"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unknown stores: oracle" in done.stderr


def test_per_user_benchmark_revokes_every_session(tmp_path: Path) -> None:
    """A short ``python -m benchmarks per-user`` run on memory and SQLite:
    exit 0, a log-in and a write timed, and each revoke ended exactly the
    sessions it filled (the benchmark asserts that itself)."""
    out = tmp_path / "per-user.json"
    args = ["per-user", "--stores", "memory,sqlite", "--rounds", "1"]
    args += ["--requests", "5", "--sessions", "3,30", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["results"]
    assert [row["store"] for row in rows] == ["memory", "sqlite"]
    for row in rows:
        assert row["login_us"] > 0 and row["write_us"] > 0
        assert set(row["revoke_all"]) == {"3", "30"}
