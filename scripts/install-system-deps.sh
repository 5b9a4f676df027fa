#!/bin/sh
# Install the Debian packages the tests and benchmarks need beyond Python's:
#
#   browser     Chromium (+ a font with Hebrew) for tests/e2e/test_browser.py; Playwright
#               drives it through executable_path: never `playwright install`. Also axe-core
#               from the npm registry into tests/a11y/node_modules (tests/e2e/test_page_a11y.py)
#   haproxy     HAProxy for tests/e2e/test_haproxy.py (the packaged service is not started)
#   load-tools  slowhttptest and wrk for tests/slow and bench/; nginx (nginx-light where Debian still
#               has it) as bench/stream.py's second reference (the packaged service is not started)
#   redis       redis-server for the shared-state tests (tests/unit/test_state_contract.py and
#               the --redis end-to-end tests start their own on a free loopback port; the
#               packaged service is not started)
#
#   sh scripts/install-system-deps.sh [browser] [haproxy] [load-tools] [redis]   (default: all)
#
# Idempotent: installs only what is missing, updating the package lists only when needed.
set -eu

GROUPS=${*:-browser haproxy load-tools redis}
missing=""
for group in $GROUPS; do
    case "$group" in
        browser) [ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ] || missing="$missing chromium fonts-dejavu-core" ;;
        haproxy) command -v haproxy >/dev/null 2>&1 || missing="$missing haproxy" ;;
        load-tools)
            command -v slowhttptest >/dev/null 2>&1 || missing="$missing slowhttptest"
            command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
            if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
                if apt-cache show nginx-light >/dev/null 2>&1; then missing="$missing nginx-light"; else missing="$missing nginx"; fi
            fi
            ;;
        redis) command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server" ;;
        *) echo "install-system-deps: unknown group '$group' (browser, haproxy, load-tools, redis)" >&2; exit 2 ;;
    esac
done

HERE=$(cd "$(dirname "$0")/.." && pwd)
case " $GROUPS " in
    *" browser "*)
        if [ ! -f "$HERE/tests/a11y/node_modules/axe-core/axe.min.js" ]; then
            if command -v npm >/dev/null 2>&1; then
                (cd "$HERE/tests/a11y" && npm ci --no-audit --no-fund --ignore-scripts --silent) \
                    && echo "install-system-deps: axe-core installed into tests/a11y"
            else
                echo "install-system-deps: npm is missing; the axe-core tests will skip" >&2
            fi
        fi
        ;;
esac

if [ -z "$missing" ]; then
    echo "install-system-deps: $GROUPS present"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: no apt-get here; install$missing by hand (the tests that need them skip)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-system-deps: need root (or sudo) for$missing" >&2; exit 1; }
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
for package in $missing; do
    if ! apt-cache show "$package" >/dev/null 2>&1; then
        $SUDO apt-get update -qq
        break
    fi
done
# policy-rc.d 101: no package may start its own service (haproxy or nginx would take :80,
# redis-server :6379); the tests start their own processes on loopback ports.
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=""
if [ ! -e "$POLICY" ] && [ -z "$SUDO" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    CREATED_POLICY=1
fi
status=0
# shellcheck disable=SC2086 # the package list is meant to split
if ! $SUDO apt-get install -y -qq --no-install-recommends $missing; then
    $SUDO apt-get update -qq  # stale lists: refresh once and try again
    $SUDO apt-get install -y -qq --no-install-recommends $missing || status=$?
fi
[ -z "$CREATED_POLICY" ] || rm -f "$POLICY"
[ "$status" -eq 0 ] || exit "$status"
echo "install-system-deps: installed$missing"
