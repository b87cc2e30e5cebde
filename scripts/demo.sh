#!/usr/bin/env bash
# Run the example app (examples/app.py) on the zero-config SQLite store:
# no database server needed. Arguments go to `flask run`, e.g.
#     scripts/demo.sh --port 8000 --debug
# To try another store, set SESSION_STORE; the driver it needs is installed:
#     SESSION_STORE=redis://127.0.0.1:6379/0 scripts/demo.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LOG_PREFIX=demo
# shellcheck source=scripts/_venv.sh
. scripts/_venv.sh
# The demo needs Flask-Login (the `demo` extra), plus the store's driver.
extras=demo
case ${SESSION_STORE:-} in
    redis* | unix*) extras+=,redis ;;
    postgres*) extras+=,postgres ;;
    mysql* | mariadb*) extras+=,mysql ;;
    mongodb*) extras+=,mongodb ;;
esac
ensure_venv "$extras"

exec .venv/bin/flask --app examples/app.py run "$@"
