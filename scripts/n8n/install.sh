#!/usr/bin/env bash
# Install a pinned n8n from the npm registry into DIR (default: .n8n/ in the repo, git-ignored).
#
#   scripts/n8n/install.sh [DIR]
#
# n8n 2.8.4 is the newest release that runs on Node 20. Its `xlsx` dependency points at a tarball
# outside the registry, so the install folder's package.json overrides it with the registry's 0.18.5.
# Idempotent: does nothing when DIR already holds n8n at the pinned version.
# Expect 5-12 minutes (measured: 11.5 on 2 cores), ~2,090 packages and 2.3 GB on the first run
# (most of the time goes into building sqlite3 from source).
set -euo pipefail

N8N_VERSION="${N8N_VERSION:-2.8.4}"
XLSX_VERSION="0.18.5"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="${1:-$REPO/.n8n}"

die() { echo "install.sh: $*" >&2; exit 1; }

command -v node >/dev/null || die "node is not installed (need Node 20)"
command -v npm >/dev/null || die "npm is not installed"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || die "Node $(node -v) is too old; n8n $N8N_VERSION needs Node 20"

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
installed="$DIR/node_modules/n8n/package.json"

if [ -f "$installed" ] && [ -x "$DIR/node_modules/.bin/n8n" ]; then
    have="$(node -p "require('$installed').version")"
    if [ "$have" = "$N8N_VERSION" ]; then
        echo "install.sh: n8n $have already installed in $DIR; nothing to do"
        exit 0
    fi
    echo "install.sh: $DIR has n8n $have, want $N8N_VERSION; reinstalling"
fi

cat >"$DIR/package.json" <<JSON
{
  "name": "inkflow-n8n",
  "private": true,
  "description": "A pinned n8n for InkFlow's opt-in integration tests (scripts/n8n/install.sh)",
  "dependencies": {
    "n8n": "$N8N_VERSION"
  },
  "scarfSettings": {
    "enabled": false
  },
  "overrides": {
    "xlsx": "$XLSX_VERSION"
  }
}
JSON

echo "install.sh: installing n8n $N8N_VERSION into $DIR (takes 5-12 minutes)"
start=$(date +%s)
# Nothing but the registry: sqlite3 is built from source instead of fetching a prebuilt binary from
# GitHub, and the @scarf/scarf install analytics in n8n's tree stay quiet.
(
    cd "$DIR"
    export npm_config_build_from_source=sqlite3 SCARF_ANALYTICS=false DO_NOT_TRACK=1
    npm install --no-audit --no-fund --loglevel=error
)
have="$(node -p "require('$installed').version")"
[ "$have" = "$N8N_VERSION" ] || die "installed n8n is $have, not $N8N_VERSION"
echo "install.sh: n8n $have installed in $DIR in $(( $(date +%s) - start )) s ($(du -sh "$DIR" | cut -f1))"
