"""The surge monitor's evaluation: steady traffic for three tenants with a realistic bounce rate,
then each cause injected, all through the relay's SMTP front end on loopback, with a simulated
clock for the monitor (production defaults: window 5m, baseline 6h, min_dsns 20, factor 4).

    .venv/bin/python benches/monitor_eval.py [--hours 24] [--quick] [--cpu N]

Per scenario it reports the detection delay (simulated time from the attack's onset to the
firing alert) and the cause given; over the steady run, the alerts raised (false alarms). With
``--cpu N`` it also measures the relay worker's CPU per message (a ``deliverypool relay
--workers 1`` subprocess, /proc/PID/stat) with the observer on (tenants, events, metrics, the
monitor, the admin listener) against ``observe.enabled = false``, in the same run, alternating.

The traffic: acme 120 messages/min at 3% bounces, globex 30/min at 2%, initech 6/min at 1%,
with a ±40% daily swing. Every DSN goes through SMTP, with the ordinary message it is about
sent first (so its Message-ID is in the relayed set); of the other ordinary mail one message
in SAMPLE goes through SMTP (the monitor counts DSNs: ordinary mail only feeds the relayed set
and the per-tenant message rate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiosmtplib

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benches.build import not_release  # noqa: E402
from deliverypool import config as cfg  # noqa: E402
from deliverypool.app import Relay  # noqa: E402
from deliverypool.observe.service import Observer  # noqa: E402
from deliverypool.testing.scenarios import SCENARIOS, SENDS_ORIGINALS, DsnFactory, ordinary_bounce  # noqa: E402
from tests.smtp_sinks import free_port, sink  # noqa: E402

TENANTS = {"acme": ("127.0.1.5", 120, 0.03), "globex": ("127.0.2.5", 30, 0.02), "initech": ("127.0.3.5", 6, 0.01)}
ATTACK_RATE = {"directory-harvest": 40, "backscatter": 30, "spam-attack": 30, "rogue-server": 30}
SAMPLE = 20
TICK = 30.0


def config_text(spool: Path, listen: int, sink_port: int, *, observe: bool = True, admin: int | None = None) -> str:
    tenants = "".join(
        f'[tenants.{name}]\nnetworks = ["{ip.rsplit(".", 1)[0]}.0/24"]\ndomains = ["{name}.example"]\n' for name, (ip, _, _) in TENANTS.items()
    )
    return f"""
hostname = "relay.bench"
[listener]
address = "127.0.0.1:{listen}"
allowed_networks = ["127.0.0.0/8"]
[spool]
directory = "{spool}"
[dns]
check_sender_domain = false
[pools.normal]
source_addresses = ["127.0.0.2"]
delivery = "smarthost"
smarthost = "127.0.0.1:{sink_port}"
idle_timeout = "5s"
[pools.high-risk]
source_addresses = ["127.0.0.3"]
delivery = "smarthost"
smarthost = "127.0.0.1:{sink_port}"
idle_timeout = "5s"
[observe]
enabled = {"true" if observe else "false"}
{f'[admin]{chr(10)}address = "127.0.0.1:{admin}"' if admin else ""}
{tenants}
"""


class Clients:
    """One persistent SMTP connection per source address."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.open: dict[str, aiosmtplib.SMTP] = {}
        self.sent: dict[str, int] = {}

    async def send(self, source: str, sender: str, rcpt: str, content: bytes) -> None:
        client = self.open.get(source)
        self.sent[source] = self.sent.get(source, 0) + 1
        if client is not None and self.sent[source] % 1000 == 0:  # the listener's MAIL limit per connection
            await client.quit()
            client = None
        if client is None or not client.is_connected:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, source_address=(source, 0), start_tls=False)
            await client.connect()
            self.open[source] = client
        await client.sendmail(sender, [rcpt], content)

    async def close(self) -> None:
        for client in self.open.values():
            try:
                await client.quit()
            except Exception:
                client.close()


def ordinary(tenant: str, n: int) -> tuple[str, bytes]:
    mid = f"<{tenant}-{n}@{tenant}.example>"
    return mid, f"From: app@{tenant}.example\r\nTo: someone@far.example\r\nSubject: order {n}\r\nMessage-ID: {mid}\r\n\r\nThanks for your order.\r\n".encode()


async def run(minutes: int, attack: str | None, onset: int, duration: int, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    factory = DsnFactory(seed=seed)
    sim = [1_800_000_000.0]  # simulated seconds since the epoch
    with tempfile.TemporaryDirectory() as tmp:
        sink_port, listen = free_port(), free_port()
        conf = cfg.loads(config_text(Path(tmp) / "spool", listen, sink_port))
        async with sink("127.0.0.1", sink_port, "bench-sink"):
            relay = Relay(conf)
            relay.observer = Observer(conf, spool_root=conf.spool.directory, worker="main", leader=True, clock=lambda: sim[0], run_loops=False)
            await relay.start()
            await relay.listen()
            clients = Clients(listen)
            alerts: list[dict[str, Any]] = []
            counter = 0
            sent = dsns = 0
            try:
                for minute in range(minutes):
                    day = 1 + 0.4 * math.sin(2 * math.pi * minute / 1440)
                    for tenant, (ip, per_minute, bounce_rate) in TENANTS.items():
                        count = sum(rng.random() < per_minute * day / 100 for _ in range(100))
                        for _ in range(count):
                            counter += 1
                            mid, body = ordinary(tenant, counter)
                            bounces = rng.random() < bounce_rate
                            if bounces or counter % SAMPLE == 0:
                                await clients.send(ip, f"app@{tenant}.example", "someone@far.example", body)
                                sent += 1
                            if bounces:
                                spec = ordinary_bounce(factory, rng, f"{tenant}.example", counter, [mid])
                                await clients.send(ip, "", f"app@{tenant}.example", factory.dsn(spec))
                                dsns += 1
                    if attack is not None and onset <= minute < onset + duration:
                        for i in range(ATTACK_RATE[attack]):
                            spec, client = SCENARIOS[attack](factory, rng, "acme.example", minute * 1000 + i)
                            source = "127.0.1.66" if client == "rogue" else "127.0.1.5"
                            if attack in SENDS_ORIGINALS:
                                await clients.send(source, spec.original_from, "x@far.example",
                                                   f"From: {spec.original_from}\r\nMessage-ID: {spec.original_message_id}\r\nSubject: win\r\n\r\nbuy\r\n".encode())
                            await clients.send(source, "", spec.original_from, factory.dsn(spec))
                            dsns += 1
                    for _ in range(int(60 / TICK)):
                        while any(s.queue for s in relay.observer.bus.subscriptions):
                            await asyncio.sleep(0.001)
                        await relay.observer.flush()
                        for change in await relay.observer.evaluate():
                            change["_minute"] = sim[0]
                            alerts.append(change)
                        sim[0] += TICK
            finally:
                await clients.close()
                await relay.stop()
    start = 1_800_000_000.0
    onset_at = start + onset * 60
    firing = [a for a in alerts if a["state"] == "firing"]
    result: dict[str, Any] = {"scenario": attack or "steady", "minutes": minutes, "messages_via_smtp": sent, "dsns": dsns}
    if attack is None:
        result["false_alarms"] = len(firing)
        result["alerts"] = [(a["tenant"], a["cause"]) for a in firing]
    else:
        mine = [a for a in firing if a["tenant"] == "acme" and a["_minute"] >= onset_at]
        result["false_alarms"] = len([a for a in firing if a not in mine])
        if mine:
            result["detected_after_s"] = round(mine[0]["_minute"] - onset_at, 0)
            result["cause"] = mine[0]["cause"]
            result["evidence"] = mine[0]["evidence"]
        result["resolved"] = any(a["state"] == "resolved" and a["tenant"] == "acme" for a in alerts)
    return result


def worker_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_run(observe: bool, messages: int) -> float:
    """CPU seconds per 1000 messages of the relay worker (subprocess), observer on or off."""
    with tempfile.TemporaryDirectory() as tmp:
        sink_port, listen = free_port(), free_port()
        path = Path(tmp) / "relay.toml"
        path.write_text(config_text(Path(tmp) / "spool", listen, sink_port, observe=observe, admin=free_port() if observe else None))
        async with sink("127.0.0.1", sink_port, "cpu-sink") as mx:
            process = subprocess.Popen([sys.executable, "-m", "deliverypool.cli", "relay", "--config", str(path), "--workers", "1"],
                                       stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 30
                clients = Clients(listen)
                while True:
                    try:
                        await clients.send("127.0.1.5", "app@acme.example", "x@far.example", ordinary("acme", 0)[1])
                        break
                    except (OSError, aiosmtplib.SMTPException):
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
                await mx.wait_for(1)
                worker = int(subprocess.check_output(["pgrep", "-P", str(process.pid)]).split()[0])
                before = worker_cpu(worker)
                rng = random.Random(3)
                factory = DsnFactory(seed=3)
                for n in range(1, messages + 1):
                    mid, body = ordinary("acme", n)
                    await clients.send("127.0.1.5", "app@acme.example", "x@far.example", body)
                    if n % 50 == 0:  # 2% bounces
                        await clients.send("127.0.1.5", "", "app@acme.example", factory.dsn(ordinary_bounce(factory, rng, "acme.example", n, [mid])))
                await mx.wait_for(messages + 1 + messages // 50, timeout=120)
                used = worker_cpu(worker) - before
                await clients.close()
            finally:
                process.terminate()
                process.wait(30)
    return used / (messages + messages // 50) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours of the steady run")
    parser.add_argument("--quick", action="store_true", help="one short scenario only (the test command's check)")
    parser.add_argument("--cpu", type=int, default=0, metavar="N", help="also measure CPU per message over N messages, 3 rounds each")
    parser.add_argument("--rounds", type=int, default=3, help="CPU rounds per mode (alternating off/on)")
    parser.add_argument("--cpu-only", action="store_true", help="only the CPU measurement")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.cpu and (problem := not_release("monitor_eval --cpu")):
        print(problem, file=sys.stderr)
        return 2
    results = []
    if args.cpu_only:
        pass
    elif args.quick:
        results.append(asyncio.run(run(50, "directory-harvest", 35, 10)))
    else:
        results.append(asyncio.run(run(int(args.hours * 60), None, 0, 0)))
        for scenario in SCENARIOS:
            results.append(asyncio.run(run(75, scenario, 45, 15)))
    for result in results:
        print(json.dumps({k: v for k, v in result.items() if k != "evidence"}))
    if args.cpu:
        rounds: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                rounds[mode].append(asyncio.run(cpu_run(mode == "on", args.cpu)))
        off, on = min(rounds["off"]), min(rounds["on"])
        median_off, median_on = sorted(rounds["off"])[len(rounds["off"]) // 2], sorted(rounds["on"])[len(rounds["on"]) // 2]
        cpu = {
            "cpu_seconds_per_1000_messages": {"off": rounds["off"], "on": rounds["on"]},
            "overhead_min": round(on / off - 1, 4),
            "overhead_median": round(median_on / median_off - 1, 4),
        }
        print(json.dumps(cpu))
        results.append(cpu)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
