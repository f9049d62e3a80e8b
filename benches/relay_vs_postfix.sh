#!/usr/bin/env bash
# Relay throughput and latency: the deliverypool relay against a stock Postfix relay, same load,
# same machine, everything on loopback.
#
#   bash benches/relay_vs_postfix.sh                       # the size sweep: 2 KiB to 1 MiB
#   SIZES="102400" MESSAGES=2000 SESSIONS=20 bash benches/relay_vs_postfix.sh
#   DKIM=ed25519 bash benches/relay_vs_postfix.sh          # both relays signing (DKIM=rsa: RSA-2048)
#   KEEP_RESULTS=DIR ...                                   # keep each run's result files in DIR
#   WORKERS=1 ...                                          # deliverypool's worker processes (default: one per core)
#   RUNS=3 ...                                             # each size N times, the two relays alternated; medians printed
#   SINK_ROOT=DIR ...                                      # where the sinks dump (default: /dev/shm, a tmpfs)
#
# With DKIM set, both relays sign every message with one key for bench.test (smtp-source's
# From): deliverypool with [[dkim.keys]], Postfix with OpenDKIM as its milter (smtpd_milters;
# the configuration a Postfix user runs), and OpenDKIM's CPU counts as Postfix's. The signing
# cost is the ratio of a DKIM run's deliverypool msg/s to a run without (benches/README.md,
# DKIM); `bash benches/dkim_relay_sweep.sh` runs both and prints that ratio per size.
#
# For each relay: Postfix's smtp-source sends MESSAGES messages over SESSIONS parallel sessions
# into the relay, which delivers them to Postfix's smtp-sink (a fresh one per relay, dumping
# every message to a file). Both relays keep their normal durable queue: the deliverypool
# spool (SQLite, WAL, synchronous=FULL) and Postfix's queue (fsynced files). Each relay gets the
# load twice: alone, for throughput and CPU; then again while a probe client sends PROBES
# messages at a steady pace and notes when each one's body went out (after the 354); the time it
# reached the sink (its dump file's mtime) minus that is its latency (the body, the relay's
# commit and delivery; both times on the kernel's coarse clock, so to a tick's resolution, 4 ms
# at HZ=250). The second run's CPU per message, probes counted, is printed beside the first's.
#
# For each size in SIZES (bytes; default 2 KiB, 20 KiB, 100 KiB, 1 MiB), both relays run in turn
# on the same load. Printed, one row per size: messages per second from the first message sent
# to the last one arriving at the sink, p50/p99 latency, the relay's own CPU time per message
# of the load and per KiB (every process of it, exited children included), the machine's busy CPU per message
# (all processes: fair to Postfix, whose work is spread over many), the peak RSS of the relay's
# processes, messages lost and duplicated, and the ratio of the two relays. MESSAGES defaults to
# a count per size that keeps each run to a few seconds (MESSAGES sets one count for all). Installs Postfix (with no system configuration) if smtp-source is
# missing; starts and stops everything itself; every wait is bounded by TIMEOUT seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-"2048 20480 102400 1048576"}
SESSIONS=${SESSIONS:-20}
PROBES=${PROBES:-100}
RUNS=${RUNS:-1}
TIMEOUT=${TIMEOUT:-300}
PY=${PY:-.venv/bin/python}
# Figures from an unoptimised extension would mislead: refuse them (benches/build.py).
"$PY" -m benches.build relay_vs_postfix.sh || exit 2
# Ports on 127.0.0.1: the two relays' listeners and their sinks.
DP_PORT=${DP_PORT:-2625}
PF_PORT=${PF_PORT:-2626}
DP_SINK=${DP_SINK:-2627}
PF_SINK=${PF_SINK:-2628}
DKIM=${DKIM:-off}
case "$DKIM" in off|ed25519|rsa) ;; *) echo "DKIM must be off, ed25519 or rsa" >&2; exit 2 ;; esac

if ! command -v smtp-source >/dev/null || ! command -v smtp-sink >/dev/null || ! command -v postfix >/dev/null; then
    echo "== installing postfix (smtp-source, smtp-sink; no system configuration)"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q postfix >/dev/null
fi
PATH=$PATH:/usr/sbin

WORK=$(mktemp -d /tmp/relay-bench.XXXXXX)
chmod 755 "$WORK"
# The sinks' dump files go to memory (tmpfs) where there is one: the sink stands in for the
# receiving side, and its file creation must not bound either relay. On an ext4 without a
# journal (this kind of VM's root), creating a file costs 0.7-0.8 ms of kernel CPU for minutes
# after many deletions (ext4's recently_deleted() scan, benches/README.md): a sink dumping there
# caps deliverypool at about 1,000 msg/s and makes the next run slower than the first.
SINK_ROOT=${SINK_ROOT:-$([ -d /dev/shm ] && [ -w /dev/shm ] && echo /dev/shm || echo "$WORK")}
SINKS=$(mktemp -d "$SINK_ROOT/relay-bench-sinks.XXXXXX")
chmod 755 "$SINKS"
DKIM_TOML=""
PF_MILTER=""
OPENDKIM_PID=""
if [ "$DKIM" != off ]; then
    # One key for both relays, made by deliverypool dkim keygen (PKCS#8 PEM, which OpenDKIM reads too).
    "$PY" -m deliverypool.cli dkim keygen --domain bench.test --selector bench --algorithm "$DKIM" --out "$WORK/dkim.pem" >/dev/null
    chmod 644 "$WORK/dkim.pem"
    DKIM_TOML=$(printf '[dkim]\nverify = false\n[[dkim.keys]]\ndomain = "bench.test"\nselector = "bench"\nkey_file = "%s"\n' "$WORK/dkim.pem")
    # A Unix socket, as a Postfix user connects OpenDKIM: over loopback TCP, libmilter's two
    # writes at the end of each message meet Nagle and the delayed ACK (40 ms a message).
    PF_MILTER="smtpd_milters = unix:$WORK/opendkim.sock
milter_default_action = tempfail"
fi
PIDS=()
PF_CONF="$WORK/postfix-conf"
cleanup() {
    if [ -f "$PF_CONF/main.cf" ]; then
        postfix -c "$PF_CONF" stop >/dev/null 2>&1 || true
    fi
    if [ -n "$OPENDKIM_PID" ]; then kill "$OPENDKIM_PID" 2>/dev/null || true; fi
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$WORK" "$SINKS"
}
trap cleanup EXIT

wait_port() { # host port
    local deadline=$((SECONDS + 30))
    until "$PY" -c "import socket,sys; socket.create_connection(('$1', $2), 1).close()" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { echo "nothing listens on $1:$2 after 30 s" >&2; return 1; }
        sleep 0.2
    done
}

start_sink() { # port dump-dir
    mkdir -p "$2" && chmod 1777 "$2"
    smtp-sink -u nobody -d "$2/%M." "127.0.0.1:$1" 256 &
    PIDS+=($!)
    wait_port 127.0.0.1 "$1"
}

start_deliverypool() {
    mkdir -p "$WORK/dp"
    cat >"$WORK/dp/relay.toml" <<EOF
hostname = "relay.bench.test"
${WORKERS:+workers = $WORKERS}

[listener]
address = "127.0.0.1:$DP_PORT"
allowed_networks = ["127.0.0.0/8"]
size_limit = "25MB"

[spool]
directory = "spool"

[dns]
check_sender_domain = false

[pools.normal]
source_addresses = ["127.0.0.2"]
delivery = "smarthost"
smarthost = "127.0.0.1:$DP_SINK"
tls = "none"
max_connections_per_destination = 20
max_messages_per_connection = 100

[pools.high-risk]
source_addresses = ["127.0.0.3"]
delivery = "smarthost"
smarthost = "127.0.0.1:$DP_SINK"
tls = "none"
max_connections_per_destination = 20

$DKIM_TOML
EOF
    "$PY" -m deliverypool.cli relay --config "$WORK/dp/relay.toml" >"$WORK/dp/relay.log" 2>&1 &
    DP_PID=$!
    PIDS+=($DP_PID)
    wait_port 127.0.0.1 "$DP_PORT"
}

stop_deliverypool() {
    kill "$DP_PID" 2>/dev/null || true
    wait "$DP_PID" 2>/dev/null || true
    rm -rf "$WORK/dp"
}

start_postfix() {
    # A private instance: its own configuration and queue directories, loopback only, relaying
    # everything it accepts from 127.0.0.0/8 to the sink, default concurrency (20).
    rm -rf "$WORK/postfix-queue" "$WORK/postfix-data"
    mkdir -p "$PF_CONF" "$WORK/postfix-queue" "$WORK/postfix-data"
    cat >"$PF_CONF/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $WORK/postfix-queue
data_directory = $WORK/postfix-data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:$PF_SINK
smtp_dns_support_level = disabled
smtp_tls_security_level = none
maillog_file = $WORK/postfix.log
maillog_file_prefixes = $WORK
$PF_MILTER
EOF
    if [ "$DKIM" != off ]; then
        # OpenDKIM signing for bench.test (the Debian package's daemon, in the foreground).
        cat >"$WORK/opendkim.conf" <<EOF
Mode s
Domain bench.test
Selector bench
KeyFile $WORK/dkim.pem
SignatureAlgorithm $([ "$DKIM" = ed25519 ] && echo ed25519-sha256 || echo rsa-sha256)
Canonicalization relaxed/relaxed
InternalHosts 127.0.0.0/8
Socket local:$WORK/opendkim.sock
UMask 000
Syslog no
RequireSafeKeys false
EOF
        /usr/sbin/opendkim -f -x "$WORK/opendkim.conf" &
        OPENDKIM_PID=$!
        PIDS+=($OPENDKIM_PID)
        local deadline=$((SECONDS + 30))
        until [ -S "$WORK/opendkim.sock" ]; do
            [ $SECONDS -lt $deadline ] || { echo "opendkim did not start" >&2; return 1; }
            sleep 0.1
        done
    fi
    # The stock master.cf with the SMTP listener moved to our port and nothing chrooted.
    sed -e "s/^smtp      inet/127.0.0.1:$PF_PORT inet/" -e 's/^\([a-z0-9.:-]* *[a-z-]* *[-ny] *[-ny] *\)[-y]/\1n/' \
        /usr/share/postfix/master.cf.dist >"$PF_CONF/master.cf"
    if ! grep -q "^postlog" "$PF_CONF/master.cf"; then
        echo "postlog   unix-dgram n  -       n       -       1       postlogd" >>"$PF_CONF/master.cf"
    fi
    chown postfix "$WORK/postfix-data"
    # Postfix reports start-up errors to syslog or its log file, not to a stderr that is no tty.
    if ! postfix -c "$PF_CONF" start; then
        tail -5 "$WORK/postfix.log" >&2 || true
        return 1
    fi
    wait_port 127.0.0.1 "$PF_PORT"
}

stop_postfix() {
    postfix -c "$PF_CONF" stop >/dev/null 2>&1 || true
    if [ -n "$OPENDKIM_PID" ]; then
        kill "$OPENDKIM_PID" 2>/dev/null || true
        wait "$OPENDKIM_PID" 2>/dev/null || true
        OPENDKIM_PID=""
    fi
    sleep 1
}

messages_for() { # size -> messages: a few seconds of load per run
    if [ -n "${MESSAGES:-}" ]; then echo "$MESSAGES"; return; fi
    if [ "$1" -le 20480 ]; then echo 3000; elif [ "$1" -le 102400 ]; then echo 1500; else echo 300; fi
}

load_phase() { # name port dump size messages match probes out: one load, the usage around it
    local name=$1 port=$2 dump=$3 size=$4 messages=$5 match=$6 probes=$7 out=$8
    local probe="" start_ns end_ns
    "$PY" benches/relay_probe.py usage --match "$match" --out "$out.before"
    if [ "$probes" -gt 0 ]; then
        "$PY" benches/relay_probe.py send --port "$port" --count "$probes" --out "$out.probes" --timeout "$TIMEOUT" &
        probe=$!
    else
        echo "[]" >"$out.probes"
    fi
    start_ns=$(date +%s%N)
    timeout "$TIMEOUT" smtp-source -s "$SESSIONS" -m "$messages" -l "$size" -f sender@bench.test -t rcpt@sink.test "127.0.0.1:$port"
    end_ns=$(date +%s%N)
    [ -z "$probe" ] || wait "$probe"
    "$PY" benches/relay_probe.py collect --dump "$dump" --probes "$out.probes" \
        --messages "$messages" --start-ns "$start_ns" --accepted-ns "$end_ns" --timeout "$TIMEOUT" \
        --name "$name" --size "$size" --out "$out" --usage-before "$out.before" --usage-match "$match"
    find "$dump" -type f -delete  # the sink keeps running; the next phase counts its own messages
}

run_case() { # name port sink-port start-function stop-function size match run
    local name=$1 port=$2 sink_port=$3 start=$4 stop=$5 size=$6 match=$7 run=$8
    local messages
    messages=$(messages_for "$size")
    local dump="$SINKS/$name-$size-sink"
    start_sink "$sink_port" "$dump"
    local sink_pid=${PIDS[-1]}
    "$start"
    # Twice on the same relay: the load alone, for throughput and CPU per message; then the same
    # load again with the latency probes. A probe is a message on its own, which costs either
    # relay 1.2-1.8 ms of CPU; counted in the first run, the probes would add a fixed ~150 ms to
    # both relays' CPU, half a millisecond per message of the 300 at 1 MiB.
    echo "== $name: $messages messages of $size bytes over $SESSIONS sessions (run $run of $RUNS), then again with $PROBES latency probes"
    load_phase "$name" "$port" "$dump" "$size" "$messages" "$match" 0 "$WORK/$name-$size-$run-load.json"
    load_phase "$name" "$port" "$dump" "$size" "$messages" "$match" "$PROBES" "$WORK/$name-$size-$run-latency.json"
    "$PY" benches/relay_probe.py combine --load "$WORK/$name-$size-$run-load.json" --latency "$WORK/$name-$size-$run-latency.json" \
        --out "$WORK/$name-$size-$run-result.json"
    "$stop"
    kill "$sink_pid" 2>/dev/null || true
    wait "$sink_pid" 2>/dev/null || true
    rm -rf "$dump"
}

RESULTS=()
for size in $SIZES; do
    for run in $(seq 1 "$RUNS"); do  # alternated, so that a drift of the machine touches both
        run_case deliverypool "$DP_PORT" "$DP_SINK" start_deliverypool stop_deliverypool "$size" "$WORK/dp/relay.toml" "$run"
        run_case postfix "$PF_PORT" "$PF_SINK" start_postfix stop_postfix "$size" "exe:/usr/lib/postfix/sbin/|exe:/usr/sbin/opendkim" "$run"
        RESULTS+=("$WORK/deliverypool-$size-$run-result.json" "$WORK/postfix-$size-$run-result.json")
    done
done
echo
echo "== DKIM $DKIM, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), $SESSIONS sessions, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
"$PY" benches/relay_probe.py table "${RESULTS[@]}"
if [ -n "${KEEP_RESULTS:-}" ]; then
    mkdir -p "$KEEP_RESULTS" && cp "${RESULTS[@]}" "$KEEP_RESULTS/"
fi
