"""Relay throughput with sender limits on (the embedded state database; Redis) against limits
off, in the same run: whole-relay, over SMTP, with Postfix's smtp-source as the client and
smtp-sink as the next hop.

    .venv/bin/python benches/limits_bench.py --rounds 5 --messages 2000 --recipients 2
    .venv/bin/python benches/limits_bench.py --quick      # one small round (benches/test_limits_bench.py)

Each round runs the three modes, in an order that rotates from round to round: a fresh
``deliverypool relay --workers 1`` (spool in a temporary directory) is started for each, then
smtp-source sends MESSAGES messages of RECIPIENTS recipients each over SESSIONS sessions, all
from one sender, whose limits (``per_day``, ``external_per_hour``) are far above what it sends,
so every recipient is checked and counted and none is refused (the run checks both: the
state's per_day count must equal messages x recipients). Measured per run: messages per
second from smtp-source's start to its exit (everything accepted: each 250 comes after the
spool commit), the relay's CPU seconds (supervisor and worker, user + system) per message, and
the recipients the relay refused (must be 0). The figures are the median over the rounds and
each mode's ratio to "off" in the same round. Needs smtp-source and smtp-sink (Debian's
postfix package) and redis-server (scripts/install-test-servers.sh installs both).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benches.build import not_release  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

MODES = ("off", "sqlite", "redis")
_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def relay_config(spool: Path, listen: int, sink: int, mode: str, redis_url: str | None, lease: int | None = None) -> str:
    pools = ""
    for name, source in (("normal", "127.0.0.2"), ("high-risk", "127.0.0.3")):
        pools += f'[pools.{name}]\nsource_addresses = ["{source}"]\ndelivery = "smarthost"\nsmarthost = "127.0.0.1:{sink}"\nmax_connections_per_destination = 8\n'
    text = f'hostname = "bench.test"\n[listener]\naddress = "127.0.0.1:{listen}"\n[spool]\ndirectory = "{spool}"\n[dns]\ncheck_sender_domain = false\n{pools}'
    if mode != "off":
        text += "[limits]\nper_day = 100000000\nexternal_per_hour = 100000000\naction = \"block\"\n"
    if mode != "off":
        text += "[state]\n" + (f'redis = "{redis_url}"\n' if mode == "redis" else "") + (f"lease = {lease}\n" if lease is not None else "")
    return text


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the relay exited")
        try:
            # The greeting: the worker runs (the supervisor binds the socket before it starts).
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                if conn.recv(64).startswith(b"220"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the relay did not start")


def run_once(mode: str, args: argparse.Namespace, redis: RedisServer | None, work: Path) -> dict[str, float]:
    spool = Path(tempfile.mkdtemp(dir=work, prefix=f"{mode}-"))
    listen, sink = free_port(), free_port()
    config = spool / "relay.toml"
    config.write_text(relay_config(spool / "spool", listen, sink, mode, redis.url if redis else None, getattr(args, "lease", None)))
    if redis is not None:
        redis.flush()
    sink_process = subprocess.Popen(["smtp-sink", "-c", f"127.0.0.1:{sink}", "256"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = open(spool / "relay.log", "wb")
    relay = subprocess.Popen(
        [sys.executable, "-m", "deliverypool.cli", "relay", "--config", str(config), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_listening(listen, relay)
        children = [int(p) for p in Path(f"/proc/{relay.pid}/task/{relay.pid}/children").read_text().split()]
        pids = [relay.pid, *children]
        before = cpu_seconds(pids)
        started = time.perf_counter()
        source = subprocess.run(
            ["smtp-source", "-s", str(args.sessions), "-m", str(args.messages), "-r", str(args.recipients), "-l", str(args.size),
             "-f", "bulk@bench.test", "-t", "rcpt@sink.test", f"127.0.0.1:{listen}"],
            capture_output=True, timeout=args.timeout,
        )
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pids) - before
        if source.returncode != 0:
            raise RuntimeError(f"smtp-source failed: {source.stderr.decode()[-500:]}")
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            relay.wait(timeout=20)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait()
        log.close()
        sink_process.kill()
        sink_process.wait()
    refused = (spool / "relay.log").read_text(errors="replace").count("refused rcpt=")
    counted = counted_recipients(mode, spool / "spool", redis)
    shutil.rmtree(spool, ignore_errors=True)
    return {
        "messages_per_second": args.messages / elapsed, "cpu_ms_per_message": 1000 * cpu / args.messages, "refused": refused,
        "counted": counted, "seconds": elapsed,
    }


def counted_recipients(mode: str, spool: Path, redis: RedisServer | None) -> int:
    """The recipients the state holds in the sender's per_day window: proof that each was checked."""
    if mode == "sqlite":
        import sqlite3

        with sqlite3.connect(spool / "state.sqlite3") as conn:
            return int(conn.execute("SELECT coalesce(sum(count), 0) FROM limits_counts WHERE window = 'per_day'").fetchone()[0])
    if mode == "redis" and redis is not None:
        import redis as redis_client

        client = redis_client.Redis.from_url(redis.url, decode_responses=True)
        try:
            return sum(int(v) for v in client.hgetall("deliverypool:c:s:bulk@bench.test:per_day").values())
        finally:
            client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--recipients", type=int, default=2, help="recipients per message (each one checked)")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", metavar="PATH", help="write every run's figures here")
    parser.add_argument("--lease", type=int, default=None, help="[state] lease for the modes with limits (default: the relay's, 63; 0: every recipient checked in the backend)")
    parser.add_argument("--quick", action="store_true", help="one round of 100 messages (the test command's check that it runs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.messages, args.sessions = 1, 100, 4
    elif problem := not_release("limits_bench"):
        print(problem, file=sys.stderr)
        return 2
    for tool in ("smtp-source", "smtp-sink"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"limits_bench: {tool} is missing (Debian's postfix package)", file=sys.stderr)
            return 2
    os.environ["PATH"] += ":/usr/sbin"
    work = Path(tempfile.mkdtemp(prefix="deliverypool-limits-bench-"))
    redis = RedisServer(work)
    redis.start()
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    try:
        for n in range(args.rounds):
            order = MODES[n % 3 :] + MODES[: n % 3]
            for mode in order:
                figures = run_once(mode, args, redis if mode == "redis" else None, work)
                results[mode].append(figures)
                print(
                    f"round {n + 1} {mode:<7} {figures['messages_per_second']:8.1f} msg/s  {figures['cpu_ms_per_message']:6.3f} ms CPU/msg  "
                    f"refused {figures['refused']}  counted {figures['counted']}",
                    flush=True,
                )
    finally:
        redis.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.messages} messages x {args.recipients} recipients, {args.sessions} sessions, {args.size} bytes, {args.rounds} round(s); medians, and the median of the per-round ratios to off")
    print(f"{'mode':<8} {'msg/s':>9} {'CPU ms/msg':>11} {'msg/s vs off':>13} {'CPU vs off':>11} {'refused':>8}")
    for mode in MODES:
        rows = results[mode]
        rate = statistics.median(r["messages_per_second"] for r in rows)
        cpu = statistics.median(r["cpu_ms_per_message"] for r in rows)
        rate_ratio = statistics.median(r["messages_per_second"] / o["messages_per_second"] for r, o in zip(rows, results["off"]))
        cpu_ratio = statistics.median(r["cpu_ms_per_message"] / o["cpu_ms_per_message"] for r, o in zip(rows, results["off"]))
        print(f"{mode:<8} {rate:9.1f} {cpu:11.3f} {rate_ratio:13.3f} {cpu_ratio:11.3f} {int(sum(r['refused'] for r in rows)):>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    expected = args.messages * args.recipients
    wrong = any(r["refused"] for rows in results.values() for r in rows) or any(r["counted"] != expected for m in ("sqlite", "redis") for r in results[m])
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
