#!/bin/sh
# Fetch the official @n8n/chat widget from the npm registry for the example page
# (static/examples/n8n-chat.html) and its browser test.
#
# It is NOT kept in the repository nor shipped in the package: @n8n/chat is under
# n8n's Sustainable Use License, which allows redistribution only free of charge
# for non-commercial purposes.  Each installation fetches it for itself.
# Idempotent; needs npm.  1.36.4 is the newest release whose dependencies are all
# in the registry (see docs/n8n.md).
set -eu

VERSION=1.36.4
HERE=$(cd "$(dirname "$0")/.." && pwd)
DEST="$HERE/static/examples/vendor/n8n-chat"
CACHE="$HERE/.cache/n8n-chat-$VERSION"

if [ -f "$DEST/chat.bundle.umd.js" ] && [ -f "$DEST/.version-$VERSION" ]; then
    echo "install-n8n-chat: @n8n/chat $VERSION is present"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "install-n8n-chat: npm is missing; the @n8n/chat example page will say the widget could not be loaded" >&2
    exit 1
fi
mkdir -p "$CACHE"
if [ ! -f "$CACHE/node_modules/@n8n/chat/dist/chat.bundle.umd.js" ]; then
    (cd "$CACHE" && npm install --no-audit --no-fund --ignore-scripts --silent "@n8n/chat@$VERSION")
fi
mkdir -p "$DEST"
SRC="$CACHE/node_modules/@n8n/chat"
cp "$SRC/dist/chat.bundle.umd.js" "$SRC/dist/style.css" "$SRC/LICENSE.md" "$DEST/"
touch "$DEST/.version-$VERSION"
echo "install-n8n-chat: @n8n/chat $VERSION installed into static/examples/vendor/n8n-chat"
