#!/usr/bin/env bash
# Installs the Debian programs the tests start: the authoritative DNS server NSD
# (tests/dnsserver.py), Postfix (tests/postfix.py: a private instance in front of the milter),
# rspamd (tests/rspamd.py: its own configuration directory, loopback only), libmilter-dev,
# which pip needs to build pymilter (the `milter` extra), ss (iproute2), which reads a
# listening socket's backlog (tests/test_ingress_hardening.py), redis-server
# (tests/redis_server.py: a private instance on a free loopback port for the shared
# sender-limit state), opendkim and opendkim-tools (tests/dkim_verifiers.py: OpenDKIM checks
# every signature the relay and the milter make, beside dkimpy; benches/dkim_vs_opendkim.sh
# runs it as Postfix's signing milter), and Chromium (tests/chromium.py: a headless browser,
# driven over the DevTools protocol, that tries cross-site requests against the admin API).
# Idempotent: apt runs only when one is missing. Needs root or sudo (CI runs as root).
set -euo pipefail

missing=()
command -v nsd >/dev/null 2>&1 || [ -x /usr/sbin/nsd ] || missing+=(nsd)
[ -x /usr/sbin/postfix ] || missing+=(postfix)
[ -x /usr/bin/rspamd ] || missing+=(rspamd)
[ -e /usr/include/libmilter/mfapi.h ] || missing+=(libmilter-dev)
command -v ss >/dev/null 2>&1 || [ -x /usr/bin/ss ] || [ -x /bin/ss ] || missing+=(iproute2)
[ -x /usr/bin/redis-server ] || missing+=(redis-server)
[ -x /usr/sbin/opendkim ] || missing+=(opendkim)
command -v opendkim-testmsg >/dev/null 2>&1 || [ -x /usr/sbin/opendkim-testmsg ] || missing+=(opendkim-tools)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# Postfix without a system configuration: no main.cf, so the package's own instance never
# starts; the tests write their own configuration directory.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO apt-get update -qq
# --no-install-recommends: only what the tests start.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Where a service manager runs, the packages start system daemons (nsd on port 53, rspamd on
# localhost:11332-11334, redis-server on 6379). The tests start their own instances on free
# ports and never need those: stop them, and keep rspamd and redis-server from starting again
# at boot.
if command -v systemctl >/dev/null 2>&1; then
    for unit in nsd rspamd redis-server opendkim; do
        if systemctl is-active --quiet "$unit" 2>/dev/null; then
            $SUDO systemctl stop "$unit" || true
        fi
    done
    $SUDO systemctl disable rspamd redis-server opendkim >/dev/null 2>&1 || true
fi
# Without systemd (a container), the package's init script may have started the daemon.
if [ -x /etc/init.d/redis-server ] && pgrep -x redis-server >/dev/null 2>&1; then
    $SUDO /etc/init.d/redis-server stop >/dev/null 2>&1 || true
fi
if [ -x /etc/init.d/opendkim ] && pgrep -x opendkim >/dev/null 2>&1; then
    $SUDO /etc/init.d/opendkim stop >/dev/null 2>&1 || true
fi
