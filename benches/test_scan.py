"""Group `scan`: header scan plus DSN verdict for every message of the shared corpus.

* `deliverypool`: `deliverypool.classify(message)`, the scan and the DSN verdict in Rust.
* `baseline`: the stdlib `BytesParser(policy=compat32)` with `headersonly=True` plus the same
  DSN rules in Python (`benches/baseline.py`).
* `baseline_flufl`: flufl.bounce's `scan_message` (GNU Mailman's bounce detector) on the message
  as `email.message_from_bytes` parses it, which is what it takes.
"""

from __future__ import annotations

import email

import pytest
from flufl.bounce import scan_message

import deliverypool
from benches import baseline

pytestmark = pytest.mark.benchmark(group="scan")


def run_deliverypool(messages: list[bytes]) -> int:
    found = 0
    for message in messages:
        found += deliverypool.classify(message).dsn is not None
    return found


def run_baseline(messages: list[bytes]) -> int:
    found = 0
    for message in messages:
        found += baseline.detect(message).dsn is not None
    return found


def run_flufl(messages: list[bytes]) -> int:
    found = 0
    for message in messages:
        try:
            found += bool(scan_message(email.message_from_bytes(message)))
        except IndexError:
            # mailbox/size-1 and size-2 (one and three bytes, no From) crash flufl's Yale
            # detector; a caller has to catch that.
            pass
    return found


def test_deliverypool(benchmark, corpus_messages: list[bytes]) -> None:
    benchmark.extra_info["ops"] = len(corpus_messages)
    found = benchmark(run_deliverypool, corpus_messages)
    benchmark.extra_info["dsn_found"] = found


def test_baseline(benchmark, corpus_messages: list[bytes]) -> None:
    benchmark.extra_info["ops"] = len(corpus_messages)
    found = benchmark(run_baseline, corpus_messages)
    benchmark.extra_info["dsn_found"] = found


def test_baseline_flufl(benchmark, corpus_messages: list[bytes]) -> None:
    benchmark.extra_info["ops"] = len(corpus_messages)
    found = benchmark(run_flufl, corpus_messages)
    # flufl.bounce reports permanent failures only: fewer "found" than a DSN detector.
    benchmark.extra_info["bounces_found"] = found


def test_baseline_agrees_with_deliverypool(corpus_messages: list[bytes]) -> None:
    """Not a benchmark: keeps the Python baseline honest. It must reach the same verdict (report
    kind, DSN kind and signals) on nearly every corpus message; the few it misses are subjects
    in raw 8-bit or ISO-2022-JP text that the stdlib's decode_header leaves undecoded."""
    differ = []
    for index, message in enumerate(corpus_messages):
        ours = deliverypool.classify(message)
        theirs = baseline.detect(message)
        same_kind = ours.report_kind == theirs.report_kind
        same_dsn = (ours.dsn is None) == (theirs.dsn is None)
        if same_dsn and ours.dsn is not None and theirs.dsn is not None:
            same_dsn = (ours.dsn.kind, list(ours.dsn.signals)) == (theirs.dsn.kind, theirs.dsn.signals)
        if not (same_kind and same_dsn):
            differ.append(index)
    print(f"baseline agrees on {len(corpus_messages) - len(differ)}/{len(corpus_messages)} messages")
    assert len(differ) <= len(corpus_messages) // 50, differ
