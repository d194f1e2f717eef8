#!/usr/bin/env bash
# Make sure the tools some tests drive are installed (idempotent): Debian's chromium (the
# console's browser tests, through Playwright) and prometheus (promtool checks the rules in
# deploy/prometheus; a real Prometheus scrapes the services). Missing ones are apt-installed.
#
#   scripts/ensure-tools.sh               # all
#   scripts/ensure-tools.sh chromium      # only some: chromium, prometheus
set -euo pipefail

as_root() {
    if [[ ${EUID} -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "ensure-tools: need root (or sudo) to run: $*" >&2
        exit 1
    fi
}

missing=()
for tool in "${@:-chromium prometheus}"; do
    for name in ${tool}; do
        case ${name} in
            chromium) command -v chromium >/dev/null 2>&1 || missing+=(chromium) ;;
            prometheus) command -v promtool >/dev/null 2>&1 || missing+=(prometheus) ;;
            *) echo "ensure-tools: unknown tool ${name}" >&2; exit 1 ;;
        esac
    done
done
if ((${#missing[@]} == 0)); then
    echo "tools:    chromium and promtool present"
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || { echo "ensure-tools: no apt-get; install ${missing[*]}" >&2; exit 1; }
echo "tools:    apt-get install ${missing[*]}"
# Waits for another apt-get to let go of the lock rather than failing at once.
as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null
as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q "${missing[@]}" >/dev/null
# The package may start a Prometheus server of its own where systemd runs; the tests start
# their own on free ports and leave that one alone.
