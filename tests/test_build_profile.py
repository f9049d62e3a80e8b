"""The build profile the core reports, and the benchmarks' refusal to time a debug build."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from deliverypool._core import BUILD_PROFILE

REPO = Path(__file__).resolve().parents[1]


def test_the_core_names_its_build_profile() -> None:
    assert BUILD_PROFILE in ("debug", "release")


def test_benchmarks_refuse_a_debug_build_and_say_how_to_build() -> None:
    if not (REPO / "benches" / "build.py").is_file():
        import pytest

        pytest.skip("no benches/ beside the tests (an installed copy of the tests)")
    done = subprocess.run([sys.executable, "-m", "benches.build", "a benchmark"], cwd=REPO, capture_output=True, text=True, timeout=60)
    if BUILD_PROFILE == "release":
        assert (done.returncode, done.stderr) == (0, "")
    else:
        assert done.returncode == 2
        assert "a benchmark: the extension is a debug build" in done.stderr and "maturin develop --release" in done.stderr
