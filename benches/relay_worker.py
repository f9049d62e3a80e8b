"""One relay worker on a fixed workload, for instruction counts (callgrind), system-call counts
(strace) and CPU time per message: what `deliverypool relay` runs in each worker, alone in its
process, so that nothing else is counted.

    relay_worker.py run --messages N [--size 2048] [--sessions 20] [--callgrind FILE | --strace FILE | --pyspy FILE | --cprofile FILE]

starts Postfix's smtp-sink as the next hop, one relay worker (the code path of
``deliverypool relay``'s workers: ``configure_logging(batched=True)``, ``keep_freed_memory()``, ``run_relay`` on a socket
bound for it, its spool a shard, the observer on, uvloop) under valgrind or strace if asked, and
smtp-source sending N messages of SIZE bytes over SESSIONS sessions into it; the worker stops
itself once it has delivered N messages. Printed (one JSON line): the worker's user and system
CPU seconds (rusage, threads included), wall seconds, messages delivered, and the spool's commit
count. Per-message figures come from two runs: ``(X(N2) - X(N1)) / (N2 - N1)`` cancels start-up
and shutdown (benches/README.md, "Relay CPU per message after issue 25")::

    PYTHONHASHSEED=0 .venv/bin/python benches/relay_worker.py run --messages 200 --callgrind /tmp/cg.200
    PYTHONHASHSEED=0 .venv/bin/python benches/relay_worker.py run --messages 1000 --callgrind /tmp/cg.1000
    .venv/bin/python benches/relay_worker.py per-message /tmp/cg.200 /tmp/cg.1000

(``worker`` is the mode the orchestrator starts the relay in.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """\
hostname = "relay.bench.test"

[listener]
address = "127.0.0.1:{port}"
allowed_networks = ["127.0.0.0/8"]
size_limit = "25MB"

[spool]
directory = "{spool}"

[dns]
check_sender_domain = false

[observe]
# The observer's periodic flush (the counters, the relayed Message-IDs' filter, the event log) is
# a cost per second, not per message; under callgrind a run lasts a minute, and flushing every
# second would charge each message with ~50 times its real share. Flushed once, at the end.
flush_interval = "{flush}"

[pools.normal]
source_addresses = ["127.0.0.2"]
delivery = "smarthost"
smarthost = "127.0.0.1:{sink}"
tls = "none"
max_connections_per_destination = 20
max_messages_per_connection = 100

[pools.high-risk]
source_addresses = ["127.0.0.3"]
delivery = "smarthost"
smarthost = "127.0.0.1:{sink}"
tls = "none"
max_connections_per_destination = 20
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def worker(config_path: str, messages: int, result: str) -> int:
    """The worker: what cli/relay.py's _worker runs, then stops after `messages` deliveries."""
    from deliverypool.app import Relay, configure_logging, run_relay
    from deliverypool.config import load
    from deliverypool.eventloop import run
    from deliverypool.supervisor import keep_freed_memory, listen_socket, shard_directory

    configure_logging(batched=True)
    keep_freed_memory()
    config = load(config_path)
    sock = listen_socket(config.listener.host, config.listener.port, config.listener.backlog, listen=False)
    stats: dict[str, int] = {}

    def ready(relay: Relay) -> None:
        async def watch() -> None:
            assert relay.engine is not None
            while relay.engine.stats.delivered < messages:
                await asyncio.sleep(0.25)
            stats.update(delivered=relay.engine.stats.delivered, commits=relay.spool.stats.commits, changes=relay.spool.stats.changes)
            os.kill(os.getpid(), signal.SIGTERM)

        asyncio.ensure_future(watch())

    run(run_relay(config, sock=sock, spool_directory=shard_directory(config.spool.directory, 0), ready=ready))
    Path(result).write_text(json.dumps(stats))
    return 0


def orchestrate(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="relay-worker."))
    os.chmod(work, 0o755)
    port, sink = _free_port(), _free_port()
    config = work / "relay.toml"
    config.write_text(CONFIG.format(port=port, sink=sink, spool=work / "spool", flush=args.flush_interval))
    dump = work / "sink"
    dump.mkdir()
    os.chmod(dump, 0o1777)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sink_args = ["smtp-sink", "-u", "nobody", f"127.0.0.1:{sink}", "256"]
        procs.append(subprocess.Popen(sink_args))
        _wait_port(sink, time.monotonic() + 30)
        command = [sys.executable, __file__, "worker", "--config", str(config), "--messages", str(args.messages), "--result", str(work / "result.json")]
        if args.callgrind:
            command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={args.callgrind}", *command]
        elif args.strace:
            command = ["strace", "-f", "-c", "-o", args.strace, *command]
        elif args.cprofile:
            command = [sys.executable, "-m", "cProfile", "-o", args.cprofile, *command[1:]]
        elif args.pyspy:
            pyspy = str(Path(sys.executable).with_name("py-spy"))
            command = [pyspy, "record", "--format", "raw", "--rate", "250", "--threads", "-o", args.pyspy, "--", *command]
        started = time.monotonic()
        log = open(work / "relay.log", "wb")  # noqa: SIM115
        relay = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _wait_port(port, time.monotonic() + 300)
        source = ["smtp-source", "-s", str(args.sessions), "-m", str(args.messages), "-l", str(args.size), "-f", "sender@bench.test", "-t", "rcpt@sink.test", f"127.0.0.1:{port}"]
        subprocess.run(source, check=True, timeout=3600)
        _, status, usage = os.wait4(relay.pid, 0)
        wall = time.monotonic() - started
        if status != 0:
            sys.stderr.write((work / "relay.log").read_text(errors="replace")[-4000:])
            raise SystemExit(f"the relay worker exited with status {status}")
        stats = json.loads((work / "result.json").read_text())
        print(json.dumps({
            "messages": args.messages, "size": args.size, "sessions": args.sessions,
            "user": round(usage.ru_utime, 3), "system": round(usage.ru_stime, 3), "wall": round(wall, 2), **stats,
        }))
        return 0
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def _total(path: str) -> int:
    """The instructions a callgrind output file counted (its ``totals:`` or ``summary:`` line)."""
    text = Path(path).read_text(errors="replace")
    match = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
    if match is None:
        raise SystemExit(f"{path}: no totals line")
    return int(match.group(1))


def per_message(first: str, second: str) -> int:
    """Instructions per message between two callgrind runs (their message counts in the files'
    command lines)."""
    counts = []
    for path in (first, second):
        match = re.search(r"--messages (\d+)", Path(path).read_text(errors="replace")[:4000])
        if match is None:
            raise SystemExit(f"{path}: no --messages in its command line")
        counts.append(int(match.group(1)))
    per = (_total(second) - _total(first)) / (counts[1] - counts[0])
    print(f"{first}: {_total(first):,} ({counts[0]} messages); {second}: {_total(second):,} ({counts[1]}); per message: {per:,.0f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    run_p = sub.add_parser("run")
    run_p.add_argument("--messages", type=int, default=1000)
    run_p.add_argument("--size", type=int, default=2048)
    run_p.add_argument("--sessions", type=int, default=20)
    run_p.add_argument("--flush-interval", default="10m", help="observe.flush_interval (default 10m: only the flush at the end; the relay's default is 1s)")
    run_p.add_argument("--callgrind", help="run the worker under callgrind, its output to this file")
    run_p.add_argument("--strace", help="run the worker under strace -f -c, its summary to this file")
    run_p.add_argument("--cprofile", help="run the worker under cProfile (the event loop's thread), its stats to this file")
    run_p.add_argument("--pyspy", help="run the worker under py-spy record (raw, 250 Hz, threads, idle left out) into this file")
    worker_p = sub.add_parser("worker")
    worker_p.add_argument("--config", required=True)
    worker_p.add_argument("--messages", type=int, required=True)
    worker_p.add_argument("--result", required=True)
    per_p = sub.add_parser("per-message")
    per_p.add_argument("files", nargs=2)
    args = parser.parse_args()
    if args.mode == "worker":
        return worker(args.config, args.messages, args.result)
    if args.mode == "per-message":
        return per_message(*args.files)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
