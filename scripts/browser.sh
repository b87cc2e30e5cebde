#!/usr/bin/env bash
# Make sure the browser the browser tests (tests/test_browser.py) drive is
# installed: Debian's `chromium` at /usr/bin/chromium, or the binary named by
# $TOWERSESS_CHROMIUM. When it is missing, install it with apt-get (Debian or
# Ubuntu, as root). Playwright is told to use this binary: it never downloads
# a browser of its own. Idempotent; prints one line.
#
# Usage: scripts/browser.sh
set -euo pipefail

LOG_PREFIX=browser
# shellcheck source=scripts/_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

CHROMIUM=${TOWERSESS_CHROMIUM:-/usr/bin/chromium}

case ${1:-} in
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    "") ;;
    *) die "unexpected argument '$1' (see --help)" ;;
esac

if [[ ! -x $CHROMIUM ]]; then
    [[ $CHROMIUM == /usr/bin/chromium ]] ||
        die "TOWERSESS_CHROMIUM=$CHROMIUM is not an executable file"
    # Debian's package; on Ubuntu `chromium` may be a wrapper around a snap,
    # which does not work here: install Debian's or set TOWERSESS_CHROMIUM.
    apt_install chromium
    [[ -x $CHROMIUM ]] || die "apt-get installed chromium, but there is no $CHROMIUM"
fi
log "chromium: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM (version unknown)")"
