"""Flask's own test suite passes with flask-towersess as the session.

The test suite of the installed Flask (``scripts/test.sh`` unpacks it from
Flask's sdist into ``.venv/flask-src``) runs twice, in subprocesses: once as
it is, once with every app's ``session_interface`` replaced by a
:class:`~flask_towersess.ServerSessionInterface`
(``tests/flask_suite_plugin.py``). The same tests must pass both times,
except the one documented departure: ``test_session_refresh_vary``, since a
request that never uses the session does not read it, so it neither
refreshes the cookie nor adds ``Vary: Cookie`` (docs/sessions.rst).

Comparing with the baseline run, rather than expecting zero failures,
keeps this test about the session: a Flask test that fails here for other
reasons (an optional dependency not installed) fails in both runs.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from .services import service_unavailable

ROOT = Path(__file__).resolve().parent.parent
FLASK_VERSION = importlib.metadata.version("flask")
FLASK_TESTS = Path(
    os.environ.get(
        "TOWERSESS_FLASK_TESTS",
        ROOT / ".venv" / "flask-src" / f"flask-{FLASK_VERSION}" / "tests",
    )
)

#: Flask tests that may fail with server-side sessions, and why.
DEPARTURES = {
    # A request that does not use the session does not read it.
    "tests.test_basic::test_session_refresh_vary",
}


def run_flask_suite(tmp_path: Path, server_sessions: bool) -> tuple[set[str], int]:
    """Run Flask's suite; return the ids of the failed tests and how many ran."""
    report = tmp_path / f"report-{int(server_sessions)}.xml"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TOWERSESS_FLASK_SUITE_SERVER_SESSIONS": "1" if server_sessions else "0",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests",
            "-p",
            "tests.flask_suite_plugin",
            "-p",
            "no:cacheprovider",
            "--ignore=tests/type_check",
            f"--junitxml={report}",
            f"--basetemp={tmp_path / f'base{int(server_sessions)}'}",
            "-q",
        ],  # fmt: skip
        cwd=FLASK_TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    failed: set[str] = set()
    ran = 0
    for case in ET.parse(report).iter("testcase"):
        ran += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed.add(f"{case.get('classname')}::{case.get('name')}")
    return failed, ran


def test_flask_suite_passes_with_server_sessions(tmp_path: Path) -> None:
    if not (FLASK_TESTS / "test_basic.py").is_file():
        service_unavailable(
            f"Flask's test suite is not at {FLASK_TESTS}: scripts/test.sh unpacks"
            f" it from the sdist of flask=={FLASK_VERSION}"
        )
    baseline, ran = run_flask_suite(tmp_path, server_sessions=False)
    assert ran > 300  # the suite ran, not an import error
    ours, ran_ours = run_flask_suite(tmp_path, server_sessions=True)
    assert ran_ours == ran
    assert ours - baseline == DEPARTURES
    # Nothing passes only because of us either.
    assert baseline - ours == set()
