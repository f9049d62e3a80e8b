#!/usr/bin/env bash
# Installs the Debian programs the tests start: the authoritative DNS server NSD (tests/dnsserver.py),
# and ss (iproute2), which reads a listening socket's backlog (tests/test_ingress_hardening.py).
# Idempotent: apt runs only when one is missing. Needs root or sudo (CI runs as root).
set -euo pipefail

missing=()
command -v nsd >/dev/null 2>&1 || [ -x /usr/sbin/nsd ] || missing+=(nsd)
command -v ss >/dev/null 2>&1 || [ -x /usr/bin/ss ] || [ -x /bin/ss ] || missing+=(iproute2)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian package starts a system nsd on port 53 when a service manager runs; the tests
# start their own instance and never need it. Stop it where it runs, ignore where it does not.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nsd 2>/dev/null; then
    $SUDO systemctl stop nsd || true
fi
