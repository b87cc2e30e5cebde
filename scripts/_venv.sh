#!/usr/bin/env bash
# Create .venv (if missing) and install the project into it in editable mode.
#
# Sourced by scripts/test.sh and scripts/demo.sh:
#     . scripts/_venv.sh && ensure_venv test,redis
# or run directly (the Makefile does):
#     scripts/_venv.sh lint
#
# The install is skipped when a stamp in .venv says the requested extras were
# installed after the last change to setup.cfg/setup.py. Set PYTHON to choose
# the interpreter that creates the venv (default: python3, must be >= 3.9).

_VENV_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${LOG_PREFIX:=venv}"
# shellcheck source=scripts/_lib.sh
. "$_VENV_ROOT/scripts/_lib.sh"

VENV=$_VENV_ROOT/.venv
_VENV_STAMP=$VENV/.towersess-installed

_venv_make() {
    local py=${PYTHON:-python3}
    if ! have "$py" || ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        # Debian ships venv/ensurepip separately from python3.
        if [[ $py == python3 ]] && is_debian; then
            apt_install python3 python3-venv
        else
            die "$py with the venv module is needed to create .venv"
        fi
    fi
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
        die "Python >= 3.9 is needed, $py is $("$py" --version 2>&1)"
    log "creating .venv with $("$py" --version 2>&1)"
    "$py" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip </dev/null
}

# _venv_fresh EXTRAS: the stamp is newer than the packaging files, lists every
# extra in EXTRAS (comma separated), and the project is still installed.
_venv_fresh() {
    local extra
    [[ -f $_VENV_STAMP && $_VENV_STAMP -nt $_VENV_ROOT/setup.cfg && $_VENV_STAMP -nt $_VENV_ROOT/setup.py ]] ||
        return 1
    for extra in ${1//,/ }; do
        grep -qxF -- "$extra" "$_VENV_STAMP" || return 1
    done
    "$VENV/bin/python" -c 'import importlib.metadata as m; m.version("flask-towersess")' >/dev/null 2>&1
}

# ensure_venv [EXTRAS]: make .venv exist and hold flask-towersess[EXTRAS].
ensure_venv() {
    local extras=${1:-} extra
    if [[ -e $VENV ]] && ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
        log ".venv is broken (its Python does not run); recreating it"
        rm -rf "$VENV"
    fi
    [[ -e $VENV ]] || _venv_make
    _venv_fresh "$extras" && return 0

    # Keep the extras of an earlier install that is still valid, so that
    # `make demo` after `make test` does not trigger a second install.
    local all=$extras
    if [[ -f $_VENV_STAMP && $_VENV_STAMP -nt $_VENV_ROOT/setup.cfg && $_VENV_STAMP -nt $_VENV_ROOT/setup.py ]]; then
        all=$all,$(paste -sd, "$_VENV_STAMP")
    fi
    all=$(tr ',' '\n' <<<"$all" | sed '/^$/d' | sort -u | paste -sd, -)

    log "installing flask-towersess${all:+[$all]} into .venv (editable)"
    rm -f "$_VENV_STAMP"
    # (The filter hides setuptools' generic "Editable installation" notice.)
    (cd "$_VENV_ROOT" && PYTHONWARNINGS='ignore:Editable installation' \
        "$VENV/bin/python" -m pip install -q -e ".${all:+[$all]}" </dev/null) ||
        die "pip install failed"
    # A stamp that lists the installed extras, one per line.
    if [[ -n $all ]]; then
        tr ',' '\n' <<<"$all" >"$_VENV_STAMP"
    else
        : >"$_VENV_STAMP"
    fi
}

# Run directly: scripts/_venv.sh [EXTRAS]
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    ensure_venv "${1:-}"
fi
