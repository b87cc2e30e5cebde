#!/usr/bin/env bash
# Run the benchmarks (benchmarks/, see docs/performance.rst) with everything
# they need: .venv with the bench extra (gunicorn), PostgreSQL, MariaDB and
# Redis (scripts/services.sh), and wrk for the load and http benchmarks
# (installed with apt-get on Debian or Ubuntu, as root, when missing).
# Arguments go to `python -m benchmarks`, e.g.
#   scripts/bench.sh                      per-request cost, every store
#   scripts/bench.sh purge --stores sqlite
#   scripts/bench.sh load --duration 5
#   scripts/bench.sh http --stores postgresql --rounds 1
#   scripts/bench.sh serializer --json results.json
#
# TOWERSESS_SKIP_SERVICES=1 leaves the servers alone (they are elsewhere:
# set TOWERSESS_POSTGRESQL_URL and the others, as for the tests).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LOG_PREFIX="bench"
# shellcheck source=scripts/_venv.sh
. scripts/_venv.sh
ensure_venv bench,redis,postgres,mysql

if [[ ${TOWERSESS_SKIP_SERVICES:-} != 1 ]]; then
    scripts/services.sh
fi
# The two benchmarks that drive gunicorn with wrk.
if [[ ${1:-} == load || ${1:-} == http ]] && ! have wrk; then
    apt_install wrk
fi

exec .venv/bin/python -m benchmarks "$@"
