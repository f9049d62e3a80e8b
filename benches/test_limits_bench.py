"""The sender-limits benchmark in quick mode (the full run and its figures: `benches/limits_bench.py`,
benches/README.md): one round of each mode, limits off, the embedded state database and Redis,
through a real relay process; every recipient accepted in each."""

from __future__ import annotations

from benches.limits_bench import main


def test_each_mode_runs_and_refuses_nothing() -> None:
    assert main(["--quick"]) == 0
