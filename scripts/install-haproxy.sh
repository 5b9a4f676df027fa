#!/bin/sh
# Install HAProxy for the load-balancer test (tests/e2e/test_haproxy.py) and the
# example configuration (deploy/haproxy.cfg).  Idempotent: does nothing when a
# `haproxy` binary is already on PATH (or at $HAPROXY).  Debian's package only;
# the test never starts the packaged service: it runs its own haproxy on
# loopback ports and stops it.
set -eu

HAPROXY=${HAPROXY:-haproxy}

if command -v "$HAPROXY" >/dev/null 2>&1; then
    echo "install-haproxy: $("$HAPROXY" -v 2>/dev/null | head -n 1)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-haproxy: no apt-get here; install HAProxy >= 2.0 by hand (the HAProxy test will skip)" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-haproxy: need root (or sudo) to install haproxy" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when haproxy is not known yet (once).
if ! apt-cache show haproxy >/dev/null 2>&1; then
    $SUDO apt-get update -qq
fi
# policy-rc.d 101: the package must not start (or enable) its own service on :80
# inside containers and CI; we only want the binary.
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=""
if [ ! -e "$POLICY" ] && [ -z "$SUDO" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    CREATED_POLICY=1
fi
status=0
if ! $SUDO apt-get install -y -qq --no-install-recommends haproxy; then
    # The lists may be stale: refresh once and try again.
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends haproxy || status=$?
fi
if [ -n "$CREATED_POLICY" ]; then
    rm -f "$POLICY"
fi
[ "$status" -eq 0 ] || exit "$status"

echo "install-haproxy: $(haproxy -v 2>/dev/null | head -n 1)"
