"""Helper of benches/relay_vs_postfix.sh: latency probes and the figures.

    relay_probe.py send --port P --count N --out probes.json
        sends N probe messages at a steady pace (one every 20 ms) and writes, per probe, its
        Message-ID and the time its body went out (after the 354, on the kernel's coarse clock,
        which file times come from); latency is counted from it.
    relay_probe.py collect --dump DIR --probes probes.json --messages M ...
        waits (bounded) until smtp-sink has dumped every message, then computes throughput,
        latency percentiles and losses.
    relay_probe.py usage --match TEXT --out usage.json
        writes the CPU seconds (user+system, exited children included) and the sum of the peak
        RSS of every process whose command line contains TEXT (or whose executable is under
        TEXT after "exe:"), and the machine's busy CPU seconds (/proc/stat).
    relay_probe.py combine --load LOAD.json --latency LATENCY.json --out RESULT.json
        one result from a run of the load alone (throughput, CPU, memory) and a run of the same
        load with the probes (latency); losses and duplicates of both counted.
    relay_probe.py compare A.json B.json
        prints both results and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import statistics
import sys
import time
from pathlib import Path

PROBE_INTERVAL = 0.02
# Linux's CLOCK_REALTIME_COARSE, which the kernel's file times come from (a tick, 4 ms at HZ=250,
# behind the precise clock at most).
_COARSE = 5


def _coarse_now() -> float:
    """The wall clock file times are taken from: a stamp taken before a file is written is never
    later than the file's mtime. Elsewhere than Linux, the precise clock."""
    return time.clock_gettime(_COARSE) if sys.platform.startswith("linux") else time.time()


def send(port: int, count: int, out: Path, timeout: float) -> int:
    sent_probes = []
    deadline = time.monotonic() + timeout
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        for number in range(count):
            if time.monotonic() > deadline:
                break
            message_id = f"<probe-{number}.{os.getpid()}@bench.test>"
            body = (
                f"From: <probe@bench.test>\r\nTo: <rcpt@sink.test>\r\nSubject: probe {number}\r\n"
                f"Message-Id: {message_id}\r\n\r\nlatency probe\r\n"
            )
            # Stamped as the body goes out (after the 354), on the clock of the sink's file
            # times: the relay passes a message on as it answers 250, so the sink often has it
            # before the probe has read that 250, and a file's mtime lags the precise clock by up
            # to a tick (stamped after the 250 with time.time(), latencies read a few ms below
            # zero). So it covers the body, the relay's commit and the delivery: to a tick's
            # resolution, never below zero.
            for code, reply in (client.mail("probe@bench.test"), client.rcpt("rcpt@sink.test")):
                if code != 250:
                    raise smtplib.SMTPResponseException(code, reply)
            code, reply = client.docmd("DATA")
            if code != 354:
                raise smtplib.SMTPDataError(code, reply)
            sent = _coarse_now()
            client.send(smtplib.quotedata(body).encode("ascii") + b".\r\n")
            code, reply = client.getreply()
            if code != 250:
                raise smtplib.SMTPDataError(code, reply)
            sent_probes.append({"message_id": message_id, "sent": sent})
            time.sleep(PROBE_INTERVAL)
    out.write_text(json.dumps(sent_probes))
    return 0


def _message_id(path: Path) -> str | None:
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                return None
            if line.lower().startswith(b"message-id:"):
                return line.split(b":", 1)[1].strip().decode("ascii", "replace")
    return None


_TICK = os.sysconf("SC_CLK_TCK")


def _processes(match: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        # Several patterns separated by "|" (Postfix and its milter, OpenDKIM).
        try:
            hit = any(
                os.readlink(entry / "exe").startswith(one[4:]) if one.startswith("exe:") else one.encode() in (entry / "cmdline").read_bytes()
                for one in match.split("|")
            )
        except OSError:
            continue
        if hit:
            found.append(int(entry.name))
    return found


def usage(match: str, out: Path) -> int:
    cpu = 0.0
    peak_kib = pss_kib = 0
    pids = _processes(match)
    for pid in pids:
        try:
            fields = (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]).split()
            # utime, stime, cutime, cstime: fields 14-17 of stat, 12-15 after the command.
            cpu += sum(int(x) for x in fields[11:15]) / _TICK
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kib += int(line.split()[1])
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss_kib += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
    values = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(v) for v in values]
    busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / _TICK  # everything but idle and iowait
    out.write_text(json.dumps({"cpu_seconds": cpu, "peak_rss_mib": peak_kib / 1024, "pss_mib": pss_kib / 1024, "processes": len(pids), "machine_busy_seconds": busy}))
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summarize(
    args: argparse.Namespace, probes: list[dict], arrived: dict[str, float], duplicates: int, before: dict | None, after: dict | None
) -> dict:
    """The run's figures from what reached the sink (Message-ID: arrival time) and the usage
    before and after."""
    probe_ids = {p["message_id"] for p in probes}
    load_arrivals = [t for mid, t in arrived.items() if mid not in probe_ids]
    latencies = [arrived[p["message_id"]] - p["sent"] for p in probes if p["message_id"] in arrived]
    start = args.start_ns / 1e9
    last = max(load_arrivals) if load_arrivals else float("nan")
    cpu = machine = rss = pss = float("nan")
    if before is not None and after is not None:
        cpu = after["cpu_seconds"] - before["cpu_seconds"]
        machine = after["machine_busy_seconds"] - before["machine_busy_seconds"]
        rss, pss = after["peak_rss_mib"], after["pss_mib"]
    # Per message of the load. With probes running, their CPU is counted too: each is a message
    # on its own, which costs either relay about 1.2-1.8 ms (benches/README.md, session 13), so
    # 100 probes weigh ~0.5 ms on each of 300 messages of 1 MiB. relay_vs_postfix.sh therefore
    # takes CPU and throughput from a run of the load alone (`combine`).
    handled = max(1, len(load_arrivals))
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
        "size": args.size,
        "cpu_ms_per_message": cpu / handled * 1e3,
        "cpu_us_per_kib": cpu / handled / (args.size / 1024) * 1e6 if args.size else float("nan"),
        "machine_cpu_ms_per_message": machine / handled * 1e3,
        "peak_rss_mib": rss,
        "pss_mib": pss,
    }
    return result


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
    after = None
    if args.usage_match:
        # Taken as soon as everything arrived: the relay's work is done, its idle time not counted.
        usage_path = Path(args.out).with_suffix(".usage.json")
        usage(args.usage_match, usage_path)
        after = json.loads(usage_path.read_text())
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
    before = json.loads(Path(args.usage_before).read_text()) if args.usage_before else None
    result = summarize(args, probes, arrived, duplicates, before, after)
    Path(args.out).write_text(json.dumps(result))
    print(_line(result))
    return 0


def combine(load: dict, latency: dict) -> dict:
    """One run's figures: throughput, CPU and memory from the run of the load alone, latency from
    the run with the probes (whose own CPU per message of the load is kept as
    ``cpu_ms_per_message_with_probes``); messages lost or duplicated in either run counted."""
    result = dict(load)
    result.update(
        latency_p50_ms=latency["latency_p50_ms"],
        latency_p99_ms=latency["latency_p99_ms"],
        probes=latency["probes"],
        lost=load["lost"] + latency["lost"],
        duplicates=load["duplicates"] + latency["duplicates"],
        cpu_ms_per_message_with_probes=latency["cpu_ms_per_message"],
        messages_per_second_with_probes=latency["messages_per_second"],
    )
    return result


def _line(r: dict) -> str:
    return (
        f"{r['name']:<13} {r['messages_per_second']:>9,.0f} msg/s delivered   {r['accepted_per_second']:>9,.0f} msg/s accepted   "
        f"latency p50 {r['latency_p50_ms']:>8.1f} ms  p99 {r['latency_p99_ms']:>8.1f} ms   "
        f"lost {r['lost']}  duplicates {r['duplicates']}   "
        f"cpu {r.get('cpu_ms_per_message', float('nan')):.2f} ms/msg ({r.get('cpu_us_per_kib', float('nan')):.1f} us/KiB), "
        f"machine {r.get('machine_cpu_ms_per_message', float('nan')):.2f} ms/msg, peak RSS {r.get('peak_rss_mib', float('nan')):.0f} MiB"
    )


HEADER = (
    "| size | deliverypool msg/s | Postfix msg/s | ratio | p50 / p99 ms (dp) | p50 / p99 ms (Postfix) | relay CPU ms/msg dp / Postfix "
    "| CPU ratio | relay CPU ms/msg with the probes dp / Postfix | relay CPU µs/KiB (dp) | machine CPU ms/msg dp / Postfix | peak RSS MiB dp / Postfix (sum over processes) "
    "| PSS MiB at the end dp / Postfix | lost dp / Postfix | dup dp / Postfix |"
)


def _ratio(ours: dict, theirs: dict, key: str) -> float:
    return ours[key] / theirs[key] if theirs[key] else float("nan")


def _label(size: int) -> str:
    return f"{size // 1024} KiB" if size < 1 << 20 else f"{size / (1 << 20):g} MiB"


def row(ours: dict, theirs: dict, label: str | None = None, ratios: tuple[str, str] | None = None) -> str:
    """One table row; `ratios`: the throughput and CPU ratio cells' text, when not one run's."""
    nan = float("nan")  # results of runs before the load was run alone have no figure with the probes
    throughput, cpu = ratios or (f"**{_ratio(ours, theirs, 'messages_per_second'):.2f}**", f"**{_ratio(ours, theirs, 'cpu_ms_per_message'):.2f}**")
    return (
        f"| {label or _label(ours['size'])} | {ours['messages_per_second']:,.0f} | {theirs['messages_per_second']:,.0f} | {throughput} "
        f"| {ours['latency_p50_ms']:.0f} / {ours['latency_p99_ms']:.0f} | {theirs['latency_p50_ms']:.0f} / {theirs['latency_p99_ms']:.0f} "
        f"| {ours['cpu_ms_per_message']:.2f} / {theirs['cpu_ms_per_message']:.2f} | {cpu} "
        f"| {ours.get('cpu_ms_per_message_with_probes', nan):.2f} / {theirs.get('cpu_ms_per_message_with_probes', nan):.2f} | {ours['cpu_us_per_kib']:.1f} "
        f"| {ours['machine_cpu_ms_per_message']:.2f} / {theirs['machine_cpu_ms_per_message']:.2f} "
        f"| {ours['peak_rss_mib']:.0f} / {theirs['peak_rss_mib']:.0f} | {ours['pss_mib']:.0f} / {theirs['pss_mib']:.0f} | {ours['lost']} / {theirs['lost']} | {ours['duplicates']} / {theirs['duplicates']} |"
    )


def median_row(pairs: list[tuple[dict, dict]]) -> str:
    """The row of several runs of one size: each figure the median of the runs (lost and
    duplicated: the sum), the two ratios the medians of the runs' own ratios with their range."""
    def median_of(results: list[dict]) -> dict:
        merged = dict(results[0])
        for key, value in results[0].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "size":
                values = [r[key] for r in results]
                merged[key] = sum(values) if key in ("lost", "duplicates") else statistics.median(values)
        return merged

    def spread(key: str) -> str:
        values = [_ratio(a, b, key) for a, b in pairs if b[key]]
        return f"**{statistics.median(values):.2f}** ({min(values):.2f}–{max(values):.2f})"

    ours, theirs = median_of([a for a, _ in pairs]), median_of([b for _, b in pairs])
    return row(ours, theirs, f"{_label(ours['size'])}, median of {len(pairs)}", (spread("messages_per_second"), spread("cpu_ms_per_message")))


def compare(a: str, b: str) -> int:
    ours, theirs = (json.loads(Path(p).read_text()) for p in (a, b))
    print("== results (same machine, same load, loopback)")
    print(_line(ours))
    print(_line(theirs))
    ratio = _ratio(ours, theirs, "messages_per_second")
    print(f"throughput ratio {ours['name']}/{theirs['name']}: {ratio:.2f}")
    return 0


def table(paths: list[str]) -> int:
    """Markdown table from result files given as deliverypool, Postfix pairs: a row per pair,
    and where several pairs have one size (``RUNS``), a row of their medians after them."""
    print(HEADER)
    print("|" + "|".join([" --- "] * (HEADER.count("|") - 1)) + "|")
    pairs = [(json.loads(Path(a).read_text()), json.loads(Path(b).read_text())) for a, b in zip(paths[::2], paths[1::2])]
    for index, (ours, theirs) in enumerate(pairs):
        print(row(ours, theirs))
        following = pairs[index + 1][0]["size"] if index + 1 < len(pairs) else None
        runs = [pair for pair in pairs if pair[0]["size"] == ours["size"]]
        if following != ours["size"] and len(runs) > 1:
            print(median_row(runs))
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
    c.add_argument("--size", type=int, default=0)
    c.add_argument("--usage-before")
    c.add_argument("--usage-match")
    u = sub.add_parser("usage")
    u.add_argument("--match", required=True)
    u.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("table")
    t.add_argument("results", nargs="+")
    b = sub.add_parser("combine")
    b.add_argument("--load", type=Path, required=True)
    b.add_argument("--latency", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("compare")
    m.add_argument("a")
    m.add_argument("b")
    args = parser.parse_args(argv)
    if args.command == "send":
        return send(args.port, args.count, args.out, args.timeout)
    if args.command == "collect":
        return collect(args)
    if args.command == "usage":
        return usage(args.match, args.out)
    if args.command == "combine":
        result = combine(json.loads(args.load.read_text()), json.loads(args.latency.read_text()))
        args.out.write_text(json.dumps(result))
        print(_line(result))
        return 0
    if args.command == "table":
        return table(args.results)
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
