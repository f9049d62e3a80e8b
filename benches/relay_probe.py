"""Helper of benches/relay_vs_postfix.sh: latency probes and the figures.

    relay_probe.py send --port P --count N --out probes.json
        sends N probe messages at a steady pace (one every 20 ms) and writes, per probe, its
        Message-ID and the wall-clock time the relay accepted it (the 250 after DATA).
    relay_probe.py collect --dump DIR --probes probes.json --messages M ...
        waits (bounded) until smtp-sink has dumped every message, then computes throughput,
        latency percentiles and losses.
    relay_probe.py compare A.json B.json
        prints both results and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import sys
import time
from pathlib import Path

PROBE_INTERVAL = 0.02


def send(port: int, count: int, out: Path, timeout: float) -> int:
    accepted = []
    deadline = time.monotonic() + timeout
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for number in range(count):
            if time.monotonic() > deadline:
                break
            message_id = f"<probe-{number}.{os.getpid()}@bench.test>"
            body = (
                f"From: <probe@bench.test>\r\nTo: <rcpt@sink.test>\r\nSubject: probe {number}\r\n"
                f"Message-Id: {message_id}\r\n\r\nlatency probe\r\n"
            )
            client.sendmail("probe@bench.test", ["rcpt@sink.test"], body)
            accepted.append({"message_id": message_id, "accepted": time.time()})
            time.sleep(PROBE_INTERVAL)
    out.write_text(json.dumps(accepted))
    return 0


def _message_id(path: Path) -> str | None:
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                return None
            if line.lower().startswith(b"message-id:"):
                return line.split(b":", 1)[1].strip().decode("ascii", "replace")
    return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def collect(args: argparse.Namespace) -> int:
    probes = json.loads(Path(args.probes).read_text())
    expected = args.messages + len(probes)
    dump = Path(args.dump)
    deadline = time.monotonic() + args.timeout
    while True:
        files = [p for p in dump.iterdir() if p.is_file()]
        if len(files) >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    time.sleep(0.5)  # a late duplicate would show up now
    files = [p for p in dump.iterdir() if p.is_file()]
    arrived: dict[str, float] = {}
    duplicates = 0
    for path in files:
        message_id = _message_id(path)
        if message_id is None:
            continue
        if message_id in arrived:
            duplicates += 1
        arrived[message_id] = path.stat().st_mtime_ns / 1e9
    probe_ids = {p["message_id"] for p in probes}
    load_arrivals = [t for mid, t in arrived.items() if mid not in probe_ids]
    latencies = [arrived[p["message_id"]] - p["accepted"] for p in probes if p["message_id"] in arrived]
    start = args.start_ns / 1e9
    last = max(load_arrivals) if load_arrivals else float("nan")
    result = {
        "name": args.name,
        "messages": args.messages,
        "delivered": len(load_arrivals),
        "lost": args.messages - len(load_arrivals) + (len(probes) - len(latencies)),
        "duplicates": duplicates,
        "messages_per_second": len(load_arrivals) / (last - start) if load_arrivals else 0.0,
        "accepted_per_second": args.messages / ((args.accepted_ns - args.start_ns) / 1e9),
        "latency_p50_ms": percentile(latencies, 0.50) * 1e3 if latencies else float("nan"),
        "latency_p99_ms": percentile(latencies, 0.99) * 1e3 if latencies else float("nan"),
        "probes": len(probes),
    }
    Path(args.out).write_text(json.dumps(result))
    print(_line(result))
    return 0


def _line(r: dict) -> str:
    return (
        f"{r['name']:<13} {r['messages_per_second']:>9,.0f} msg/s delivered   {r['accepted_per_second']:>9,.0f} msg/s accepted   "
        f"latency p50 {r['latency_p50_ms']:>8.1f} ms  p99 {r['latency_p99_ms']:>8.1f} ms   "
        f"lost {r['lost']}  duplicates {r['duplicates']}"
    )


def compare(a: str, b: str) -> int:
    ours, theirs = (json.loads(Path(p).read_text()) for p in (a, b))
    print("== results (same machine, same load, loopback)")
    print(_line(ours))
    print(_line(theirs))
    ratio = ours["messages_per_second"] / theirs["messages_per_second"] if theirs["messages_per_second"] else float("nan")
    print(f"throughput ratio {ours['name']}/{theirs['name']}: {ratio:.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("send")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--timeout", type=float, default=300)
    c = sub.add_parser("collect")
    c.add_argument("--dump", required=True)
    c.add_argument("--probes", required=True)
    c.add_argument("--messages", type=int, required=True)
    c.add_argument("--start-ns", type=int, required=True)
    c.add_argument("--accepted-ns", type=int, required=True)
    c.add_argument("--timeout", type=float, default=300)
    c.add_argument("--name", required=True)
    c.add_argument("--out", required=True)
    m = sub.add_parser("compare")
    m.add_argument("a")
    m.add_argument("b")
    args = parser.parse_args(argv)
    if args.command == "send":
        return send(args.port, args.count, args.out, args.timeout)
    if args.command == "collect":
        return collect(args)
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
