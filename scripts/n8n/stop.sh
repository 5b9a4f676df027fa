#!/usr/bin/env bash
# Stop the n8n that scripts/n8n/start.sh started from DIR: SIGTERM, wait, SIGKILL after a grace.
#
#   scripts/n8n/stop.sh [DIR]        (default .n8n/2.41.3/; N8N_STOP_GRACE=seconds, default 20)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="${1:-$REPO/.n8n/2.41.3}"
GRACE="${N8N_STOP_GRACE:-20}"
PIDFILE="$DIR/n8n.pid"

if [ ! -f "$PIDFILE" ]; then
    echo "stop.sh: no $PIDFILE; n8n is not running from $DIR"
    exit 0
fi
pid="$(cat "$PIDFILE")"
# Only signal the process start.sh recorded, and only while it still is an n8n process.
if ! kill -0 "$pid" 2>/dev/null || ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q n8n; then
    echo "stop.sh: pid $pid is not running (stale $PIDFILE); removing it"
    rm -f "$PIDFILE"
    exit 0
fi

echo "stop.sh: SIGTERM to n8n (pid $pid)"
kill -TERM "$pid"
start=$(date +%s)
while kill -0 "$pid" 2>/dev/null; do
    if [ $(( $(date +%s) - start )) -ge "$GRACE" ]; then
        echo "stop.sh: n8n still running after ${GRACE} s; SIGKILL to its process group" >&2
        # start.sh runs n8n under setsid, so its group holds n8n and its task runner and nothing else.
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        break
    fi
    sleep 0.2
done
# Wait for the zombie to go and for the task runner (same process group) to follow.
for _ in $(seq 1 50); do
    pgrep -g "$pid" >/dev/null 2>&1 || break
    sleep 0.1
done
if pgrep -g "$pid" >/dev/null 2>&1; then
    echo "stop.sh: leftover processes in group $pid; SIGKILL" >&2
    kill -KILL -- "-$pid" 2>/dev/null || true
fi
rm -f "$PIDFILE"
echo "stop.sh: n8n stopped in $(( $(date +%s) - start )) s"
