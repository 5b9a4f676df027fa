#!/bin/sh
# Install what the browser tests (tests/e2e/test_browser.py) need beyond the
# Python test extras: Debian's Chromium.  Idempotent; does nothing when
# /usr/bin/chromium is already there.  Never downloads a browser build of its
# own: Playwright drives this Chromium through executable_path.
#
# The Python side is the `playwright` package from the test extras
# (pip install '.[test]'); do NOT run `playwright install`.
set -eu

CHROMIUM=${CHROMIUM_PATH:-/usr/bin/chromium}

if [ -x "$CHROMIUM" ]; then
    echo "install-browser-deps: $CHROMIUM is present"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser-deps: no apt-get here; install Chromium by hand (browser tests will skip)" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-browser-deps: need root (or sudo) to install chromium" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
# Update the package lists only when chromium is not known yet (once).
if ! apt-cache show chromium >/dev/null 2>&1; then
    $SUDO apt-get update -qq
fi
if ! $SUDO apt-get install -y -qq chromium fonts-dejavu-core; then
    # The lists may be stale: refresh once and try again.
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq chromium fonts-dejavu-core
fi

"$CHROMIUM" --version || true
echo "install-browser-deps: done"
