# shellcheck shell=bash
# Small helpers shared by the scripts in this directory. Source it; don't run it.

# Prefix for messages; each script sets its own before sourcing.
: "${LOG_PREFIX:=towersess}"

log() { printf '%s: %s\n' "$LOG_PREFIX" "$*"; }
die() { printf '%s: error: %s\n' "$LOG_PREFIX" "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
is_root() { [[ $(id -u) -eq 0 ]]; }
is_debian() { [[ -f /etc/debian_version ]] && have apt-get; }

# apt_install PKG...: install Debian packages without prompts (we may have no
# stdin). Runs `apt-get update` once per process. Needs root on Debian.
_APT_UPDATED=
apt_install() {
    if ! is_root || ! is_debian; then
        die "missing: $* (install these packages, or run this as root on Debian/Ubuntu so it can apt-get them)"
    fi
    local out
    out=$(mktemp)
    log "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if [[ -z $_APT_UPDATED ]]; then
        if ! apt-get update -q >"$out" 2>&1; then
            tail -n 20 "$out" >&2
            rm -f "$out"
            die "apt-get update failed"
        fi
        _APT_UPDATED=1
    fi
    if ! apt-get install -y -q --no-install-recommends "$@" </dev/null >"$out" 2>&1; then
        tail -n 30 "$out" >&2
        rm -f "$out"
        die "apt-get install $* failed"
    fi
    rm -f "$out"
}
