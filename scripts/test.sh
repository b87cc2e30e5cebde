#!/usr/bin/env bash
# Run the whole test suite: create/refresh .venv, make sure PostgreSQL, MariaDB
# and Redis are running (scripts/services.sh) and Chromium is installed for the
# browser tests (scripts/browser.sh), then run pytest with any arguments given,
# e.g. scripts/test.sh -x -k redis tests/test_stores.py
#
# Backends, overridable from the environment:
#   TOWERSESS_POSTGRESQL_URL  postgresql+psycopg2://postgres:postgres@127.0.0.1:5432/test
#   TOWERSESS_MYSQL_URL       mysql+pymysql://root@127.0.0.1:3306/test
#   TOWERSESS_REDIS_URL       redis://127.0.0.1:6379/0
#   TOWERSESS_MONGODB_URL     unset: MongoDB tests use mongomock
#   TOWERSESS_SKIP_SERVICES=1 do not run scripts/services.sh (servers are elsewhere)
#   TOWERSESS_CHROMIUM        the browser tests' Chromium (default /usr/bin/chromium)
# Without Chromium (it could not be installed) the browser tests skip, or fail
# when TOWERSESS_REQUIRE_SERVICES is set, as in CI.
# Paths given as arguments are relative to the repository root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LOG_PREFIX="test"
# shellcheck source=scripts/_venv.sh
. scripts/_venv.sh
ensure_venv test,browser,lint,redis,postgres,mysql,mongodb

export TOWERSESS_POSTGRESQL_URL=${TOWERSESS_POSTGRESQL_URL:-postgresql+psycopg2://postgres:postgres@127.0.0.1:5432/test}
export TOWERSESS_MYSQL_URL=${TOWERSESS_MYSQL_URL:-mysql+pymysql://root@127.0.0.1:3306/test}
export TOWERSESS_REDIS_URL=${TOWERSESS_REDIS_URL:-redis://127.0.0.1:6379/0}

if [[ ${TOWERSESS_SKIP_SERVICES:-} != 1 ]]; then
    scripts/services.sh
fi
# Flask's own test suite, for tests/test_flask_suite.py: unpacked from the
# sdist of the installed Flask. Not fatal here: the test reports it missing.
flask_version=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("flask"))')
flask_src=.venv/flask-src
if [[ ! -f $flask_src/flask-$flask_version/tests/test_basic.py ]]; then
    log "fetching Flask $flask_version's test suite (its sdist)"
    mkdir -p "$flask_src"
    if .venv/bin/python -m pip download -q --no-deps --no-binary :all: \
        -d "$flask_src" "flask==$flask_version" </dev/null; then
        tar -xzf "$flask_src/flask-$flask_version.tar.gz" -C "$flask_src" ||
            log "could not unpack Flask's sdist"
    else
        log "could not download Flask's sdist: tests/test_flask_suite.py will skip (or fail in CI)"
    fi
fi

# Not fatal here: tests/test_browser.py reports a missing browser itself.
scripts/browser.sh </dev/null || log "no Chromium: the browser tests will skip (or fail in CI)"

exec .venv/bin/python -m pytest "$@"
