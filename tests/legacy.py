"""flask-towersess 0.1.0, from the git history, in a virtualenv of its own
(a pytest plugin, listed in ``conftest.py``).

The ``legacy_python`` fixture (session scope) gives a :class:`LegacyPython`:
a virtualenv under pytest's tmp dir with the package of commit
:data:`LEGACY_COMMIT` pip-installed in it, built once per test session. The
virtualenv has no dependencies of its own: a ``.pth`` file puts the
site-packages of the Python running the tests after its own, so Flask,
SQLAlchemy, redis-py, mongomock... are the ones the tests use, and nothing is
downloaded. Only ``flask_towersess`` differs; the fixture checks that the one
imported there is 0.1.0, from the virtualenv's own site-packages.

:meth:`LegacyPython.write_sessions` and :meth:`LegacyPython.read_sessions`
run ``tests/legacy_writer.py`` there: a 0.1.0 app writing sessions through
real requests, and reading them back. Session data crosses the process
boundary in the tagged JSON form of :func:`encode_value` and
:func:`decode_value` (the writer has its own copy of the encoder).

The commit must be in the clone's history (CI clones it whole): without it
the fixture fails, it never skips.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import typing as t
import uuid
from datetime import date
from datetime import datetime
from datetime import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from markupsafe import Markup

#: The commit of the 0.1.0 release.
LEGACY_COMMIT = "2212bc3"
LEGACY_VERSION = "0.1.0"

#: The repository the tests run from.
ROOT = Path(__file__).resolve().parent.parent
#: The script the legacy Python runs (see its docstring for the commands).
WRITER = Path(__file__).resolve().parent / "legacy_writer.py"

#: What ``git archive`` extracts: what ``pip install`` needs to build 0.1.0.
_ARCHIVED = ["setup.py", "setup.cfg", "README.rst", "flask_towersess"]


@dataclasses.dataclass(frozen=True)
class LegacySession:
    """One session a 0.1.0 app wrote (see :meth:`LegacyPython.write_sessions`)."""

    #: What the writer made of it: anonymous, logged_in, expiry_seconds, ...
    kind: str
    cookie_name: str
    #: The cookie's value as the 0.1.0 app set it: ``key.signature``.
    cookie: str
    #: The raw session key (43 characters of URL-safe base64).
    key: str
    #: The whole ``Set-Cookie`` header the 0.1.0 app sent.
    set_cookie: str
    #: The session's data, as the 0.1.0 app read it back.
    data: dict[str, t.Any]
    #: The record as 0.1.0's store returned it.
    expires_at: datetime
    version: int
    payload: bytes
    #: What 0.1.0 says of the expiry: ``get_expiry_date()``, ``permanent``.
    expiry_date: datetime
    permanent: bool


@dataclasses.dataclass(frozen=True)
class LegacyWrite:
    """The result of :meth:`LegacyPython.write_sessions`."""

    sessions: list[LegacySession]
    #: What ``flask sessions migrate`` printed under 0.1.0.
    migrate_output: str
    #: MongoDB only: the collection's documents, as canonical extended JSON
    #: (``bson.json_util``), for the test to insert into its own collection.
    documents_json: str | None


@dataclasses.dataclass(frozen=True)
class LegacyPython:
    """The 0.1.0 virtualenv."""

    #: Its Python executable.
    python: Path
    #: Where the 0.1.0 source was extracted (what was pip-installed).
    source: Path
    #: The ``flask_towersess`` package directory that Python imports.
    package_dir: Path

    def run(self, *args: str, timeout: float = 120) -> str:
        """Run ``tests/legacy_writer.py ARGS`` in the legacy Python; its stdout.

        ``-I`` (isolated): no ``PYTHONPATH`` (which points at this checkout
        when the tests run from one), no user site-packages, and not the
        script's own folder on ``sys.path``.
        """
        proc = subprocess.run(
            [str(self.python), "-I", str(WRITER), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.source,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"legacy_writer.py {args[0] if args else ''} failed"
                f" ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}"
            )
        return proc.stdout

    def write_sessions(
        self,
        store: str,
        *,
        secret_key: str,
        options: t.Mapping[str, t.Any] | None = None,
        config: t.Mapping[str, t.Any] | None = None,
        count: int = 12,
        kinds: t.Sequence[str] | None = None,
    ) -> LegacyWrite:
        """Run ``flask sessions migrate`` and write ``count`` sessions with 0.1.0.

        :param store: ``SESSION_STORE``: ``sqlite:///path``,
            ``postgresql://...``, ``mysql+pymysql://...``, ``redis://...``;
            or ``mongomock://`` for a mongomock collection in the writer's
            process, whose documents come back in
            :attr:`LegacyWrite.documents_json`.
        :param options: ``SESSION_STORE_OPTIONS`` (``table``, ``key_prefix``).
        :param config: more app config (``SESSION_ENCRYPTION_KEY``,
            ``SESSION_COOKIE_NAME``, ``PERMANENT_SESSION_LIFETIME`` seconds...).
        :param kinds: the kinds of session written in turn (see
            ``legacy_writer.KINDS``); all of the default ones by default.
        """
        args = [
            "write",
            store,
            "--secret-key",
            secret_key,
            "--options",
            json.dumps(dict(options or {})),
            "--config",
            json.dumps(dict(config or {})),
            "--count",
            str(count),
        ]
        if kinds is not None:
            args += ["--kinds", ",".join(kinds)]
        result = json.loads(self.run(*args))
        return LegacyWrite(
            sessions=[_session(item) for item in result["sessions"]],
            migrate_output=result["migrate_output"],
            documents_json=result.get("documents"),
        )

    def read_sessions(
        self,
        store: str,
        cookies: t.Sequence[str],
        *,
        secret_key: str,
        options: t.Mapping[str, t.Any] | None = None,
        config: t.Mapping[str, t.Any] | None = None,
        documents_json: str | None = None,
    ) -> list[dict[str, t.Any]]:
        """Serve one request per cookie with 0.1.0; what each request saw.

        Each item: ``data`` (decoded), ``key`` (the session key 0.1.0 found,
        ``None`` for none) and ``new``. With ``mongomock://``,
        ``documents_json`` (canonical extended JSON) fills the writer's
        collection first.
        """
        args = [
            "read",
            store,
            "--secret-key",
            secret_key,
            "--options",
            json.dumps(dict(options or {})),
            "--config",
            json.dumps(dict(config or {})),
            "--cookies",
            json.dumps(list(cookies)),
        ]
        if documents_json is not None:
            args += ["--documents", documents_json]
        result = json.loads(self.run(*args))
        return [
            {**item, "data": decode_value(item["data"])} for item in result["reads"]
        ]


def _session(item: dict[str, t.Any]) -> LegacySession:
    return LegacySession(
        kind=item["kind"],
        cookie_name=item["cookie_name"],
        cookie=item["cookie"],
        key=item["key"],
        set_cookie=item["set_cookie"],
        data=decode_value(item["data"]),
        expires_at=datetime.fromisoformat(item["expires_at"]),
        version=item["version"],
        payload=base64.b64decode(item["payload"]),
        expiry_date=datetime.fromisoformat(item["expiry_date"]),
        permanent=item["permanent"],
    )


# -- tagged JSON: the writer's encode_value() has the same rules ---------------


def encode_value(value: t.Any) -> t.Any:
    """``value`` as JSON, with the types a session holds tagged."""
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


def decode_value(value: t.Any) -> t.Any:
    """The inverse of :func:`encode_value`."""
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    ((tag, inner),) = value.items()
    decoders: dict[str, t.Callable[[t.Any], t.Any]] = {
        "$markup": Markup,
        "$int": int,
        "$dict": lambda v: {decode_value(k): decode_value(x) for k, x in v},
        "$tuple": lambda v: tuple(decode_value(x) for x in v),
        "$set": lambda v: {decode_value(x) for x in v},
        "$frozenset": lambda v: frozenset(decode_value(x) for x in v),
        "$datetime": datetime.fromisoformat,
        "$date": date.fromisoformat,
        "$time": time.fromisoformat,
        "$timedelta": lambda v: timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
        "$uuid": uuid.UUID,
        "$decimal": Decimal,
        "$bytes": base64.b64decode,
    }
    return decoders[tag](inner)


# -- building the virtualenv ---------------------------------------------------


def _clean_env() -> dict[str, str]:
    """This environment without what would make a Python import this
    checkout's code or another environment's packages."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE"):
        env.pop(name, None)
    env.pop("VIRTUAL_ENV", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _check(
    cmd: list[str], cwd: Path, **kwargs: t.Any
) -> subprocess.CompletedProcess[t.Any]:
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        env=_clean_env(),
        stdin=subprocess.DEVNULL,
        **kwargs,
    )
    if proc.returncode != 0:
        out = (
            proc.stdout
            if isinstance(proc.stdout, str)
            else proc.stdout.decode(errors="replace")
        )
        err = (
            proc.stderr
            if isinstance(proc.stderr, str)
            else proc.stderr.decode(errors="replace")
        )
        pytest.fail(
            f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{err}\n{out}"
        )
    return proc


def extract_legacy_source(dest: Path, commit: str = LEGACY_COMMIT) -> Path:
    """Extract what 0.1.0 needs to be built from ``commit`` into ``dest``.

    Fails (never skips) when git or the commit is missing: a shallow clone
    cannot test the upgrade from 0.1.0.
    """
    try:
        found = subprocess.run(
            ["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"],
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        pytest.fail("git is needed to extract flask-towersess 0.1.0 from the history")
    if found.returncode != 0:
        pytest.fail(
            f"commit {commit} (flask-towersess {LEGACY_VERSION}) is not in the git"
            f" history of {ROOT}: the upgrade tests need a full clone"
            f" (git fetch --unshallow). {found.stderr.decode(errors='replace')}"
        )
    archive = _check(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, *_ARCHIVED], ROOT
    )
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - Pythons without extraction filters
            tar.extractall(dest)  # noqa: S202 - our own git archive
    return dest


def build_legacy_python(root: Path, commit: str = LEGACY_COMMIT) -> LegacyPython:
    """Extract 0.1.0 into ``root/src`` and pip-install it into ``root/venv``.

    Offline: the virtualenv reaches this Python's site-packages through a
    ``.pth`` file (after its own), and pip installs with ``--no-index
    --no-deps --no-build-isolation``, building with the setuptools found
    there (the test extra's, which builds wheels by itself).
    """
    source = extract_legacy_source(root / "src", commit)
    venv = root / "venv"
    # No pip of its own (ensurepip's setuptools could shadow the one that
    # builds wheels): this Python's pip installs into it, with --python.
    _check([sys.executable, "-m", "venv", "--without-pip", str(venv)], root)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    venv_site = Path(
        _check(
            [
                str(python),
                "-I",
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            root,
            text=True,
        ).stdout.strip()
    )
    # Plain directory lines: the directories go on sys.path, after the
    # venv's own site-packages, but their own .pth files are not run, so an
    # editable install of this checkout found there cannot take over.
    ours = dict.fromkeys(
        p
        for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])
        if Path(p).resolve() != venv_site.resolve()
    )
    (venv_site / "zz_towersess_test_deps.pth").write_text(
        "".join(f"{p}\n" for p in ours), encoding="utf-8"
    )
    _check(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            str(source),
        ],
        root,
    )
    probe = _check(
        [
            str(python),
            "-I",
            "-c",
            "import json, flask_towersess as f;"
            " print(json.dumps([f.__version__, f.__file__]))",
        ],
        root,
        text=True,
    )
    version, init_file = json.loads(probe.stdout)
    package_dir = Path(init_file).resolve().parent
    assert version == LEGACY_VERSION, (version, init_file)
    assert package_dir.parent == venv_site.resolve(), (
        f"the legacy Python imports flask_towersess from {package_dir}, not from"
        f" its own site-packages {venv_site}"
    )
    return LegacyPython(python=python, source=source, package_dir=package_dir)


@pytest.fixture(scope="session")
def legacy_python(tmp_path_factory: pytest.TempPathFactory) -> LegacyPython:
    """flask-towersess 0.1.0 in a virtualenv of its own, built once per run."""
    return build_legacy_python(tmp_path_factory.mktemp("legacy-0.1.0"))
