"""`deliverypool monitor [--admin HOST:PORT] [--config PATH] [--json] [--interval S]`: per-tenant
message and DSN rates, baselines and active surges with their causes, from a running relay's
admin listener (GET /api/tenants), as a live terminal table (rich), or one JSON snapshot. In a
fleet any node's listener shows the whole fleet (the caption names the nodes and the leader, or
says the view is this node's alone while Redis is away). The address and the token come from
the same places as the relay's (cli/admin_client.py)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from deliverypool.cli.admin_client import AdminClient, AdminError, admin_client
from deliverypool.config import ConfigError

__all__ = ["fleet_caption", "monitor_command", "snapshot_table"]


def fetch(client: AdminClient) -> dict[str, Any]:
    data: dict[str, Any] = client.get("/api/tenants")
    return data


def fleet_caption(fleet: dict[str, Any] | None) -> str | None:
    """One line about the fleet the snapshot covers (None for a single node)."""
    if fleet is None:
        return None
    if fleet.get("degraded"):
        return f"fleet view DEGRADED since {fleet.get('degraded_since')}: node {fleet['node']} alone ({fleet.get('error', '')})"
    nodes = fleet.get("nodes") or []
    return f"fleet of {len(nodes)} node(s), leader {fleet.get('leader') or 'none'}; seen from {fleet['node']}"


def snapshot_table(data: dict[str, Any]) -> Table:
    table = Table(title=f"deliverypool: DSN window {data['window_seconds']:g}s", caption=fleet_caption(data.get("fleet")), expand=False)
    for column in ("tenant", "messages/min", "relayed DSNs/min", "DSNs in window", "window DSNs/min", "baseline/min", "surge"):
        table.add_column(column, justify="left" if column in ("tenant", "surge") else "right")
    for name, row in data["tenants"].items():
        surge = row.get("surge")
        table.add_row(
            name,
            f"{row['messages_per_minute']:.1f}",
            f"{row['relayed_dsns_per_minute']:.1f}",
            str(row["dsns_in_window"]),
            f"{row['dsns_per_minute']:.1f}",
            f"{row['baseline_per_minute']:.2f}",
            f"[bold red]{surge['cause']}[/] since {surge['since']}" if surge else "-",
        )
    return table


def monitor_command(
    admin: str | None = None,
    *,
    config_path: str | None = None,
    token_name: str | None = None,
    cacert: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    as_json: bool = False,
    interval: float = 2.0,
    out: TextIO = sys.stdout,
) -> int:
    """Exit status 0; 1 when the admin listener cannot be reached or refuses (a missing token:
    401); 2 for a configuration or token file that cannot be used."""
    try:
        client = admin_client(admin=admin, config_path=config_path, token_name=token_name, cacert=cacert, cert=cert, key=key, timeout=5.0)
    except (ConfigError, ValueError) as exc:
        print(f"deliverypool monitor: {exc}", file=sys.stderr)
        return 2
    try:
        data = fetch(client)
    except AdminError as exc:
        print(f"deliverypool monitor: {exc}", file=sys.stderr)
        return 1
    if as_json:
        out.write(json.dumps(data) + "\n")
        return 0
    console = Console(file=out)
    with Live(snapshot_table(data), console=console, refresh_per_second=1) as live:
        try:
            while True:
                time.sleep(interval)
                try:
                    live.update(snapshot_table(fetch(client)))
                except AdminError:
                    continue
        except KeyboardInterrupt:
            return 0
