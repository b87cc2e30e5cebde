#!/usr/bin/env bash
# Run the example app (examples/app.py) on the zero-config SQLite store:
# no database server needed. Arguments go to `flask run`, e.g.
#     scripts/demo.sh --port 8000 --debug
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LOG_PREFIX=demo
# shellcheck source=scripts/_venv.sh
. scripts/_venv.sh
ensure_venv

exec .venv/bin/flask --app examples/app.py run "$@"
