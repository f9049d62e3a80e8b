"""The fleet simulation in quick mode (the full run and its figures: `benches/fleet_sim.py`,
docs/operations/fleet.md): three simulated nodes on one real redis-server, a harvest of 10 DSNs
per node and window (min_dsns 20) that only the fleet's monitor sees."""

from __future__ import annotations

import asyncio

from benches.fleet_sim import quick


def test_the_fleet_sees_a_harvest_no_node_sees_alone() -> None:
    result = asyncio.run(quick())
    assert result["fleet_monitor"]["cause"] == "directory-harvest" and result["fleet_monitor"]["detected_after_s"] <= 2 * 60
    assert result["per_node_monitors"]["alerts_for_the_attacked_tenant"] == 0
    assert result["redis"]["by_command_per_dsn"]["xadd"] == 1.0
