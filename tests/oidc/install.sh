#!/usr/bin/env bash
# Pinned, cached installer for the OpenID provider of warren's OpenID Connect
# login tests (tests/oidc/provider.mjs, started by tests/src/oidc.rs).
#
#   tests/oidc/install.sh [--dir DIR | DIR]
#
# Installs the npm packages pinned in tests/oidc/package-lock.json
# (oidc-provider, jose), with `npm ci`, into DIR/node_modules. DIR defaults
# to $REPO/target/oidc-node (a positional DIR must contain a '/'); the tests
# look there, or in $WARREN_OIDC_DIR. Run the provider with
# NODE_PATH=DIR/node_modules node tests/oidc/provider.mjs --port P ...
#
# A stamp, DIR/.stamp, holds the sha256 of the lock file: when it matches (and
# the packages are there) nothing is done, so a warm run takes well under a
# second and needs no network. Changing package-lock.json reinstalls.
#
# Needs: Node >= 20 + npm on PATH, the npm registry (first run only).
set -Eeuo pipefail

# ---- arguments ---------------------------------------------------------------
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DIR=$REPO/target/oidc-node
while [ $# -gt 0 ]; do
    case $1 in
        --dir) DIR=${2:?--dir needs a directory}; shift 2; continue ;;
        --dir=*) DIR=${1#--dir=} ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
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
        echo "##  OIDC TEST INSTALL FAILED: $CURRENT"
        echo "##  $*"
        echo "##  cache dir: $DIR   (log above; rerun: $0 --dir $DIR)"
        echo "########################################################################"
    } >&2
    exit 1
}
trap 'die "command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

log() { echo "[oidc/install.sh] $*" >&2; }

# ---- npm packages ----------------------------------------------------------------
CURRENT="npm ci (oidc-provider, jose)"
command -v node >/dev/null || die "node is not on PATH (Node >= 20 is needed)"
command -v npm >/dev/null || die "npm is not on PATH"
LOCK_SHA=$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1)
STAMP=$DIR/.stamp
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$LOCK_SHA" ] \
    && [ -f "$DIR/node_modules/oidc-provider/package.json" ] \
    && [ -f "$DIR/node_modules/jose/package.json" ]; then
    log "npm packages: up to date (lock sha256 $LOCK_SHA)"
else
    log "npm packages: npm ci into $DIR"
    rm -f "$STAMP"
    cp "$HERE/package.json" "$HERE/package-lock.json" "$DIR/"
    (cd "$DIR" && npm ci --no-audit --no-fund --no-update-notifier --loglevel=warn) \
        || die "npm ci failed"
    # Both must load as ES modules from DIR (as provider.mjs imports them).
    (cd "$DIR" && node --input-type=module -e 'await import("oidc-provider"); await import("jose")') \
        || die "oidc-provider or jose does not load"
    printf '%s' "$LOCK_SHA" >"$STAMP"
fi

CURRENT=report
echo "oidc tests: node=$(node --version) node_modules=$DIR/node_modules" \
    "oidc-provider=$(node -p 'require(process.argv[1]).version' "$DIR/node_modules/oidc-provider/package.json")" \
    "jose=$(node -p 'require(process.argv[1]).version' "$DIR/node_modules/jose/package.json")"
