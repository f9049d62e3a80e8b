"""The demo's fourth act, a listed normal address: a second relay, whose normal pool sends from
two addresses (127.0.0.6 and 127.0.0.7; its high-risk pool from 127.0.0.8), watches them in the
blocklist zone ``bl.demo.test`` that the demo's DNS server serves (with the RFC 5782 test
points). Part-way through its mail, the zone lists 127.0.0.6: the demo prints the alert, the
drained address, the sinks seeing only 127.0.0.7, and 127.0.0.6 back in rotation once the zone
delists it.

A second relay because the first one's normal address is 127.0.0.2, which is the RFC 5782 test
point every blocklist must list: on loopback it would be listed from the start.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiosmtplib

from deliverypool import config as cfg
from deliverypool.app import Relay
from deliverypool.lookup.dnsbl import reversed_name
from deliverypool.lookup.resolver import Nameserver, Resolver, ResolverConfig
from deliverypool.testing.zoneserver import ZoneServer

__all__ = ["DRAINED", "KEPT", "ZONE", "WatchAct", "listed_address"]

DRAINED = "127.0.0.6"  # the normal address the zone lists part-way through
KEPT = "127.0.0.7"  # the normal address that carries the mail meanwhile
HIGH_RISK = "127.0.0.8"
ZONE = "bl.demo.test"
REASON = "demo listing: spam trap hits from 127.0.0.6"


def blocklist_zone(listed: Mapping[str, str] | None = None) -> str:
    """bl.demo.test with the RFC 5782 test points and `listed` (address -> TXT reason); TTL 0 so
    the next check sees a change at once."""
    lines = [
        f"$ORIGIN {ZONE}.",
        "$TTL 0",
        "@ IN SOA ns.test. hostmaster.test. 1 3600 900 604800 0",
        "@ NS ns.test.",
        f"{reversed_name('127.0.0.2', ZONE)}. A 127.0.0.2",
        f'{reversed_name("127.0.0.2", ZONE)}. TXT "RFC 5782 test point"',
    ]
    for address, reason in (listed or {}).items():
        lines += [f"{reversed_name(address, ZONE)}. A 127.0.0.2", f'{reversed_name(address, ZONE)}. TXT "{reason}"']
    return "\n".join(lines) + "\n"


@dataclass
class WatchAct:
    """What act 4 saw: the sources of each phase's mail, the alert, the relay (still running)."""

    relay: Relay
    admin: str
    peers: dict[str, collections.Counter[str]] = field(default_factory=dict)
    alert: dict[str, Any] | None = None
    drained: list[str] = field(default_factory=list)
    back_in_rotation: bool = False

    def problems(self) -> list[str]:
        problems = []
        if self.alert is None or self.alert.get("address") != DRAINED or self.alert.get("severity") != "critical":
            problems.append(f"act 4: no critical dnsbl-listed alert for {DRAINED}")
        if self.drained != [DRAINED]:
            problems.append(f"act 4: drained {self.drained}, expected [{DRAINED!r}]")
        during = self.peers.get("watch-drained", collections.Counter())
        if set(during) != {KEPT}:
            problems.append(f"act 4: while {DRAINED} was drained, mail came from {sorted(during)}, expected only {KEPT}")
        if not self.back_in_rotation:
            problems.append(f"act 4: {DRAINED} did not come back into rotation after delisting")
        return problems


def act_config(spool: Path, listen_port: int, mx_port: int, dns: tuple[str, int], admin_port: int, token_file: Path | None = None) -> cfg.RelayConfig:
    pool = {"delivery": "mx", "mx_port": mx_port, "idle_timeout": "300ms", "max_connections_per_destination": 4, "retry": {"initial": "1s", "maximum": "5s"}}
    return cfg.from_dict(
        {
            "hostname": "relay2.demo.test",
            "listener": {"address": f"127.0.0.1:{listen_port}"},
            "spool": {"directory": str(spool)},
            "dns": {"nameservers": [f"{dns[0]}:{dns[1]}"], "timeout": "1s"},
            "pools": {
                "normal": {"source_addresses": [DRAINED, KEPT], "ehlo_name": "out2.demo.test", **pool},
                "high-risk": {"source_addresses": [HIGH_RISK], "ehlo_name": "bulk2.demo.test", **pool},
            },
            # A short interval so the act takes seconds (the default is 15m: docs/operations/blocklist-watch.md).
            "dnsbl": {"zones": [ZONE], "interval": "250ms"},
            "observe": {"flush_interval": "200ms"},
            # The demo's token; the read-only routes open: the act only shows where to look.
            "admin": {
                "address": f"127.0.0.1:{admin_port}", "open_reads": True, "open_metrics": True,
                **({"token_file": str(token_file)} if token_file is not None else {}),
            },
        }
    )


async def _until(check: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _next_cycle(seen: int, cycles: Callable[[], int], timeout: float) -> None:
    """Waits for the end of the cycle running when `cycles()` was `seen`."""
    await _until(lambda: cycles() > seen, timeout)


async def listed_address(
    zones: ZoneServer,
    config: cfg.RelayConfig,
    out: TextIO,
    *,
    peers: Callable[[str], collections.Counter[str]],
    mark: Callable[[bytes, str], bytes],
    messages: int = 20,
    timeout: float = 20.0,
) -> WatchAct:
    """Runs act 4 with the relay of `config` (act_config): `peers(kind)` are the source addresses
    the sinks saw for the mail of that kind, `mark(message, kind)` tags a message with its kind.
    The relay is left running (the caller stops it)."""
    zones.set_zone(f"{ZONE}.", blocklist_zone())
    dns_host, dns_port = config.dns.nameservers[0]
    # The demo's resolver keeps no answer past its TTL of 0 (a relay's keeps each for 5 s at least).
    resolver = Resolver(ResolverConfig(nameservers=(Nameserver(dns_host, dns_port),), timeout=1.0, min_ttl=0.0, unknown_ttl=0.0))
    relay = Relay(config, dnsbl_resolver=resolver)
    await relay.start()
    await relay.listen()
    watch = relay.dnsbl
    assert watch is not None and config.admin.address is not None
    admin = f"{config.admin.address[0]}:{config.admin.address[1]}"
    act = WatchAct(relay, admin)
    out.write(
        f"\nact 4: a normal address gets listed. A second relay sends normal mail from {DRAINED} and {KEPT} "
        f"(high-risk from {HIGH_RISK}) and checks them in the blocklist {ZONE} every {config.dnsbl.interval * 1000:.0f} ms.\n"
    )
    await _until(lambda: watch.cycles >= 1, timeout)

    async def phase(kind: str, count: int) -> collections.Counter[str]:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=config.listener.port, start_tls=False)
        async with smtp:
            for n in range(count):
                body = f"From: news@sender.test\r\nTo: c{n}@shop.test\r\nSubject: {kind} {n}\r\nMessage-ID: <{kind}-{n}@demo.test>\r\n\r\nHello.\r\n"
                await smtp.sendmail("news@sender.test", [f"customer{n}@shop.test"], mark(body.encode(), kind))
        await _until(lambda: sum(peers(kind).values()) >= count, timeout)
        act.peers[kind] = seen = peers(kind)
        return seen

    def describe(seen: collections.Counter[str]) -> str:
        return ", ".join(f"{ip} x{n}" for ip, n in sorted(seen.items())) or "nothing"

    out.write(f"  {messages} messages before any listing, delivered from {describe(await phase('watch-before', messages))}\n")
    zones.set_zone(f"{ZONE}.", blocklist_zone({DRAINED: REASON}))
    out.write(f"  {ZONE} now lists {DRAINED}...\n")
    await _until(lambda: watch.drained.is_drained("normal", DRAINED), timeout)
    await _next_cycle(watch.cycles, lambda: watch.cycles, timeout)  # its alerts are out
    act.drained = sorted(watch.drained.by_pool.get("normal", ()))
    active, _ = await relay.observer.alerts()
    act.alert = next((a for a in active if a["type"] == "dnsbl-listed" and a.get("address") == DRAINED), None)
    if act.alert is not None:
        alert = act.alert
        out.write(
            f"ALERT {alert['type']} {alert['state']} ({alert['severity']}): {alert['address']} of pool {alert['pool']} in {alert['zone']}, "
            f"codes {','.join(alert['codes'])}, reason \"{alert['reason']}\"\n  action: {alert['action']}; in rotation now: "
            f"{', '.join(watch.in_rotation('normal'))}\n"
        )
    seen = await phase("watch-drained", messages)
    out.write(f"  {messages} messages while {DRAINED} is drained, delivered from {describe(seen)}\n")
    zones.set_zone(f"{ZONE}.", blocklist_zone())
    act.back_in_rotation = await _until(lambda: not watch.drained.is_drained("normal", DRAINED), timeout)
    await _next_cycle(watch.cycles, lambda: watch.cycles, timeout)
    _, resolved = await relay.observer.alerts()
    done = next((a for a in resolved if a["type"] == "dnsbl-listed" and a.get("address") == DRAINED), None)
    after = f" (alert resolved after {done['duration_seconds']} s)" if done else ""
    out.write(f"  delisted: in rotation again: {', '.join(watch.in_rotation('normal'))}{after}\n")
    out.write(f"  blocklist view: http://{admin}/api/dnsbl  alerts: http://{admin}/api/alerts  (deliverypool dnsbl check --config FILE)\n")
    return act
