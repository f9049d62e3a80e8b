"""The demo's second act, a compromised customer: the tenant ``acme`` (its server on
127.0.0.5, its domain sender.test) has a server that starts bouncing a directory harvest
through the relay — guessed addresses at acme's own domain, bounced to the forged senders — and
the monitor raises the alert, which the demo prints with its evidence."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any, TextIO

import aiosmtplib

from deliverypool.app import Relay
from deliverypool.testing.scenarios import DsnFactory, directory_harvest

__all__ = ["MONITOR_SETTINGS", "compromised_customer"]

# Short windows so the act takes seconds; the production defaults are in docs/operations/monitoring.md.
MONITOR_SETTINGS: dict[str, Any] = {
    "tenants": {"acme": {"networks": ["127.0.0.5/32"], "domains": ["sender.test"]}},
    "monitor": {"window": "4s", "baseline": "48s", "min_dsns": 15, "factor": 4.0, "interval": "250ms"},
    "observe": {"flush_interval": "200ms"},
}


ACME_SERVER = "127.0.0.5"


async def compromised_customer(
    relay: Relay, listen_port: int, out: TextIO, *, mark: Callable[[bytes], bytes], dsns: int = 40, timeout: float = 30.0
) -> dict[str, Any] | None:
    """Sends the harvest's DSNs (each passed through `mark`) and waits for the alert; returns it
    (None if none came)."""
    monitor = relay.observer.monitor
    if monitor is None:
        return None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not monitor.learned and loop.time() < deadline:
        await asyncio.sleep(0.1)
    out.write(f"\nact 2: acme's server starts bouncing a directory harvest through the relay ({dsns} DSNs)...\n")
    factory, rng = DsnFactory(seed=5), random.Random(5)
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=listen_port, source_address=(ACME_SERVER, 0), start_tls=False)
    async with smtp:
        for n in range(dsns):
            spec, _ = directory_harvest(factory, rng, "sender.test", n)
            # The forged senders the bounces go back to: the demo's shop.test sinks.
            forged = f"{spec.original_from.split('@')[0]}@shop.test"
            await smtp.sendmail("", [forged], mark(factory.dsn(spec)))
    while loop.time() < deadline:
        active = monitor.active()
        if active:
            return active[0]
        await asyncio.sleep(0.1)
    return None


def print_alert(out: TextIO, alert: dict[str, Any] | None, admin: str | None) -> None:
    if alert is None:
        out.write("the monitor raised no alert (PROBLEM)\n")
        return
    evidence = alert["evidence"]
    out.write(
        f"ALERT {alert['type']} {alert['state']}: tenant={alert['tenant']} cause={alert['cause']} "
        f"({alert['dsns_per_minute']:.0f} DSNs/min against a baseline of {alert['baseline_per_minute']:.1f})\n"
        f"  evidence: {evidence['dsns']} DSNs, status {json.dumps(evidence['status'])}, "
        f"{evidence['distinct_failed_recipients']} distinct failed recipients, {evidence['own_domain_recipients']} at acme's own domain, "
        f"top domains share {evidence['top_domains_share']}\n"
    )
    if admin:
        out.write(
            f"  metrics: http://{admin}/metrics  alerts: http://{admin}/api/alerts  "
            f"(with the token: DELIVERYPOOL_ADMIN_TOKEN=... deliverypool monitor --admin {admin})\n"
        )
