"""`deliverypool dnsbl check --config relay.toml [--json]`: checks every source address of every
pool in every ``[dnsbl]`` zone now (test points first, as the relay does) and prints a table of
address x zone, or one JSON object. It reads the configuration only: it neither drains nor
alerts (the running relay does), and it sends the same queries one relay cycle sends.

Exit status: 0 when no address of a pool but the high-risk one is listed and every zone passed
its test points; 1 when one is listed or a zone is broken, refusing or could not be checked;
2 when the configuration cannot be used.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from deliverypool import config as cfg
from deliverypool.eventloop import run
from deliverypool.lookup.dnsbl import Cycle, Dnsbl, DnsblAnswer, family_name
from deliverypool.lookup.resolver import Nameserver, Resolver, ResolverConfig
from deliverypool.watch.dnsbl import queries_per_day

__all__ = ["check_command", "cycle_json"]


def _resolver(config: cfg.RelayConfig) -> Resolver:
    servers = config.dnsbl.nameservers or config.dns.nameservers
    return Resolver(ResolverConfig(nameservers=tuple(Nameserver(h, p) for h, p in servers), timeout=config.dns.timeout))


def _pools(config: cfg.RelayConfig) -> dict[str, list[str]]:
    pools: dict[str, list[str]] = {}
    for name, pool in config.pools.items():
        for source in pool.source_addresses:
            pools.setdefault(str(source.address), []).append(name)
    return pools


def cycle_json(config: cfg.RelayConfig, cycle: Cycle) -> dict[str, Any]:
    zones: dict[str, Any] = {}
    for (zone, family), check in sorted(cycle.zones.items()):
        zones.setdefault(zone, {})[family_name(family)] = check.as_json()
    addresses = []
    for address, pools in _pools(config).items():
        cells: dict[str, Any] = {}
        for zone in config.dnsbl.zones:
            answer = cycle.answers.get((address, zone))
            cells[zone] = answer.as_json() if answer is not None else {"verdict": None, "detail": "not looked up: the zone failed its test points"}
        addresses.append({"address": address, "pools": pools, "zones": cells})
    return {"zones": zones, "addresses": addresses, "queries": cycle.queries, "queries_per_day": queries_per_day(config)}


def _cell(answer: DnsblAnswer | None) -> str:
    if answer is None:
        return "-"
    if answer.verdict == "listed":
        return f"LISTED {','.join(answer.codes)}"
    if answer.verdict == "unknown":
        return f"unknown ({answer.detail})"
    return answer.verdict


def _problems(config: cfg.RelayConfig, cycle: Cycle) -> list[str]:
    high_risk = config.policy.high_risk_pool
    problems = []
    for (zone, family), check in sorted(cycle.zones.items()):
        if check.state != "ok":
            problems.append(f"zone {zone} ({family_name(family)}) {check.state}: {check.detail}")
    pools = _pools(config)
    for (address, zone), answer in cycle.answers.items():
        if answer.verdict == "listed" and any(pool != high_risk for pool in pools[address]):
            problems.append(f"{address} ({', '.join(pools[address])}) is listed in {zone}")
    return problems


def check_command(config_path: str, *, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    try:
        config = cfg.load(config_path)
    except (cfg.ConfigError, OSError) as exc:
        print(f"deliverypool dnsbl: {exc}", file=sys.stderr)
        return 2
    zones = config.dnsbl.zones
    if not zones:
        print(f"deliverypool dnsbl: {config_path} has no [dnsbl] zones", file=sys.stderr)
        return 2
    pools = _pools(config)
    addresses = [s.address for pool in config.pools.values() for s in pool.source_addresses]
    unique = list(dict.fromkeys(addresses))
    cycle: Cycle = run(Dnsbl(_resolver(config)).check(unique, zones))
    problems = _problems(config, cycle)
    if as_json:
        out.write(json.dumps(dict(cycle_json(config, cycle), problems=problems)) + "\n")
        return 1 if problems else 0
    rows = [[address, ",".join(names), *(_cell(cycle.answers.get((address, z))) for z in zones)] for address, names in pools.items()]
    table = [["ADDRESS", "POOL", *zones], *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        out.write("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)).rstrip() + "\n")
    out.write("\n")
    for (zone, family), check in sorted(cycle.zones.items()):
        out.write(f"zone {zone} {family_name(family)}: {check.state} ({check.detail})\n")
    for (address, zone), answer in sorted(cycle.answers.items()):
        if answer.verdict in ("listed", "refused"):
            out.write(f"{address} in {zone}: {answer.verdict} {','.join(answer.codes)} {answer.reason or answer.detail}\n")
    out.write(f"{cycle.queries} queries now; at dnsbl.interval {cfg.format_duration(config.dnsbl.interval)} at most {queries_per_day(config):,} a day\n")
    for problem in problems:
        out.write(f"PROBLEM: {problem}\n")
    return 1 if problems else 0
