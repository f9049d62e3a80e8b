"""The surge monitor's evaluation in quick mode (the full run and its figures:
`benches/monitor_eval.py`, benches/README.md): one directory harvest injected into steady
traffic for three tenants, through the relay's SMTP front end, on the monitor's simulated clock."""

from __future__ import annotations

import asyncio

from benches.monitor_eval import run


def test_a_directory_harvest_is_detected_within_two_windows_with_its_cause() -> None:
    result = asyncio.run(run(50, "directory-harvest", 35, 10))
    assert result["cause"] == "directory-harvest" and result["false_alarms"] == 0
    assert result["detected_after_s"] <= 2 * 300 and result["resolved"]
