"""The table of `benches/relay_vs_postfix.sh` (`relay_probe.py table`): a row per run with both
relays' CPU per message and its ratio, and with ``RUNS`` a row of medians per size; the figures
of one run (`summarize`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benches.relay_probe import combine, summarize, table

RESULT = {
    "size": 2048, "messages_per_second": 500.0, "latency_p50_ms": 1.0, "latency_p99_ms": 2.0, "cpu_ms_per_message": 1.0,
    "cpu_us_per_kib": 500.0, "machine_cpu_ms_per_message": 2.0, "peak_rss_mib": 100.0, "pss_mib": 50.0, "lost": 0, "duplicates": 0,
}


def test_runs_of_one_size_get_a_median_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [
        (dict(RESULT, messages_per_second=400.0, cpu_ms_per_message=0.9), dict(RESULT, messages_per_second=200.0, cpu_ms_per_message=3.0)),
        (dict(RESULT, messages_per_second=600.0, cpu_ms_per_message=1.2, lost=1), dict(RESULT, messages_per_second=250.0, cpu_ms_per_message=3.0)),
        (dict(RESULT, messages_per_second=500.0), dict(RESULT, messages_per_second=250.0, cpu_ms_per_message=2.0)),
        (dict(RESULT, size=102400), dict(RESULT, size=102400, cpu_ms_per_message=4.0)),
    ]
    paths = []
    for n, pair in enumerate(runs):
        for name, result in zip(("dp", "pf"), pair):
            path = tmp_path / f"{name}-{n}.json"
            path.write_text(json.dumps(result))
            paths.append(str(path))
    assert table(paths) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2 KiB") or line.startswith("| 100 KiB")]
    assert len(rows) == 5  # three runs, their medians, one run of another size
    assert "| 0.90 / 3.00 | **0.30** |" in rows[0]
    median = rows[3]
    assert median.startswith("| 2 KiB, median of 3 | 500 | 250 |")
    # Throughput ratios 2.00, 2.40, 2.00; CPU ratios 0.30, 0.40, 0.50: medians with their range.
    assert "| **2.00** (2.00–2.40) |" in median and "| **0.40** (0.30–0.50) |" in median
    assert median.endswith("| 1 / 0 | 0 / 0 |")  # lost: summed over the runs
    assert rows[4].startswith("| 100 KiB | 500 |") and "**0.25**" in rows[4]


def test_the_figures_of_a_run_count_the_load_and_time_the_probes_from_their_start() -> None:
    args = argparse.Namespace(name="dp", messages=900, size=2048, start_ns=0, accepted_ns=int(1e9))
    # Latency from the moment the probe's body went out (its "sent" stamp) to the sink's copy.
    probes = [{"message_id": f"<p{n}>", "sent": 1.0} for n in range(100)]
    arrived = {f"<m{n}>": 2.0 for n in range(900)} | {f"<p{n}>": 1.004 for n in range(99)}  # one probe lost
    before = {"cpu_seconds": 10.0, "machine_busy_seconds": 20.0}
    after = {"cpu_seconds": 10.9, "machine_busy_seconds": 21.8, "peak_rss_mib": 100.0, "pss_mib": 50.0}
    result = summarize(args, probes, arrived, 0, before, after)
    assert result["cpu_ms_per_message"] == pytest.approx(1.0)  # 0.9 s over the 900 messages of the load
    assert result["machine_cpu_ms_per_message"] == pytest.approx(2.0)
    assert (result["delivered"], result["lost"]) == (900, 1)
    assert result["latency_p50_ms"] == pytest.approx(4.0)
    assert result["messages_per_second"] == pytest.approx(450.0)


def test_a_run_takes_cpu_and_throughput_from_the_load_alone_and_latency_from_the_probed_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load = dict(RESULT, cpu_ms_per_message=2.0, messages_per_second=280.0, lost=1, duplicates=0, probes=0)
    load.update(latency_p50_ms=float("nan"), latency_p99_ms=float("nan"))
    probed = dict(RESULT, cpu_ms_per_message=2.5, messages_per_second=250.0, latency_p50_ms=3.0, latency_p99_ms=90.0, lost=0, duplicates=2, probes=100)
    result = combine(load, probed)
    assert (result["cpu_ms_per_message"], result["messages_per_second"]) == (2.0, 280.0)
    assert (result["latency_p50_ms"], result["latency_p99_ms"], result["probes"]) == (3.0, 90.0, 100)
    assert (result["lost"], result["duplicates"]) == (1, 2)  # either run's losses count
    assert (result["cpu_ms_per_message_with_probes"], result["messages_per_second_with_probes"]) == (2.5, 250.0)
    paths = []
    for name, one in (("dp", result), ("pf", dict(RESULT, cpu_ms_per_message=6.0))):  # a result from before: no probed figure
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(one))
        paths.append(str(path))
    assert table(paths) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert "| 2.00 / 6.00 | **0.33** | 2.50 / nan |" in row
