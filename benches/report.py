"""Prints the per-group comparison from a saved pytest-benchmark JSON file:

    .venv/bin/python -m pytest benches --benchmark-json=bench.json
    .venv/bin/python benches/report.py bench.json

For each group: time and rate per operation (message, cache lookup), and each baseline's time
as a multiple of deliverypool's (x50 means deliverypool is 50 times faster).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import rate_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, help="a file written by pytest --benchmark-json")
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text())
    rows = [
        {
            "group": b["group"],
            "name": b["name"],
            "mean": b["stats"]["mean"],
            "median": b["stats"]["median"],
            "extra_info": b.get("extra_info", {}),
        }
        for b in data["benchmarks"]
    ]
    machine = data.get("machine_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw", "?")
    print(f"{machine.get('node', '?')}: {cpu}, {machine.get('python_implementation', '')} {machine.get('python_version', '')}")
    for line in rate_table(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
