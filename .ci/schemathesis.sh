#!/usr/bin/env bash
# schemathesis against a real warren: the OpenAPI document at
# /api/v1/openapi.json must describe what the server does. Run as a user and
# as an admin, every check, a fixed seed and a bounded number of examples:
# any server error (5xx) or any response the document does not allow fails.
#
# Usage: .ci/schemathesis.sh [path/to/warren]   (default target/debug/warren)
# Takes a few minutes (2 cores): installs schemathesis into target/ci/venv
# the first time (~1 min from PyPI), then two runs of ~1-3 min each.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
SEED="${WARREN_SCHEMATHESIS_SEED:-20261130}"
EXAMPLES="${WARREN_SCHEMATHESIS_EXAMPLES:-50}"
BINARY="${1:-target/debug/warren}"
VENV="$PWD/target/ci/venv"

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "== installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

work="$(mktemp -d)"
# Users' processes (uids of their own) must be able to pass through to
# their workspaces under "$work/data"; mktemp makes it 0700.
chmod 0711 "$work"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

admin_password="schemathesis-admin-$RANDOM$RANDOM"
user_password="schemathesis-user-$RANDOM$RANDOM"
printf '%s\n' "$admin_password" >"$work/admin-password"
mkdir "$work/data"
# A users' app (the tests' fixture), so /me/apps and /admin/apps have one.
fixture="$PWD/tests/apps"
cat >"$work/apps.toml" <<APPS
[apps.fixture]
command = ["/usr/bin/python3", "$fixture/fixture_app.py", "--socket", "{socket}", "--prefix", "{base_url}"]
ready_path = "{base_url}health"
auth = "bearer:{secret}"
env = { FIXTURE_SECRET = "{secret}" }
read_execute = ["$fixture"]
APPS
# Generous login throttles (schemathesis itself calls /auth/login many times)
# and token rate (so creating tokens is exercised, not only its 429).
WARREN_LOG=info "$BINARY" serve \
    --listen 127.0.0.1:0 \
    --data-dir "$work/data" \
    --admin-password-file "$work/admin-password" \
    --workers 2 \
    --login-rate-per-address 100000 \
    --login-rate-per-account 100000 \
    --lockout-failures 100000 \
    --token-rate 100000 \
    --apps "$work/apps.toml" \
    2>"$work/server.log" &
server_pid=$!

base=""
for _ in $(seq 1 300); do
    base="$(sed -n 's/.*listening address=\([^ ]*\).*/\1/p' "$work/server.log" 2>/dev/null | head -1 || true)"
    [ -n "$base" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$base" ]; then
    echo "warren did not start; its log:" >&2
    cat "$work/server.log" >&2
    exit 1
fi
base="http://$base"
for _ in $(seq 1 100); do
    curl -fsS "$base/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done

# Logs in; prints the session token (usable as `Authorization: Bearer`).
login() {
    curl -fsS -D "$work/headers" -o /dev/null \
        -H 'content-type: application/json' \
        --data "{\"username\":\"$1\",\"password\":\"$2\"}" \
        "$base/api/v1/auth/login"
    sed -n 's/^[Ss]et-[Cc]ookie: warren_session=\([^;]*\).*/\1/p' "$work/headers" | head -1
}

admin_token="$(login admin "$admin_password")"
curl -fsS -o /dev/null -H "authorization: Bearer $admin_token" \
    -H 'content-type: application/json' \
    --data "{\"username\":\"alice\",\"password\":\"$user_password\"}" \
    "$base/api/v1/admin/users"
user_token="$(login alice "$user_password")"
# Something to read, list, copy and move.
curl -fsS -o /dev/null -X PUT -H "authorization: Bearer $user_token" \
    --data-binary 'hello' "$base/api/v1/files/hello.txt"

# The token goes to schemathesis as the document's `bearer` scheme (not as
# a fixed header), so its `ignored_auth` check can leave it out and expect
# a 401.
#
# POST /files/{path}: whether the JSON body `{"to"}` is needed depends on
# the `op` query parameter (move and copy need it, mkdir takes none), which
# OpenAPI cannot express; so for this one operation the two checks that
# judge a body valid or invalid by the schema alone are off. Every other
# check (no 5xx, documented statuses, content types, schemas) stays on.
cat >"$work/schemathesis.toml" <<'EOF'
# Every check (set here rather than with --checks, which would override
# the per-operation settings below).
checks.enabled = true

[auth.openapi.bearer]
bearer = "${WARREN_ST_TOKEN}"

[[operations]]
include-path = "/api/v1/files/{path}"
include-method = "POST"
checks.positive_data_acceptance.enabled = false
checks.negative_data_rejection.enabled = false
EOF

# Operations left out, and why (narrowly: everything else is exercised):
# - POST /auth/logout and DELETE /me/sessions/{id} end the very session the
#   run authenticates with (schemathesis finds its id in GET /me/sessions),
#   so every later request would be a 401: correct, but it tests nothing.
#   The accounts suite covers both.
# - POST /me/password ends the caller's other sessions, and may succeed
#   with the generated current password only by chance; covered by the
#   accounts suite instead.
# - GET /activity and /admin/activity are endless event streams (SSE): no
#   request to them ever completes, so each would only time out. Covered
#   by tests/tests/activity.rs.
common=(
    --seed "$SEED"
    --max-examples "$EXAMPLES"
    --no-shrink
    --generation-database none
    --request-timeout 30
    --workers 1
    --exclude-path /api/v1/auth/logout
    --exclude-path /api/v1/me/password
    --exclude-path /api/v1/me/sessions/{id}
    --exclude-path /api/v1/activity
    --exclude-path /api/v1/admin/activity
    --suppress-health-check all
)

status=0
echo "== schemathesis as a user"
(cd "$work" && WARREN_ST_TOKEN="$user_token" "$VENV/bin/st" --config-file "$work/schemathesis.toml" run "$base/api/v1/openapi.json" "${common[@]}") ||
    status=1

# The admin run covers the admin routes (the user run has the rest, and
# sees every admin route answer 403). No stateful phase here: it feeds ids
# from responses (GET /admin/users, /admin/sessions) into DELETE and PATCH,
# and would delete, disable, demote or log out the admin the run
# authenticates as. With generated ids those routes still run (404s).
echo "== schemathesis as an admin"
(cd "$work" && WARREN_ST_TOKEN="$admin_token" "$VENV/bin/st" --config-file "$work/schemathesis.toml" run "$base/api/v1/openapi.json" "${common[@]}" \
    --include-path-regex '^/api/v1/admin/' \
    --phases examples,coverage,fuzzing) ||
    status=1

if grep -q 'panicked' "$work/server.log"; then
    echo "warren panicked during the run:" >&2
    grep -A5 'panicked' "$work/server.log" >&2
    status=1
fi
exit "$status"
