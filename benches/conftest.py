"""Shared fixtures for the benchmark suites, and the per-group ratio table printed at the end.

Every group holds a `deliverypool` benchmark and one or more `baseline*` benchmarks that do the
same work on the same input in the same run. Each benchmark records in `extra_info` how many
operations (messages, cache lookups) one round does, so the summary can print a rate per
operation; `benches/report.py` prints the same table from a saved `--benchmark-json` file.

Quick mode (`--benchmark-disable`) runs every benchmark body once on small inputs, so that CI
catches a suite that rots without spending minutes timing it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from deliverypool.corpus import corpus_paths
from deliverypool.mail.sources import read_messages

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "sisimai"


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop of the module's own, for the groups that time coroutines."""
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("deliverypool benchmarks")
    group.addoption(
        "--batch-size",
        type=int,
        default=None,
        help="messages in the classify-batch group (default 100000; 2000 with --benchmark-disable)",
    )


def quick(config: pytest.Config) -> bool:
    return bool(config.getoption("benchmark_disable", False))


def pytest_configure(config: pytest.Config) -> None:
    from benches.build import not_release

    problem = None if quick(config) else not_release("the benchmarks")
    if problem:
        pytest.exit(problem, returncode=2)


@pytest.fixture(scope="session")
def quick_mode(pytestconfig: pytest.Config) -> bool:
    return quick(pytestconfig)


@pytest.fixture(scope="session")
def corpus_messages() -> list[bytes]:
    """Every message of the shared corpus (maildir files and mbox messages), as bytes."""
    if not CORPUS.is_dir():
        pytest.fail(f"the shared corpus is missing: expected it at {CORPUS}")
    messages = [message for path in corpus_paths(CORPUS) for _, message in read_messages(str(path))]
    assert len(messages) > 800, "the corpus shrank: check ../shared/corpus"
    return messages


@pytest.fixture(autouse=True, scope="session")
def _quiet_flufl() -> None:
    # flufl.bounce logs every detector it runs at INFO and every exception with a traceback;
    # the benchmark measures detection, not logging.
    logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)


def _pair_key(name: str) -> str:
    """What a benchmark is measured against within its group: the part of its name before
    `deliverypool` or `baseline` (`test_hit_baseline_ttlcache` pairs with `test_hit_deliverypool`)."""
    name = name.split("[")[0]
    for word in ("deliverypool", "baseline"):
        if word in name:
            return name[: name.index(word)]
    return name


def rate_table(benchmarks: list[dict]) -> list[str]:
    """Lines of a per-group table: time per operation, operations per second, and how many
    times longer each baseline takes than deliverypool. `benchmarks` are dicts with group, name,
    mean and median (seconds per round) and extra_info (holding `ops`, operations per round).
    Rates and ratios use the mean, as pytest-benchmark's own table does; the median is shown
    beside it because on a shared machine a few preempted rounds can pull the mean far up."""
    groups: dict[str, list[dict]] = {}
    for bench in benchmarks:
        groups.setdefault(bench["group"] or "", []).append(bench)
    lines = []
    for group, members in sorted(groups.items()):
        ours = {_pair_key(b["name"]): b for b in members if "deliverypool" in b["name"]}
        lines.append(f"{group}:")
        for bench in sorted(members, key=lambda b: (_pair_key(b["name"]), "baseline" in b["name"], b["name"])):
            ops = bench["extra_info"].get("ops", 1)
            per_op = bench["mean"] / ops
            median = f"(median {_duration(bench['median'] / ops)})" if "median" in bench else ""
            line = f"  {bench['name']:<40} {_duration(per_op):>10}/op {median:<20} {1 / per_op:>12,.0f} op/s"
            mine = ours.get(_pair_key(bench["name"]))
            if mine is not None and mine is not bench:
                mine_per_op = mine["mean"] / mine["extra_info"].get("ops", 1)
                line += f"   x{per_op / mine_per_op:,.1f} deliverypool's time"
            lines.append(line)
    return lines


def _duration(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.2f} {unit}"
    return f"{seconds / 1e-9:.0f} ns"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled or not session.benchmarks:
        return
    rows = [
        {"group": b.group, "name": b.name, "mean": b.stats.mean, "median": b.stats.median, "extra_info": b.extra_info}
        for b in session.benchmarks
        if b  # a benchmark that errored has no stats
    ]
    terminalreporter.section("deliverypool vs baselines (same run, same input)")
    for line in rate_table(rows):
        terminalreporter.write_line(line)
