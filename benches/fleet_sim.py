"""A fleet of N simulated nodes sharing one real redis-server, on a simulated clock: each node
adds its share of the fleet's DSN records and message counts through the relay's own code
(`Fleet.add` -> `FleetStore.add`, one round trip per node and flush), one node's leading process
runs the fleet's surge monitor (`Observer.evaluate` -> `Fleet.evaluate`), and a directory harvest
is injected into one tenant, spread over every node.

    .venv/bin/python benches/fleet_sim.py [--nodes 10] [--tenants 200] [--minutes 90] [--quick]

It reports the fleet monitor's detection delay (simulated seconds from the harvest's onset to
the firing alert) and cause; what N per-node monitors (each node alone, as without a fleet) make
of the same records; and Redis's load (commands per DSN and per message, by command, from INFO
commandstats; Redis's CPU; memory per tenant from MEMORY USAGE and used_memory). Production
monitor defaults (window 5m, baseline 6h, min_dsns 20, factor 4) unless --quick.

Traffic: every tenant has a steady DSN rate (``--dsns-per-tenant`` per minute, Poisson) and the
fleet ``--messages`` per minute spread over the tenants; each record goes to a node at random.
From ``--onset`` on, for ``--attack-minutes``, the harvest adds ``--attack`` DSNs a minute to
tenant t0000, round-robin over the nodes: each node sees 1/N of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis as redis_client  # noqa: E402

from deliverypool import config as cfg  # noqa: E402
from deliverypool.observe.service import Observer  # noqa: E402
from deliverypool.observe.surge import SurgeMonitor  # noqa: E402
from tests.redis_server import redis_server  # noqa: E402

START = 1_900_000_000.0


def harvest(n: int, tenant: str) -> dict[str, Any]:
    """What a worker records of a directory-harvest DSN (observe/service.py `_window_record`)."""
    return {"s": ["5.1.1"], "c": ["bad-mailbox"], "r": [[f"guess{n}x", f"{tenant}.example"]], "own": 1, "m": f"mx.{tenant}.example",
            "cl": "10.0.0.5", "k": False, "ft": False, "fp": f"h{n}", "x": False, "loop": False}


def ordinary(rng: random.Random, n: int) -> dict[str, Any]:
    status, category = rng.choice([("5.1.1", "bad-mailbox"), ("4.2.2", "quota"), ("5.2.2", "quota"), ("5.7.1", "spam-related"), ("5.1.2", "bad-domain")])
    far = rng.choice(["gmail.example", "outlook.example", "yahoo.example", "web.example", "corp.example"])
    return {"s": [status], "c": [category], "r": [[f"user{n}", far]], "own": 0, "m": f"mx.{far}", "cl": "10.0.0.5", "k": True, "ft": False,
            "fp": f"o{n}", "x": False, "loop": False}


def config_text(spool: Path, url: str, tenants: int, window: str, baseline: str, min_dsns: int) -> str:
    names = "".join(f'[tenants.t{i:04d}]\ndomains = ["t{i:04d}.example"]\n' for i in range(tenants))
    return f"""
[spool]
directory = "{spool}"
[dns]
check_sender_domain = false
[pools.normal]
source_addresses = ["127.0.0.2"]
[pools.high-risk]
source_addresses = ["127.0.0.3"]
[monitor]
window = "{window}"
baseline = "{baseline}"
min_dsns = {min_dsns}
[state]
redis = "{url}"
leader_ttl = "600s"
timeout = "5s"
{names}"""


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 30:  # normal approximation
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


async def simulate(
    *,
    nodes: int,
    tenants: int,
    minutes: int,
    onset: int,
    attack: float,
    attack_minutes: int,
    dsns_per_tenant: float,
    messages: float,
    window: str = "5m",
    baseline: str = "6h",
    min_dsns: int = 20,
    flush: float = 1.0,
    seed: int = 1,
) -> dict[str, Any]:
    rng = random.Random(seed)
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp, redis_server() as server:
        conf = cfg.loads(config_text(Path(tmp) / "spool", server.url, tenants, window, baseline, min_dsns))
        leader = Observer(conf, spool_root=Path(tmp) / "n0", worker="shard-0", leader=True, clock=clock, run_loops=False)
        others = [Observer(conf, spool_root=Path(tmp) / f"n{k}", worker="shard-0", leader=False, clock=clock, run_loops=False) for k in range(1, nodes)]
        await leader.start()
        assert leader.fleet is not None and leader.fleet.leading
        fleets = [leader.fleet]
        for node in others:
            assert node.fleet is not None
            await node.fleet.store.open()
            fleets.append(node.fleet)
        tick = conf.monitor.tick
        names = [f"t{i:04d}" for i in range(tenants)]
        # Each node alone, as without a fleet: a monitor over its own share.
        alone = [SurgeMonitor(conf.monitor, started=START) for _ in range(nodes)]
        redis = redis_client.Redis.from_url(server.url)
        redis.config_resetstat()
        cpu0 = _cpu(redis.info("cpu"))
        memory0 = int(redis.info("memory")["used_memory"])
        counters = {"dsns": 0, "attack_dsns": 0, "messages": 0, "flushes": 0}
        fired: dict[str, Any] | None = None
        alone_alerts: list[tuple[int, float, str]] = []
        next_tick = START + tick
        n = 0
        steps = int(minutes * 60 / flush)
        started = time.perf_counter()
        for step in range(steps):
            clock.now = START + step * flush
            minute = int(clock.now // 60)
            batches: list[list[tuple[float, str, str, dict[str, Any]]]] = [[] for _ in range(nodes)]
            rates: list[dict[tuple[int, str, str], int]] = [{} for _ in range(nodes)]
            for _ in range(poisson(rng, tenants * dsns_per_tenant / 60 * flush)):
                k, tenant = rng.randrange(nodes), rng.choice(names)
                n += 1
                batches[k].append((clock.now, tenant, "shard-0", ordinary(rng, n)))
                rates[k][(minute, tenant, "dsns")] = rates[k].get((minute, tenant, "dsns"), 0) + 1
            if onset * 60 <= step * flush < (onset + attack_minutes) * 60:
                for _ in range(poisson(rng, attack / 60 * flush)):
                    n += 1
                    k = counters["attack_dsns"] % nodes
                    counters["attack_dsns"] += 1
                    batches[k].append((clock.now, names[0], "shard-0", harvest(n, names[0])))
                    rates[k][(minute, names[0], "dsns")] = rates[k].get((minute, names[0], "dsns"), 0) + 1
            for _ in range(poisson(rng, messages / 60 * flush)):
                k, tenant = rng.randrange(nodes), rng.choice(names)
                rates[k][(minute, tenant, "messages")] = rates[k].get((minute, tenant, "messages"), 0) + 1
                counters["messages"] += 1
            for k, fleet in enumerate(fleets):
                counters["dsns"] += len(batches[k])
                for at, tenant, _, record in batches[k]:
                    alone[k].add(tenant, at, record)
                if batches[k] or rates[k]:
                    counters["flushes"] += 1
                    await fleet.add(batches[k], rates[k])
            if clock.now >= next_tick:
                next_tick += tick
                for change in await leader.evaluate():
                    if fired is None and change["state"] == "firing" and change["tenant"] == names[0]:
                        fired = dict(change, _at=clock.now)
                for k, monitor in enumerate(alone):
                    for change in monitor.evaluate(clock.now):
                        if change["state"] == "firing":
                            alone_alerts.append((k, clock.now, change["tenant"]))
        wall = time.perf_counter() - started
        stats = _commandstats(redis.info("commandstats"))
        cpu = _cpu(redis.info("cpu")) - cpu0
        memory = int(redis.info("memory")["used_memory"]) - memory0
        streams = [int(redis.memory_usage(fleets[0].store.dsn_key(name), samples=0) or 0) for name in names[1:]]
        lengths = [int(redis.xlen(fleets[0].store.dsn_key(name))) for name in names[1:]]
        attacked = int(redis.memory_usage(fleets[0].store.dsn_key(names[0]), samples=0) or 0)
        redis.close()
        for node in others:
            assert node.fleet is not None
            await node.fleet.store.close()
        await leader.stop()
    onset_at = START + onset * 60
    dsns, messages_sent = counters["dsns"], counters["messages"]
    calls = sum(stats.values())
    by_kind = {name: round(count / max(dsns, 1), 3) for name, count in sorted(stats.items(), key=lambda kv: -kv[1])}
    hincr = stats.get("hincrby", 0)
    return {
        "nodes": nodes, "tenants": tenants, "simulated_minutes": minutes, "flush_seconds": flush, "tick_seconds": tick,
        "monitor": {"window": conf.monitor.window, "baseline": conf.monitor.baseline, "min_dsns": conf.monitor.min_dsns, "factor": conf.monitor.factor},
        "ticks": int(minutes * 60 / tick), "dsns": dsns, "attack_dsns": counters["attack_dsns"], "attack_per_node_per_window": round(attack / nodes * conf.monitor.window / 60, 1),
        "messages": messages_sent, "flushes": counters["flushes"],
        "fleet_monitor": None if fired is None else {
            "detected_after_s": round(fired["_at"] - onset_at, 1), "cause": fired["cause"], "evidence_dsns": fired["evidence"]["dsns"],
        },
        "per_node_monitors": {
            "alerts_for_the_attacked_tenant": sum(1 for _, _, t in alone_alerts if t == names[0]),
            "nodes_that_fired": sorted({k for k, _, t in alone_alerts if t == names[0]}),
            "other_alerts": sum(1 for _, _, t in alone_alerts if t != names[0]),
        },
        "redis": {
            "commands": calls,
            "commands_per_simulated_second": round(calls / (minutes * 60), 1),
            "commands_per_dsn": round(calls / max(dsns, 1), 2),
            "hincrby_per_message": round(hincr / max(messages_sent, 1), 3),
            "commands_per_flush": round(calls / max(counters["flushes"], 1), 2),
            "by_command_per_dsn": by_kind,
            "cpu_seconds": round(cpu, 3),
            "cpu_us_per_command": round(cpu / max(calls, 1) * 1e6, 2),
            "used_memory_delta_bytes": memory,
            "stream_bytes_per_tenant_steady": round(sum(streams) / max(len(streams), 1)),
            "stream_entries_per_tenant_steady": round(sum(lengths) / max(len(lengths), 1), 1),
            "stream_bytes_attacked_tenant_at_end": attacked,
        },
        "wall_seconds": round(wall, 1),
    }


def _cpu(info: dict[str, Any]) -> float:
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _commandstats(info: dict[str, Any]) -> dict[str, int]:
    """Calls per command since CONFIG RESETSTAT, without the simulation's own."""
    found = {}
    for name, row in info.items():
        command = name.removeprefix("cmdstat_")
        if command not in ("info", "config|resetstat", "config", "memory|usage", "xlen"):
            found[command] = int(row["calls"])
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--minutes", type=int, default=90, help="simulated minutes (the learning period takes 30 at the default baseline)")
    parser.add_argument("--onset", type=int, default=60, help="minute the harvest starts")
    parser.add_argument("--attack", type=float, default=60.0, help="harvest DSNs a minute, over all nodes")
    parser.add_argument("--attack-minutes", type=int, default=10)
    parser.add_argument("--dsns-per-tenant", type=float, default=0.3, help="steady DSNs a minute per tenant")
    parser.add_argument("--messages", type=float, default=20000.0, help="messages a minute over the fleet")
    parser.add_argument("--flush", type=float, default=1.0, help="seconds between a node's flushes (observe.flush_interval)")
    parser.add_argument("--quick", action="store_true", help="3 nodes, 20 tenants, window 1m (the test command's check)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        result = asyncio.run(quick())
    else:
        result = asyncio.run(simulate(
            nodes=args.nodes, tenants=args.tenants, minutes=args.minutes, onset=args.onset, attack=args.attack,
            attack_minutes=args.attack_minutes, dsns_per_tenant=args.dsns_per_tenant, messages=args.messages, flush=args.flush,
        ))
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


async def quick() -> dict[str, Any]:
    """Three nodes, a 1-minute window: a harvest of 30 DSNs a minute is 10 per node and
    window, under min_dsns (20) on each node, 30 on the fleet."""
    return await simulate(nodes=3, tenants=20, minutes=16, onset=10, attack=30.0, attack_minutes=4, dsns_per_tenant=0.2, messages=600.0,
                          window="1m", baseline="10m", min_dsns=20, flush=2.0)


if __name__ == "__main__":
    sys.exit(main())
