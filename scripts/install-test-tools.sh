#!/bin/sh
# Install the load tools the slow resilience suite (tests/slow) and the
# benchmarks use: slowhttptest (slowloris / slow body) and wrk.  Idempotent:
# does nothing for a tool already on PATH; installs only what is missing,
# from Debian's packages (apt).  Also needs `prlimit` (util-linux, always
# present on Debian).
#
#   sh scripts/install-test-tools.sh            # both tools
#   sh scripts/install-test-tools.sh slowhttptest
set -eu

TOOLS=${*:-slowhttptest wrk}

missing=""
for tool in $TOOLS; do
    case "$tool" in
        slowhttptest|wrk) ;;
        *) echo "install-test-tools: unknown tool '$tool' (slowhttptest, wrk)" >&2; exit 2 ;;
    esac
    if command -v "$tool" >/dev/null 2>&1; then
        echo "install-test-tools: $tool is present ($(command -v "$tool"))"
    else
        missing="$missing $tool"
    fi
done

if [ -z "$missing" ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-tools: no apt-get here; install$missing by hand (the slow suite skips without them)" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-test-tools: need root (or sudo) to install$missing" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
# Update the package lists only when a package is not known yet.
for tool in $missing; do
    if ! apt-cache show "$tool" >/dev/null 2>&1; then
        $SUDO apt-get update -qq
        break
    fi
done
# shellcheck disable=SC2086 # word splitting of the package list is intended
if ! $SUDO apt-get install -y -qq $missing; then
    # The lists may be stale: refresh once and try again.
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq $missing
fi

for tool in $missing; do
    command -v "$tool" >/dev/null 2>&1 || { echo "install-test-tools: $tool still missing" >&2; exit 1; }
done
echo "install-test-tools: installed$missing"
