#!/usr/bin/env bash
# Pinned, cached installer for the browser tests of warren's web UI
# (tests/ui/browser.mjs, run by tests/tests/ui.rs).
#
#   tests/ui/install.sh [--dir DIR | DIR]
#
# Installs:
#   - Debian's `chromium` (and fonts-dejavu-core, so pages render text the same
#     everywhere), with apt-get, only when /usr/bin/chromium is missing (as root).
#     Playwright's own browser download is never used (`npx playwright install`
#     needs a CDN this machine cannot reach): playwright-core drives this one.
#   - the npm packages pinned in tests/ui/package-lock.json (playwright-core,
#     axe-core), with `npm ci`, into DIR/node_modules. DIR defaults to
#     $REPO/target/ui-node (a positional DIR must contain a '/').
#
# A stamp, DIR/.stamp, holds the sha256 of the lock file: when it matches (and
# the packages are there) nothing is done, so a warm run takes well under a
# second and needs no network. Changing package-lock.json reinstalls.
#
# Needs: Node >= 20 + npm on PATH, the npm registry (first run only), Debian apt
# (only when chromium is missing).
set -Eeuo pipefail

CHROMIUM=/usr/bin/chromium
APT_PACKAGES=(chromium fonts-dejavu-core)

# ---- arguments ---------------------------------------------------------------
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DIR=$REPO/target/ui-node
while [ $# -gt 0 ]; do
    case $1 in
        --dir) DIR=${2:?--dir needs a directory}; shift 2; continue ;;
        --dir=*) DIR=${1#--dir=} ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *)
            if [[ $1 == */* ]]; then DIR=$1
            else echo "install.sh: unknown argument '$1' (usage: $0 [--dir DIR])" >&2; exit 2; fi ;;
    esac
    shift
done
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

CURRENT=setup
die() {
    {
        echo
        echo "########################################################################"
        echo "##  UI TEST INSTALL FAILED: $CURRENT"
        echo "##  $*"
        echo "##  cache dir: $DIR   (log above; rerun: $0 --dir $DIR)"
        echo "########################################################################"
    } >&2
    exit 1
}
trap 'die "command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

log() { echo "[ui/install.sh] $*" >&2; }

# ---- chromium ------------------------------------------------------------------
CURRENT=chromium
if [ -x "$CHROMIUM" ]; then
    log "chromium: present ($CHROMIUM)"
else
    [ "$(id -u)" = 0 ] || die "$CHROMIUM is missing: run as root or apt-get install ${APT_PACKAGES[*]}"
    log "chromium: apt-get install ${APT_PACKAGES[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null; then
        apt-get update -qq || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}" \
            || die "apt-get install ${APT_PACKAGES[*]} failed"
    fi
    [ -x "$CHROMIUM" ] || die "apt-get installed chromium but $CHROMIUM is not there"
fi

# ---- npm packages ----------------------------------------------------------------
CURRENT="npm ci (playwright-core, axe-core)"
command -v node >/dev/null || die "node is not on PATH (Node >= 20 is needed)"
command -v npm >/dev/null || die "npm is not on PATH"
LOCK_SHA=$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1)
STAMP=$DIR/.stamp
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$LOCK_SHA" ] \
    && [ -f "$DIR/node_modules/playwright-core/package.json" ] \
    && [ -f "$DIR/node_modules/axe-core/axe.min.js" ]; then
    log "npm packages: up to date (lock sha256 $LOCK_SHA)"
else
    log "npm packages: npm ci into $DIR"
    rm -f "$STAMP"
    cp "$HERE/package.json" "$HERE/package-lock.json" "$DIR/"
    # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: nothing may try to fetch a browser.
    (cd "$DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --no-update-notifier --loglevel=warn) \
        || die "npm ci failed"
    [ -f "$DIR/node_modules/axe-core/axe.min.js" ] || die "axe-core/axe.min.js missing after npm ci"
    (cd "$DIR" && node -e 'require("playwright-core")') || die "playwright-core does not load"
    printf '%s' "$LOCK_SHA" >"$STAMP"
fi

CURRENT=report
echo "ui tests: chromium=$CHROMIUM ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown')) node_modules=$DIR/node_modules" \
    "playwright-core=$(node -p 'require(process.argv[1]).version' "$DIR/node_modules/playwright-core/package.json")" \
    "axe-core=$(node -p 'require(process.argv[1]).version' "$DIR/node_modules/axe-core/package.json")"
