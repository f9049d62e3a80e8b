"""Shared test configuration: the corpus location and hypothesis profiles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "sisimai"

settings.register_profile("dev", max_examples=200, deadline=None)
settings.register_profile(
    "ci", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.fail(f"the shared corpus is missing: expected it at {CORPUS}")
    return CORPUS


# DNS test servers and the event-loop runner live in tests/dnsserver.py (the DNS tests' own block).
from tests.dnsserver import aio_run, nsd, silent_nameserver, truncating_nameserver  # noqa: E402, F401
from tests.dkim_verifiers import dkim_keys, verifiers  # noqa: E402, F401
