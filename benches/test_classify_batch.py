"""Group `classify-batch`: routing decisions for a batch of 100,000 messages (the corpus
repeated), in messages per second.

* `deliverypool`: one `deliverypool.classify_many(batch)` call: the GIL is released and the
  batch is spread over every core with rayon.
* `baseline`: the Python baseline (`benches/baseline.py`) in a plain loop, one core.
* `baseline_processes`: the same baseline spread over every core with a
  `multiprocessing.Pool`, the way a Python user would use more than one core.

The baselines take minutes over 100,000 messages, so they run one round; `--batch-size N` makes
the batch smaller.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
from collections.abc import Iterator

import pytest

import deliverypool
from benches import baseline

pytestmark = pytest.mark.benchmark(group="classify-batch")

FULL_BATCH = 100_000
QUICK_BATCH = 2_000


@pytest.fixture(scope="module")
def batch(corpus_messages: list[bytes], pytestconfig: pytest.Config, quick_mode: bool) -> list[bytes]:
    size = pytestconfig.getoption("batch_size") or (QUICK_BATCH if quick_mode else FULL_BATCH)
    repeats = -(-size // len(corpus_messages))
    return (corpus_messages * repeats)[:size]


@pytest.fixture(scope="module")
def pool() -> Iterator[multiprocessing.pool.Pool]:
    # spawn, not fork: this process already runs rayon's threads, and forking a threaded
    # process is unsafe (Python 3.12 warns about it). Workers are started before the timing.
    with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as workers:
        workers.map(baseline.is_high_risk, [b""] * (os.cpu_count() or 1))
        yield workers


def high_risk_count(decisions) -> int:  # noqa: ANN001
    return sum(1 for d in decisions if d.high_risk)


def test_deliverypool(benchmark, batch: list[bytes]) -> None:
    benchmark.extra_info["ops"] = len(batch)
    benchmark.extra_info["cores"] = os.cpu_count()
    decisions = benchmark.pedantic(deliverypool.classify_many, args=(batch,), rounds=5, warmup_rounds=1)
    benchmark.extra_info["high_risk"] = high_risk_count(decisions)


def test_baseline(benchmark, batch: list[bytes]) -> None:
    benchmark.extra_info["ops"] = len(batch)
    benchmark.extra_info["cores"] = 1
    decisions = benchmark.pedantic(baseline.classify_many, args=(batch,), rounds=1)
    benchmark.extra_info["high_risk"] = high_risk_count(decisions)


def test_baseline_processes(benchmark, batch: list[bytes], pool: multiprocessing.pool.Pool) -> None:
    benchmark.extra_info["ops"] = len(batch)
    benchmark.extra_info["cores"] = os.cpu_count()
    chunk = max(1, len(batch) // (8 * (os.cpu_count() or 1)))
    flags = benchmark.pedantic(pool.map, args=(baseline.is_high_risk, batch, chunk), rounds=1)
    benchmark.extra_info["high_risk"] = sum(flags)
