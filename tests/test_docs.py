"""The documentation cannot drift from the code.

- docs/configuration.rst documents every key of ``CONFIG_DEFAULTS`` (and no
  other key of ours), each with the right default, plus the Flask settings
  the session interface reads, with Flask's defaults.
- Every config key any page names exists.
- Every ``tests/...py::test_name`` a page cites as evidence exists.
- docs/cli.rst shows each command's ``--help`` exactly as it is printed.

The examples themselves are run by ``sphinx-build -b doctest`` (in CI).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import typing as t
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask

from flask_towersess.cli import sessions_command
from flask_towersess.extension import CONFIG_DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: Flask's own settings that ServerSessionInterface reads.
FLASK_KEYS = {
    "SECRET_KEY",
    "SECRET_KEY_FALLBACKS",
    "PERMANENT_SESSION_LIFETIME",
    "SESSION_REFRESH_EACH_REQUEST",
    "SESSION_COOKIE_NAME",
    "SESSION_COOKIE_DOMAIN",
    "SESSION_COOKIE_PATH",
    "SESSION_COOKIE_HTTPONLY",
    "SESSION_COOKIE_SECURE",
    "SESSION_COOKIE_SAMESITE",
    "SESSION_COOKIE_PARTITIONED",
}

#: Flask-Session's settings, which only the migration guide may name.
FLASK_SESSION_KEYS = {
    "SESSION_TYPE",
    "SESSION_REDIS",
    "SESSION_KEY_PREFIX",
    "SESSION_SQLALCHEMY",
    "SESSION_SQLALCHEMY_TABLE",
    "SESSION_SQLALCHEMY_SCHEMA",
    "SESSION_SQLALCHEMY_BIND_KEY",
    "SESSION_SQLALCHEMY_SEQUENCE",
    "SESSION_MONGODB",
    "SESSION_MONGODB_DB",
    "SESSION_MONGODB_COLLECT",
    "SESSION_MEMCACHED",
    "SESSION_CACHELIB",
    "SESSION_FILE_DIR",
    "SESSION_DYNAMODB",
    "SESSION_ID_LENGTH",
    "SESSION_SERIALIZATION_FORMAT",
    "SESSION_CLEANUP_N_REQUESTS",
}

_CONFVAL = re.compile(r"^\.\. confval:: (\S+)\s*$")
_OPTION = re.compile(r"^\s+:(\w+):\s*(.*?)\s*$")
_KEY_MENTION = re.compile(
    r"\b(SESSION_[A-Z0-9_]*[A-Z0-9]|PERMANENT_SESSION_LIFETIME|SECRET_KEY(?:_FALLBACKS)?)\b"
)
_TEST_REFERENCE = re.compile(r"\btests/(test_\w+\.py)::(\w+)")


def documented_keys(path: Path) -> dict[str, str]:
    """Each ``.. confval::`` of the page, with its ``:default:`` text."""
    keys: dict[str, str] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        match = _CONFVAL.match(line)
        if match is None:
            continue
        name = match.group(1)
        assert name not in keys, f"{name} is documented twice"
        default = None
        for option_line in lines[number + 1 :]:
            option = _OPTION.match(option_line)
            if option is None:
                break
            if option.group(1) == "default":
                default = option.group(2)
        assert default is not None, f"{name} has no :default:"
        keys[name] = default
    return keys


def default_value(text: str) -> t.Any:
    """The Python value a ``:default:`` shows: ````expr````, where expr is a
    literal or a ``timedelta(...)`` call with literal keyword arguments."""
    match = re.fullmatch(r"``(.+)``", text)
    assert match is not None, f"default {text!r} is not a ``literal``"
    node = ast.parse(match.group(1), mode="eval").body
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name) and node.func.id == "timedelta"
        assert not node.args, "write timedelta defaults with keyword arguments"
        return timedelta(
            **{k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
        )
    return ast.literal_eval(node)


@pytest.fixture(scope="module")
def configuration() -> dict[str, str]:
    return documented_keys(DOCS / "configuration.rst")


def test_every_config_key_is_documented(configuration: dict[str, str]) -> None:
    ours = set(configuration) - FLASK_KEYS
    assert ours == set(CONFIG_DEFAULTS), (
        f"undocumented: {sorted(set(CONFIG_DEFAULTS) - ours)};"
        f" documented but not in CONFIG_DEFAULTS: {sorted(ours - set(CONFIG_DEFAULTS))}"
    )


@pytest.mark.parametrize("key", sorted(CONFIG_DEFAULTS))
def test_documented_default_matches(configuration: dict[str, str], key: str) -> None:
    if key not in configuration:
        pytest.fail(f"{key} is not documented in docs/configuration.rst")
    assert default_value(configuration[key]) == CONFIG_DEFAULTS[key]


def test_flask_settings_are_documented(configuration: dict[str, str]) -> None:
    assert set(configuration) >= FLASK_KEYS, sorted(FLASK_KEYS - set(configuration))


@pytest.mark.parametrize("key", sorted(FLASK_KEYS))
def test_flask_defaults_are_flasks(configuration: dict[str, str], key: str) -> None:
    if key not in configuration:
        pytest.fail(f"{key} is not documented in docs/configuration.rst")
    assert default_value(configuration[key]) == Flask.default_config.get(key)


def doc_files() -> list[Path]:
    return [*sorted(DOCS.glob("*.rst")), ROOT / "README.rst", ROOT / "CHANGES.rst"]


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_every_key_named_exists(path: Path) -> None:
    known = set(CONFIG_DEFAULTS) | FLASK_KEYS | set(Flask.default_config)
    if path.name == "migrating.rst":
        known |= FLASK_SESSION_KEYS
    named = set(_KEY_MENTION.findall(path.read_text(encoding="utf-8")))
    assert named <= known, f"unknown settings: {sorted(named - known)}"


def functions_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_cited_tests_exist(path: Path) -> None:
    for filename, name in _TEST_REFERENCE.findall(path.read_text(encoding="utf-8")):
        test_file = ROOT / "tests" / filename
        assert test_file.is_file(), f"{path.name} cites missing tests/{filename}"
        assert name in functions_in(test_file), (
            f"{path.name} cites tests/{filename}::{name}, which does not exist"
        )


def test_confval_parser() -> None:
    assert default_value("``timedelta(minutes=5)``") == timedelta(minutes=5)
    assert default_value('``"msgpack"``') == "msgpack"
    assert default_value("``{}``") == {}
    with pytest.raises(AssertionError):
        default_value("5")


#: A ``--help`` example of docs/cli.rst: ``$ flask sessions ... --help`` and
#: the indented lines after it, up to the end of the block.
_HELP_EXAMPLE = re.compile(
    r"^    \$ flask (sessions(?: [a-z-]+)?) --help\n((?:    .*\n|\n)*?)(?=\S|\Z)",
    re.MULTILINE,
)


def documented_help() -> dict[str, str]:
    """The ``--help`` texts docs/cli.rst shows, by command."""
    text = (DOCS / "cli.rst").read_text(encoding="utf-8")
    return {
        command: "".join(line[4:] + "\n" for line in body.rstrip().splitlines())
        for command, body in _HELP_EXAMPLE.findall(text)
    }


def test_cli_help_is_documented(tmp_path: Path) -> None:
    """docs/cli.rst shows every command's ``--help`` exactly as the real
    ``flask`` command prints it on an 80-column terminal."""
    # The console script, not `python -m flask`: it names itself "flask" in
    # the usage line, as a user sees it.
    flask_script = Path(sys.executable).with_name("flask")
    documented = documented_help()
    commands = {"sessions", *(f"sessions {name}" for name in sessions_command.commands)}
    assert set(documented) == commands, "commands without their --help in cli.rst"
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(ROOT)}
    env.pop("FLASK_APP", None)
    for command, text in documented.items():
        printed = subprocess.run(
            [str(flask_script), *command.split(), "--help"],
            cwd=tmp_path,  # no app.py or wsgi.py for Flask to find
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert text == printed, f"docs/cli.rst: `flask {command} --help` differs"
